//! The gateway's configuration: one serde [`Config`], loaded from an optional YAML file
//! (`--settings`), overridden by flags and `CAUSEWAY_GATEWAY_*` environment variables, then
//! [`Config::validate`]d. Every default lives in [`Config::default`] and docs/gateway.md.

use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};

pub use causeway_api::net::Cidr;
use causeway_api::ClusterId;
use serde::{Deserialize, Serialize};

/// Exit code for bad configuration (sysexits EX_USAGE).
pub const EXIT_CONFIG: i32 = 64;

/// Everything the gateway needs to start. Durations are milliseconds.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    /// This gateway's cluster ID (RFC 1123 label).
    pub cluster: String,
    /// Name of this replica (pod or host name), sent to the federator and logged.
    pub node: String,
    /// PEM chain of the gateway's X.509-SVID (leaf first).
    pub cert: PathBuf,
    /// PEM private key of the SVID.
    pub key: PathBuf,
    /// PEM trust bundle (the federation roots).
    pub trust_bundle: PathBuf,
    /// `https://host:port` of the federator's config endpoint; none = run from
    /// `config_file` / `state_dir` / in-process updates only.
    pub federator: Option<String>,
    /// Where the last good config is kept (`last-good.pb`); none = not persisted.
    pub state_dir: Option<PathBuf>,
    /// A `ConfigSnapshot` in protobuf binary form (as written to the state dir) to start from.
    pub config_file: Option<PathBuf>,
    /// Local clients: HTTP/1.1 and h2c routed by Host/:authority, CONNECT for TCP.
    pub egress_listen: SocketAddr,
    /// Peer gateways: mTLS, HTTP/2.
    pub peer_listen: SocketAddr,
    /// Admin HTTP: /metrics, /ready, /live, /config_dump, /peers.
    pub admin_listen: SocketAddr,
    /// ClusterSetIP range routed to this host (AnyIP). When set, the gateway listens on
    /// `vip_listen_ip:<port>` for every outbound service port and routes by destination address.
    pub vip_range: Option<Cidr>,
    /// Address the per-port VIP listeners bind (with AnyIP: the wildcard).
    pub vip_listen_ip: IpAddr,
    /// JSON access log lines on stdout.
    pub access_log: bool,
    /// OTLP/HTTP (JSON) traces endpoint, `http://host:port/v1/traces`; none = no spans, and
    /// `traceparent` passes through untouched.
    pub trace_collector: Option<String>,
    /// Share of requests without a `traceparent` that start a sampled trace (0 to 100).
    pub trace_sample_percent: f64,
    /// How often certificate, key and bundle files are checked for changes.
    pub reload_interval_ms: u64,
    /// Active probe interval of peer gateways; a peer is down after `probe_misses` misses.
    pub probe_interval_ms: u64,
    pub probe_misses: u32,
    /// A retryable request to a peer with no answer after this long asks for a probe of the
    /// peer at once; when that probe misses, the request is retried on the next cluster.
    /// 0 turns this off.
    pub path_check_after_ms: u64,
    /// Timeout of that probe.
    pub path_check_timeout_ms: u64,
    /// Timeout of a TCP+TLS connect to a peer gateway or a local endpoint.
    pub connect_timeout_ms: u64,
    /// Streams one pooled connection to a peer gateway carries before another is dialled
    /// (ztunnel's pool: 100), well under the peer's HTTP/2 limit (4,096), so that streams do not
    /// queue on one connection and one TCP connection's window and loss do not bound them all.
    pub peer_streams_per_connection: u32,
    /// Threads of the data plane, each with its own event loop; every accepted connection
    /// lives on one of them (round-robin). `0`: one per CPU the gateway may use.
    pub data_threads: u32,
    /// How long a TLS handshake accepted by the gateway may take (a peer at the peer listener,
    /// an mTLS caller at the egress); then the connection is closed and counted as `timeout`.
    pub tls_handshake_timeout_ms: u64,
    /// Reconnect backoff to the federator: from the base, doubling, capped, with jitter.
    pub federator_backoff_base_ms: u64,
    pub federator_backoff_max_ms: u64,
    /// Minimum of concurrent retries allowed whatever the retry budget's percentage says.
    pub min_retry_concurrency: u32,
    /// On shutdown, how long open connections may finish their requests.
    pub drain_timeout_ms: u64,
    /// How long a local client may take to send a request's headers (HTTP/1.1), or its first
    /// byte; then the connection is closed.
    pub client_header_timeout_ms: u64,
    /// Largest request head a local client may send, in bytes, counted as HTTP/2 counts it (each
    /// header's name and value plus 32). Larger ones get 431 at the egress and are never
    /// forwarded: the peer connection they would cross is shared by every caller.
    pub max_request_headers_bytes: u32,
    /// Most request headers a local client may send (431 beyond).
    pub max_request_headers: u32,
}

/// The header list size the gateways' HTTP/2 listeners accept (egress h2c and the peer
/// ingress): far above [`Config::max_request_headers_bytes`] plus what the egress adds, so that a
/// stream over the limit gets the egress's 431 and no stream ever trips a connection error.
pub const H2_MAX_HEADER_LIST_SIZE: u32 = 1 << 20;

/// The most data threads a gateway may be given (`data_threads`).
pub const MAX_DATA_THREADS: u32 = 256;

impl Default for Config {
    fn default() -> Self {
        Self {
            cluster: String::new(),
            node: std::env::var("HOSTNAME").unwrap_or_else(|_| "gateway".to_string()),
            cert: PathBuf::new(),
            key: PathBuf::new(),
            trust_bundle: PathBuf::new(),
            federator: None,
            state_dir: None,
            config_file: None,
            egress_listen: SocketAddr::from(([127, 0, 0, 1], 15001)),
            peer_listen: SocketAddr::from(([0, 0, 0, 0], 15443)),
            admin_listen: SocketAddr::from(([127, 0, 0, 1], 15000)),
            vip_range: None,
            vip_listen_ip: IpAddr::from([0, 0, 0, 0]),
            access_log: false,
            trace_collector: None,
            trace_sample_percent: 1.0,
            reload_interval_ms: 2_000,
            probe_interval_ms: 1_000,
            probe_misses: 3,
            path_check_after_ms: 200,
            path_check_timeout_ms: 250,
            connect_timeout_ms: 2_000,
            peer_streams_per_connection: 100,
            data_threads: 0,
            tls_handshake_timeout_ms: 10_000,
            federator_backoff_base_ms: 500,
            federator_backoff_max_ms: 30_000,
            min_retry_concurrency: 3,
            drain_timeout_ms: 5_000,
            client_header_timeout_ms: 60_000,
            // Envoy's default (60 KiB), with its 100-header count.
            max_request_headers_bytes: 60 * 1024,
            max_request_headers: 100,
        }
    }
}

/// A configuration value that is not acceptable, naming the field.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("{field}: {reason}")]
    Invalid { field: &'static str, reason: String },
    #[error("settings file: {0}")]
    File(#[from] causeway_api::file::FileError),
}

fn invalid(field: &'static str, reason: impl Into<String>) -> ConfigError {
    ConfigError::Invalid {
        field,
        reason: reason.into(),
    }
}

impl Config {
    /// Reads a YAML settings file; absent fields keep their defaults.
    pub fn from_yaml_file(path: &Path) -> Result<Self, ConfigError> {
        Ok(causeway_api::file::from_yaml_file(path)?)
    }

    /// The cluster ID, once validated.
    pub fn cluster_id(&self) -> Result<ClusterId, ConfigError> {
        ClusterId::new(&self.cluster).map_err(|e| invalid("cluster", e.to_string()))
    }

    /// Checks every field; the error names the first bad one.
    pub fn validate(&self) -> Result<(), ConfigError> {
        self.cluster_id()?;
        if self.node.is_empty() {
            return Err(invalid("node", "must not be empty"));
        }
        for (field, path) in [
            ("cert", &self.cert),
            ("key", &self.key),
            ("trust_bundle", &self.trust_bundle),
        ] {
            if path.as_os_str().is_empty() {
                return Err(invalid(field, "is required"));
            }
        }
        if let Some(url) = &self.federator {
            FederatorUrl::parse(url).map_err(|reason| invalid("federator", reason))?;
        }
        let listeners = [
            ("egress_listen", self.egress_listen),
            ("peer_listen", self.peer_listen),
            ("admin_listen", self.admin_listen),
        ];
        for (i, (field, addr)) in listeners.iter().enumerate() {
            for (other, other_addr) in &listeners[..i] {
                if addr.port() != 0 && addr == other_addr {
                    return Err(invalid(field, format!("{addr} is also {other}")));
                }
            }
        }
        for (field, value) in [
            ("reload_interval_ms", self.reload_interval_ms),
            ("probe_interval_ms", self.probe_interval_ms),
            ("connect_timeout_ms", self.connect_timeout_ms),
            ("tls_handshake_timeout_ms", self.tls_handshake_timeout_ms),
            ("path_check_timeout_ms", self.path_check_timeout_ms),
            ("client_header_timeout_ms", self.client_header_timeout_ms),
            ("federator_backoff_base_ms", self.federator_backoff_base_ms),
            (
                "max_request_headers_bytes",
                u64::from(self.max_request_headers_bytes),
            ),
            ("max_request_headers", u64::from(self.max_request_headers)),
            (
                "peer_streams_per_connection",
                u64::from(self.peer_streams_per_connection),
            ),
        ] {
            if value == 0 {
                return Err(invalid(field, "must be greater than 0"));
            }
        }
        if self.data_threads > MAX_DATA_THREADS {
            return Err(invalid(
                "data_threads",
                format!("{} is more than {MAX_DATA_THREADS}", self.data_threads),
            ));
        }
        if let Some(url) = &self.trace_collector {
            let ok = url
                .parse::<http::Uri>()
                .is_ok_and(|u| u.scheme_str() == Some("http") && u.authority().is_some());
            if !ok {
                return Err(invalid(
                    "trace_collector",
                    format!("{url:?} is not http://host:port/path"),
                ));
            }
        }
        if !(0.0..=100.0).contains(&self.trace_sample_percent) {
            return Err(invalid(
                "trace_sample_percent",
                format!("{} is not between 0 and 100", self.trace_sample_percent),
            ));
        }
        if self.probe_misses == 0 {
            return Err(invalid("probe_misses", "must be greater than 0"));
        }
        if self.federator_backoff_max_ms < self.federator_backoff_base_ms {
            return Err(invalid(
                "federator_backoff_max_ms",
                "must not be less than federator_backoff_base_ms",
            ));
        }
        Ok(())
    }
}

// === impl FederatorUrl ===

/// `https://host:port` of the federator.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FederatorUrl {
    pub host: String,
    pub port: u16,
}

impl FederatorUrl {
    pub fn parse(url: &str) -> Result<Self, String> {
        let rest = url.strip_prefix("https://").ok_or_else(|| {
            format!("{url:?} must start with https:// (the config stream is mTLS)")
        })?;
        let rest = rest.trim_end_matches('/');
        let uri: http::uri::Authority = rest
            .parse()
            .map_err(|e| format!("{url:?} is not https://host:port: {e}"))?;
        let port = uri
            .port_u16()
            .ok_or_else(|| format!("{url:?} has no port"))?;
        let host = uri.host().trim_start_matches('[').trim_end_matches(']');
        if host.is_empty() {
            return Err(format!("{url:?} has no host"));
        }
        Ok(Self {
            host: host.to_string(),
            port,
        })
    }

    pub fn authority(&self) -> String {
        match self.host.parse::<IpAddr>() {
            Ok(IpAddr::V6(_)) => format!("[{}]:{}", self.host, self.port),
            _ => format!("{}:{}", self.host, self.port),
        }
    }
}

// === flags ===

/// Command-line flags; each overrides the settings file and the default.
#[derive(Debug, Default, clap::Parser)]
#[command(
    name = "causeway-gateway",
    version,
    about = "Causeway east-west gateway"
)]
pub struct Args {
    /// YAML settings file (fields of docs/gateway.md); flags override it.
    #[arg(long, env = "CAUSEWAY_GATEWAY_SETTINGS", value_name = "FILE")]
    pub settings: Option<PathBuf>,
    #[arg(long, env = "CAUSEWAY_GATEWAY_CLUSTER")]
    pub cluster: Option<String>,
    #[arg(long, env = "CAUSEWAY_GATEWAY_NODE")]
    pub node: Option<String>,
    #[arg(long, env = "CAUSEWAY_GATEWAY_CERT", value_name = "PEM")]
    pub cert: Option<PathBuf>,
    #[arg(long, env = "CAUSEWAY_GATEWAY_KEY", value_name = "PEM")]
    pub key: Option<PathBuf>,
    #[arg(long, env = "CAUSEWAY_GATEWAY_TRUST_BUNDLE", value_name = "PEM")]
    pub trust_bundle: Option<PathBuf>,
    /// https://host:port of the federator's config endpoint.
    #[arg(long, env = "CAUSEWAY_GATEWAY_FEDERATOR", value_name = "URL")]
    pub federator: Option<String>,
    #[arg(long, env = "CAUSEWAY_GATEWAY_STATE_DIR", value_name = "DIR")]
    pub state_dir: Option<PathBuf>,
    /// A ConfigSnapshot (protobuf binary) to start from.
    #[arg(long, env = "CAUSEWAY_GATEWAY_CONFIG_FILE", value_name = "FILE")]
    pub config_file: Option<PathBuf>,
    #[arg(long, env = "CAUSEWAY_GATEWAY_EGRESS_LISTEN", value_name = "ADDR")]
    pub egress_listen: Option<SocketAddr>,
    #[arg(long, env = "CAUSEWAY_GATEWAY_PEER_LISTEN", value_name = "ADDR")]
    pub peer_listen: Option<SocketAddr>,
    #[arg(long, env = "CAUSEWAY_GATEWAY_ADMIN_LISTEN", value_name = "ADDR")]
    pub admin_listen: Option<SocketAddr>,
    #[arg(long, env = "CAUSEWAY_GATEWAY_VIP_RANGE", value_name = "CIDR")]
    pub vip_range: Option<Cidr>,
    #[arg(long, env = "CAUSEWAY_GATEWAY_VIP_LISTEN_IP", value_name = "IP")]
    pub vip_listen_ip: Option<IpAddr>,
    /// JSON access log lines on stdout.
    #[arg(long, env = "CAUSEWAY_GATEWAY_ACCESS_LOG")]
    pub access_log: bool,
    /// OTLP/HTTP JSON traces endpoint, e.g. http://otel-collector:4318/v1/traces.
    #[arg(long, env = "CAUSEWAY_GATEWAY_TRACE_COLLECTOR", value_name = "URL")]
    pub trace_collector: Option<String>,
    /// Share of requests without a traceparent that start a sampled trace (0 to 100).
    #[arg(
        long,
        env = "CAUSEWAY_GATEWAY_TRACE_SAMPLE_PERCENT",
        value_name = "PERCENT"
    )]
    pub trace_sample_percent: Option<f64>,
}

impl Args {
    /// Settings file (if any), then flags, then validation.
    pub fn into_config(self) -> Result<Config, ConfigError> {
        let mut c = match &self.settings {
            Some(path) => Config::from_yaml_file(path)?,
            None => Config::default(),
        };
        macro_rules! set {
            ($($f:ident),*) => { $( if let Some(v) = self.$f { c.$f = v; } )* };
        }
        macro_rules! set_opt {
            ($($f:ident),*) => { $( if self.$f.is_some() { c.$f = self.$f; } )* };
        }
        set!(
            cluster,
            node,
            cert,
            key,
            trust_bundle,
            egress_listen,
            peer_listen,
            admin_listen,
            vip_listen_ip
        );
        set!(trace_sample_percent);
        set_opt!(
            federator,
            state_dir,
            config_file,
            vip_range,
            trace_collector
        );
        c.access_log |= self.access_log;
        c.validate()?;
        Ok(c)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn valid() -> Config {
        Config {
            cluster: "east".into(),
            cert: "c.pem".into(),
            key: "c.key".into(),
            trust_bundle: "b.pem".into(),
            ..Config::default()
        }
    }

    #[test]
    fn validate_names_the_field() {
        valid().validate().unwrap();
        let cases: Vec<(Config, &str)> = vec![
            (
                Config {
                    cluster: "East_1".into(),
                    ..valid()
                },
                "cluster",
            ),
            (
                Config {
                    cert: PathBuf::new(),
                    ..valid()
                },
                "cert",
            ),
            (
                Config {
                    federator: Some("http://f:1".into()),
                    ..valid()
                },
                "federator",
            ),
            (
                Config {
                    federator: Some("https://f".into()),
                    ..valid()
                },
                "federator",
            ),
            (
                Config {
                    probe_misses: 0,
                    ..valid()
                },
                "probe_misses",
            ),
            (
                Config {
                    peer_listen: valid().egress_listen,
                    ..valid()
                },
                "peer_listen",
            ),
            (
                Config {
                    data_threads: MAX_DATA_THREADS + 1,
                    ..valid()
                },
                "data_threads",
            ),
        ];
        for (config, field) in cases {
            let err = config.validate().unwrap_err().to_string();
            assert!(err.starts_with(&format!("{field}: ")), "{field}: {err}");
        }
    }

    #[test]
    fn federator_url() {
        let u = FederatorUrl::parse("https://fed.causeway-system:15010").unwrap();
        assert_eq!(u.host, "fed.causeway-system");
        assert_eq!(u.port, 15010);
        let u = FederatorUrl::parse("https://[::1]:15010/").unwrap();
        assert_eq!(u.host, "::1");
        assert_eq!(u.authority(), "[::1]:15010");
    }

    #[test]
    fn yaml_settings_and_flag_override() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("gw.yaml");
        std::fs::write(
            &path,
            "cluster: west\ncert: /c.pem\nkey: /c.key\ntrust_bundle: /b.pem\nvip_range: 240.0.0.0/8\naccess_log: true\n",
        )
        .unwrap();
        let args = Args {
            settings: Some(path),
            cluster: Some("east".into()),
            ..Args::default()
        };
        let c = args.into_config().unwrap();
        assert_eq!(c.cluster, "east");
        assert_eq!(c.vip_range.unwrap().to_string(), "240.0.0.0/8");
        assert!(c.access_log);
        assert_eq!(c.egress_listen.port(), 15001);
    }
}
