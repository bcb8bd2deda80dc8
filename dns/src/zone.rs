//! The `clusterset.local` zone, computed from one `MeshSnapshot` on every query.
//!
//! Nothing here is cached between queries: the answer follows the snapshot the query saw, so a
//! drill or a health change reaches the very next answer (DESIGN.md "Addressing and failover").
//!
//! Names (relative to the zone), KEP-1645:
//!
//! | name | records |
//! | --- | --- |
//! | (apex) | SOA, NS |
//! | `dns-version` | TXT `"1.0.0"` |
//! | `ns.dns` | A/AAAA of the server when it listens on one address |
//! | `<svc>.<ns>.svc` | A/AAAA: ClusterSetIP per answer policy, or headless endpoints |
//! | `_<port>._<proto>.<svc>.<ns>.svc` | SRV per named port |
//! | `<hostname>.<cluster>.<svc>.<ns>.svc` | A/AAAA of a headless endpoint; one without a hostname is named by its address, dashed (`10-1-5-1`, `fd00-5--1`) |
//! | `<reversed address>.in-addr.arpa` / `.ip6.arpa` | PTR of a ClusterSetIP (the service's name) or a headless endpoint (its name) |
//!
//! A headless service with no ready endpoint does not exist (NXDOMAIN, KEP-1645), nor do its SRV
//! names; SRV records name only targets that have an address.
//!
//! `svc`, `<ns>.svc`, `dns`, `_<proto>.<svc>.<ns>.svc` and `<cluster>.<svc>.<ns>.svc` of a headless
//! service are empty non-terminals: they exist (NODATA, not NXDOMAIN, RFC 8020) when something
//! lives below them.

use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use causeway_api::snapshot::ServiceView;
use causeway_api::{ClusterId, Endpoint, MeshSnapshot, ServiceKey, ServiceType};
use hickory_proto::op::ResponseCode;
use hickory_proto::rr::rdata::{A, AAAA, NS, PTR, SOA, SRV, TXT};
use hickory_proto::rr::{LowerName, Name, RData, Record, RecordType};

use crate::{AnswerPolicy, DnsConfig};

/// The zone we are authoritative for.
pub const ZONE: &str = "clusterset.local.";
/// KEP-1645 `dns-version` TXT value.
pub const DNS_VERSION: &str = "1.0.0";
/// Name server of the zone (SOA MNAME and NS target).
pub const NS_NAME: &str = "ns.dns.clusterset.local.";
const HOSTMASTER: &str = "hostmaster.clusterset.local.";

// SOA timers. Nobody transfers this zone (AXFR is refused); they only need to be sane.
const SOA_REFRESH: i32 = 60;
const SOA_RETRY: i32 = 10;
const SOA_EXPIRE: i32 = 3600;

/// Deepest name of the zone: `<hostname>.<cluster>.<svc>.<ns>.svc`.
const MAX_RELATIVE_LABELS: usize = 5;

/// What to send back for one question in the zone.
#[derive(Debug)]
pub(crate) struct Answer {
    pub(crate) rcode: ResponseCode,
    pub(crate) answers: Vec<Record>,
    /// The SOA, for NXDOMAIN and NODATA (negative caching, RFC 2308).
    pub(crate) authority: Vec<Record>,
}

pub(crate) struct Zone {
    origin: LowerName,
    mname: Name,
    rname: Name,
    ttl: u32,
    ns_addr: Option<IpAddr>,
    policy_overrides: BTreeMap<ServiceKey, AnswerPolicy>,
    default_policy: AnswerPolicy,
}

/// A name that exists in the zone.
enum Node<'s> {
    Apex,
    DnsVersion,
    NameServer,
    /// Exists, holds no records.
    EmptyNonTerminal,
    Service(&'s ServiceKey, &'s ServiceView),
    Srv {
        key: &'s ServiceKey,
        view: &'s ServiceView,
        port_name: &'s str,
        proto: &'s str,
    },
    EndpointHost {
        view: &'s ServiceView,
        cluster: &'s ClusterId,
        hostname: &'s str,
    },
}

// === impl Zone ===

impl Zone {
    pub(crate) fn new(config: &DnsConfig) -> Self {
        let name = |s: &str| Name::from_ascii(s).expect("static zone names are valid");
        let ip = config.listen.ip();
        Self {
            origin: LowerName::from(name(ZONE)),
            mname: name(NS_NAME),
            rname: name(HOSTMASTER),
            ttl: config.ttl_secs(),
            ns_addr: (!ip.is_unspecified()).then_some(ip),
            policy_overrides: config.policy_overrides.clone(),
            default_policy: config.default_policy,
        }
    }

    /// Whether `name` is `clusterset.local` or below it.
    pub(crate) fn contains(&self, name: &LowerName) -> bool {
        self.origin.zone_of(name)
    }

    /// Answers one question about a name of the zone (`contains(qname)` must hold).
    pub(crate) fn lookup(
        &self,
        snapshot: &MeshSnapshot,
        qname: &LowerName,
        qtype: RecordType,
    ) -> Answer {
        let Some(node) = self.find(snapshot, qname) else {
            return Answer {
                rcode: ResponseCode::NXDomain,
                answers: Vec::new(),
                authority: vec![self.soa(snapshot)],
            };
        };
        let owner = Name::from(qname);
        let mut answers = Vec::new();
        self.records(snapshot, &node, &owner, qtype, &mut answers);
        let authority = if !answers.is_empty() {
            Vec::new()
        } else if self.awaits_address(snapshot, &node) {
            // A ClusterSetIP import whose address is not there yet (this cluster's VIP is being
            // written, or its derived Service does not hold it yet): a passing state, which
            // resolvers must not cache for the zone's TTL (RFC 2308 5: the SOA's TTL and minimum
            // bound the negative answer's).
            vec![self.soa_ttl(snapshot, 0)]
        } else {
            vec![self.soa(snapshot)]
        };
        Answer {
            rcode: ResponseCode::NoError,
            answers,
            authority,
        }
    }

    fn policy(&self, key: &ServiceKey) -> AnswerPolicy {
        self.policy_overrides
            .get(key)
            .copied()
            .unwrap_or(self.default_policy)
    }

    /// Whether `node` is a ClusterSetIP import with no address to answer at all.
    fn awaits_address(&self, snapshot: &MeshSnapshot, node: &Node<'_>) -> bool {
        matches!(*node, Node::Service(key, view)
            if view.import.service_type == ServiceType::ClusterSetIP
                && self.service_address(snapshot, key, view).is_none())
    }

    fn soa(&self, snapshot: &MeshSnapshot) -> Record {
        self.soa_ttl(snapshot, self.ttl)
    }

    /// The zone's SOA with `ttl` as its TTL and minimum (the negative answers' TTL).
    fn soa_ttl(&self, snapshot: &MeshSnapshot, ttl: u32) -> Record {
        // The serial follows the snapshot, so a secondary looking at it sees the data change.
        let serial = snapshot.version as u32;
        Record::from_rdata(
            Name::from(&self.origin),
            ttl,
            RData::SOA(SOA::new(
                self.mname.clone(),
                self.rname.clone(),
                serial,
                SOA_REFRESH,
                SOA_RETRY,
                SOA_EXPIRE,
                ttl,
            )),
        )
    }

    /// The node `qname` names, or `None` for NXDOMAIN.
    fn find<'s>(&self, snapshot: &'s MeshSnapshot, qname: &'s LowerName) -> Option<Node<'s>> {
        let zone_labels = self.origin.iter().count();
        let all = qname.iter().count();
        let relative = all.checked_sub(zone_labels)?;
        if relative > MAX_RELATIVE_LABELS {
            return None;
        }
        // Labels from the zone outwards: `a.b.svc` is ["svc", "b", "a"].
        let mut r: [&str; MAX_RELATIVE_LABELS] = [""; MAX_RELATIVE_LABELS];
        for (i, label) in qname.iter().rev().skip(zone_labels).enumerate() {
            r[i] = std::str::from_utf8(label).ok()?;
        }
        let r = &r[..relative];

        match r {
            [] => Some(Node::Apex),
            ["dns-version"] => Some(Node::DnsVersion),
            ["dns"] => Some(Node::EmptyNonTerminal),
            ["dns", "ns"] => Some(Node::NameServer),
            ["svc"] => (!snapshot.services.is_empty()).then_some(Node::EmptyNonTerminal),
            ["svc", ns] => has_namespace(snapshot, ns).then_some(Node::EmptyNonTerminal),
            ["svc", ns, name, rest @ ..] => {
                let (key, view) = with_key(ns, name, |k| snapshot.services.get_key_value(k))?;
                find_in_service(snapshot, key, view, rest)
            }
            _ => None,
        }
    }

    fn records(
        &self,
        snapshot: &MeshSnapshot,
        node: &Node<'_>,
        owner: &Name,
        qtype: RecordType,
        out: &mut Vec<Record>,
    ) {
        let wants = |t: RecordType| qtype == t || qtype == RecordType::ANY;
        let rec = |rdata: RData| Record::from_rdata(owner.clone(), self.ttl, rdata);
        let push_addr = |out: &mut Vec<Record>, ip: IpAddr| match ip {
            IpAddr::V4(v4) if wants(RecordType::A) => out.push(rec(RData::A(A(v4)))),
            IpAddr::V6(v6) if wants(RecordType::AAAA) => out.push(rec(RData::AAAA(AAAA(v6)))),
            _ => {}
        };

        match *node {
            Node::Apex => {
                if wants(RecordType::SOA) {
                    out.push(self.soa(snapshot));
                }
                if wants(RecordType::NS) {
                    out.push(rec(RData::NS(NS(self.mname.clone()))));
                }
            }
            Node::DnsVersion => {
                if wants(RecordType::TXT) {
                    out.push(rec(RData::TXT(TXT::new(vec![DNS_VERSION.to_string()]))));
                }
            }
            Node::NameServer => {
                if let Some(ip) = self.ns_addr {
                    push_addr(out, ip);
                }
            }
            Node::EmptyNonTerminal => {}
            Node::Service(key, view) => match view.import.service_type {
                ServiceType::ClusterSetIP => {
                    if let Some(ip) = self.service_address(snapshot, key, view) {
                        push_addr(out, ip);
                    }
                }
                ServiceType::Headless => {
                    let mut seen: Vec<IpAddr> = Vec::new();
                    for (cluster, e) in serving_endpoints(snapshot, key, view) {
                        let Some(ip) = endpoint_address(snapshot, view, cluster, e) else {
                            continue;
                        };
                        if !seen.contains(&ip) {
                            seen.push(ip);
                            push_addr(out, ip);
                        }
                    }
                }
            },
            Node::Srv {
                key,
                view,
                port_name,
                proto,
            } => {
                if !wants(RecordType::SRV) {
                    return;
                }
                let headless = view.import.service_type == ServiceType::Headless;
                // A ClusterSetIP service's SRV target is its name, which must have an address.
                let service_target = (!headless
                    && self.service_address(snapshot, key, view).is_some())
                .then(|| service_name(key))
                .flatten();
                for port in view
                    .import
                    .ports
                    .iter()
                    .filter(|p| port_matches(p, port_name, proto))
                {
                    let mut targets: Vec<Name> = Vec::new();
                    if headless {
                        // One SRV per serving endpoint, by hostname or system-assigned name.
                        for (cluster, e) in serving_endpoints(snapshot, key, view) {
                            let target = Name::from_ascii(format!(
                                "{}.{}.{}",
                                e.dns_label(),
                                cluster,
                                key_fqdn(key)
                            ));
                            if let Ok(t) = target {
                                if !targets.contains(&t) {
                                    targets.push(t);
                                }
                            }
                        }
                    } else if let Some(n) = &service_target {
                        targets.push(n.clone());
                    }
                    for target in targets {
                        out.push(rec(RData::SRV(SRV::new(0, 100, port.port, target))));
                    }
                }
            }
            Node::EndpointHost {
                view,
                cluster,
                hostname,
            } => {
                // A hostname pins one cluster: it is answered while the endpoint is ready, also
                // during a drill (which moves the shared name, not names that pin a cluster).
                if let Some(export) = view.exports.get(cluster) {
                    let mut seen: Vec<IpAddr> = Vec::new();
                    for e in export
                        .record
                        .endpoints
                        .iter()
                        .filter(|e| e.ready && label_is(e, hostname))
                    {
                        let Some(ip) = endpoint_address(snapshot, view, cluster, e) else {
                            continue;
                        };
                        if !seen.contains(&ip) {
                            seen.push(ip);
                            push_addr(out, ip);
                        }
                    }
                }
            }
        }
    }

    /// The PTR records of `ip` (named `owner`): each ClusterSetIP service holding it and each
    /// ready headless endpoint at it; `None` when no import of the snapshot has it (not ours).
    pub(crate) fn reverse(
        &self,
        snapshot: &MeshSnapshot,
        owner: &LowerName,
        ip: IpAddr,
        qtype: RecordType,
    ) -> Option<Vec<Record>> {
        let mut names: Vec<Name> = Vec::new();
        for (key, view) in &snapshot.services {
            match view.import.service_type {
                ServiceType::ClusterSetIP if view.vip == Some(ip) => {
                    names.extend(service_name(key));
                }
                ServiceType::Headless => {
                    for (cluster, export) in &view.exports {
                        for e in export.record.endpoints.iter().filter(|e| {
                            e.ready && endpoint_address(snapshot, view, cluster, e) == Some(ip)
                        }) {
                            let n = format!("{}.{}.{}", e.dns_label(), cluster, key_fqdn(key));
                            names.extend(Name::from_ascii(n).ok());
                        }
                    }
                }
                _ => {}
            }
        }
        if names.is_empty() {
            return None;
        }
        names.dedup();
        if !matches!(qtype, RecordType::PTR | RecordType::ANY) {
            return Some(Vec::new());
        }
        let owner = Name::from(owner);
        Some(
            names
                .into_iter()
                .map(|n| Record::from_rdata(owner.clone(), self.ttl, RData::PTR(PTR(n))))
                .collect(),
        )
    }

    /// A/AAAA of a ClusterSetIP service: the local service address under `local-first` when this
    /// cluster serves it itself (exported, not drained, ready endpoints), else the ClusterSetIP.
    fn service_address(
        &self,
        snapshot: &MeshSnapshot,
        key: &ServiceKey,
        view: &ServiceView,
    ) -> Option<IpAddr> {
        if self.policy(key) == AnswerPolicy::LocalFirst {
            // `MeshSnapshot::local_ready_export`, without looking the service up again.
            let serving = snapshot.local_cluster.as_ref().and_then(|local| {
                let export = view.exports.get(local)?;
                snapshot.serves(key, local, export).then_some(export)
            });
            if let Some(ip) = serving.and_then(|e| e.record.service_ip) {
                return Some(ip);
            }
        }
        view.vip
    }
}

/// The node below a service's name: `rest` are the labels left of `<svc>.<ns>.svc`, zone outwards.
fn find_in_service<'s>(
    snapshot: &MeshSnapshot,
    key: &'s ServiceKey,
    view: &'s ServiceView,
    rest: &[&'s str],
) -> Option<Node<'s>> {
    let headless = view.import.service_type == ServiceType::Headless;
    // KEP-1645: a headless service without a ready endpoint does not exist, nor anything below.
    if headless && serving_endpoints(snapshot, key, view).is_empty() {
        return None;
    }
    match *rest {
        [] => Some(Node::Service(key, view)),
        [proto] if proto.starts_with('_') => view
            .import
            .ports
            .iter()
            .any(|p| !p.name.is_empty() && proto_matches(p, &proto[1..]))
            .then_some(Node::EmptyNonTerminal),
        [proto, port] if proto.starts_with('_') && port.starts_with('_') => {
            let (proto, port_name) = (&proto[1..], &port[1..]);
            view.import
                .ports
                .iter()
                .any(|p| port_matches(p, port_name, proto))
                .then_some(Node::Srv {
                    key,
                    view,
                    port_name,
                    proto,
                })
        }
        // `<cluster>.<svc>...` is reserved for headless hostnames (KEP-1645): never answered
        // for ClusterSetIP services.
        [cluster] if headless => {
            let (cluster, export) = view.exports.iter().find(|(c, _)| c.as_str() == cluster)?;
            export
                .record
                .endpoints
                .iter()
                .any(|e| answerable(snapshot, view, cluster, e))
                .then_some(Node::EmptyNonTerminal)
        }
        [cluster, hostname] if headless => {
            let (cluster, export) = view.exports.iter().find(|(c, _)| c.as_str() == cluster)?;
            export
                .record
                .endpoints
                .iter()
                .any(|e| label_is(e, hostname) && answerable(snapshot, view, cluster, e))
                .then_some(Node::EndpointHost {
                    view,
                    cluster,
                    hostname,
                })
        }
        _ => None,
    }
}

/// The address a client of this cluster reaches endpoint `e` of `cluster` at: the address this
/// cluster gives it (through its gateway) when there is one; else the pod's own, unless other
/// clusters' pods are reached only through the gateway (then it has none yet: `None`).
fn endpoint_address(
    snapshot: &MeshSnapshot,
    view: &ServiceView,
    cluster: &ClusterId,
    e: &Endpoint,
) -> Option<IpAddr> {
    if snapshot.local_cluster.as_ref() != Some(cluster) {
        let given = view
            .endpoint_vips
            .get(cluster)
            .and_then(|m| m.get(&e.dns_label()));
        match given {
            Some(ip) => return Some(*ip),
            None if snapshot.headless_via_gateway => return None,
            None => {}
        }
    }
    Some(e.address)
}

/// Whether endpoint `e` of `cluster` is answered: ready, and with an address for this cluster.
fn answerable(
    snapshot: &MeshSnapshot,
    view: &ServiceView,
    cluster: &ClusterId,
    e: &Endpoint,
) -> bool {
    e.ready && endpoint_address(snapshot, view, cluster, e).is_some()
}

fn label_is(e: &Endpoint, label: &str) -> bool {
    e.dns_label().eq_ignore_ascii_case(label)
}

/// The address a reverse name (`4.3.2.1.in-addr.arpa.`, nibbles under `ip6.arpa.`) stands for.
pub(crate) fn reverse_address(name: &LowerName) -> Option<IpAddr> {
    let labels: Vec<&[u8]> = name.iter().collect();
    let (tail, head) = labels.split_at(labels.len().checked_sub(2)?);
    let text = |l: &[u8]| std::str::from_utf8(l).ok().map(str::to_ascii_lowercase);
    match (text(head[0])?.as_str(), text(head[1])?.as_str()) {
        ("in-addr", "arpa") if tail.len() == 4 => {
            let mut octets = [0u8; 4];
            for (i, l) in tail.iter().rev().enumerate() {
                let t = std::str::from_utf8(l).ok()?;
                if t.is_empty() || t.len() > 3 || (t.len() > 1 && t.starts_with('0')) {
                    return None;
                }
                octets[i] = t.parse().ok()?;
            }
            Some(IpAddr::V4(Ipv4Addr::from(octets)))
        }
        ("ip6", "arpa") if tail.len() == 32 => {
            let mut v: u128 = 0;
            for l in tail.iter().rev() {
                let [c] = l else { return None };
                let d = (*c as char).to_digit(16)?;
                v = (v << 4) | u128::from(d);
            }
            Some(IpAddr::V6(Ipv6Addr::from(v)))
        }
        _ => None,
    }
}

/// Whether this cluster's gateway sees `cluster`'s gateway as down.
fn seen_down(snapshot: &MeshSnapshot, cluster: &ClusterId) -> bool {
    match &snapshot.local_cluster {
        Some(local) if local != cluster => {
            snapshot.health_of(local, cluster).is_some_and(|h| !h.up)
        }
        _ => false,
    }
}

/// Ready endpoints of a headless service's exports that are not drained, leaving out clusters
/// our gateway sees as down — unless that leaves nothing, in which case a possibly stale answer
/// beats an empty one (a failed probe is not proof the endpoints are gone).
fn serving_endpoints<'s>(
    snapshot: &'s MeshSnapshot,
    key: &ServiceKey,
    view: &'s ServiceView,
) -> Vec<(&'s ClusterId, &'s Endpoint)> {
    let all: Vec<(&ClusterId, &Endpoint)> = view
        .exports
        .iter()
        .filter(|(c, e)| !snapshot.export_drained(key, c, e))
        .flat_map(|(c, e)| {
            e.record
                .endpoints
                .iter()
                .filter(move |ep| answerable(snapshot, view, c, ep))
                .map(move |ep| (c, ep))
        })
        .collect();
    if all.iter().any(|(c, _)| seen_down(snapshot, c)) {
        let healthy: Vec<_> = all
            .iter()
            .copied()
            .filter(|(c, _)| !seen_down(snapshot, c))
            .collect();
        if !healthy.is_empty() {
            return healthy;
        }
    }
    all
}

fn has_namespace(snapshot: &MeshSnapshot, ns: &str) -> bool {
    // The first key of the namespace sorts first: ("ns", "").
    with_key(ns, "", |start| {
        snapshot
            .services
            .range(start..)
            .next()
            .is_some_and(|(k, _)| k.namespace == ns)
    })
}

thread_local! {
    /// A `ServiceKey` to look services up by borrowed labels without two allocations per query
    /// (`ServiceKey` owns its strings and borrows as nothing else).
    static LOOKUP_KEY: std::cell::RefCell<ServiceKey> = const {
        std::cell::RefCell::new(ServiceKey { namespace: String::new(), name: String::new() })
    };
}

fn with_key<T>(namespace: &str, name: &str, f: impl FnOnce(&ServiceKey) -> T) -> T {
    LOOKUP_KEY.with_borrow_mut(|key| {
        key.namespace.clear();
        key.namespace.push_str(namespace);
        key.name.clear();
        key.name.push_str(name);
        f(key)
    })
}

fn proto_matches(p: &causeway_api::ServicePort, proto: &str) -> bool {
    let ours = match p.protocol {
        causeway_api::Protocol::Tcp => "tcp",
        causeway_api::Protocol::Udp => "udp",
        causeway_api::Protocol::Sctp => "sctp",
    };
    ours == proto
}

fn port_matches(p: &causeway_api::ServicePort, name: &str, proto: &str) -> bool {
    !p.name.is_empty() && p.name.eq_ignore_ascii_case(name) && proto_matches(p, proto)
}

/// `<svc>.<ns>.svc.clusterset.local.`
fn key_fqdn(key: &ServiceKey) -> String {
    format!("{}.", key.clusterset_name())
}

fn service_name(key: &ServiceKey) -> Option<Name> {
    Name::from_ascii(key_fqdn(key)).ok()
}

#[cfg(test)]
mod tests;
