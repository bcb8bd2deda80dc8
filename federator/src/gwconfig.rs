//! Computes each gateway's [`ConfigSnapshot`] from the mesh view (DESIGN.md "Config protocol"):
//! inbound = this cluster's exports and endpoints; outbound = imports with their candidate
//! clusters, gateway addresses, priorities, weights, health and drills.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use causeway_api::proto;
use causeway_api::snapshot::{ClusterState, ServiceView};
use causeway_api::{BackendTlsMode, ClusterId, MeshSnapshot, Protocol, ServiceKey, ServicePort};

use crate::policy::{ImportOverride, ImportOverrides};
use crate::ports::{EndpointPorts, GatewayPorts};
use crate::source::LocalExports;

/// The ready endpoints of other clusters of a headless import, for the gateway to send each to
/// exactly that endpoint: at the address this cluster gave it (the view's `endpoint_vips`) and, in
/// Kubernetes mode (`endpoint_ports`), on the gateway ports its derived Service targets.
fn pinned_endpoints(
    key: &ServiceKey,
    svc: &ServiceView,
    local: &ClusterId,
    endpoint_ports: Option<&EndpointPorts>,
) -> Vec<proto::PinnedEndpoint> {
    let mut out = Vec::new();
    for (cluster, export) in &svc.exports {
        if cluster == local {
            continue;
        }
        let vips = svc.endpoint_vips.get(cluster);
        let mut seen = std::collections::BTreeSet::new();
        for e in export.record.endpoints.iter().filter(|e| e.ready) {
            let name = e.dns_label();
            if !seen.insert(name.clone()) {
                continue;
            }
            let vip = vips.and_then(|m| m.get(&name)).copied();
            let gateway_ports: std::collections::HashMap<u32, u32> = endpoint_ports
                .map(|ports| {
                    svc.import
                        .ports
                        .iter()
                        .filter_map(|p| {
                            let k = (key.clone(), cluster.clone(), name.clone(), p.port);
                            ports.get(&k).map(|&gp| (u32::from(p.port), u32::from(gp)))
                        })
                        .collect()
                })
                .unwrap_or_default();
            if vip.is_none() && gateway_ports.is_empty() {
                continue;
            }
            out.push(proto::PinnedEndpoint {
                vip: vip.map(|ip| ip.to_string()).unwrap_or_default(),
                cluster: cluster.to_string(),
                name,
                gateway_ports,
            });
        }
    }
    out
}

/// Default traffic policy of every import (documented in docs/gateway.md).
pub(crate) fn default_policy() -> proto::TrafficPolicy {
    let d = causeway_api::policy::DEFAULTS;
    let ms = |t: std::time::Duration| u64::try_from(t.as_millis()).unwrap_or(u64::MAX);
    proto::TrafficPolicy {
        timeout_ms: ms(d.timeout),
        retry_attempts: Some(d.retry_attempts),
        retry_budget_percent: d.retry_budget_percent,
        max_pending: d.max_pending,
        max_concurrent: d.max_concurrent,
        outlier_consecutive_errors: d.outlier_consecutive_errors,
        outlier_base_ejection_ms: ms(d.outlier_base_ejection),
        rate_limit: None,
    }
}

/// The default policy with what the import's (oldest) exporter asks for, then what this
/// cluster's override sets. The exporter's rate limit is enforced by its own gateway (inbound),
/// not here; the override's egress rate limit is.
fn policy(
    asked: Option<&causeway_api::TrafficPolicy>,
    over: Option<&ImportOverride>,
) -> proto::TrafficPolicy {
    let mut p = default_policy();
    for a in asked.into_iter().chain(over.map(|o| &o.policy)) {
        if let Some(v) = a.timeout_ms {
            p.timeout_ms = v;
        }
        if let Some(v) = a.retry_attempts {
            p.retry_attempts = Some(v);
        }
        if let Some(v) = a.max_concurrent {
            p.max_concurrent = v;
        }
        if let Some(v) = a.max_pending {
            p.max_pending = v;
        }
        if let Some(v) = a.outlier_consecutive_errors {
            p.outlier_consecutive_errors = v;
        }
        if let Some(v) = a.outlier_base_ejection_ms {
            p.outlier_base_ejection_ms = v;
        }
    }
    if let Some(r) = over.and_then(|o| o.egress_rate_limit) {
        p.rate_limit = Some(proto::RateLimit {
            requests_per_second: r.requests_per_second,
            burst: r.burst,
        });
    }
    p
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
        gateway_port: 0,
    }
}

/// Priority of a candidate cluster as seen from `local` (lower first): 0 local; then the
/// clusters of the import's `failover` order, 1, 2, ... in that order; then the others by
/// locality, same region before other regions.
fn priority(
    shared: &Shared,
    local: &ClusterId,
    candidate: &ClusterId,
    failover: &[ClusterId],
) -> u32 {
    if candidate == local {
        return 0;
    }
    if let Some(i) = failover.iter().position(|c| c == candidate) {
        return 1 + i as u32;
    }
    let region = |c: &ClusterId| shared.cluster(c).and_then(|e| e.region.as_deref());
    let after = 1 + failover.len() as u32;
    match (region(local), region(candidate)) {
        (Some(a), Some(b)) if a == b => after,
        _ => after + 1,
    }
}

/// What a gateway is sent, with each import's outbound entry shared (`Arc`) between the configs
/// of consecutive snapshots while it is unchanged: at 510,000 exports, rebuilding and holding
/// two whole configs per change was most of a change's cost (docs/benchmarks.md).
#[derive(Debug, Clone, Default)]
pub(crate) struct GatewayConfig {
    pub version: u64,
    pub cluster: String,
    pub peers: Vec<proto::Peer>,
    pub inbound: Vec<proto::InboundService>,
    pub outbound: Vec<Arc<Outbound>>,
    pub certificate_issuer: String,
}

/// One import's outbound entry as held between snapshots: the message without its candidates,
/// and the candidates with the snapshot's shared cluster IDs. As `proto::Candidate`s, each held
/// its cluster's name as a `String` of its own: 510,000 small allocations at Cilium's scale,
/// about 40 bytes per candidate more than this.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Outbound {
    /// Its `candidates` are empty; [`Outbound::to_proto`] fills them in.
    service: proto::OutboundService,
    pub candidates: Vec<Candidate>,
}

/// A `proto::Candidate` naming its cluster by a shared [`ClusterId`].
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Candidate {
    pub cluster: ClusterId,
    pub priority: u32,
    pub weight: u32,
    pub ready_endpoints: u32,
    pub healthy: bool,
    pub drained: bool,
}

impl Outbound {
    /// The message on the wire.
    pub(crate) fn to_proto(&self) -> proto::OutboundService {
        let candidates = self
            .candidates
            .iter()
            .map(|c| proto::Candidate {
                cluster: c.cluster.to_string(),
                priority: c.priority,
                weight: c.weight,
                healthy: c.healthy,
                drained: c.drained,
                ready_endpoints: c.ready_endpoints,
            })
            .collect();
        proto::OutboundService {
            candidates,
            ..self.service.clone()
        }
    }
}

impl GatewayConfig {
    /// The message on the wire.
    pub(crate) fn to_proto(&self) -> proto::ConfigSnapshot {
        proto::ConfigSnapshot {
            version: self.version,
            cluster: self.cluster.clone(),
            peers: self.peers.clone(),
            inbound: self.inbound.clone(),
            outbound: self.outbound.iter().map(|o| o.to_proto()).collect(),
            certificate_issuer: self.certificate_issuer.clone(),
        }
    }

    /// Whether `other` says the same to a gateway (the version aside).
    pub(crate) fn same_content(&self, other: &GatewayConfig) -> bool {
        self.cluster == other.cluster
            && self.peers == other.peers
            && self.inbound == other.inbound
            && self.certificate_issuer == other.certificate_issuer
            && self.outbound.len() == other.outbound.len()
            && self
                .outbound
                .iter()
                .zip(&other.outbound)
                .all(|(a, b)| Arc::ptr_eq(a, b) || a == b)
    }
}

/// Everything an import's outbound entry depends on besides its own view, its override and the
/// gateway ports: per cluster whether it is known, its region and whether our gateway sees it
/// up; the drills. When it is unchanged, an import whose view is the same `Arc` keeps its entry.
#[derive(Debug, PartialEq)]
struct Shared {
    /// By cluster ID, as the snapshot's clusters are.
    clusters: Vec<SharedCluster>,
    drills: BTreeMap<String, causeway_api::DrillRecord>,
    gateway_ports: Option<(GatewayPorts, EndpointPorts)>,
}

/// What every import's entry reads of one cluster.
#[derive(Debug, PartialEq)]
struct SharedCluster {
    id: ClusterId,
    /// Up or stale.
    known: bool,
    region: Option<String>,
    /// What our own gateway last reported of that cluster's gateway; unknown = up.
    peer_up: bool,
}

impl Shared {
    fn cluster(&self, c: &ClusterId) -> Option<&SharedCluster> {
        let i = self.clusters.binary_search_by(|e| e.id.cmp(c)).ok()?;
        Some(&self.clusters[i])
    }

    fn of(
        snap: &MeshSnapshot,
        local: &ClusterId,
        gateway_ports: Option<(GatewayPorts, EndpointPorts)>,
    ) -> Self {
        Shared {
            clusters: snap
                .clusters
                .iter()
                .map(|(c, v)| SharedCluster {
                    id: c.clone(),
                    known: matches!(v.state, ClusterState::Up | ClusterState::Stale),
                    region: v.record.locality.get("region").cloned(),
                    peer_up: snap.health_of(local, c).is_none_or(|h| h.up),
                })
                .collect(),
            drills: snap.drills.clone(),
            gateway_ports,
        }
    }
}

/// Builds each snapshot's [`GatewayConfig`] for `local`'s gateways, rebuilding only the outbound
/// entries of imports whose view changed (all of them when [`Shared`] did).
#[derive(Debug, Default)]
pub(crate) struct Builder {
    overrides: ImportOverrides,
    shared: Option<Shared>,
    outbound: HashMap<ServiceKey, (Arc<ServiceView>, Arc<Outbound>)>,
}

impl Builder {
    pub(crate) fn new(overrides: ImportOverrides) -> Self {
        Builder {
            overrides,
            ..Default::default()
        }
    }

    /// The config of `snap`, stamped `version`. With `gateway_ports` (Kubernetes mode), outbound
    /// ports and pinned headless endpoints carry their gateway listener ports.
    pub(crate) fn build(
        &mut self,
        snap: &MeshSnapshot,
        local_exports: &LocalExports,
        local: &ClusterId,
        version: u64,
        gateway_ports: Option<(GatewayPorts, EndpointPorts)>,
    ) -> GatewayConfig {
        let shared = Shared::of(snap, local, gateway_ports);
        let keep = self.shared.as_ref() == Some(&shared);
        let mut old = std::mem::take(&mut self.outbound);
        if !keep {
            old.clear();
        }
        let ports = shared.gateway_ports.as_ref();
        let mut outbound = Vec::with_capacity(snap.services.len());
        for (key, svc) in &snap.services {
            let entry = match old.remove(key) {
                Some((view, entry)) if Arc::ptr_eq(&view, svc) => entry,
                _ => Arc::new(outbound_service(
                    snap,
                    &shared,
                    local,
                    key,
                    svc,
                    ports,
                    self.overrides.get(key),
                )),
            };
            outbound.push(entry.clone());
            self.outbound.insert(key.clone(), (svc.clone(), entry));
        }
        self.shared = Some(shared);
        GatewayConfig {
            version,
            cluster: local.to_string(),
            peers: peers(snap, local),
            inbound: inbound(snap, local_exports, local),
            outbound,
            certificate_issuer: String::new(),
        }
    }
}

/// Builds the config for `local`'s gateways from scratch (what [`Builder`] builds in steps).
#[cfg(test)]
pub(crate) fn build(
    snap: &MeshSnapshot,
    local_exports: &LocalExports,
    local: &ClusterId,
    version: u64,
    gateway_ports: Option<&(GatewayPorts, EndpointPorts)>,
    overrides: &ImportOverrides,
) -> proto::ConfigSnapshot {
    Builder::new(overrides.clone())
        .build(snap, local_exports, local, version, gateway_ports.cloned())
        .to_proto()
}

fn peers(snap: &MeshSnapshot, local: &ClusterId) -> Vec<proto::Peer> {
    snap.clusters
        .iter()
        .filter(|(c, _)| *c != local)
        .map(|(c, v)| proto::Peer {
            cluster: c.to_string(),
            gateway_addresses: v.record.gateway_addresses.clone(),
            trust_domain: v.record.trust_domain.clone(),
            trust_bundle_pem: v.record.trust_bundle_pem.clone(),
            locality: v.record.locality.clone().into_iter().collect(),
        })
        .collect()
}

fn inbound(
    snap: &MeshSnapshot,
    local_exports: &LocalExports,
    local: &ClusterId,
) -> Vec<proto::InboundService> {
    local_exports
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
            rate_limit: e
                .record
                .traffic_policy
                .rate_limit
                .map(|r| proto::RateLimit {
                    requests_per_second: r.requests_per_second,
                    burst: r.burst,
                }),
        })
        .collect()
}

/// One import's outbound entry. What it reads of `snap` beyond `svc` (the drills) is in
/// [`Shared`] too: keep the two in step.
fn outbound_service(
    snap: &MeshSnapshot,
    shared: &Shared,
    local: &ClusterId,
    key: &ServiceKey,
    svc: &ServiceView,
    gateway_ports: Option<&(GatewayPorts, EndpointPorts)>,
    over: Option<&ImportOverride>,
) -> Outbound {
    let asked = svc.traffic_policy();
    let failover = match over {
        Some(o) if !o.policy.failover.is_empty() => &o.policy.failover[..],
        _ => asked.map_or(&[][..], |p| &p.failover[..]),
    };
    let candidates = svc
        .import
        .clusters
        .iter()
        .filter_map(|c| {
            let export = svc.exports.get(c)?;
            let reachable = c == local || shared.cluster(c).is_some_and(|e| e.known && e.peer_up);
            Some(Candidate {
                cluster: c.clone(),
                priority: priority(shared, local, c, failover),
                weight: export.record.weight.unwrap_or(100),
                healthy: reachable && export.record.ready_endpoints > 0,
                drained: snap.export_drained(key, c, export),
                ready_endpoints: export.record.ready_endpoints,
            })
        })
        .collect();
    let service = proto::OutboundService {
        namespace: key.namespace.clone(),
        name: key.name.clone(),
        vip: svc.vip.map(|ip| ip.to_string()).unwrap_or_default(),
        ports: svc
            .import
            .ports
            .iter()
            .map(|p| proto::Port {
                gateway_port: gateway_ports
                    .and_then(|(g, _)| g.get(&(key.clone(), p.port)))
                    .map_or(0, |&gp| u32::from(gp)),
                ..port(p)
            })
            .collect(),
        candidates: Vec::new(),
        policy: Some(policy(asked, over)),
        header_routes: over.map(|o| o.header_routes.clone()).unwrap_or_default(),
        endpoints: pinned_endpoints(key, svc, local, gateway_ports.map(|(_, e)| e)),
    };
    Outbound {
        service,
        candidates,
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use crate::ports::{gateway_port_plan, gateway_ports};

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
            ports: vec![ServicePort {
                name: "http".into(),
                protocol: Protocol::Tcp,
                port: 80,
                app_protocol: Some("http".into()),
            }]
            .into(),
            created_unix_ms: 1,
            ready_endpoints: ready,
            ..ExportRecord::default()
        }
    }

    fn cluster(region: &str) -> ClusterView {
        ClusterView {
            record: ClusterRecord {
                schema: causeway_api::SCHEMA_VERSION,
                gateway_addresses: vec![format!("{region}-gw:15443")],
                trust_domain: "td".into(),
                trust_bundle_pem: String::new(),
                locality: BTreeMap::from([("region".to_string(), region.to_string())]),
                federator_version: String::new(),
                certificate_not_after: None,
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
                    record: (record(ready)).into(),
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
                        ports: record(1).ports.to_vec(),
                        session_affinity: SessionAffinity::None,
                        clusters: vec![c("east"), c("north"), c("west")],
                        conflict: false,
                        exported: Default::default(),
                    },
                    vip: Some("10.255.0.7".parse().unwrap()),
                    exports,
                    endpoint_vips: Default::default(),
                }),
            )]),
            drills: BTreeMap::from([(
                "d1".to_string(),
                DrillRecord {
                    schema: causeway_api::SCHEMA_VERSION,
                    service: key,
                    cluster: c("north"),
                    start_unix_ms: 0,
                    end_unix_ms: 1,
                    pending: false,
                    observers: Vec::new(),
                    probe: None,
                    origin: String::new(),
                },
            )]),
            health: BTreeMap::from([(
                c("east"),
                BTreeMap::from([(
                    c("west"),
                    HealthRecord {
                        schema: causeway_api::SCHEMA_VERSION,
                        up: false,
                        suspect: false,
                        rtt_micros: 0,
                        observed_unix_ms: 0,
                    },
                )]),
            )]),
            headless_via_gateway: false,
            invalid_exports: vec![],
            drill_reports: BTreeMap::new(),
        }
    }

    #[test]
    fn ready_remote_endpoints_with_an_address_become_pinned_endpoints() {
        let mut snap = snapshot();
        let key = ServiceKey::new("demo", "echo").unwrap();
        let view = std::sync::Arc::make_mut(snap.services.get_mut(&key).unwrap());
        view.import.service_type = ServiceType::Headless;
        let ep = |ip: &str, host: &str, ready: bool| Endpoint {
            address: ip.parse().unwrap(),
            port: None,
            ready,
            hostname: Some(host.into()),
        };
        view.exports
            .get_mut(&c("west"))
            .unwrap()
            .record_mut()
            .endpoints = vec![
            ep("10.1.0.10", "db-0", true),
            ep("10.1.0.11", "db-1", false),
        ];
        view.exports
            .get_mut(&c("east"))
            .unwrap()
            .record_mut()
            .endpoints = vec![ep("10.0.0.10", "db-5", true)];
        view.endpoint_vips = BTreeMap::from([
            (
                c("west"),
                BTreeMap::from([
                    ("db-0".to_string(), "10.255.1.1".parse().unwrap()),
                    ("db-1".to_string(), "10.255.1.2".parse().unwrap()),
                ]),
            ),
            // Our own endpoints never go through our gateway's pinned addresses.
            (
                c("east"),
                BTreeMap::from([("db-5".to_string(), "10.255.1.3".parse().unwrap())]),
            ),
        ]);
        let cfg = build(
            &snap,
            &LocalExports::default(),
            &c("east"),
            1,
            None,
            &Default::default(),
        );
        let out = cfg.outbound.iter().find(|o| o.name == "echo").unwrap();
        assert_eq!(
            out.endpoints,
            [proto::PinnedEndpoint {
                vip: "10.255.1.1".into(),
                cluster: "west".into(),
                name: "db-0".into(),
                gateway_ports: Default::default(),
            }],
            "only the ready endpoint of another cluster"
        );

        // Kubernetes mode: every endpoint of another cluster (ready or not, so that readiness
        // moves no port) gets a gateway port per TCP port; the pinned ones carry theirs.
        snap.headless_via_gateway = true;
        let plan = gateway_port_plan(&snap, 20000, 100);
        assert!(plan.0.is_empty(), "a headless import has no service ports");
        let port = snap.services[&key].import.ports[0].port;
        let tcp = snap.services[&key]
            .import
            .ports
            .iter()
            .filter(|p| p.protocol == Protocol::Tcp)
            .count();
        assert_eq!(
            plan.1.len(),
            2 * tcp,
            "db-0 and db-1 of west, not east's own"
        );
        let gp = plan.1[&(key.clone(), c("west"), "db-0".to_string(), port)];
        assert!((20000..20100).contains(&gp));
        let again = gateway_port_plan(&snap, 20000, 100);
        assert_eq!(plan, again, "the same snapshot gives the same ports");
        let cfg = build(
            &snap,
            &LocalExports::default(),
            &c("east"),
            2,
            Some(&plan),
            &Default::default(),
        );
        let out = cfg.outbound.iter().find(|o| o.name == "echo").unwrap();
        assert_eq!(out.endpoints.len(), 1);
        assert_eq!(out.endpoints[0].name, "db-0");
        assert_eq!(
            out.endpoints[0].gateway_ports[&u32::from(port)],
            u32::from(gp)
        );
        // Without a VIP range the endpoint has gateway ports only.
        std::sync::Arc::make_mut(snap.services.get_mut(&key).unwrap())
            .endpoint_vips
            .clear();
        let cfg = build(
            &snap,
            &LocalExports::default(),
            &c("east"),
            3,
            Some(&plan),
            &Default::default(),
        );
        let out = cfg.outbound.iter().find(|o| o.name == "echo").unwrap();
        assert_eq!(out.endpoints[0].vip, "");
        assert_eq!(out.endpoints[0].gateway_ports.len(), tcp);
        // Not through the gateway (flat pod network): no ports, no pinned endpoints.
        snap.headless_via_gateway = false;
        assert!(gateway_port_plan(&snap, 20000, 100).1.is_empty());
    }

    #[test]
    fn outbound_candidates_carry_priority_health_and_drills() {
        let cfg = build(
            &snapshot(),
            &LocalExports::default(),
            &c("east"),
            7,
            None,
            &ImportOverrides::new(),
        );
        assert_eq!(cfg.version, 7);
        assert_eq!(cfg.peers.len(), 2, "every cluster but the local one");
        let out = &cfg.outbound[0];
        assert_eq!(out.vip, "10.255.0.7");
        assert_eq!(out.ports[0].app_protocol, proto::AppProtocol::Http as i32);
        assert_eq!(out.ports[0].gateway_port, 0, "none outside Kubernetes mode");
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

    /// A snapshot of `n` ClusterSetIP imports `demo/s<i>`, each with TCP ports 80 and 5432 and
    /// a UDP port 53, and one headless import.
    fn many(n: usize) -> MeshSnapshot {
        let mut snap = snapshot();
        let template = snap.services.values().next().unwrap().clone();
        snap.services.clear();
        let tcp = |port: u16| ServicePort {
            name: format!("p{port}"),
            protocol: Protocol::Tcp,
            port,
            app_protocol: None,
        };
        for i in 0..=n {
            let key = ServiceKey::new("demo", format!("s{i}")).unwrap();
            let mut view = (*template).clone();
            view.import.key = key.clone();
            view.import.ports = vec![tcp(80), tcp(5432)];
            view.import.ports.push(ServicePort {
                protocol: Protocol::Udp,
                ..tcp(53)
            });
            if i == n {
                view.import.service_type = ServiceType::Headless;
            }
            snap.services.insert(key, std::sync::Arc::new(view));
        }
        snap
    }

    /// A step build equals a build from scratch, keeps the entries of imports whose view is
    /// unchanged, and rebuilds every entry when something they all read changes.
    #[test]
    fn a_step_build_rebuilds_only_what_changed_and_equals_a_fresh_build() {
        let local = c("east");
        let exports = LocalExports::default();
        let fresh =
            |snap: &MeshSnapshot| build(snap, &exports, &local, 1, None, &ImportOverrides::new());
        let mut builder = Builder::new(ImportOverrides::new());
        let mut snap = many(4);
        let first = builder.build(&snap, &exports, &local, 1, None);
        assert_eq!(first.to_proto(), fresh(&snap));

        // One import's view changes: only its entry is new, and it says what changed.
        let key = ServiceKey::new("demo", "s2").unwrap();
        let view = snap.services.get_mut(&key).unwrap();
        Arc::make_mut(view)
            .exports
            .get_mut(&c("west"))
            .unwrap()
            .record_mut()
            .ready_endpoints = 0;
        let second = builder.build(&snap, &exports, &local, 1, None);
        assert_eq!(second.to_proto(), fresh(&snap));
        assert!(!second.same_content(&first), "a changed import is a change");
        let kept: Vec<bool> = first
            .outbound
            .iter()
            .zip(&second.outbound)
            .map(|(a, b)| Arc::ptr_eq(a, b))
            .collect();
        assert_eq!(kept, [true, true, false, true, true]);
        let west = |cfg: &GatewayConfig| {
            cfg.outbound[2]
                .candidates
                .iter()
                .find(|k| k.cluster.as_str() == "west")
                .unwrap()
                .ready_endpoints
        };
        assert_eq!((west(&first), west(&second)), (1, 0));

        // Nothing changes: every entry is kept and the content is the same.
        let third = builder.build(&snap, &exports, &local, 1, None);
        assert!(third
            .outbound
            .iter()
            .zip(&second.outbound)
            .all(|(a, b)| Arc::ptr_eq(a, b)));
        assert!(third.same_content(&second));

        // What every import reads: our gateway's view of a peer, a drill, a region.
        let changes: [fn(&mut MeshSnapshot); 3] = [
            |s| s.health.clear(),
            |s| {
                let d = s.drills.get_mut("d1").unwrap();
                d.service = ServiceKey::new("demo", "s0").unwrap();
                d.cluster = c("west");
            },
            |s| {
                let north = s.clusters.get_mut(&c("north")).unwrap();
                north.record.locality.insert("region".into(), "eu".into());
            },
        ];
        for (i, change) in changes.into_iter().enumerate() {
            let before = builder.build(&snap, &exports, &local, 1, None);
            change(&mut snap);
            let after = builder.build(&snap, &exports, &local, 1, None);
            assert_eq!(after.to_proto(), fresh(&snap));
            assert!(!after.same_content(&before), "change {i}");
            assert!(before
                .outbound
                .iter()
                .zip(&after.outbound)
                .all(|(a, b)| !Arc::ptr_eq(a, b)));
        }

        // An import that goes away is gone from the next config.
        snap.services.remove(&key);
        let last = builder.build(&snap, &exports, &local, 1, None);
        assert_eq!(last.to_proto(), fresh(&snap));
        assert_eq!(last.outbound.len(), 4);
    }

    #[test]
    fn gateway_ports_are_unique_stable_and_in_range() {
        let snap = many(300);
        let ports = gateway_ports(&snap, 20000, 1000);
        assert_eq!(ports.len(), 600, "TCP ports of ClusterSetIP imports only");
        let distinct: std::collections::BTreeSet<u16> = ports.values().copied().collect();
        assert_eq!(
            distinct.len(),
            600,
            "no two import ports share a gateway port"
        );
        assert!(distinct.iter().all(|p| (20000..21000).contains(p)));
        assert_eq!(
            gateway_ports(&snap, 20000, 1000),
            ports,
            "same snapshot, same ports"
        );

        // Another import leaves most of the others where they were.
        let mut more = snap.clone();
        let extra = many(301);
        let (k, v) = extra
            .services
            .iter()
            .nth(300)
            .map(|(k, v)| (k.clone(), v.clone()))
            .unwrap();
        more.services.insert(k, v);
        let after = gateway_ports(&more, 20000, 1000);
        let moved = ports
            .iter()
            .filter(|(k, p)| after.get(*k) != Some(*p))
            .count();
        assert!(moved <= 4, "{moved} import ports moved");

        // Too few ports: the rest get none.
        assert_eq!(gateway_ports(&snap, 20000, 10).len(), 10);
        assert!(gateway_ports(&snap, 20000, 0).is_empty());

        let cfg = build(
            &snap,
            &LocalExports::default(),
            &c("east"),
            1,
            Some(&(ports.clone(), Default::default())),
            &ImportOverrides::new(),
        );
        let s0 = cfg.outbound.iter().find(|o| o.name == "s0").unwrap();
        let key = ServiceKey::new("demo", "s0").unwrap();
        assert_eq!(
            s0.ports[0].gateway_port,
            u32::from(ports[&(key.clone(), 80)])
        );
        assert_eq!(s0.ports[1].gateway_port, u32::from(ports[&(key, 5432)]));
        assert_eq!(s0.ports[2].gateway_port, 0, "UDP");
    }

    #[test]
    fn the_oldest_exporters_policy_applies_and_rate_limits_stay_inbound() {
        let mut snap = snapshot();
        let key = ServiceKey::new("demo", "echo").unwrap();
        let view = std::sync::Arc::make_mut(snap.services.get_mut(&key).unwrap());
        for (cluster, created, timeout) in
            [("east", 5, 1000), ("west", 2, 2000), ("north", 3, 3000)]
        {
            let r = view.exports.get_mut(&c(cluster)).unwrap().record_mut();
            r.created_unix_ms = created;
            r.traffic_policy.timeout_ms = Some(timeout);
            r.traffic_policy.retry_attempts = Some(0);
        }
        let cfg = build(
            &snap,
            &LocalExports::default(),
            &c("east"),
            1,
            None,
            &ImportOverrides::new(),
        );
        let p = cfg.outbound[0].policy.as_ref().unwrap();
        assert_eq!(p.timeout_ms, 2000, "west's export is the oldest");
        assert_eq!(p.retry_attempts, Some(0));
        assert_eq!(
            p.max_pending,
            default_policy().max_pending,
            "the rest: defaults"
        );
        assert_eq!(p.rate_limit, None);

        let mut local_record = record(1);
        local_record.traffic_policy.rate_limit = Some(causeway_api::RateLimit {
            requests_per_second: 7,
            burst: 9,
        });
        let local = LocalExports {
            exports: BTreeMap::from([(
                key,
                LocalExport {
                    record: local_record,
                    endpoints: vec![],
                    origin: "f".into(),
                },
            )]),
            invalid: vec![],
            loaded: true,
        };
        let cfg = build(&snap, &local, &c("east"), 1, None, &ImportOverrides::new());
        let rl = cfg.inbound[0].rate_limit.as_ref().unwrap();
        assert_eq!((rl.requests_per_second, rl.burst), (7, 9));
    }

    #[test]
    fn an_exports_failover_order_comes_before_locality() {
        let mut snap = snapshot();
        let key = ServiceKey::new("demo", "echo").unwrap();
        let view = std::sync::Arc::make_mut(snap.services.get_mut(&key).unwrap());
        // east is local; west shares its region, north does not. The oldest export (north's)
        // asks for north first.
        for (cluster, created) in [("east", 5), ("west", 4), ("north", 1)] {
            let r = view.exports.get_mut(&c(cluster)).unwrap().record_mut();
            r.created_unix_ms = created;
            r.traffic_policy.failover = vec![c("north")];
        }
        let cfg = build(
            &snap,
            &LocalExports::default(),
            &c("east"),
            1,
            None,
            &ImportOverrides::new(),
        );
        let by: BTreeMap<_, _> = cfg.outbound[0]
            .candidates
            .iter()
            .map(|c| (c.cluster.as_str(), c.priority))
            .collect();
        assert_eq!(by["east"], 0, "local first, always");
        assert_eq!(by["north"], 1, "then the failover order");
        assert_eq!(by["west"], 2, "then locality");
    }

    #[test]
    fn an_import_override_wins_over_the_exporter_and_brings_header_routes() {
        let mut snap = snapshot();
        let key = ServiceKey::new("demo", "echo").unwrap();
        let view = std::sync::Arc::make_mut(snap.services.get_mut(&key).unwrap());
        for e in view.exports.values_mut() {
            e.record_mut().traffic_policy.timeout_ms = Some(9000);
            e.record_mut().traffic_policy.max_pending = Some(3);
            e.record_mut().traffic_policy.failover = vec![c("west")];
        }
        let over = ImportOverride {
            policy: causeway_api::TrafficPolicy {
                timeout_ms: Some(250),
                failover: vec![c("north")],
                ..Default::default()
            },
            egress_rate_limit: Some(causeway_api::RateLimit {
                requests_per_second: 5,
                burst: 5,
            }),
            header_routes: vec![proto::HeaderRoute {
                header: "x-canary".into(),
                value: "1".into(),
                cluster: "north".into(),
                weights: Default::default(),
            }],
        };
        let overrides = ImportOverrides::from([(key, over)]);
        let cfg = build(
            &snap,
            &LocalExports::default(),
            &c("east"),
            1,
            None,
            &overrides,
        );
        let out = &cfg.outbound[0];
        let p = out.policy.as_ref().unwrap();
        assert_eq!(p.timeout_ms, 250, "the importer's value");
        assert_eq!(
            p.max_pending, 3,
            "the exporter's, where the importer says nothing"
        );
        assert_eq!(p.rate_limit.as_ref().unwrap().requests_per_second, 5);
        assert_eq!(out.header_routes.len(), 1);
        let north = out
            .candidates
            .iter()
            .find(|c| c.cluster == "north")
            .unwrap();
        assert_eq!(north.priority, 1, "the importer's failover order");
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
        let cfg = build(
            &snapshot(),
            &local,
            &c("east"),
            1,
            None,
            &ImportOverrides::new(),
        );
        assert_eq!(cfg.inbound.len(), 1);
        assert_eq!(cfg.inbound[0].endpoints[0].address, "10.1.0.5:8080");
        assert!(!cfg.inbound[0].drained);
        let drained = build(
            &snapshot(),
            &local,
            &c("north"),
            1,
            None,
            &ImportOverrides::new(),
        );
        assert!(
            drained.inbound[0].drained,
            "a drill drains north's inbound side"
        );
    }
}
