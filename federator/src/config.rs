//! Federator configuration: one serde `Config`, loaded from YAML, overridden by flags and
//! `CAUSEWAY_*` environment variables, then validated with errors that name the field.
//!
//! Every default lives in this file (see `docs/federator.md` for the table).

use std::collections::BTreeMap;
use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::time::Duration;

use causeway_api::net::Cidr;

pub use crate::etcd::EtcdConfig;
use causeway_api::ClusterId;
use serde::{Deserialize, Serialize};

/// A configuration error; the binary exits with code 64 on it.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("config file: {0}")]
    File(#[from] causeway_api::file::FileError),
    #[error("invalid config field `{field}`: {reason}")]
    Invalid { field: &'static str, reason: String },
}

fn invalid(field: &'static str, reason: impl Into<String>) -> ConfigError {
    ConfigError::Invalid {
        field,
        reason: reason.into(),
    }
}

/// Source of this cluster's exports.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum SourceKind {
    /// Export files in `exports_dir` (none: this cluster only imports).
    #[default]
    File,
    /// ServiceExport objects of the Kubernetes API.
    Kube,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    /// This cluster's ID (RFC 1123 label). Required.
    pub cluster: Option<String>,
    /// Name of this replica, for election values and logs (default: host name + pid).
    pub node: Option<String>,
    pub etcd: EtcdConfig,
    /// Where local exports come from: `file` (`exports_dir`, universal mode) or `kube`
    /// (ServiceExport objects, with the Kubernetes config of `KUBECONFIG` or the pod).
    pub source: SourceKind,
    /// Write ServiceImports, derived Services and EndpointSlices for the mesh's imports.
    pub kube_sink: bool,
    /// The Kubernetes sink's options.
    pub kube: crate::sink::kube::KubeOptions,
    /// Directory of export files (universal mode). Watched for changes.
    pub exports_dir: Option<PathBuf>,
    /// How often the export directory is rescanned.
    #[serde(with = "duration_str")]
    pub exports_poll_interval: Duration,
    /// Admin HTTP: /metrics, /ready, /debug/snapshot.
    pub admin_listen: SocketAddr,
    /// Mesh DNS (UDP and TCP). `null` disables it.
    pub dns_listen: Option<SocketAddr>,
    #[serde(with = "duration_str")]
    pub dns_ttl: Duration,
    /// DNS answer policy of every import: `local-first` or `via-gateway`.
    pub dns_policy: causeway_dns::AnswerPolicy,
    /// Per-import policy, keyed `<ns>/<svc>`.
    pub dns_policy_overrides: BTreeMap<String, causeway_dns::AnswerPolicy>,
    /// What this cluster's gateways do when calling an import, over its exporter's traffic
    /// policy, keyed `<ns>/<svc>` (docs/federator.md "Import policies").
    pub import_policies: BTreeMap<String, ImportPolicySpec>,
    /// TTL of the cluster lease (DESIGN: 10 s).
    #[serde(with = "duration_str")]
    pub lease_ttl: Duration,
    /// Keepalive interval of the cluster lease (DESIGN: 3 s).
    #[serde(with = "duration_str")]
    pub keepalive_interval: Duration,
    /// How long a vanished cluster's exports keep being served.
    #[serde(with = "duration_str")]
    pub stale_grace: Duration,
    /// Debounce of snapshot publication after a change.
    #[serde(with = "duration_str")]
    pub debounce: Duration,
    /// `host:port` of this cluster's gateway peer listener(s), published in `clusters/<c>`.
    pub gateway_addresses: Vec<String>,
    /// Trust domain of this cluster (default `<cluster>.causeway.mesh`).
    pub trust_domain: Option<String>,
    /// PEM bundle peers verify this cluster's gateways against (published in `clusters/<c>`).
    pub trust_bundle_file: Option<PathBuf>,
    /// Locality labels (`region`, `zone`) for failover ordering.
    pub locality: BTreeMap<String, String>,
    /// Range for ClusterSetIPs in universal mode, e.g. `10.255.0.0/16`.
    pub vip_range: Option<String>,
    /// How long a ClusterSetIP stays reserved after its import is gone (longer than resolvers
    /// cache the answer), before another import may get it.
    #[serde(with = "duration_str")]
    pub vip_release_grace: Duration,
    /// Pod networks are flat (every pod reachable from every cluster): headless imports answer
    /// the pods' own addresses. Off (the default, with `vip_range`): each endpoint of another
    /// cluster gets an address of the range that leads to this cluster's gateway.
    pub flat_pod_network: bool,
    /// gRPC endpoint the gateways take their config from. `null` disables it.
    pub config_listen: Option<SocketAddr>,
    /// The federator's certificate chain and key (mTLS of the config endpoint). Without them the
    /// config endpoint is plaintext (lab/dev only).
    pub cert_file: Option<PathBuf>,
    pub key_file: Option<PathBuf>,
    /// This cluster's issuer: the federator signs its gateways' certificates (`Config/Certify`)
    /// and its own with it, and `cert_file`/`key_file` are not needed (docs/certificates.md).
    pub issuer: Option<crate::issuer::IssuerConfig>,
    /// How often the trust bundle, issuer and certificate files are looked at for changes.
    #[serde(with = "duration_str")]
    pub tls_reload_interval: Duration,
    /// Drill resources and observing drills (docs/drills.md).
    pub drills: DrillOptions,
}

/// `drills:` of the config: how this federator runs Drill resources (Kubernetes mode) and how it
/// observes drills that name its cluster.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct DrillOptions {
    /// `host:port` of this cluster's gateway egress: an observer sends its requests through it
    /// as an HTTP proxy, as a meshed client would. Without it the observer connects to the DNS
    /// answer (a ClusterSetIP, which kube-proxy leads to the gateway).
    pub gateway_egress: Option<String>,
    /// The longest drill a Drill resource may ask for.
    #[serde(with = "duration_str")]
    pub max_duration: Duration,
    /// TTL of a drill's etcd lease, kept alive while it runs: when the federator running it
    /// dies the drain ends within this.
    #[serde(with = "duration_str")]
    pub lease_ttl: Duration,
    /// How long an observer waits for DNS and traffic to come back after the drain.
    #[serde(with = "duration_str")]
    pub failback_timeout: Duration,
    /// The most Drills this federator runs at once, and the most drills it observes at once
    /// (each observation is a client calling every `interval`): more are rejected
    /// (`TooManyDrills`) / not observed, so one namespace's Drills cannot load the cluster.
    pub max_concurrent: usize,
}

impl Default for DrillOptions {
    fn default() -> Self {
        Self {
            gateway_egress: None,
            max_duration: Duration::from_secs(3600),
            lease_ttl: Duration::from_secs(5),
            failback_timeout: Duration::from_secs(30),
            max_concurrent: 8,
        }
    }
}

impl Default for Config {
    fn default() -> Self {
        Self {
            cluster: None,
            node: None,
            etcd: EtcdConfig::default(),
            source: SourceKind::File,
            kube_sink: false,
            kube: crate::sink::kube::KubeOptions::default(),
            exports_dir: None,
            exports_poll_interval: Duration::from_millis(250),
            admin_listen: SocketAddr::from(([127, 0, 0, 1], 9090)),
            dns_listen: None,
            dns_ttl: Duration::from_secs(5),
            dns_policy: causeway_dns::AnswerPolicy::LocalFirst,
            dns_policy_overrides: BTreeMap::new(),
            import_policies: BTreeMap::new(),
            lease_ttl: Duration::from_secs(10),
            keepalive_interval: Duration::from_secs(3),
            stale_grace: Duration::from_secs(300),
            debounce: Duration::from_millis(20),
            gateway_addresses: Vec::new(),
            trust_domain: None,
            trust_bundle_file: None,
            locality: BTreeMap::new(),
            vip_range: None,
            vip_release_grace: Duration::from_secs(300),
            flat_pod_network: false,
            config_listen: Some(SocketAddr::from(([127, 0, 0, 1], 9091))),
            cert_file: None,
            key_file: None,
            issuer: None,
            drills: DrillOptions::default(),
            tls_reload_interval: Duration::from_secs(5),
        }
    }
}

/// A validated configuration.
#[derive(Debug, Clone)]
pub struct Validated {
    pub cluster: ClusterId,
    pub node: String,
    pub trust_domain: String,
    pub vip_range: Option<VipRange>,
    /// `import_policies`, checked.
    pub import_overrides: crate::policy::ImportOverrides,
    pub config: Config,
}

/// One entry of `import_policies`: the fields of an export's traffic policy (all optional),
/// an egress rate limit, and header routes.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ImportPolicySpec {
    pub timeout: Option<String>,
    pub retries: Option<u32>,
    pub max_concurrent: Option<u32>,
    pub max_pending: Option<u32>,
    pub outlier_consecutive_errors: Option<u32>,
    pub outlier_base_ejection: Option<String>,
    pub failover: Vec<String>,
    /// What this cluster may send to the import, all its gateways' egress together per gateway.
    pub rate_limit: Option<RateLimitSpec>,
    pub header_routes: Vec<HeaderRouteSpec>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RateLimitSpec {
    pub requests_per_second: u32,
    #[serde(default)]
    pub burst: Option<u32>,
}

/// Requests whose `header` equals `value` go to `cluster`, or are split by `weights`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HeaderRouteSpec {
    pub header: String,
    pub value: String,
    #[serde(default)]
    pub cluster: Option<String>,
    #[serde(default)]
    pub weights: BTreeMap<String, u32>,
}

impl ImportPolicySpec {
    /// Checks it; errors name `import_policies.<key>.<field>`.
    fn parse(&self, key: &str) -> Result<crate::policy::ImportOverride, String> {
        use crate::policy::PolicyField as F;
        let name = |f: &str| format!("import_policies.{key}.{f}");
        let mut policy = crate::policy::PolicyValues {
            timeout: self.timeout.as_deref(),
            retries: self.retries,
            max_concurrent: self.max_concurrent,
            max_pending: self.max_pending,
            outlier_consecutive_errors: self.outlier_consecutive_errors,
            outlier_base_ejection: self.outlier_base_ejection.as_deref(),
            failover: &self.failover,
            rate_limit: self
                .rate_limit
                .as_ref()
                .map(|r| (r.requests_per_second, r.burst)),
        }
        .parse(|f| {
            name(match f {
                F::Timeout => "timeout",
                F::Retries => "retries",
                F::MaxConcurrent => "max_concurrent",
                F::MaxPending => "max_pending",
                F::OutlierConsecutiveErrors => "outlier_consecutive_errors",
                F::OutlierBaseEjection => "outlier_base_ejection",
                F::Failover => "failover",
                F::RateLimitRps => "rate_limit.requests_per_second",
                F::RateLimitBurst => "rate_limit.burst",
            })
        })?;
        let egress_rate_limit = policy.rate_limit.take();
        let mut header_routes = Vec::with_capacity(self.header_routes.len());
        for (i, r) in self.header_routes.iter().enumerate() {
            let at = name(&format!("header_routes[{i}]"));
            let header = r.header.to_ascii_lowercase();
            axum::http::HeaderName::from_bytes(header.as_bytes())
                .map_err(|_| format!("{at}.header {:?} is not a header name", r.header))?;
            axum::http::HeaderValue::from_str(&r.value)
                .map_err(|_| format!("{at}.value {:?} is not a header value", r.value))?;
            let check = |c: &str| {
                ClusterId::new(c)
                    .map(|_| ())
                    .map_err(|e| format!("{at}: {e}"))
            };
            match (&r.cluster, r.weights.is_empty()) {
                (Some(c), true) => check(c)?,
                (None, false) => {
                    for c in r.weights.keys() {
                        check(c)?;
                    }
                }
                _ => return Err(format!("{at} needs either cluster or weights")),
            }
            header_routes.push(causeway_api::proto::HeaderRoute {
                header,
                value: r.value.clone(),
                cluster: r.cluster.clone().unwrap_or_default(),
                weights: r.weights.clone().into_iter().collect(),
            });
        }
        Ok(crate::policy::ImportOverride {
            policy,
            egress_rate_limit,
            header_routes,
        })
    }
}

impl Validated {
    /// The DNS server's config, when DNS is enabled.
    pub fn dns(&self) -> Option<causeway_dns::DnsConfig> {
        let c = &self.config;
        let listen = c.dns_listen?;
        Some(causeway_dns::DnsConfig {
            listen,
            ttl: c.dns_ttl,
            default_policy: c.dns_policy,
            policy_overrides: c
                .dns_policy_overrides
                .iter()
                .filter_map(|(k, p)| Some((k.parse().ok()?, *p)))
                .collect(),
            ..causeway_dns::DnsConfig::default()
        })
    }
}

impl Config {
    pub fn from_yaml_file(path: &Path) -> Result<Self, ConfigError> {
        Ok(causeway_api::file::from_yaml_file(path)?)
    }

    pub fn validate(self) -> Result<Validated, ConfigError> {
        let cluster = self
            .cluster
            .clone()
            .ok_or_else(|| invalid("cluster", "is required"))?;
        let cluster = ClusterId::new(cluster).map_err(|e| invalid("cluster", e.to_string()))?;
        if self.etcd.endpoints.is_empty() {
            return Err(invalid("etcd.endpoints", "needs at least one endpoint"));
        }
        for ep in &self.etcd.endpoints {
            if !(ep.starts_with("http://") || ep.starts_with("https://")) {
                return Err(invalid(
                    "etcd.endpoints",
                    format!("{ep:?} must start with http:// or https://"),
                ));
            }
        }
        if self.etcd.cert_file.is_some() != self.etcd.key_file.is_some() {
            return Err(invalid(
                "etcd.cert_file",
                "etcd.cert_file and etcd.key_file go together",
            ));
        }
        if self.etcd.username.is_some() != self.etcd.password.is_some() {
            return Err(invalid(
                "etcd.username",
                "etcd.username and etcd.password go together",
            ));
        }
        if self.cert_file.is_some() != self.key_file.is_some() {
            return Err(invalid("cert_file", "cert_file and key_file go together"));
        }
        if self.cert_file.is_some() && self.trust_bundle_file.is_none() {
            return Err(invalid(
                "trust_bundle_file",
                "is required with cert_file: it verifies the gateways' client certificates",
            ));
        }
        if let Some(issuer) = &self.issuer {
            if self.trust_bundle_file.is_none() {
                return Err(invalid(
                    "trust_bundle_file",
                    "is required with issuer: it is what the issued certificates chain to",
                ));
            }
            use crate::issuer::{MAX_LIFETIME, MIN_LIFETIME};
            if issuer.lifetime < MIN_LIFETIME || issuer.lifetime > MAX_LIFETIME {
                return Err(invalid(
                    "issuer.lifetime",
                    format!(
                        "{} is outside {}..{}",
                        format_duration(issuer.lifetime),
                        format_duration(MIN_LIFETIME),
                        format_duration(MAX_LIFETIME)
                    ),
                ));
            }
        }
        if self.vip_release_grace < self.dns_ttl {
            return Err(invalid(
                "vip_release_grace",
                "must be at least dns_ttl: a freed address must be out of every resolver's cache",
            ));
        }
        if self.tls_reload_interval < Duration::from_millis(100) {
            return Err(invalid("tls_reload_interval", "must be at least 100ms"));
        }
        if self.lease_ttl < Duration::from_secs(2) {
            return Err(invalid("lease_ttl", "must be at least 2s"));
        }
        if self.keepalive_interval.is_zero() || self.keepalive_interval >= self.lease_ttl {
            return Err(invalid(
                "keepalive_interval",
                "must be more than 0 and less than lease_ttl",
            ));
        }
        if self.exports_poll_interval.is_zero() {
            return Err(invalid("exports_poll_interval", "must be more than 0"));
        }
        if self.drills.lease_ttl < Duration::from_secs(2) {
            return Err(invalid("drills.lease_ttl", "must be at least 2s"));
        }
        if self.drills.max_duration < Duration::from_secs(2) {
            return Err(invalid("drills.max_duration", "must be at least 2s"));
        }
        if let Some(egress) = &self.drills.gateway_egress {
            let port = egress.rsplit_once(':').map(|(h, p)| (h, p.parse::<u16>()));
            if !matches!(port, Some((h, Ok(p))) if !h.is_empty() && p != 0) {
                return Err(invalid(
                    "drills.gateway_egress",
                    format!("{egress:?} is not host:port"),
                ));
            }
        }
        if self.source == SourceKind::Kube && self.exports_dir.is_some() {
            return Err(invalid(
                "exports_dir",
                "is for `source: file`; with `source: kube` exports are ServiceExport objects",
            ));
        }
        if (self.source == SourceKind::Kube || self.kube_sink) && self.kube.gateway_port == 0 {
            return Err(invalid("kube.gateway_port", "must be 1..=65535"));
        }
        if self.kube_sink {
            let (first, count) = (self.kube.gateway_port_first, self.kube.gateway_port_count);
            let last = u32::from(first) + u32::from(count);
            if first == 0 || last > 65536 {
                return Err(invalid(
                    "kube.gateway_port_first",
                    format!("{first} + gateway_port_count {count} must stay within 1..=65535"),
                ));
            }
            if (u32::from(first)..last).contains(&u32::from(self.kube.gateway_port)) {
                return Err(invalid(
                    "kube.gateway_port",
                    format!(
                        "{} is inside the gateway port range {first}..{last}",
                        self.kube.gateway_port
                    ),
                ));
            }
        }
        for key in self.dns_policy_overrides.keys() {
            key.parse::<causeway_api::ServiceKey>()
                .map_err(|e| invalid("dns_policy_overrides", e.to_string()))?;
        }
        let vip_range = match &self.vip_range {
            Some(r) => Some(VipRange::parse(r).map_err(|e| invalid("vip_range", e))?),
            None => None,
        };
        let node = self.node.clone().unwrap_or_else(default_node);
        let trust_domain = self.trust_domain.clone().unwrap_or_else(|| {
            format!(
                "{cluster}.{}",
                causeway_api::spiffe::DEFAULT_TRUST_DOMAIN_SUFFIX
            )
        });
        let mut import_overrides = crate::policy::ImportOverrides::new();
        for (key, spec) in &self.import_policies {
            let service: causeway_api::ServiceKey = key
                .parse()
                .map_err(|e| invalid("import_policies", format!("{key:?}: {e}")))?;
            let over = spec.parse(key).map_err(|e| invalid("import_policies", e))?;
            import_overrides.insert(service, over);
        }
        Ok(Validated {
            cluster,
            node,
            trust_domain,
            vip_range,
            import_overrides,
            config: self,
        })
    }
}

fn default_node() -> String {
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_string())
        .unwrap_or_else(|_| "node".to_string());
    format!("{host}-{}", std::process::id())
}

// === impl VipRange ===

/// An IPv4 CIDR range for ClusterSetIPs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct VipRange {
    pub base: u32,
    pub prefix: u8,
}

impl VipRange {
    pub fn parse(s: &str) -> Result<Self, String> {
        let cidr: Cidr = s.parse()?;
        let IpAddr::V4(base) = cidr.network() else {
            return Err(format!("{s:?}: {} is not an IPv4 address", cidr.addr));
        };
        if !(8..=30).contains(&cidr.len) {
            return Err(format!("{s:?}: prefix length must be 8..=30"));
        }
        Ok(Self {
            base: u32::from(base),
            prefix: cidr.len,
        })
    }

    /// Usable addresses (network and broadcast excluded).
    pub fn size(&self) -> u32 {
        (1u32 << (32 - self.prefix)) - 2
    }

    /// The `i`-th usable address (wraps).
    pub fn nth(&self, i: u32) -> IpAddr {
        IpAddr::V4(std::net::Ipv4Addr::from(self.base + 1 + (i % self.size())))
    }

    pub fn contains(&self, ip: IpAddr) -> bool {
        match ip {
            IpAddr::V4(v4) => (u32::from(v4) & (u32::MAX << (32 - self.prefix))) == self.base,
            IpAddr::V6(_) => false,
        }
    }
}

// === durations ===

pub(crate) use causeway_api::duration::serde_str as duration_str;
pub use causeway_api::duration::{format_duration, parse_duration};

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn validate_names_the_field() {
        let err = Config::default().validate().unwrap_err().to_string();
        assert!(err.contains("`cluster`"), "{err}");
        let c = Config {
            cluster: Some("East_1".into()),
            ..Config::default()
        };
        let err = c.validate().unwrap_err().to_string();
        assert!(err.contains("`cluster`") && err.contains("East_1"), "{err}");
        let c = Config {
            cluster: Some("east".into()),
            keepalive_interval: Duration::from_secs(20),
            ..Config::default()
        };
        let err = c.validate().unwrap_err().to_string();
        assert!(err.contains("keepalive_interval"), "{err}");
        let c = Config {
            cluster: Some("east".into()),
            vip_range: Some("10.0.0.0/40".into()),
            ..Config::default()
        };
        assert!(c.validate().unwrap_err().to_string().contains("vip_range"));
        let kube = |first: u16, count: u16, egress: u16| Config {
            cluster: Some("east".into()),
            kube_sink: true,
            kube: crate::sink::kube::KubeOptions {
                gateway_port: egress,
                gateway_port_first: first,
                gateway_port_count: count,
                ..Default::default()
            },
            ..Config::default()
        };
        kube(20000, 10000, 15001).validate().unwrap();
        kube(65000, 536, 15001).validate().unwrap();
        let err = kube(65000, 537, 15001).validate().unwrap_err().to_string();
        assert!(err.contains("kube.gateway_port_first"), "{err}");
        let err = kube(15000, 10, 15001).validate().unwrap_err().to_string();
        assert!(
            err.contains("kube.gateway_port") && err.contains("15001"),
            "{err}"
        );
    }

    #[test]
    fn yaml_config() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("f.yaml");
        std::fs::write(
            &p,
            "cluster: east\nlease_ttl: 4s\netcd:\n  endpoints: [\"http://127.0.0.1:1\"]\n",
        )
        .unwrap();
        let c = Config::from_yaml_file(&p).unwrap().validate().unwrap();
        assert_eq!(c.cluster.as_str(), "east");
        assert_eq!(c.config.lease_ttl, Duration::from_secs(4));
        assert_eq!(c.trust_domain, "east.causeway.mesh");
        std::fs::write(&p, "cluster: east\nbogus: 1\n").unwrap();
        let err = Config::from_yaml_file(&p).unwrap_err().to_string();
        assert!(err.contains("f.yaml") && err.contains("bogus"), "{err}");
    }

    #[test]
    fn import_policies_are_checked_and_named() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("f.yaml");
        let write = |body: &str| {
            std::fs::write(&p, format!("cluster: east\nimport_policies:\n{body}")).unwrap();
            Config::from_yaml_file(&p).and_then(Config::validate)
        };
        let ok = write(
            "  shop/cart:\n    timeout: 2s\n    retries: 0\n    rate_limit: {requests_per_second: 50}\n    header_routes:\n      - {header: X-Canary, value: \"1\", cluster: west}\n      - {header: x-split, value: \"yes\", weights: {west: 90, north: 10}}\n",
        )
        .unwrap();
        let key: causeway_api::ServiceKey = "shop/cart".parse().unwrap();
        let o = &ok.import_overrides[&key];
        assert_eq!(o.policy.timeout_ms, Some(2000));
        assert_eq!(o.policy.retry_attempts, Some(0));
        assert_eq!(
            o.policy.rate_limit, None,
            "the rate limit is the egress one"
        );
        assert_eq!(o.egress_rate_limit.unwrap().requests_per_second, 50);
        assert_eq!(o.header_routes[0].header, "x-canary");
        assert_eq!(o.header_routes[1].weights["west"], 90);
        for (body, want) in [
            ("  Shop/cart: {}\n", "Shop/cart"),
            ("  shop/cart: {timeout: soon}\n", "import_policies.shop/cart.timeout"),
            (
                "  shop/cart:\n    header_routes: [{header: x, value: \"1\"}]\n",
                "header_routes[0] needs either cluster or weights",
            ),
            (
                "  shop/cart:\n    header_routes: [{header: \"bad header\", value: \"1\", cluster: west}]\n",
                "bad header",
            ),
            ("  shop/cart: {timeOut: 2s}\n", "timeOut"),
        ] {
            let err = write(body).unwrap_err().to_string();
            assert!(err.contains(want), "{err:?} should name {want:?}");
        }
    }

    #[test]
    fn vip_range() {
        let r = VipRange::parse("10.255.0.0/16").unwrap();
        assert_eq!(r.nth(0).to_string(), "10.255.0.1");
        assert!(r.contains("10.255.3.4".parse().unwrap()));
        assert!(!r.contains("10.254.3.4".parse().unwrap()));
        assert_eq!(r.size(), 65534);
    }
}
