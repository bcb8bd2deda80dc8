//! Routing tables: a validated `ConfigSnapshot` turned into the lookups the data path needs.
//!
//! [`Tables::build`] either returns a complete, consistent set of tables or a [`NackReason`];
//! the caller swaps the whole `Arc<Tables>` at once, so a request sees one version throughout.

use std::collections::{BTreeSet, HashMap, HashSet};
use std::fmt;
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use causeway_api::proto::{self, AppProtocol, BackendTlsMode, ConfigSnapshot};
use causeway_api::spiffe::SpiffeId;
use causeway_api::tls::TrustBundle;
use causeway_api::{ClusterId, ServiceKey};

use crate::config::Cidr;
use crate::resilience::{ClusterStats, RateLimiter, RetryBudget};

// Defaults for policy fields left at proto3's zero: the federator's own (one table).
use causeway_api::policy::DEFAULTS;

/// Why a snapshot was refused; sent to the federator in the NACK.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NackReason(pub String);

impl fmt::Display for NackReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for NackReason {}

fn nack(reason: impl Into<String>) -> NackReason {
    NackReason(reason.into())
}

/// A service of the snapshot, validated; the NACK names it.
fn service_key(namespace: &str, name: &str, what: &str) -> Result<ServiceKey, NackReason> {
    ServiceKey::new(namespace, name).map_err(|e| {
        nack(format!(
            "{what} {namespace}/{name}: {e} (not an RFC 1123 label)"
        ))
    })
}

// === tables ===

/// A peer cluster's gateway.
#[derive(Debug, Clone)]
pub(crate) struct PeerInfo {
    pub addresses: Vec<String>,
    pub gateway_id: SpiffeId,
    /// The peer's own bundle; `None` = our local bundle.
    pub bundle: Option<TrustBundle>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct PortSpec {
    pub port: u16,
    pub app: AppProtocol,
}

impl PortSpec {
    /// Whether the port carries HTTP (routed per request) rather than opaque TCP.
    pub(crate) fn is_http(&self) -> bool {
        matches!(
            self.app,
            AppProtocol::Http | AppProtocol::Http2 | AppProtocol::Grpc
        )
    }

    /// Whether the backend speaks HTTP/2 (h2c or h2 over TLS).
    pub(crate) fn is_h2(&self) -> bool {
        matches!(self.app, AppProtocol::Http2 | AppProtocol::Grpc)
    }
}

/// A local endpoint: an IP and, when it differs from the service port, a target port.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct EndpointAddr {
    pub ip: IpAddr,
    pub port: Option<u16>,
}

impl EndpointAddr {
    pub(crate) fn parse(s: &str) -> Option<Self> {
        if let Ok(ip) = s.parse::<IpAddr>() {
            return Some(Self { ip, port: None });
        }
        let sa: SocketAddr = s.parse().ok()?;
        Some(Self {
            ip: sa.ip(),
            port: Some(sa.port()),
        })
    }

    pub(crate) fn socket_addr(&self, service_port: u16) -> SocketAddr {
        SocketAddr::new(self.ip, self.port.unwrap_or(service_port))
    }
}

/// A service this cluster exports (served at ingress).
#[derive(Debug)]
pub(crate) struct Inbound {
    pub name: ServiceKey,
    pub ports: Vec<PortSpec>,
    /// Ready endpoints only.
    pub endpoints: Vec<EndpointAddr>,
    /// The DNS label of each endpoint (same order): its hostname or its address dashed.
    pub labels: Vec<String>,
    pub backend_mtls: bool,
    pub allowed_clusters: HashSet<String>,
    pub allowed_identities: HashSet<String>,
    pub drained: bool,
    pub rate_limit: (u32, u32),
    pub limiter: Arc<RateLimiter>,
    next: AtomicUsize,
}

impl Inbound {
    pub(crate) fn port(&self, port: Option<u16>) -> Option<PortSpec> {
        match port {
            Some(p) => self.ports.iter().find(|s| s.port == p).copied(),
            None => self.ports.first().copied(),
        }
    }

    /// The endpoints to try: all, from the next in turn; or with `pinned`, only the one named so.
    pub(crate) fn endpoints_to_try(&self, pinned: Option<&str>) -> Vec<EndpointAddr> {
        match pinned {
            Some(name) => self
                .endpoints
                .iter()
                .zip(&self.labels)
                .filter(|(_, l)| l.as_str() == name)
                .map(|(e, _)| *e)
                .collect(),
            None => self.endpoints_from_next().collect(),
        }
    }

    /// Ready endpoints in round-robin order, starting at the next one.
    pub(crate) fn endpoints_from_next(&self) -> impl Iterator<Item = EndpointAddr> + '_ {
        let n = self.endpoints.len().max(1);
        let start = self.next.fetch_add(1, Ordering::Relaxed) % n;
        self.endpoints
            .iter()
            .cycle()
            .skip(start)
            .take(self.endpoints.len())
            .copied()
    }
}

/// Traffic policy with proto3 zeros replaced by defaults.
#[derive(Debug, Clone)]
pub(crate) struct Policy {
    /// Until the response headers; `None` = no timeout.
    pub timeout: Option<Duration>,
    pub retry_attempts: u32,
    pub retry_budget_percent: u32,
    /// 0 = unlimited.
    pub max_concurrent: u32,
    /// Requests that may wait for a slot when `max_concurrent` are active.
    pub max_pending: u32,
    pub outlier_errors: u32,
    pub outlier_base: Duration,
    /// Local limit on what this cluster sends to the service: (requests per second, burst);
    /// 0 requests per second = none.
    pub rate_limit: (u32, u32),
}

impl Policy {
    pub(crate) fn from_proto(p: Option<&proto::TrafficPolicy>) -> Self {
        let p = p.cloned().unwrap_or_default();
        let or = |v: u32, d: u32| if v == 0 { d } else { v };
        Self {
            timeout: (p.timeout_ms > 0).then(|| Duration::from_millis(p.timeout_ms)),
            retry_attempts: p.retry_attempts.unwrap_or(DEFAULTS.retry_attempts),
            retry_budget_percent: or(p.retry_budget_percent, DEFAULTS.retry_budget_percent),
            max_concurrent: p.max_concurrent,
            max_pending: p.max_pending,
            outlier_errors: or(
                p.outlier_consecutive_errors,
                DEFAULTS.outlier_consecutive_errors,
            ),
            outlier_base: if p.outlier_base_ejection_ms == 0 {
                DEFAULTS.outlier_base_ejection
            } else {
                Duration::from_millis(p.outlier_base_ejection_ms)
            },
            rate_limit: p
                .rate_limit
                .as_ref()
                .map_or((0, 0), |r| (r.requests_per_second, r.burst)),
        }
    }
}

#[derive(Debug, Clone)]
pub(crate) struct Candidate {
    pub cluster: Arc<str>,
    pub priority: u32,
    pub weight: u32,
    pub healthy: bool,
    pub drained: bool,
    pub ready_endpoints: u32,
    /// This gateway's own cluster: routed to its inbound endpoints without a peer hop.
    pub local: bool,
    pub stats: Arc<ClusterStats>,
    /// `cluster` as the value of the egress's `x-causeway-cluster` answer header, made once
    /// per config rather than per response.
    pub header: Option<http::HeaderValue>,
}

#[derive(Debug, Clone)]
pub(crate) enum HeaderTarget {
    Pin(Arc<str>),
    Split(Vec<(Arc<str>, u32)>),
}

#[derive(Debug, Clone)]
pub(crate) struct HeaderRoute {
    pub header: http::HeaderName,
    pub value: String,
    pub target: HeaderTarget,
}

/// A service this cluster imports (routed at egress).
#[derive(Debug)]
pub(crate) struct Outbound {
    pub name: ServiceKey,
    pub ports: Vec<PortSpec>,
    /// Sorted by priority.
    pub candidates: Vec<Candidate>,
    pub policy: Policy,
    pub header_routes: Vec<HeaderRoute>,
    pub budget: Arc<RetryBudget>,
    /// Token bucket of `policy.rate_limit`.
    pub limiter: Arc<RateLimiter>,
    /// One endpoint of a headless import in another cluster, reached at its own address.
    pub pinned: Option<PinnedTarget>,
}

/// The endpoint a pinned address leads to: its cluster and DNS label there.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct PinnedTarget {
    pub cluster: String,
    pub name: String,
}

impl Outbound {
    /// The `:authority` sent to the peer gateway: the service's name, or for a pinned endpoint
    /// its own, `<name>.<cluster>.<svc>.<ns>.svc.clusterset.local:<port>`, which the peer's
    /// ingress sends to that endpoint only.
    pub(crate) fn peer_authority(&self, port: u16) -> String {
        match &self.pinned {
            Some(p) => format!(
                "{}.{}.{}:{port}",
                p.name,
                p.cluster,
                self.name.clusterset_name()
            ),
            None => self.name.authority(port),
        }
    }

    pub(crate) fn port(&self, port: Option<u16>) -> Option<PortSpec> {
        match port {
            Some(p) => self.ports.iter().find(|s| s.port == p).copied(),
            None => self.ports.first().copied(),
        }
    }

    pub(crate) fn candidate(&self, cluster: &str) -> Option<&Candidate> {
        self.candidates.iter().find(|c| &*c.cluster == cluster)
    }
}

/// Everything the data path looks up, for one config version.
#[derive(Debug)]
pub(crate) struct Tables {
    pub version: u64,
    pub snapshot: ConfigSnapshot,
    pub peers: HashMap<String, PeerInfo>,
    /// Trust domain -> peer cluster.
    pub trust_domains: HashMap<String, String>,
    pub inbound: HashMap<ServiceKey, Arc<Inbound>>,
    pub outbound: HashMap<ServiceKey, Arc<Outbound>>,
    pub vips: HashMap<SocketAddr, (Arc<Outbound>, PortSpec)>,
    /// Distinct outbound ports: one VIP listener each.
    pub vip_ports: BTreeSet<u16>,
    /// Gateway listener ports of outbound ports (`Port.gateway_port`, Kubernetes mode): what
    /// arrives on one goes to that service port whatever its destination address.
    pub port_routes: HashMap<u16, (Arc<Outbound>, PortSpec)>,
}

/// State that outlives a config version, keyed by what it belongs to.
#[derive(Debug, Default)]
pub(crate) struct StatsRegistry {
    clusters: Mutex<HashMap<(ServiceKey, String), Arc<ClusterStats>>>,
    budgets: Mutex<HashMap<ServiceKey, Arc<RetryBudget>>>,
    limiters: Mutex<HashMap<ServiceKey, Arc<RateLimiter>>>,
    egress_limiters: Mutex<HashMap<ServiceKey, Arc<RateLimiter>>>,
}

impl StatsRegistry {
    fn cluster(&self, svc: &ServiceKey, cluster: &str) -> Arc<ClusterStats> {
        let mut m = self.clusters.lock().unwrap_or_else(|e| e.into_inner());
        m.entry((svc.clone(), cluster.to_string()))
            .or_default()
            .clone()
    }

    /// Sets the breaker gauges (`causeway_gateway_active_requests`, `..._pending_requests`)
    /// from every configured (service, cluster), as a scrape reads them; a pair no longer
    /// configured loses its series.
    pub(crate) fn observe(&self, metrics: &crate::metrics::Metrics) {
        let m = self.clusters.lock().unwrap_or_else(|e| e.into_inner());
        metrics.active_requests.reset();
        metrics.pending_requests.reset();
        for ((svc, cluster), stats) in m.iter() {
            let service = svc.to_string();
            let labels = [service.as_str(), cluster.as_str()];
            metrics
                .active_requests
                .with_label_values(&labels)
                .set(stats.active() as i64);
            metrics
                .pending_requests
                .with_label_values(&labels)
                .set(stats.pending() as i64);
        }
    }

    fn budget(&self, svc: &ServiceKey) -> Arc<RetryBudget> {
        let mut m = self.budgets.lock().unwrap_or_else(|e| e.into_inner());
        m.entry(svc.clone()).or_default().clone()
    }

    fn limiter(&self, svc: &ServiceKey) -> Arc<RateLimiter> {
        let mut m = self.limiters.lock().unwrap_or_else(|e| e.into_inner());
        m.entry(svc.clone()).or_default().clone()
    }

    fn egress_limiter(&self, svc: &ServiceKey) -> Arc<RateLimiter> {
        let mut m = self
            .egress_limiters
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        m.entry(svc.clone()).or_default().clone()
    }

    /// Forgets what the new tables no longer configure.
    fn retain(&self, t: &Tables) {
        self.clusters
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .retain(|(svc, cluster), _| {
                t.outbound
                    .get(svc)
                    .is_some_and(|o| o.candidate(cluster).is_some())
            });
        self.budgets
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .retain(|svc, _| t.outbound.contains_key(svc));
        self.limiters
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .retain(|svc, _| t.inbound.contains_key(svc));
        self.egress_limiters
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .retain(|svc, _| t.outbound.contains_key(svc));
    }
}

fn ports(ports: &[proto::Port], what: &str) -> Result<Vec<PortSpec>, NackReason> {
    let mut out: Vec<PortSpec> = Vec::with_capacity(ports.len());
    for p in ports {
        let port = u16::try_from(p.port)
            .ok()
            .filter(|p| *p != 0)
            .ok_or_else(|| nack(format!("{what}: port {} is not in 1..=65535", p.port)))?;
        if p.protocol() != proto::Protocol::Tcp && p.protocol() != proto::Protocol::Unspecified {
            // UDP/SCTP exports are imported but not proxied; skip rather than refuse the config.
            continue;
        }
        if out.iter().any(|o| o.port == port) {
            return Err(nack(format!("{what}: port {port} is listed twice")));
        }
        out.push(PortSpec {
            port,
            app: p.app_protocol(),
        });
    }
    Ok(out)
}

impl Tables {
    /// Validates `snapshot` for the gateway of `cluster` and builds its tables.
    pub(crate) fn build(
        snapshot: ConfigSnapshot,
        cluster: &str,
        vip_range: Option<Cidr>,
        registry: &StatsRegistry,
    ) -> Result<Self, NackReason> {
        if snapshot.cluster != cluster {
            return Err(nack(format!(
                "snapshot is for cluster {:?}, this gateway is {cluster:?}",
                snapshot.cluster
            )));
        }

        let mut peers = HashMap::new();
        let mut trust_domains = HashMap::new();
        for p in &snapshot.peers {
            let what = format!("peer {:?}", p.cluster);
            ClusterId::new(&p.cluster).map_err(|e| nack(format!("{what}: {e}")))?;
            if p.cluster == cluster {
                return Err(nack(format!("{what}: is this gateway's own cluster")));
            }
            for a in &p.gateway_addresses {
                let ok = a
                    .rsplit_once(':')
                    .is_some_and(|(h, port)| !h.is_empty() && port.parse::<u16>().is_ok());
                if !ok {
                    return Err(nack(format!(
                        "{what}: gateway address {a:?} is not host:port"
                    )));
                }
            }
            let gateway_id = SpiffeId::gateway(&p.trust_domain)
                .map_err(|e| nack(format!("{what}: trust domain: {e}")))?;
            let bundle = if p.trust_bundle_pem.is_empty() {
                None
            } else {
                Some(
                    TrustBundle::from_pem(
                        p.trust_bundle_pem.as_bytes(),
                        &format!("trust bundle of cluster {}", p.cluster),
                    )
                    .map_err(|e| nack(format!("{what}: {e}")))?,
                )
            };
            if let Some(other) = trust_domains.insert(p.trust_domain.clone(), p.cluster.clone()) {
                return Err(nack(format!(
                    "{what}: trust domain {:?} is also peer {other:?}'s",
                    p.trust_domain
                )));
            }
            let info = PeerInfo {
                addresses: p.gateway_addresses.clone(),
                gateway_id,
                bundle,
            };
            if peers.insert(p.cluster.clone(), info).is_some() {
                return Err(nack(format!("{what}: listed twice")));
            }
        }

        let mut inbound = HashMap::new();
        for s in &snapshot.inbound {
            let name = service_key(&s.namespace, &s.name, "inbound service")?;
            let what = format!("inbound service {name}");
            let mut endpoints = Vec::new();
            let mut labels = Vec::new();
            for e in &s.endpoints {
                let addr = EndpointAddr::parse(&e.address).ok_or_else(|| {
                    nack(format!(
                        "{what}: endpoint {:?} is not ip or ip:port",
                        e.address
                    ))
                })?;
                if e.ready {
                    endpoints.push(addr);
                    labels.push(causeway_api::endpoint_dns_label(
                        Some(e.hostname.as_str()),
                        addr.ip,
                    ));
                }
            }
            let rate_limit = s
                .rate_limit
                .as_ref()
                .map_or((0, 0), |r| (r.requests_per_second, r.burst));
            let svc = Inbound {
                ports: ports(&s.ports, &what)?,
                endpoints,
                labels,
                backend_mtls: s.backend_tls_mode() == BackendTlsMode::Mtls,
                allowed_clusters: s.allowed_source_clusters.iter().cloned().collect(),
                allowed_identities: s.allowed_identities.iter().cloned().collect(),
                drained: s.drained,
                rate_limit,
                limiter: registry.limiter(&name),
                next: AtomicUsize::new(0),
                name: name.clone(),
            };
            if inbound.insert(name, Arc::new(svc)).is_some() {
                return Err(nack(format!("{what}: listed twice")));
            }
        }

        let mut outbound = HashMap::new();
        let mut vips = HashMap::new();
        let mut vip_ports = BTreeSet::new();
        let mut port_routes: HashMap<u16, (Arc<Outbound>, PortSpec)> = HashMap::new();
        for s in &snapshot.outbound {
            let name = service_key(&s.namespace, &s.name, "outbound service")?;
            let what = format!("outbound service {name}");
            if outbound.contains_key(&name) {
                return Err(nack(format!("{what}: listed twice")));
            }
            let vip = if s.vip.is_empty() {
                None
            } else {
                let ip: IpAddr = s
                    .vip
                    .parse()
                    .map_err(|e| nack(format!("{what}: vip {:?}: {e}", s.vip)))?;
                if let Some(range) = vip_range {
                    if !range.contains(ip) {
                        return Err(nack(format!(
                            "{what}: vip {ip} is outside --vip-range {range}"
                        )));
                    }
                }
                Some(ip)
            };
            let mut candidates = Vec::new();
            // Clusters the snapshot names as candidates but not as peers (e.g. a cluster whose
            // record lapsed while its exports linger): unroutable, so left out, but the rest
            // of the snapshot still applies.
            let mut unknown: Vec<&str> = Vec::new();
            for c in &s.candidates {
                let local = c.cluster == cluster;
                if !local && !peers.contains_key(&c.cluster) {
                    tracing::warn!(service = %name, cluster = %c.cluster, "candidate cluster is not a peer; left out");
                    unknown.push(&c.cluster);
                    continue;
                }
                if candidates
                    .iter()
                    .any(|o: &Candidate| *o.cluster == *c.cluster)
                {
                    return Err(nack(format!(
                        "{what}: candidate cluster {:?} listed twice",
                        c.cluster
                    )));
                }
                candidates.push(Candidate {
                    cluster: Arc::from(c.cluster.as_str()),
                    priority: c.priority,
                    weight: c.weight,
                    healthy: c.healthy,
                    drained: c.drained,
                    ready_endpoints: c.ready_endpoints,
                    local,
                    stats: registry.cluster(&name, &c.cluster),
                    header: http::HeaderValue::from_str(&c.cluster).ok(),
                });
            }
            candidates.sort_by_key(|c| c.priority);
            let cluster_arc = |c: &str| -> Result<Arc<str>, NackReason> {
                candidates
                    .iter()
                    .find(|o| &*o.cluster == c)
                    .map(|o| o.cluster.clone())
                    .ok_or_else(|| {
                        nack(format!(
                            "{what}: header route names cluster {c:?}, which is not a candidate"
                        ))
                    })
            };
            let mut header_routes = Vec::new();
            for r in &s.header_routes {
                let names_unknown = unknown.contains(&r.cluster.as_str())
                    || r.weights.keys().any(|c| unknown.contains(&c.as_str()));
                if names_unknown {
                    tracing::warn!(service = %name, header = %r.header, "header route names a cluster that is not a peer; left out");
                    continue;
                }
                let header = http::HeaderName::from_bytes(r.header.as_bytes()).map_err(|_| {
                    nack(format!("{what}: header route: bad header {:?}", r.header))
                })?;
                let target = if !r.cluster.is_empty() {
                    HeaderTarget::Pin(cluster_arc(&r.cluster)?)
                } else if !r.weights.is_empty() {
                    let mut split = Vec::new();
                    let mut weights: Vec<_> = r.weights.iter().collect();
                    weights.sort();
                    for (c, w) in weights {
                        split.push((cluster_arc(c)?, *w));
                    }
                    HeaderTarget::Split(split)
                } else {
                    return Err(nack(format!(
                        "{what}: header route on {:?} has neither a cluster nor weights",
                        r.header
                    )));
                };
                header_routes.push(HeaderRoute {
                    header,
                    value: r.value.clone(),
                    target,
                });
            }
            let svc = Arc::new(Outbound {
                ports: ports(&s.ports, &what)?,
                candidates,
                policy: Policy::from_proto(s.policy.as_ref()),
                header_routes,
                budget: registry.budget(&name),
                limiter: registry.egress_limiter(&name),
                name: name.clone(),
                pinned: None,
            });
            for pe in &s.endpoints {
                let what = format!("{what}: pinned endpoint {}/{}", pe.cluster, pe.name);
                // Universal mode: an address of ours; Kubernetes mode: gateway ports (the
                // endpoint's derived Service leads there), an address only with a VIP range.
                let ip: Option<IpAddr> = if pe.vip.is_empty() {
                    None
                } else {
                    let ip = pe
                        .vip
                        .parse()
                        .map_err(|e| nack(format!("{what}: vip {:?}: {e}", pe.vip)))?;
                    if vip_range.is_some_and(|r| !r.contains(ip)) {
                        return Err(nack(format!("{what}: vip {ip} is outside --vip-range")));
                    }
                    Some(ip)
                };
                if ip.is_none() && pe.gateway_ports.is_empty() {
                    return Err(nack(format!("{what}: neither a vip nor gateway ports")));
                }
                let valid_label = !pe.name.is_empty()
                    && pe.name.len() <= 63
                    && pe
                        .name
                        .bytes()
                        .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-');
                if !valid_label {
                    return Err(nack(format!("{what}: the name is not a DNS label")));
                }
                let candidates: Vec<Candidate> = svc
                    .candidates
                    .iter()
                    .filter(|c| *c.cluster == pe.cluster && !c.local)
                    .cloned()
                    .collect();
                if candidates.is_empty() {
                    // A cluster that is no peer (left out above), or ourselves: unroutable.
                    tracing::warn!(service = %name, cluster = %pe.cluster, "pinned endpoint of a cluster that is no peer candidate; left out");
                    continue;
                }
                let pinned = Arc::new(Outbound {
                    name: name.clone(),
                    ports: svc.ports.clone(),
                    candidates,
                    policy: svc.policy.clone(),
                    header_routes: Vec::new(),
                    budget: svc.budget.clone(),
                    limiter: svc.limiter.clone(),
                    pinned: Some(PinnedTarget {
                        cluster: pe.cluster.clone(),
                        name: pe.name.clone(),
                    }),
                });
                if let Some(ip) = ip {
                    for p in &pinned.ports {
                        vip_ports.insert(p.port);
                        let addr = SocketAddr::new(ip, p.port);
                        if let Some((other, _)) = vips.insert(addr, (pinned.clone(), *p)) {
                            return Err(nack(format!(
                                "{what}: vip {addr} is also {}'s",
                                other.name
                            )));
                        }
                    }
                }
                let mut gateway_ports: Vec<(u32, u32)> =
                    pe.gateway_ports.iter().map(|(p, g)| (*p, *g)).collect();
                gateway_ports.sort_unstable();
                for (port, gp) in gateway_ports {
                    let Some(spec) = pinned.ports.iter().find(|o| u32::from(o.port) == port) else {
                        return Err(nack(format!(
                            "{what}: gateway port {gp} for port {port}, which the service has not"
                        )));
                    };
                    let gp = u16::try_from(gp).ok().filter(|g| *g != 0).ok_or_else(|| {
                        nack(format!(
                            "{what}: gateway port {gp} of port {port} is not in 1..=65535"
                        ))
                    })?;
                    if let Some((other, op)) = port_routes.insert(gp, (pinned.clone(), *spec)) {
                        return Err(nack(format!(
                            "{what}: gateway port {gp} of port {port} is also {}:{}'s",
                            other.name, op.port
                        )));
                    }
                }
            }
            for p in s.ports.iter().filter(|p| p.gateway_port != 0) {
                let Some(spec) = svc.ports.iter().find(|o| u32::from(o.port) == p.port) else {
                    continue; // UDP/SCTP: not proxied
                };
                let gp = u16::try_from(p.gateway_port).map_err(|_| {
                    nack(format!(
                        "{what}: gateway port {} of port {} is not in 1..=65535",
                        p.gateway_port, p.port
                    ))
                })?;
                if let Some((other, op)) = port_routes.insert(gp, (svc.clone(), *spec)) {
                    return Err(nack(format!(
                        "{what}: gateway port {gp} of port {} is also {}:{}'s",
                        p.port, other.name, op.port
                    )));
                }
            }
            for p in &svc.ports {
                vip_ports.insert(p.port);
                if let Some(ip) = vip {
                    let addr = SocketAddr::new(ip, p.port);
                    if let Some((other, _)) = vips.insert(addr, (svc.clone(), *p)) {
                        return Err(nack(format!("{what}: vip {addr} is also {}'s", other.name)));
                    }
                }
            }
            if outbound.insert(name, svc).is_some() {
                return Err(nack(format!("{what}: listed twice")));
            }
        }

        let tables = Self {
            version: snapshot.version,
            snapshot,
            peers,
            trust_domains,
            inbound,
            outbound,
            vips,
            vip_ports,
            port_routes,
        };
        registry.retain(&tables);
        Ok(tables)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn endpoint_parsing() {
        assert_eq!(
            EndpointAddr::parse("10.0.0.1").unwrap().socket_addr(80),
            "10.0.0.1:80".parse().unwrap()
        );
        assert_eq!(
            EndpointAddr::parse("[::1]:8080").unwrap().socket_addr(80),
            "[::1]:8080".parse().unwrap()
        );
        assert!(EndpointAddr::parse("pod-a").is_none());
    }

    fn snapshot() -> ConfigSnapshot {
        ConfigSnapshot {
            version: 7,
            cluster: "east".into(),
            peers: vec![proto::Peer {
                cluster: "west".into(),
                gateway_addresses: vec!["gw.west:15443".into()],
                trust_domain: "west.causeway.mesh".into(),
                ..Default::default()
            }],
            inbound: vec![proto::InboundService {
                namespace: "shop".into(),
                name: "cart".into(),
                ports: vec![proto::Port {
                    port: 80,
                    ..Default::default()
                }],
                endpoints: vec![proto::Endpoint {
                    address: "10.0.0.1".into(),
                    ready: true,
                    ..Default::default()
                }],
                ..Default::default()
            }],
            outbound: vec![proto::OutboundService {
                namespace: "shop".into(),
                name: "cart".into(),
                vip: "240.0.0.1".into(),
                ports: vec![proto::Port {
                    port: 80,
                    ..Default::default()
                }],
                candidates: vec![
                    proto::Candidate {
                        cluster: "west".into(),
                        priority: 1,
                        ..Default::default()
                    },
                    proto::Candidate {
                        cluster: "east".into(),
                        priority: 0,
                        ..Default::default()
                    },
                ],
                ..Default::default()
            }],
            ..Default::default()
        }
    }

    #[test]
    fn builds_tables() {
        let reg = StatsRegistry::default();
        let t = Tables::build(snapshot(), "east", None, &reg).unwrap();
        assert_eq!(t.version, 7);
        let svc = ServiceKey::new("shop", "cart").unwrap();
        let out = &t.outbound[&svc];
        assert!(out.candidates[0].local);
        assert_eq!(&*out.candidates[1].cluster, "west");
        assert!(t.vips.contains_key(&"240.0.0.1:80".parse().unwrap()));
        assert_eq!(t.trust_domains["west.causeway.mesh"], "west");
        // Stats survive a rebuild.
        let t2 = Tables::build(snapshot(), "east", None, &reg).unwrap();
        assert!(Arc::ptr_eq(
            &out.candidates[1].stats,
            &t2.outbound[&svc].candidates[1].stats
        ));
    }

    #[test]
    fn candidates_of_unknown_clusters_are_left_out() {
        let reg = StatsRegistry::default();
        let mut s = snapshot();
        s.outbound[0].candidates.push(proto::Candidate {
            cluster: "north".into(),
            priority: 2,
            ..Default::default()
        });
        s.outbound[0].header_routes.push(proto::HeaderRoute {
            header: "x-cluster".into(),
            value: "north".into(),
            cluster: "north".into(),
            weights: Default::default(),
        });
        let t = Tables::build(s, "east", None, &reg).unwrap();
        let out = t.outbound.values().next().unwrap();
        assert_eq!(out.candidates.len(), 2);
        assert!(out.candidate("north").is_none());
        assert!(out.header_routes.is_empty());
    }

    #[test]
    fn refuses_bad_snapshots_with_reason() {
        let reg = StatsRegistry::default();
        type Mutation = Box<dyn Fn(&mut ConfigSnapshot)>;
        let cases: Vec<(Mutation, &str)> = vec![
            (Box::new(|s| s.cluster = "west".into()), "this gateway is"),
            (
                Box::new(|s| s.outbound[0].vip = "240.0.0.300".into()),
                "vip",
            ),
            (
                Box::new(|s| {
                    let dup = s.outbound[0].clone();
                    s.outbound.push(dup)
                }),
                "listed twice",
            ),
            (
                Box::new(|s| {
                    let c = s.outbound[0].candidates[0].clone();
                    s.outbound[0].candidates.push(c)
                }),
                "listed twice",
            ),
            (
                Box::new(|s| s.inbound[0].endpoints[0].address = "nope".into()),
                "endpoint",
            ),
            (
                Box::new(|s| s.peers[0].trust_bundle_pem = "garbage".into()),
                "peer \"west\"",
            ),
            (Box::new(|s| s.inbound[0].ports[0].port = 70000), "port"),
            (Box::new(|s| s.outbound[0].name = "Cart".into()), "RFC 1123"),
        ];
        for (mutate, reason) in cases {
            let mut s = snapshot();
            mutate(&mut s);
            let err = Tables::build(s, "east", None, &reg).unwrap_err();
            assert!(err.0.contains(reason), "expected {reason:?} in {err}");
        }
        let range: Cidr = "10.0.0.0/8".parse().unwrap();
        let err = Tables::build(snapshot(), "east", Some(range), &reg).unwrap_err();
        assert!(err.0.contains("outside --vip-range"), "{err}");
    }
}
