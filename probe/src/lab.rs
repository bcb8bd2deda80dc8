//! `<state-dir>/lab.json`: what a running lab is made of, for `causeway-lab` itself (status,
//! exec, down), `causeway drill --lab` and tests: one typed reading for all of them.
//!
//! Addresses are valid inside the cluster's network namespace (`netns`), where clients of that
//! cluster run; `causeway-lab exec <cluster> -- CMD` runs a command there.

use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};

use anyhow::Context as _;
use serde::{Deserialize, Serialize};

/// Version of the lab.json layout.
pub const LAB_STATE_SCHEMA: u32 = 1;

/// How the lab isolates its clusters.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Mode {
    /// One network namespace per cluster plus a WAN namespace (needs root).
    Netns,
    /// Everything in this network namespace on distinct loopback addresses (no root): no
    /// isolation, no ClusterSetIPs (clients use the gateway's egress port as an HTTP proxy).
    Loopback,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LabState {
    pub schema: u32,
    pub mode: Mode,
    pub state_dir: PathBuf,
    /// Prefix of every network namespace of the lab (`cw-`).
    pub prefix: String,
    /// The namespace that joins the gateways (and holds etcd), in netns mode.
    pub wan_netns: Option<String>,
    /// Where causeway-federator, causeway-gateway, causeway and causeway-demo were found.
    pub bin_dir: PathBuf,
    /// Output of `causeway certs`.
    pub pki_dir: PathBuf,
    /// The ClusterSetIP range of every cluster.
    pub vip_range: String,
    pub etcd: EtcdInfo,
    pub clusters: Vec<ClusterInfo>,
    /// Every process of the lab, with its command line and pid.
    pub processes: Vec<ProcessRecord>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct EtcdInfo {
    /// Client URLs of every member (reachable from every cluster namespace).
    pub endpoints: Vec<String>,
    pub members: Vec<EtcdMember>,
    /// etcd's PKI: every client needs a certificate, and etcd's auth gives each the role of
    /// its common name (docs/security.md "etcd").
    #[serde(default)]
    pub tls: Option<EtcdTlsInfo>,
}

/// Where the lab's etcd PKI is: `<dir>/ca.pem`, `<dir>/<user>.pem|key` per etcd user (`root`,
/// `operator`, `cluster-<c>`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct EtcdTlsInfo {
    pub dir: PathBuf,
    pub ca: PathBuf,
    /// The drill CLI's identity (`causeway drill --lab` uses it).
    pub operator_cert: PathBuf,
    pub operator_key: PathBuf,
}

impl EtcdTlsInfo {
    /// The client certificate and key of etcd user `user`.
    pub fn client(&self, user: &str) -> (PathBuf, PathBuf) {
        (
            self.dir.join(format!("{user}.pem")),
            self.dir.join(format!("{user}.key")),
        )
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct EtcdMember {
    pub name: String,
    pub client_url: String,
    pub peer_url: String,
    pub data_dir: PathBuf,
    /// Its entry in [`LabState::processes`].
    pub process: String,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ClusterInfo {
    pub name: String,
    pub netns: Option<String>,
    pub region: String,
    /// The cluster's DNS server (its first federator's): `resolv.conf` of the namespace.
    pub dns: SocketAddr,
    /// Every federator replica's DNS server.
    pub dns_servers: Vec<SocketAddr>,
    /// The address of the gateway on the WAN.
    pub wan_ip: IpAddr,
    /// The WAN interface inside the cluster namespace (`ip link set <it> down` cuts the cluster).
    pub wan_link: Option<String>,
    pub gateway: GatewayInfo,
    /// The first federator's admin address (`/debug/snapshot`, `/metrics`, `causeway status`).
    pub federator_admin: SocketAddr,
    pub federators: Vec<FederatorInfo>,
    pub certs: CertPaths,
    /// Export files of this cluster (`--exports-dir`).
    pub exports_dir: PathBuf,
    /// Demo services this cluster exports.
    pub demo: Vec<DemoService>,
    /// The stateful demo, in one exporting cluster: replicas with hostnames, exported headless.
    #[serde(default)]
    pub stateful: Option<StatefulDemo>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct GatewayInfo {
    /// Local clients: HTTP/1.1, h2c and CONNECT (also an HTTP proxy).
    pub egress: SocketAddr,
    /// Peer gateways (mTLS).
    pub ingress: SocketAddr,
    /// `/metrics`, `/ready`, `/peers`, `/config_dump`.
    pub admin: SocketAddr,
    pub state_dir: PathBuf,
    pub process: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FederatorInfo {
    pub node: String,
    pub admin: SocketAddr,
    pub config: SocketAddr,
    pub dns: SocketAddr,
    pub process: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CertPaths {
    pub trust_bundle: PathBuf,
    pub gateway_cert: PathBuf,
    pub gateway_key: PathBuf,
    pub federator_cert: PathBuf,
    pub federator_key: PathBuf,
    /// The cluster's issuing CA, held by its federators.
    pub issuer_cert: PathBuf,
    pub issuer_key: PathBuf,
}

/// What a demo service speaks.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum DemoKind {
    HttpEcho,
    Grpc,
    TcpEcho,
}

impl DemoKind {
    /// The `causeway-demo` subcommand.
    pub fn subcommand(self) -> &'static str {
        match self {
            DemoKind::HttpEcho => "http-echo",
            DemoKind::Grpc => "grpc",
            DemoKind::TcpEcho => "tcp-echo",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DemoService {
    pub namespace: String,
    pub name: String,
    pub kind: DemoKind,
    /// The service port clients use.
    pub port: u16,
    /// The service's address in its cluster (what DNS answers there, `local-first`).
    pub service_ip: IpAddr,
    /// Where the backend listens (the export's endpoint).
    pub backend: SocketAddr,
    /// While this file exists the backend fails (HTTP 503, gRPC UNAVAILABLE, TCP closed).
    pub fail_file: PathBuf,
    /// The export file.
    pub export_file: PathBuf,
    pub process: String,
}

/// A headless service of named replicas (what a StatefulSet gives): HTTP echoes, each answering
/// its hostname, reached across clusters as `<hostname>.<cluster>.<name>.<namespace>.svc.clusterset.local`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StatefulDemo {
    pub namespace: String,
    pub name: String,
    /// The service port clients use (the gateway's listener on each replica's address).
    pub port: u16,
    pub replicas: Vec<Replica>,
    /// The export file (rewritten to mark a replica not ready).
    pub export_file: PathBuf,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Replica {
    pub hostname: String,
    /// Where it listens: its pod address and port.
    pub address: SocketAddr,
    pub process: String,
}

impl StatefulDemo {
    /// `<name>.<namespace>.svc.clusterset.local`
    pub fn clusterset_name(&self) -> String {
        format!("{}.{}.svc.clusterset.local", self.name, self.namespace)
    }

    /// `<hostname>.<cluster>.<name>.<namespace>.svc.clusterset.local`
    pub fn replica_name(&self, hostname: &str, cluster: &str) -> String {
        format!("{hostname}.{cluster}.{}", self.clusterset_name())
    }
}

impl DemoService {
    /// `<name>.<namespace>.svc.clusterset.local`
    pub fn clusterset_name(&self) -> String {
        format!("{}.{}.svc.clusterset.local", self.name, self.namespace)
    }
}

impl LabState {
    pub fn path(state_dir: &Path) -> PathBuf {
        state_dir.join("lab.json")
    }

    pub fn load(path: &Path) -> anyhow::Result<LabState> {
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("reading {} (is a lab running?)", path.display()))?;
        let state: LabState =
            serde_json::from_str(&text).with_context(|| format!("parsing {}", path.display()))?;
        anyhow::ensure!(
            state.schema == LAB_STATE_SCHEMA,
            "{} has schema {}, this causeway-lab reads {LAB_STATE_SCHEMA}",
            path.display(),
            state.schema
        );
        Ok(state)
    }

    /// Writes lab.json atomically (temporary file, then rename).
    pub fn save(&self) -> anyhow::Result<PathBuf> {
        let path = Self::path(&self.state_dir);
        let tmp = path.with_extension("json.tmp");
        let text = serde_json::to_string_pretty(self)?;
        std::fs::write(&tmp, text + "\n").with_context(|| format!("writing {}", tmp.display()))?;
        std::fs::rename(&tmp, &path).with_context(|| format!("writing {}", path.display()))?;
        Ok(path)
    }

    pub fn cluster(&self, name: &str) -> anyhow::Result<&ClusterInfo> {
        self.clusters
            .iter()
            .find(|c| c.name == name)
            .with_context(|| {
                let names: Vec<&str> = self.clusters.iter().map(|c| c.name.as_str()).collect();
                format!(
                    "no cluster {name:?} in the lab (clusters: {})",
                    names.join(", ")
                )
            })
    }

    pub fn process(&self, name: &str) -> anyhow::Result<&ProcessRecord> {
        self.processes
            .iter()
            .find(|p| p.name == name)
            .with_context(|| format!("no process {name:?} in the lab"))
    }

    pub fn process_mut(&mut self, name: &str) -> anyhow::Result<&mut ProcessRecord> {
        self.processes
            .iter_mut()
            .find(|p| p.name == name)
            .with_context(|| format!("no process {name:?} in the lab"))
    }
}

impl ClusterInfo {
    pub fn demo(&self, name: &str) -> Option<&DemoService> {
        self.demo.iter().find(|d| d.name == name)
    }
}

/// A process of the lab, as lab.json records it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ProcessRecord {
    /// Unique in the lab: `etcd-0`, `east/federator-0`, `east/gateway`, `east/demo-echo`, ...
    pub name: String,
    /// The network namespace it runs in (None: the caller's).
    pub netns: Option<String>,
    pub program: PathBuf,
    pub args: Vec<String>,
    /// Extra environment.
    #[serde(default)]
    pub env: Vec<(String, String)>,
    /// Receives stdout and stderr (appended across restarts).
    pub log: PathBuf,
    /// Of the running instance; None once stopped.
    pub pid: Option<u32>,
}

impl ProcessRecord {
    /// The command line, for messages.
    pub fn command_line(&self) -> String {
        let mut s = String::new();
        if let Some(ns) = &self.netns {
            s.push_str(&format!("ip netns exec {ns} "));
        }
        s.push_str(&self.program.display().to_string());
        for a in &self.args {
            s.push(' ');
            s.push_str(a);
        }
        s
    }
}
