//! The federation model: clusters, service keys, exports, imports, health.
//!
//! These are also the JSON values stored under `/causeway/v2/` (DESIGN.md "etcd key schema (v2)");
//! every stored value carries `"schema": 2` and unknown fields are ignored.

use std::collections::BTreeMap;
use std::fmt;
use std::net::IpAddr;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

use crate::rare::Empty;

/// Version of the JSON values under `/causeway/v2/`.
pub const SCHEMA_VERSION: u32 = 2;

fn schema_v2() -> u32 {
    SCHEMA_VERSION
}

/// A name that is not a valid RFC 1123 label (cluster ID, namespace, service name, port name).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid {what} {value:?}: {reason}")]
pub struct InvalidName {
    pub what: &'static str,
    pub value: String,
    pub reason: &'static str,
}

/// Checks an RFC 1123 DNS label: 1-63 chars of `[a-z0-9-]`, starting and ending alphanumeric.
pub fn validate_dns_label(what: &'static str, value: &str) -> Result<(), InvalidName> {
    let err = |reason| InvalidName {
        what,
        value: value.to_string(),
        reason,
    };
    if value.is_empty() {
        return Err(err("must not be empty"));
    }
    if value.len() > 63 {
        return Err(err("must be at most 63 characters"));
    }
    if !value
        .bytes()
        .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
    {
        return Err(err(
            "must consist of lower case alphanumeric characters or '-'",
        ));
    }
    let first = value.as_bytes()[0];
    let last = value.as_bytes()[value.len() - 1];
    if first == b'-' || last == b'-' {
        return Err(err("must start and end with an alphanumeric character"));
    }
    Ok(())
}

// === impl ClusterId ===

/// A cluster ID: an RFC 1123 label, e.g. `east`.
///
/// Shared, not copied, when cloned: a federator holds one per export in several maps (its
/// folded etcd state, each service's view, each import's cluster list), 510,000 of them at
/// Cilium's scale.
#[derive(Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct ClusterId(std::sync::Arc<str>);

impl ClusterId {
    pub fn new(id: impl Into<String>) -> Result<Self, InvalidName> {
        let id = id.into();
        validate_dns_label("cluster ID", &id)?;
        Ok(Self(id.into()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl FromStr for ClusterId {
    type Err = InvalidName;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::new(s)
    }
}

impl TryFrom<String> for ClusterId {
    type Error = InvalidName;
    fn try_from(s: String) -> Result<Self, Self::Error> {
        Self::new(s)
    }
}

impl From<ClusterId> for String {
    fn from(c: ClusterId) -> String {
        c.0.to_string()
    }
}

impl fmt::Display for ClusterId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl fmt::Debug for ClusterId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:?}", self.0)
    }
}

// === impl ServiceKey ===

/// The DNS zone of imported services.
pub const CLUSTERSET_SUFFIX: &str = ".svc.clusterset.local";

/// A service, `(namespace, name)`, both RFC 1123 labels. Serialised as `"<ns>/<name>"` (so it can
/// key a JSON map).
#[derive(Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct ServiceKey {
    pub namespace: String,
    pub name: String,
}

impl ServiceKey {
    pub fn new(namespace: impl Into<String>, name: impl Into<String>) -> Result<Self, InvalidName> {
        let (namespace, name) = (namespace.into(), name.into());
        validate_dns_label("namespace", &namespace)?;
        validate_dns_label("service name", &name)?;
        Ok(Self { namespace, name })
    }

    /// `<svc>.<ns>.svc.clusterset.local`
    pub fn clusterset_name(&self) -> String {
        format!("{}.{}{}", self.name, self.namespace, CLUSTERSET_SUFFIX)
    }

    /// `<svc>.<ns>.svc.clusterset.local:<port>`: the `:authority` between gateways.
    pub fn authority(&self, port: u16) -> String {
        format!("{}:{port}", self.clusterset_name())
    }
}

impl FromStr for ServiceKey {
    type Err = InvalidName;
    /// Parses `<ns>/<svc>`.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.split_once('/') {
            Some((ns, name)) => Self::new(ns, name),
            None => Err(InvalidName {
                what: "service",
                value: s.to_string(),
                reason: "must be <namespace>/<name>",
            }),
        }
    }
}

impl TryFrom<String> for ServiceKey {
    type Error = InvalidName;
    fn try_from(s: String) -> Result<Self, Self::Error> {
        s.parse()
    }
}

impl From<ServiceKey> for String {
    fn from(k: ServiceKey) -> String {
        k.to_string()
    }
}

impl fmt::Display for ServiceKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.namespace, self.name)
    }
}

impl fmt::Debug for ServiceKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.namespace, self.name)
    }
}

// === Ports and types ===

#[derive(
    Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize, Default,
)]
#[serde(rename_all = "UPPERCASE")]
pub enum Protocol {
    #[default]
    Tcp,
    Udp,
    Sctp,
}

impl fmt::Display for Protocol {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Protocol::Tcp => "TCP",
            Protocol::Udp => "UDP",
            Protocol::Sctp => "SCTP",
        })
    }
}

/// A service port, as in the Kubernetes Service / ServiceImport spec.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct ServicePort {
    /// Empty for the single unnamed port of a service.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub name: String,
    #[serde(default)]
    pub protocol: Protocol,
    pub port: u16,
    /// `http`, `http2`, `grpc`, `tcp`... (Kubernetes `appProtocol`); decides how the gateway proxies.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub app_protocol: Option<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, Default)]
pub enum ServiceType {
    #[default]
    ClusterSetIP,
    Headless,
}

impl fmt::Display for ServiceType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            ServiceType::ClusterSetIP => "ClusterSetIP",
            ServiceType::Headless => "Headless",
        })
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, Default)]
pub enum SessionAffinity {
    #[default]
    None,
    ClientIP,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum BackendTlsMode {
    #[default]
    Plaintext,
    Mtls,
}

/// A backend endpoint of an exported service.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Endpoint {
    pub address: IpAddr,
    /// Target port when it differs from the service port.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub port: Option<u16>,
    #[serde(default = "default_true")]
    pub ready: bool,
    /// For headless services: `<hostname>.<cluster>.<svc>.<ns>.svc.clusterset.local`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hostname: Option<String>,
}

fn default_true() -> bool {
    true
}

impl Endpoint {
    /// Its name below `<cluster>.<svc>.<ns>.svc.clusterset.local` (KEP-1645): the hostname,
    /// lowercased, or for an endpoint without one the system-assigned name, its address with
    /// dashes (`10-1-5-1`, `fd00-5--1`).
    pub fn dns_label(&self) -> String {
        endpoint_dns_label(self.hostname.as_deref(), self.address)
    }
}

/// [`Endpoint::dns_label`] from its parts (the gateway has them from the config protocol).
pub fn endpoint_dns_label(hostname: Option<&str>, address: IpAddr) -> String {
    match hostname.filter(|h| !h.is_empty()) {
        Some(h) => h.to_ascii_lowercase(),
        None => match address {
            IpAddr::V4(v4) => v4.to_string().replace('.', "-"),
            IpAddr::V6(v6) => v6.to_string().replace(':', "-"),
        },
    }
}

// === Stored values ===

/// Value of `clusters/<cluster>/info`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ClusterRecord {
    #[serde(default = "schema_v2")]
    pub schema: u32,
    /// `host:port` of the cluster's gateway mTLS (peer) listener(s).
    #[serde(default)]
    pub gateway_addresses: Vec<String>,
    pub trust_domain: String,
    /// PEM of the CA(s) the cluster's gateway certificates chain to.
    #[serde(default)]
    pub trust_bundle_pem: String,
    /// `region`, `zone`, ... used for locality-ordered failover.
    #[serde(default)]
    pub locality: BTreeMap<String, String>,
    #[serde(default)]
    pub federator_version: String,
    /// When the cluster's federator certificate expires (Unix seconds), for `causeway status`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub certificate_not_after: Option<i64>,
}

/// Value of `exports/<ns>/<svc>/<cluster>`: one cluster's export of one service.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ExportRecord {
    #[serde(default = "schema_v2")]
    pub schema: u32,
    /// Shared with every record of an equal list the holder interned ([`crate::ports::PortPool`]).
    #[serde(default)]
    pub ports: crate::ports::Ports,
    #[serde(default, rename = "type")]
    pub service_type: ServiceType,
    #[serde(default)]
    pub session_affinity: SessionAffinity,
    /// Creation time of the export, milliseconds since the Unix epoch; the oldest wins a conflict.
    pub created_unix_ms: i64,
    #[serde(default)]
    pub ready_endpoints: u32,
    #[serde(default)]
    pub backend_tls_mode: BackendTlsMode,
    /// Endpoints, published for headless services (DNS answers per endpoint).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub endpoints: Vec<Endpoint>,
    /// Clusters allowed to call this export through the gateways; empty = all.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub allowed_source_clusters: Vec<ClusterId>,
    /// SPIFFE IDs allowed to call; empty = all.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub allowed_identities: Vec<String>,
    /// Weight within its priority for canary splits (default 100).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub weight: Option<u32>,
    /// The service's own address inside its cluster (Kubernetes ClusterIP, or the VM/lab address);
    /// DNS `local-first` answers it to clients of the same cluster.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub service_ip: Option<IpAddr>,
    /// How callers' gateways treat calls to the service; the oldest export's applies to the
    /// import ([`Import`] carries it).
    #[serde(default, skip_serializing_if = "TrafficPolicy::is_empty")]
    pub traffic_policy: crate::rare::Rare<TrafficPolicy>,
    /// What the export asks importing clusters to carry (MCS API v0.5.0); the oldest export's
    /// applies, a differing one is a conflict.
    #[serde(default, skip_serializing_if = "Exported::is_empty")]
    pub exported: crate::rare::Rare<Exported>,
}

/// An export with every field at its default and the current schema: build one with
/// `ExportRecord { ports, created_unix_ms, ..ExportRecord::default() }`.
impl Default for ExportRecord {
    fn default() -> Self {
        Self {
            schema: SCHEMA_VERSION,
            ports: Default::default(),
            service_type: ServiceType::default(),
            session_affinity: SessionAffinity::default(),
            created_unix_ms: 0,
            ready_endpoints: 0,
            backend_tls_mode: BackendTlsMode::default(),
            endpoints: Vec::new(),
            allowed_source_clusters: Vec::new(),
            allowed_identities: Vec::new(),
            weight: None,
            service_ip: None,
            traffic_policy: Default::default(),
            exported: Default::default(),
        }
    }
}

/// What an export asks the importing clusters to carry onto their ServiceImport (MCS API
/// v0.5.0): the ServiceExport's `exportedLabels` and `exportedAnnotations`, and the Service's
/// `internalTrafficPolicy` and `trafficDistribution`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Exported {
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub labels: BTreeMap<String, String>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub annotations: BTreeMap<String, String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub internal_traffic_policy: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub traffic_distribution: Option<String>,
}

impl Exported {
    pub fn is_empty(&self) -> bool {
        self == Self::empty()
    }
}

impl crate::rare::Empty for Exported {
    fn empty() -> &'static Self {
        static EMPTY: Exported = Exported {
            labels: BTreeMap::new(),
            annotations: BTreeMap::new(),
            internal_traffic_policy: None,
            traffic_distribution: None,
        };
        &EMPTY
    }
}

/// What an exporter asks of the gateways that call its service. Absent fields keep the
/// gateways' defaults (docs/gateway.md "Retries, timeouts, breakers, outliers").
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct TrafficPolicy {
    /// Time until the response headers, over all attempts.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeout_ms: Option<u64>,
    /// Retries after the first attempt.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retry_attempts: Option<u32>,
    /// Circuit breaker: active requests per (service, cluster), and how many may wait.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_concurrent: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_pending: Option<u32>,
    /// Outlier detection: 5xx or connect failures in a row before ejection, and its first length.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub outlier_consecutive_errors: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub outlier_base_ejection_ms: Option<u64>,
    /// Requests per second each calling cluster may send, enforced by the exporting cluster's
    /// gateway for its own endpoints.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rate_limit: Option<RateLimit>,
    /// The order in which callers try other clusters when their own cannot serve (DESIGN.md
    /// "the export's failover order"); clusters not listed come after, by locality.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub failover: Vec<ClusterId>,
}

impl TrafficPolicy {
    pub fn is_empty(&self) -> bool {
        self == Self::empty()
    }
}

impl crate::rare::Empty for TrafficPolicy {
    fn empty() -> &'static Self {
        static EMPTY: TrafficPolicy = TrafficPolicy {
            timeout_ms: None,
            retry_attempts: None,
            max_concurrent: None,
            max_pending: None,
            outlier_consecutive_errors: None,
            outlier_base_ejection_ms: None,
            rate_limit: None,
            failover: Vec::new(),
        };
        &EMPTY
    }
}

/// A token bucket: `burst` tokens, refilled at `requests_per_second`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct RateLimit {
    pub requests_per_second: u32,
    pub burst: u32,
}

/// Value of `synced/<cluster>`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SyncedRecord {
    #[serde(default = "schema_v2")]
    pub schema: u32,
    pub revision: i64,
}

/// Value of `health/<observer>/<cluster>`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HealthRecord {
    #[serde(default = "schema_v2")]
    pub schema: u32,
    pub up: bool,
    /// Up, but a probe missed (or a request found the path dead): not yet down.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub suspect: bool,
    #[serde(default)]
    pub rtt_micros: u64,
    #[serde(default)]
    pub observed_unix_ms: i64,
}

/// Value of `drills/<id>` (an operator's `causeway drill`) and of `clusters/<c>/drills/<id>` (a
/// Drill resource run by `c`'s federator): drain `service` in `cluster` while the key lives,
/// unless it is still `pending`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DrillRecord {
    #[serde(default = "schema_v2")]
    pub schema: u32,
    pub service: ServiceKey,
    pub cluster: ClusterId,
    pub start_unix_ms: i64,
    pub end_unix_ms: i64,
    /// Announced, not draining yet: the observers take their baseline meanwhile.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub pending: bool,
    /// The clusters whose federators probe the service during the drill and report to
    /// `clusters/<observer>/drill-reports/<creator>/<id>`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub observers: Vec<ClusterId>,
    /// What the observers call.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub probe: Option<DrillProbe>,
    /// The Drill resource it runs for, `<namespace>/<name>`.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub origin: String,
}

impl DrillRecord {
    /// Whether this drill drains `service` in `cluster` now: the one rule DNS, the gateway
    /// config and the view ask.
    pub fn drains(&self, service: &ServiceKey, cluster: &ClusterId) -> bool {
        !self.pending && &self.service == service && &self.cluster == cluster
    }
}

/// What a drill's observers call: `GET <path>` on the service's port, every `interval_ms`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DrillProbe {
    pub port: u16,
    pub path: String,
    pub interval_ms: u64,
}

/// The longest path a drill probe may GET, and the most timeline events a report keeps.
pub const DRILL_PATH_MAX: usize = 256;
pub const DRILL_TIMELINE_MAX: usize = 64;

/// Value of `clusters/<observer>/drill-reports/<creator>/<id>`: what one observer measured,
/// the fields `causeway drill` prints.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct DrillReport {
    #[serde(default = "schema_v2")]
    pub schema: u32,
    /// `Probing` while the drill runs, `Done` with the results.
    pub phase: String,
    /// The observer's client could not run (no DNS answer before the drill, ...).
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub error: String,
    #[serde(default)]
    pub interrupted: bool,
    #[serde(default)]
    pub baseline: DrillPhase,
    #[serde(default)]
    pub failover: DrillPhase,
    #[serde(default)]
    pub failback: DrillPhase,
    /// The client's DNS answer had to move (it was the cluster's own address, not the
    /// ClusterSetIP).
    #[serde(default)]
    pub dns_expected_to_move: bool,
    /// After the drain began (failover) or ended (failback): when every DNS answer had moved,
    /// when traffic had.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dns_moved_ms: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub traffic_moved_ms: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dns_back_ms: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub traffic_back_ms: Option<u64>,
    #[serde(default)]
    pub passed: bool,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub verdict: String,
    /// What changed, in order: DNS answers, who answered, failures (at most
    /// [`DRILL_TIMELINE_MAX`]).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub timeline: Vec<DrillEvent>,
}

/// The requests of one phase of a drill, summarised.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct DrillPhase {
    /// The last DNS answer of the phase.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dns: Option<IpAddr>,
    /// Successful answers by cluster.
    #[serde(default)]
    pub clusters: BTreeMap<String, u64>,
    #[serde(default)]
    pub requests: u64,
    #[serde(default)]
    pub failed: u64,
}

/// One change a drill's client saw, `at_ms` after the drain began (negative: before).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct DrillEvent {
    pub at_ms: i64,
    pub event: String,
}

/// Value of `vips/<ns>/<svc>`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct VipRecord {
    #[serde(default = "schema_v2")]
    pub schema: u32,
    pub ip: IpAddr,
}

// === Imports ===

/// Reasons of the MCS `Conflict` condition.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub enum ConflictReason {
    PortConflict,
    TypeConflict,
    SessionAffinityConflict,
    LabelsConflict,
    AnnotationsConflict,
    InternalTrafficPolicyConflict,
    TrafficDistributionConflict,
}

impl fmt::Display for ConflictReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            ConflictReason::PortConflict => "PortConflict",
            ConflictReason::TypeConflict => "TypeConflict",
            ConflictReason::SessionAffinityConflict => "SessionAffinityConflict",
            ConflictReason::LabelsConflict => "LabelsConflict",
            ConflictReason::AnnotationsConflict => "AnnotationsConflict",
            ConflictReason::InternalTrafficPolicyConflict => "InternalTrafficPolicyConflict",
            ConflictReason::TrafficDistributionConflict => "TrafficDistributionConflict",
        })
    }
}

/// The conflict state of one export after the merge.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ExportConditions {
    /// Sorted, deduplicated; empty means `Conflict=False`.
    pub conflicts: Vec<ConflictReason>,
}

impl ExportConditions {
    pub fn conflict(&self) -> bool {
        !self.conflicts.is_empty()
    }

    /// The condition reason: `PortConflict,TypeConflict`, or `NoConflicts`.
    pub fn reason(&self) -> String {
        if self.conflicts.is_empty() {
            return "NoConflicts".to_string();
        }
        self.conflicts
            .iter()
            .map(ToString::to_string)
            .collect::<Vec<_>>()
            .join(",")
    }
}

/// A merged import: one service as seen mesh-wide.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Import {
    pub key: ServiceKey,
    #[serde(rename = "type")]
    pub service_type: ServiceType,
    pub ports: Vec<ServicePort>,
    pub session_affinity: SessionAffinity,
    /// Clusters exporting the service, sorted.
    pub clusters: Vec<ClusterId>,
    /// Whether any export of the service is in conflict.
    pub conflict: bool,
    /// The oldest export's [`Exported`].
    #[serde(default, skip_serializing_if = "Exported::is_empty")]
    pub exported: Exported,
}
