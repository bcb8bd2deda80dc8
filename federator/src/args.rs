//! Command-line flags of `causeway-federator`; each overrides the YAML config's field of the same
//! name and can also be set as `CAUSEWAY_<FLAG>`.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use clap::Parser;

use crate::config::{parse_duration, Config};

#[derive(Debug, Parser)]
#[command(
    name = "causeway-federator",
    version,
    about = "Causeway federator: syncs exports between clusters through etcd"
)]
pub struct Args {
    /// YAML config file (flags override it).
    #[arg(long, env = "CAUSEWAY_CONFIG")]
    pub config: Option<PathBuf>,
    /// This cluster's ID.
    #[arg(long, env = "CAUSEWAY_CLUSTER")]
    pub cluster: Option<String>,
    /// Name of this replica (election value, logs).
    #[arg(long, env = "CAUSEWAY_NODE")]
    pub node: Option<String>,
    /// etcd endpoints, comma-separated.
    #[arg(long, env = "CAUSEWAY_ETCD_ENDPOINTS", value_delimiter = ',')]
    pub etcd_endpoints: Vec<String>,
    #[arg(long, env = "CAUSEWAY_ETCD_CA")]
    pub etcd_ca: Option<PathBuf>,
    #[arg(long, env = "CAUSEWAY_ETCD_CERT")]
    pub etcd_cert: Option<PathBuf>,
    #[arg(long, env = "CAUSEWAY_ETCD_KEY")]
    pub etcd_key: Option<PathBuf>,
    #[arg(long, env = "CAUSEWAY_ETCD_USERNAME")]
    pub etcd_username: Option<String>,
    #[arg(long, env = "CAUSEWAY_ETCD_PASSWORD", hide_env_values = true)]
    pub etcd_password: Option<String>,
    /// Directory of export files (universal mode).
    #[arg(long, env = "CAUSEWAY_EXPORTS_DIR")]
    pub exports_dir: Option<PathBuf>,
    #[arg(long, env = "CAUSEWAY_ADMIN_LISTEN")]
    pub admin_listen: Option<SocketAddr>,
    #[arg(long, env = "CAUSEWAY_DNS_LISTEN")]
    pub dns_listen: Option<SocketAddr>,
    #[arg(long, env = "CAUSEWAY_LEASE_TTL", value_parser = parse_duration)]
    pub lease_ttl: Option<Duration>,
    #[arg(long, env = "CAUSEWAY_KEEPALIVE_INTERVAL", value_parser = parse_duration)]
    pub keepalive_interval: Option<Duration>,
    #[arg(long, env = "CAUSEWAY_STALE_GRACE", value_parser = parse_duration)]
    pub stale_grace: Option<Duration>,
    #[arg(long, env = "CAUSEWAY_EXPORTS_POLL_INTERVAL", value_parser = parse_duration)]
    pub exports_poll_interval: Option<Duration>,
    /// `host:port` of this cluster's gateway peer listener; repeatable.
    #[arg(
        long = "gateway-address",
        env = "CAUSEWAY_GATEWAY_ADDRESSES",
        value_delimiter = ','
    )]
    pub gateway_addresses: Vec<String>,
    #[arg(long, env = "CAUSEWAY_TRUST_DOMAIN")]
    pub trust_domain: Option<String>,
    #[arg(long, env = "CAUSEWAY_TRUST_BUNDLE")]
    pub trust_bundle: Option<PathBuf>,
    /// Locality label `key=value`; repeatable.
    #[arg(long = "locality", value_parser = parse_kv)]
    pub locality: Vec<(String, String)>,
    /// ClusterSetIP range in universal mode, e.g. 10.255.0.0/16.
    #[arg(long, env = "CAUSEWAY_VIP_RANGE")]
    pub vip_range: Option<String>,
    /// How long a ClusterSetIP stays reserved after its import is gone (default 5m).
    #[arg(long, env = "CAUSEWAY_VIP_RELEASE_GRACE", value_parser = parse_duration)]
    pub vip_release_grace: Option<Duration>,
    /// Pod networks are flat: headless imports answer the pods' own addresses.
    #[arg(long, env = "CAUSEWAY_FLAT_POD_NETWORK")]
    pub flat_pod_network: bool,
    /// DNS answer policy: local-first or via-gateway.
    #[arg(long, env = "CAUSEWAY_DNS_POLICY")]
    pub dns_policy: Option<causeway_dns::AnswerPolicy>,
    #[arg(long, env = "CAUSEWAY_DNS_TTL", value_parser = parse_duration)]
    pub dns_ttl: Option<Duration>,
    /// gRPC endpoint for gateway configs.
    #[arg(long, env = "CAUSEWAY_CONFIG_LISTEN")]
    pub config_listen: Option<SocketAddr>,
    /// Federator certificate chain (PEM) for the config endpoint's mTLS.
    #[arg(long, env = "CAUSEWAY_CERT")]
    pub cert: Option<PathBuf>,
    /// Federator private key (PEM).
    #[arg(long, env = "CAUSEWAY_KEY")]
    pub key: Option<PathBuf>,
    /// This cluster's issuing CA certificate (e.g. `<cluster>/ca.pem`): the federator signs its
    /// gateways' certificates and its own with it (docs/certificates.md).
    #[arg(long, env = "CAUSEWAY_ISSUER_CERT", requires = "issuer_key")]
    pub issuer_cert: Option<PathBuf>,
    /// The issuing CA's private key.
    #[arg(long, env = "CAUSEWAY_ISSUER_KEY", requires = "issuer_cert")]
    pub issuer_key: Option<PathBuf>,
    /// Lifetime of the certificates the issuer signs (default 24h).
    #[arg(long, env = "CAUSEWAY_CERTIFICATE_LIFETIME", value_parser = parse_duration, requires = "issuer_cert")]
    pub certificate_lifetime: Option<Duration>,
    /// How often the trust bundle, issuer and certificate files are looked at (default 5s).
    #[arg(long, env = "CAUSEWAY_TLS_RELOAD_INTERVAL", value_parser = parse_duration)]
    pub tls_reload_interval: Option<Duration>,
    /// Log as JSON lines.
    #[arg(long, env = "CAUSEWAY_LOG_JSON")]
    pub log_json: bool,
}

fn parse_kv(s: &str) -> Result<(String, String), String> {
    s.split_once('=')
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .ok_or_else(|| format!("{s:?} is not key=value"))
}

impl Args {
    /// Applies the flags that were given over `cfg`.
    pub fn apply(self, mut cfg: Config) -> Config {
        macro_rules! set {
            ($($field:ident => $target:expr),* $(,)?) => {
                $(if let Some(v) = self.$field { $target = v.into(); })*
            };
        }
        set! {
            cluster => cfg.cluster,
            node => cfg.node,
            etcd_ca => cfg.etcd.ca_file,
            etcd_cert => cfg.etcd.cert_file,
            etcd_key => cfg.etcd.key_file,
            etcd_username => cfg.etcd.username,
            etcd_password => cfg.etcd.password,
            exports_dir => cfg.exports_dir,
            admin_listen => cfg.admin_listen,
            dns_listen => cfg.dns_listen,
            lease_ttl => cfg.lease_ttl,
            keepalive_interval => cfg.keepalive_interval,
            stale_grace => cfg.stale_grace,
            exports_poll_interval => cfg.exports_poll_interval,
            trust_domain => cfg.trust_domain,
            trust_bundle => cfg.trust_bundle_file,
            vip_range => cfg.vip_range,
            vip_release_grace => cfg.vip_release_grace,
            config_listen => cfg.config_listen,
            dns_policy => cfg.dns_policy,
            dns_ttl => cfg.dns_ttl,
            cert => cfg.cert_file,
            key => cfg.key_file,
            tls_reload_interval => cfg.tls_reload_interval,
        }
        if let (Some(cert_file), Some(key_file)) = (self.issuer_cert, self.issuer_key) {
            cfg.issuer = Some(crate::issuer::IssuerConfig {
                cert_file,
                key_file,
                lifetime: crate::issuer::DEFAULT_LIFETIME,
            });
        }
        if let (Some(issuer), Some(lifetime)) = (cfg.issuer.as_mut(), self.certificate_lifetime) {
            issuer.lifetime = lifetime;
        }
        if self.flat_pod_network {
            cfg.flat_pod_network = true;
        }
        if !self.etcd_endpoints.is_empty() {
            cfg.etcd.endpoints = self.etcd_endpoints;
        }
        if !self.gateway_addresses.is_empty() {
            cfg.gateway_addresses = self.gateway_addresses;
        }
        cfg.locality.extend(self.locality);
        cfg
    }
}
