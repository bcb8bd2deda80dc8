//! The address plan of a lab: every cluster's addresses and ports, its demo services and
//! their export files, and etcd's members.

use std::collections::BTreeSet;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};

use anyhow::Context as _;

use super::state::{
    CertPaths, ClusterInfo, DemoKind, DemoService, EtcdInfo, EtcdMember, EtcdTlsInfo,
    FederatorInfo, GatewayInfo, Mode, Replica, StatefulDemo,
};

use super::spec::{LabSpec, DEMO_NAMESPACE};

/// Ports inside every cluster.
pub(super) const GATEWAY_EGRESS_PORT: u16 = 15001;
pub(super) const GATEWAY_PEER_PORT: u16 = 15443;
pub(super) const GATEWAY_ADMIN_PORT: u16 = 15000;
/// Not 9090 / 9091 (the federator's defaults): the gateway's ClusterSetIP listeners take every
/// imported service port on the wildcard address, and the demo gRPC service uses 9090.
pub(super) const FEDERATOR_ADMIN_PORT: u16 = 19090;
pub(super) const FEDERATOR_CONFIG_PORT: u16 = 15010;
pub(super) const ETCD_CLIENT_PORT: u16 = 2379;
pub(super) const ETCD_PEER_PORT: u16 = 2380;

/// The demo services: (name, kind, service port, backend port, last octet of the service IP).
pub(super) const DEMO_SERVICES: [(&str, DemoKind, u16, u16, u8); 3] = [
    ("echo", DemoKind::HttpEcho, 80, 8080, 10),
    ("grpc", DemoKind::Grpc, 9090, 8090, 11),
    ("tcp-echo", DemoKind::TcpEcho, 7000, 8070, 12),
];

/// The stateful demo: its name, service port (the gateways' listener on each replica's address
/// in an importing cluster), the replicas' port and the last octets of their addresses.
pub(super) const STATEFUL_NAME: &str = "store";
pub(super) const STATEFUL_PORT: u16 = 80;
pub(super) const STATEFUL_BACKEND_PORT: u16 = 8080;
pub(super) const STATEFUL_REPLICA_OCTETS: [u8; 3] = [20, 21, 22];

// === address plan ===

/// The addresses of one cluster, before anything runs.
pub(super) struct Plan {
    pub(super) name: String,
    pub(super) index: usize,
    pub(super) netns: Option<String>,
    pub(super) region: String,
    pub(super) wan_ip: IpAddr,
    /// The cluster's service network (netns mode: /32s on loopback).
    pub(super) svc_net: Ipv4Addr,
    pub(super) gateway: GatewayInfo,
    pub(super) federators: Vec<FederatorInfo>,
    pub(super) exports: bool,
    /// Whether it runs the stateful demo.
    pub(super) stateful: bool,
}

pub(super) fn v4(a: u8, b: u8, c: u8, d: u8) -> IpAddr {
    IpAddr::V4(Ipv4Addr::new(a, b, c, d))
}

impl Plan {
    pub(super) fn new(spec: &LabSpec, index: usize, name: &str) -> anyhow::Result<Plan> {
        let i = u8::try_from(index).context("too many clusters")?;
        let dir = cluster_dir(&spec.state_dir, name);
        let netns = spec.netns_of(name);
        let (wan_ip, svc_net, node_ip) = match spec.mode {
            Mode::Netns => (
                v4(10, 100, 0, 10 + i),
                Ipv4Addr::new(10, 96, i, 0),
                v4(10, 96, i, 1),
            ),
            // 127.0.(10+i).0/24 per cluster; non-root may bind any 127/8 address.
            Mode::Loopback => {
                let net = Ipv4Addr::new(127, 0, 10 + i, 0);
                (v4(127, 0, 10 + i, 1), net, v4(127, 0, 10 + i, 1))
            }
        };
        let o = svc_net.octets();
        let host = |d: u8| v4(o[0], o[1], o[2], d);
        let dns_port = match spec.mode {
            Mode::Netns => 53,
            Mode::Loopback => 10053,
        };
        let gateway = GatewayInfo {
            egress: SocketAddr::new(node_ip, GATEWAY_EGRESS_PORT),
            ingress: SocketAddr::new(wan_ip, GATEWAY_PEER_PORT),
            admin: SocketAddr::new(node_ip, GATEWAY_ADMIN_PORT),
            state_dir: dir.join("gateway"),
            process: format!("{name}/gateway"),
        };
        let federators = (0..spec.federator_replicas)
            .map(|k| {
                let k = k as u8;
                FederatorInfo {
                    node: format!("{name}-{k}"),
                    admin: SocketAddr::new(host(2 + k), FEDERATOR_ADMIN_PORT),
                    config: SocketAddr::new(host(2 + k), FEDERATOR_CONFIG_PORT),
                    dns: SocketAddr::new(host(53 + k), dns_port),
                    process: format!("{name}/federator-{k}"),
                }
            })
            .collect();
        Ok(Plan {
            name: name.to_string(),
            index,
            netns,
            region: spec
                .regions
                .get(name)
                .cloned()
                .unwrap_or_else(|| "eu".to_string()),
            wan_ip,
            svc_net,
            gateway,
            federators,
            exports: spec.exporting.iter().any(|e| e == name),
            stateful: spec.stateful.as_deref() == Some(name),
        })
    }

    pub(super) fn svc_ip(&self, d: u8) -> IpAddr {
        let o = self.svc_net.octets();
        v4(o[0], o[1], o[2], d)
    }

    pub(super) fn demo(&self, spec: &LabSpec) -> Vec<DemoService> {
        if !self.exports {
            return Vec::new();
        }
        let dir = cluster_dir(&spec.state_dir, &self.name);
        DEMO_SERVICES
            .iter()
            .map(|&(name, kind, port, backend_port, octet)| {
                let service_ip = self.svc_ip(octet);
                // Without namespaces there is no DNAT: the backend listens on the service port.
                let (port, backend) = match spec.mode {
                    Mode::Netns => (port, SocketAddr::new(service_ip, backend_port)),
                    Mode::Loopback => (backend_port, SocketAddr::new(service_ip, backend_port)),
                };
                DemoService {
                    namespace: DEMO_NAMESPACE.to_string(),
                    name: name.to_string(),
                    kind,
                    port,
                    service_ip,
                    backend,
                    fail_file: dir.join(format!("{name}.fail")),
                    export_file: dir.join("exports").join(format!("{name}.yaml")),
                    process: format!("{}/demo-{name}", self.name),
                }
            })
            .collect()
    }

    pub(super) fn stateful(&self, spec: &LabSpec) -> Option<StatefulDemo> {
        if !self.stateful {
            return None;
        }
        let dir = cluster_dir(&spec.state_dir, &self.name);
        // Without namespaces the replicas are reached straight (no gateway listener on their
        // addresses): they listen on the service port.
        let port = match spec.mode {
            Mode::Netns => STATEFUL_PORT,
            Mode::Loopback => STATEFUL_BACKEND_PORT,
        };
        let replicas = STATEFUL_REPLICA_OCTETS
            .iter()
            .enumerate()
            .map(|(k, &octet)| {
                let hostname = format!("{STATEFUL_NAME}-{k}");
                Replica {
                    address: SocketAddr::new(self.svc_ip(octet), STATEFUL_BACKEND_PORT),
                    process: format!("{}/demo-{hostname}", self.name),
                    hostname,
                }
            })
            .collect();
        Some(StatefulDemo {
            namespace: DEMO_NAMESPACE.to_string(),
            name: STATEFUL_NAME.to_string(),
            port,
            replicas,
            export_file: dir.join("exports").join(format!("{STATEFUL_NAME}.yaml")),
        })
    }
}

/// What lab.json says of the cluster of `p`.
pub(super) fn cluster_info(p: &Plan, spec: &LabSpec, pki_dir: &Path) -> ClusterInfo {
    ClusterInfo {
        name: p.name.clone(),
        netns: p.netns.clone(),
        region: p.region.clone(),
        dns: p.federators[0].dns,
        dns_servers: p.federators.iter().map(|f| f.dns).collect(),
        wan_ip: p.wan_ip,
        wan_link: p.netns.as_ref().map(|_| "wan0".to_string()),
        gateway: p.gateway.clone(),
        federator_admin: p.federators[0].admin,
        federators: p.federators.clone(),
        certs: CertPaths {
            // Each cluster trusts its own root; the peers' come through etcd.
            trust_bundle: pki_dir.join(&p.name).join("bundle.pem"),
            gateway_cert: pki_dir.join(&p.name).join("gateway.pem"),
            gateway_key: pki_dir.join(&p.name).join("gateway.key"),
            federator_cert: pki_dir.join(&p.name).join("federator.pem"),
            federator_key: pki_dir.join(&p.name).join("federator.key"),
            issuer_cert: pki_dir.join(&p.name).join("ca.pem"),
            issuer_key: pki_dir.join(&p.name).join("ca.key"),
        },
        exports_dir: cluster_dir(&spec.state_dir, &p.name).join("exports"),
        demo: p.demo(spec),
        stateful: p.stateful(spec),
    }
}

pub(super) fn cluster_dir(state_dir: &Path, cluster: &str) -> PathBuf {
    state_dir.join("clusters").join(cluster)
}

/// The export file of a demo service (docs/export-files.md).
pub fn export_yaml(d: &DemoService) -> String {
    let (port_name, app) = match d.kind {
        DemoKind::HttpEcho => ("http", "http"),
        DemoKind::Grpc => ("grpc", "grpc"),
        DemoKind::TcpEcho => ("tcp", "tcp"),
    };
    // The echo service shows a traffic policy travelling with its export (docs/lab.md).
    let policy = match d.kind {
        DemoKind::HttpEcho => "  trafficPolicy:\n    timeout: 10s\n",
        _ => "",
    };
    format!(
        "# written by causeway-lab\n\
         apiVersion: causeway.io/v1\n\
         kind: ServiceExport\n\
         metadata:\n  name: {name}\n  namespace: {ns}\n\
         spec:\n  type: ClusterSetIP\n  serviceIP: {ip}\n  backendTLS: plaintext\n{policy}\
         \x20 ports:\n    - name: {port_name}\n      protocol: TCP\n      port: {port}\n      appProtocol: {app}\n\
         \x20 endpoints:\n    - address: {baddr}\n      port: {bport}\n",
        name = d.name,
        ns = d.namespace,
        ip = d.service_ip,
        port = d.port,
        baddr = d.backend.ip(),
        bport = d.backend.port(),
    )
}

/// Writes `path` through a dot-file and a rename, so that the federator (which skips dot-files)
/// never reads half of it.
pub(super) fn write_atomically(path: &Path, text: &str) -> anyhow::Result<()> {
    let name = path
        .file_name()
        .with_context(|| format!("{} has no file name", path.display()))?;
    let tmp = path.with_file_name(format!(".{}.tmp", name.to_string_lossy()));
    std::fs::write(&tmp, text).with_context(|| format!("writing {}", tmp.display()))?;
    std::fs::rename(&tmp, path).with_context(|| format!("writing {}", path.display()))
}

/// The export file of the stateful demo: headless, each replica an endpoint with its hostname;
/// those in `not_ready` are listed with `ready: false` (what an EndpointSlice says of a pod that
/// fails its readiness probe).
pub fn stateful_export_yaml(s: &StatefulDemo, not_ready: &BTreeSet<String>) -> String {
    let mut endpoints = String::new();
    for r in &s.replicas {
        endpoints.push_str(&format!(
            "    - address: {}\n      port: {}\n      hostname: {}\n      ready: {}\n",
            r.address.ip(),
            r.address.port(),
            r.hostname,
            !not_ready.contains(&r.hostname),
        ));
    }
    format!(
        "# written by causeway-lab\n\
         apiVersion: causeway.io/v1\n\
         kind: ServiceExport\n\
         metadata:\n  name: {name}\n  namespace: {ns}\n\
         spec:\n  type: Headless\n  backendTLS: plaintext\n\
         \x20 ports:\n    - name: http\n      protocol: TCP\n      port: {port}\n      appProtocol: http\n\
         \x20 endpoints:\n{endpoints}",
        name = s.name,
        ns = s.namespace,
        port = s.port,
    )
}

pub(super) fn etcd_info(spec: &LabSpec) -> EtcdInfo {
    let members: Vec<EtcdMember> = (0..spec.etcd_members)
        .map(|k| {
            let ip = match spec.mode {
                Mode::Netns => v4(10, 100, 0, 2 + k as u8),
                Mode::Loopback => v4(127, 0, 1, 2 + k as u8),
            };
            EtcdMember {
                name: format!("etcd-{k}"),
                client_url: format!("https://{ip}:{ETCD_CLIENT_PORT}"),
                peer_url: format!("https://{ip}:{ETCD_PEER_PORT}"),
                data_dir: spec.state_dir.join("etcd").join(format!("etcd-{k}")),
                process: format!("etcd-{k}"),
            }
        })
        .collect();
    let dir = spec.state_dir.join("pki").join("etcd");
    EtcdInfo {
        endpoints: members.iter().map(|m| m.client_url.clone()).collect(),
        members,
        tls: Some(EtcdTlsInfo {
            ca: dir.join("ca.pem"),
            operator_cert: dir.join(format!("{}.pem", causeway_api::keys::OPERATOR_ROLE)),
            operator_key: dir.join(format!("{}.key", causeway_api::keys::OPERATOR_ROLE)),
            dir,
        }),
    }
}
