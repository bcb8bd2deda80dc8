//! Computes each gateway's [`ConfigSnapshot`] from the mesh view (DESIGN.md "Config protocol"):
//! inbound = this cluster's exports and endpoints; outbound = imports with their candidate
//! clusters, gateway addresses, priorities, weights, health and drills.

use causeway_api::proto;
use causeway_api::snapshot::ClusterState;
use causeway_api::{BackendTlsMode, ClusterId, MeshSnapshot, Protocol, ServicePort};

use crate::source::LocalExports;

/// Default traffic policy of every import (documented in docs/gateway.md).
pub fn default_policy() -> proto::TrafficPolicy {
    proto::TrafficPolicy {
        timeout_ms: 15_000,
        retry_attempts: 2,
        retry_budget_percent: 20,
        max_pending: 1024,
        max_concurrent: 1024,
        outlier_consecutive_errors: 5,
        outlier_base_ejection_ms: 5_000,
        rate_limit: None,
    }
}

fn port(p: &ServicePort) -> proto::Port {
    let app = match p
        .app_protocol
        .as_deref()
        .map(str::to_ascii_lowercase)
        .as_deref()
    {
        Some("http") | Some("http1") => proto::AppProtocol::Http,
        Some("http2") | Some("h2c") | Some("kubernetes.io/h2c") => proto::AppProtocol::Http2,
        Some("grpc") => proto::AppProtocol::Grpc,
        Some("tcp") => proto::AppProtocol::Opaque,
        _ => proto::AppProtocol::Unspecified,
    };
    proto::Port {
        name: p.name.clone(),
        protocol: match p.protocol {
            Protocol::Tcp => proto::Protocol::Tcp,
            Protocol::Udp => proto::Protocol::Udp,
            Protocol::Sctp => proto::Protocol::Sctp,
        } as i32,
        port: u32::from(p.port),
        app_protocol: app as i32,
    }
}

/// Priority of a candidate cluster as seen from `local`: 0 local, 1 same region, 2 others.
fn priority(snap: &MeshSnapshot, local: &ClusterId, candidate: &ClusterId) -> u32 {
    if candidate == local {
        return 0;
    }
    let region = |c: &ClusterId| {
        snap.clusters
            .get(c)
            .and_then(|v| v.record.locality.get("region").cloned())
    };
    match (region(local), region(candidate)) {
        (Some(a), Some(b)) if a == b => 1,
        _ => 2,
    }
}

/// Builds the config for `local`'s gateways. `version` is stamped as given.
pub fn build(
    snap: &MeshSnapshot,
    local_exports: &LocalExports,
    local: &ClusterId,
    version: u64,
) -> proto::ConfigSnapshot {
    let peers = snap
        .clusters
        .iter()
        .filter(|(c, _)| *c != local)
        .map(|(c, v)| proto::Peer {
            cluster: c.to_string(),
            gateway_addresses: v.record.gateway_addresses.clone(),
            trust_domain: v.record.trust_domain.clone(),
            trust_bundle_pem: v.record.trust_bundle_pem.clone(),
            locality: v.record.locality.clone().into_iter().collect(),
        })
        .collect();

    let inbound = local_exports
        .exports
        .iter()
        .map(|(key, e)| proto::InboundService {
            namespace: key.namespace.clone(),
            name: key.name.clone(),
            ports: e.record.ports.iter().map(port).collect(),
            endpoints: e
                .endpoints
                .iter()
                .map(|ep| proto::Endpoint {
                    address: match ep.port {
                        Some(p) => std::net::SocketAddr::new(ep.address, p).to_string(),
                        None => ep.address.to_string(),
                    },
                    ready: ep.ready,
                    hostname: ep.hostname.clone().unwrap_or_default(),
                })
                .collect(),
            backend_tls_mode: match e.record.backend_tls_mode {
                BackendTlsMode::Plaintext => proto::BackendTlsMode::Plaintext,
                BackendTlsMode::Mtls => proto::BackendTlsMode::Mtls,
            } as i32,
            allowed_source_clusters: e
                .record
                .allowed_source_clusters
                .iter()
                .map(ToString::to_string)
                .collect(),
            allowed_identities: e.record.allowed_identities.clone(),
            drained: snap.is_drained(key, local),
            rate_limit: None,
        })
        .collect();

    let outbound = snap
        .services
        .iter()
        .map(|(key, svc)| {
            let candidates = svc
                .import
                .clusters
                .iter()
                .filter_map(|c| {
                    let export = svc.exports.get(c)?;
                    // What our own gateway last reported of that cluster's gateway; unknown = up.
                    let peer_up = c == local || snap.health_of(local, c).is_none_or(|h| h.up);
                    let cluster_known = c == local
                        || snap.clusters.get(c).is_some_and(|v| {
                            matches!(v.state, ClusterState::Up | ClusterState::Stale)
                        });
                    Some(proto::Candidate {
                        cluster: c.to_string(),
                        priority: priority(snap, local, c),
                        weight: export.record.weight.unwrap_or(100),
                        healthy: peer_up && cluster_known && export.record.ready_endpoints > 0,
                        drained: export.drained,
                        ready_endpoints: export.record.ready_endpoints,
                    })
                })
                .collect();
            proto::OutboundService {
                namespace: key.namespace.clone(),
                name: key.name.clone(),
                vip: svc.vip.map(|ip| ip.to_string()).unwrap_or_default(),
                ports: svc.import.ports.iter().map(port).collect(),
                candidates,
                policy: Some(default_policy()),
                header_routes: Vec::new(),
            }
        })
        .collect();

    proto::ConfigSnapshot {
        version,
        cluster: local.to_string(),
        peers,
        inbound,
        outbound,
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use causeway_api::snapshot::{ClusterView, ExportView, ServiceView};
    use causeway_api::{
        ClusterRecord, DrillRecord, Endpoint, ExportConditions, ExportRecord, HealthRecord, Import,
        ServiceKey, ServiceType, SessionAffinity,
    };

    use super::*;
    use crate::source::LocalExport;

    fn c(s: &str) -> ClusterId {
        ClusterId::new(s).unwrap()
    }

    fn record(ready: u32) -> ExportRecord {
        ExportRecord {
            schema: 1,
            ports: vec![ServicePort {
                name: "http".into(),
                protocol: Protocol::Tcp,
                port: 80,
                app_protocol: Some("http".into()),
            }],
            service_type: ServiceType::ClusterSetIP,
            session_affinity: SessionAffinity::None,
            created_unix_ms: 1,
            ready_endpoints: ready,
            backend_tls_mode: BackendTlsMode::Plaintext,
            endpoints: vec![],
            allowed_source_clusters: vec![],
            allowed_identities: vec![],
            weight: None,
            service_ip: None,
        }
    }

    fn cluster(region: &str) -> ClusterView {
        ClusterView {
            record: ClusterRecord {
                schema: 1,
                gateway_addresses: vec![format!("{region}-gw:15443")],
                trust_domain: "td".into(),
                trust_bundle_pem: String::new(),
                locality: BTreeMap::from([("region".to_string(), region.to_string())]),
                federator_version: String::new(),
            },
            state: ClusterState::Up,
            last_change_unix_ms: 0,
            stale_since_unix_ms: None,
            synced_revision: None,
        }
    }

    fn snapshot() -> MeshSnapshot {
        let key = ServiceKey::new("demo", "echo").unwrap();
        let mut exports = BTreeMap::new();
        for (name, ready) in [("east", 2), ("west", 1), ("north", 1)] {
            exports.insert(
                c(name),
                ExportView {
                    record: record(ready),
                    conditions: ExportConditions::default(),
                    stale: false,
                    drained: name == "north",
                },
            );
        }
        MeshSnapshot {
            version: 1,
            revision: 1,
            local_cluster: Some(c("east")),
            synced: true,
            clusters: BTreeMap::from([
                (c("east"), cluster("eu")),
                (c("west"), cluster("eu")),
                (c("north"), cluster("us")),
            ]),
            services: BTreeMap::from([(
                key.clone(),
                std::sync::Arc::new(ServiceView {
                    import: Import {
                        key: key.clone(),
                        service_type: ServiceType::ClusterSetIP,
                        ports: record(1).ports,
                        session_affinity: SessionAffinity::None,
                        clusters: vec![c("east"), c("north"), c("west")],
                        conflict: false,
                    },
                    vip: Some("10.255.0.7".parse().unwrap()),
                    exports,
                }),
            )]),
            drills: BTreeMap::from([(
                "d1".to_string(),
                DrillRecord {
                    schema: 1,
                    service: key,
                    cluster: c("north"),
                    start_unix_ms: 0,
                    end_unix_ms: 1,
                },
            )]),
            health: BTreeMap::from([(
                c("east"),
                BTreeMap::from([(
                    c("west"),
                    HealthRecord {
                        schema: 1,
                        up: false,
                        rtt_micros: 0,
                        observed_unix_ms: 0,
                    },
                )]),
            )]),
            invalid_exports: vec![],
        }
    }

    #[test]
    fn outbound_candidates_carry_priority_health_and_drills() {
        let cfg = build(&snapshot(), &LocalExports::default(), &c("east"), 7);
        assert_eq!(cfg.version, 7);
        assert_eq!(cfg.peers.len(), 2, "every cluster but the local one");
        let out = &cfg.outbound[0];
        assert_eq!(out.vip, "10.255.0.7");
        assert_eq!(out.ports[0].app_protocol, proto::AppProtocol::Http as i32);
        let by: BTreeMap<_, _> = out
            .candidates
            .iter()
            .map(|c| (c.cluster.as_str(), c))
            .collect();
        assert_eq!(by["east"].priority, 0);
        assert_eq!(by["west"].priority, 1, "same region");
        assert_eq!(by["north"].priority, 2);
        assert!(by["east"].healthy);
        assert!(!by["west"].healthy, "our gateway reports west down");
        assert!(by["north"].drained);
    }

    #[test]
    fn inbound_is_the_local_exports_with_endpoints() {
        let key = ServiceKey::new("demo", "echo").unwrap();
        let local = LocalExports {
            exports: BTreeMap::from([(
                key,
                LocalExport {
                    record: record(1),
                    endpoints: vec![Endpoint {
                        address: "10.1.0.5".parse().unwrap(),
                        port: Some(8080),
                        ready: true,
                        hostname: None,
                    }],
                    origin: "f".into(),
                },
            )]),
            invalid: vec![],
            loaded: true,
        };
        let cfg = build(&snapshot(), &local, &c("east"), 1);
        assert_eq!(cfg.inbound.len(), 1);
        assert_eq!(cfg.inbound[0].endpoints[0].address, "10.1.0.5:8080");
        assert!(!cfg.inbound[0].drained);
        let drained = build(&snapshot(), &local, &c("north"), 1);
        assert!(
            drained.inbound[0].drained,
            "a drill drains north's inbound side"
        );
    }
}
