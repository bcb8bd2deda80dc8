//! Gateway listener ports for imports (Kubernetes mode): each TCP port of a ClusterSetIP import,
//! and each endpoint of another cluster's headless export, gets a port of the gateway's range
//! that its derived Service targets (docs/kubernetes.md).

use causeway_api::snapshot::ServiceView;
use causeway_api::{ClusterId, MeshSnapshot, Protocol, ServiceKey, ServiceType};

/// The gateway listener port of each TCP port of each ClusterSetIP import, by (import, port).
pub(crate) type GatewayPorts = std::collections::BTreeMap<(ServiceKey, u16), u16>;

/// The gateway listener port of each TCP port of each endpoint of another cluster of a headless
/// import, by (import, exporter, endpoint DNS label, port): Kubernetes mode, where the endpoint's
/// derived Service leads there and the gateway sends it on to exactly that endpoint.
pub(crate) type EndpointPorts =
    std::collections::BTreeMap<(ServiceKey, ClusterId, String, u16), u16>;

/// Gives every TCP port of every ClusterSetIP import a gateway listener port in
/// `first..first + count` (Kubernetes mode: derived Services target them, see
/// docs/kubernetes.md). The same snapshot gives the same ports in every replica: a port's place
/// is a hash of `ns/name/port`, the next free one on a collision, imports taken in key order.
/// Ports past `count` get none (and are routed by Host on the egress port).
#[cfg(test)]
pub(crate) fn gateway_ports(snap: &MeshSnapshot, first: u16, count: u16) -> GatewayPorts {
    gateway_port_plan(snap, first, count).0
}

/// [`gateway_ports`], and then, from the ports left, the ports of other clusters' headless
/// endpoints when this cluster reaches them through its gateway (all their endpoints, ready or
/// not, so that readiness does not move ports): placed the same way, by
/// `ns/name/cluster/label/port`. ClusterSetIP imports are placed first, so an endpoint never
/// moves one of theirs.
pub(crate) fn gateway_port_plan(
    snap: &MeshSnapshot,
    first: u16,
    count: u16,
) -> (GatewayPorts, EndpointPorts) {
    let count = usize::from(count);
    let mut used = vec![false; count];
    let mut taken = 0usize;
    let mut services = GatewayPorts::new();
    let mut endpoints = EndpointPorts::new();
    if count == 0 {
        return (services, endpoints);
    }
    let mut place = |what: &str| -> Option<u16> {
        if taken == count {
            return None;
        }
        let mut i = fnv1a(what.as_bytes()) as usize % count;
        while used[i] {
            i = (i + 1) % count;
        }
        used[i] = true;
        taken += 1;
        // first + count - 1 <= 65535 is checked with the config.
        Some(first + i as u16)
    };
    let tcp_ports = |svc: &ServiceView| -> Vec<u16> {
        svc.import
            .ports
            .iter()
            .filter(|p| p.protocol == Protocol::Tcp)
            .map(|p| p.port)
            .collect()
    };
    for (key, svc) in &snap.services {
        if svc.import.service_type != ServiceType::ClusterSetIP {
            continue;
        }
        for port in tcp_ports(svc) {
            match place(&format!("{key}/{port}")) {
                Some(gp) => {
                    services.insert((key.clone(), port), gp);
                }
                None => {
                    tracing::warn!(import = %key, port, count, "no gateway port left for this import port")
                }
            }
        }
    }
    if !snap.headless_via_gateway {
        return (services, endpoints);
    }
    for (key, svc) in &snap.services {
        if svc.import.service_type != ServiceType::Headless {
            continue;
        }
        let ports = tcp_ports(svc);
        for (cluster, export) in &svc.exports {
            if snap.local_cluster.as_ref() == Some(cluster) {
                continue;
            }
            let labels: std::collections::BTreeSet<String> = export
                .record
                .endpoints
                .iter()
                .map(|e| e.dns_label())
                .collect();
            for label in labels {
                for &port in &ports {
                    match place(&format!("{key}/{cluster}/{label}/{port}")) {
                        Some(gp) => {
                            endpoints
                                .insert((key.clone(), cluster.clone(), label.clone(), port), gp);
                        }
                        None => {
                            tracing::warn!(import = %key, %cluster, endpoint = %label, port, count, "no gateway port left for this headless endpoint")
                        }
                    }
                }
            }
        }
    }
    (services, endpoints)
}

/// FNV-1a, 32 bits: stable across releases and machines (std's hasher is not).
pub(crate) fn fnv1a(bytes: &[u8]) -> u32 {
    let mut h: u32 = 0x811c_9dc5;
    for b in bytes {
        h = (h ^ u32::from(*b)).wrapping_mul(0x0100_0193);
    }
    h
}
