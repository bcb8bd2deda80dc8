//! The local multi-cluster lab: a real etcd, one network namespace per cluster plus a WAN
//! namespace that joins only the gateways, certificates, a federator (with DNS) and a gateway per
//! cluster, and demo services exported from two clusters. `causeway-lab` drives it from the
//! command line; the end-to-end tests drive it in-process through [`Lab`].
//!
//! Layout (netns mode, cluster `i` = 1, 2, ...):
//!
//! ```text
//!  cw-wan: bridge br0, etcd members 10.100.0.2..4 (:2379)
//!    │ veth                          │ veth
//!  cw-east (wan0 10.100.0.11)       cw-west (wan0 10.100.0.12)   ...
//!    lo: 10.96.1.x/32 service net:    gateway: peer 10.100.0.1i:15443, egress :15001, admin :15000
//!      .1  gateway node address        federator k: admin 10.96.i.(2+k):19090, config :15010,
//!      .10 echo  .11 grpc  .12 tcp                 DNS 10.96.i.(53+k):53
//!    lo: AnyIP 10.255.0.0/16 (ClusterSetIPs → the local gateway)
//!    nftables: service IP:port → backend (kube-proxy's job); from wan0 only :15443 gets in
//!    gateway egress and admin on the node address, federators on theirs: none on the WAN
//! ```
//!
//! A cluster namespace has routes to the WAN only; other clusters' service addresses are
//! unreachable from it except through the gateways.

pub mod demo;
pub mod net;
pub mod probe;
pub mod process;
pub mod state;

use std::collections::{BTreeMap, BTreeSet};
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::process::Child;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Mutex;
use std::time::Duration;

use anyhow::{bail, Context as _};
use causeway_api::snapshot::MeshSnapshot;
use causeway_api::{ClusterId, ServiceKey};
use tokio::time::Instant;

pub use state::{
    CertPaths, ClusterInfo, DemoKind, DemoService, EtcdInfo, EtcdMember, EtcdTlsInfo,
    FederatorInfo, GatewayInfo, LabState, Mode, Replica, StatefulDemo, LAB_STATE_SCHEMA,
};

use process::{ProcessRecord, Spawn as _};

/// Where `causeway-lab up` keeps its state unless told otherwise.
pub const DEFAULT_STATE_DIR: &str = "/tmp/causeway-lab";
/// Prefix of the network namespaces of `causeway-lab up`.
pub const DEFAULT_PREFIX: &str = "cw-";
/// The ClusterSetIP range of every cluster.
pub const VIP_RANGE: &str = "10.255.0.0/16";
/// The Kubernetes-style namespace of the demo services.
pub const DEMO_NAMESPACE: &str = "demo";
/// Names of the first clusters; more are `c7`, `c8`, ...
pub const CLUSTER_NAMES: [&str; 6] = ["east", "west", "north", "south", "central", "edge"];

/// The binaries the lab runs, all from one cargo target directory.
pub const BINARIES: [&str; 4] = [
    "causeway-federator",
    "causeway-gateway",
    "causeway",
    "causeway-demo",
];

/// Ports inside every cluster.
const GATEWAY_EGRESS_PORT: u16 = 15001;
const GATEWAY_PEER_PORT: u16 = 15443;
const GATEWAY_ADMIN_PORT: u16 = 15000;
/// Not 9090 / 9091 (the federator's defaults): the gateway's ClusterSetIP listeners take every
/// imported service port on the wildcard address, and the demo gRPC service uses 9090.
const FEDERATOR_ADMIN_PORT: u16 = 19090;
const FEDERATOR_CONFIG_PORT: u16 = 15010;
const ETCD_CLIENT_PORT: u16 = 2379;
const ETCD_PEER_PORT: u16 = 2380;

/// How long `up` waits for each step (etcd, a federator, the mesh to converge).
const STEP_TIMEOUT: Duration = Duration::from_secs(60);
/// Bound of one admin or probe request.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(2);

/// The demo services: (name, kind, service port, backend port, last octet of the service IP).
const DEMO_SERVICES: [(&str, DemoKind, u16, u16, u8); 3] = [
    ("echo", DemoKind::HttpEcho, 80, 8080, 10),
    ("grpc", DemoKind::Grpc, 9090, 8090, 11),
    ("tcp-echo", DemoKind::TcpEcho, 7000, 8070, 12),
];

/// The stateful demo: its name, service port (the gateways' listener on each replica's address
/// in an importing cluster), the replicas' port and the last octets of their addresses.
const STATEFUL_NAME: &str = "store";
const STATEFUL_PORT: u16 = 80;
const STATEFUL_BACKEND_PORT: u16 = 8080;
const STATEFUL_REPLICA_OCTETS: [u8; 3] = [20, 21, 22];

// === LabSpec ===

/// What to build.
#[derive(Debug, Clone)]
pub struct LabSpec {
    pub clusters: Vec<String>,
    /// Clusters that export the demo services (default: the first two).
    pub exporting: Vec<String>,
    /// The cluster running the stateful demo (default: the second exporting cluster, west).
    pub stateful: Option<String>,
    /// Locality region of each cluster (default: east us-east, west and north us-west, others
    /// eu), so that north prefers west and fails over to east.
    pub regions: BTreeMap<String, String>,
    pub etcd_members: usize,
    /// Federator replicas per cluster (one leader, the others standby).
    pub federator_replicas: usize,
    pub state_dir: PathBuf,
    /// Network namespace prefix; unique per lab so that several can run side by side.
    pub prefix: String,
    pub bin_dir: PathBuf,
    pub mode: Mode,
    /// `--lease-ttl` of the federators (default: theirs, 10 s).
    pub lease_ttl: Option<Duration>,
    /// `--stale-grace` of the federators (default: theirs, 5 min).
    pub stale_grace: Option<Duration>,
    pub gateway_access_log: bool,
    /// Lifetime of the gateway certificates the federators issue (default: theirs, 24 h).
    pub certificate_lifetime: Option<Duration>,
}

impl LabSpec {
    /// `n` clusters named after [`CLUSTER_NAMES`], the first two exporting, one etcd member,
    /// one federator per cluster, state in [`DEFAULT_STATE_DIR`], namespaces `cw-*`, netns mode
    /// when this process can create namespaces, loopback otherwise.
    pub fn new(n: usize) -> anyhow::Result<LabSpec> {
        anyhow::ensure!(
            (1..=200).contains(&n),
            "--clusters must be 1..=200, not {n}"
        );
        let clusters = cluster_names(n);
        let exporting: Vec<String> = clusters.iter().take(2).cloned().collect();
        let stateful = exporting.last().cloned();
        let regions = clusters
            .iter()
            .map(|c| {
                let region = match c.as_str() {
                    "east" => "us-east",
                    "west" | "north" => "us-west",
                    _ => "eu",
                };
                (c.clone(), region.to_string())
            })
            .collect();
        Ok(LabSpec {
            clusters,
            exporting,
            stateful,
            regions,
            etcd_members: 1,
            federator_replicas: 1,
            state_dir: PathBuf::from(DEFAULT_STATE_DIR),
            prefix: DEFAULT_PREFIX.to_string(),
            bin_dir: default_bin_dir()?,
            mode: if net::can_use_namespaces() {
                Mode::Netns
            } else {
                Mode::Loopback
            },
            lease_ttl: None,
            stale_grace: None,
            gateway_access_log: false,
            certificate_lifetime: None,
        })
    }

    /// A spec for a test: `n` clusters, a namespace prefix unique to this process and call, and
    /// state in a new temporary directory (removed with the [`Lab`]).
    pub fn for_test(n: usize) -> anyhow::Result<LabSpec> {
        static COUNTER: AtomicU32 = AtomicU32::new(0);
        let mut spec = LabSpec::new(n)?;
        let count = COUNTER.fetch_add(1, Ordering::Relaxed);
        spec.prefix = format!("cwt{}x{count}-", std::process::id());
        spec.state_dir = PathBuf::new();
        Ok(spec)
    }

    fn netns_of(&self, cluster: &str) -> Option<String> {
        (self.mode == Mode::Netns).then(|| format!("{}{cluster}", self.prefix))
    }

    fn wan_netns(&self) -> Option<String> {
        (self.mode == Mode::Netns).then(|| format!("{}wan", self.prefix))
    }
}

/// `east, west, north, south, central, edge, c7, c8, ...`
pub fn cluster_names(n: usize) -> Vec<String> {
    (0..n)
        .map(|i| match CLUSTER_NAMES.get(i) {
            Some(name) => name.to_string(),
            None => format!("c{}", i + 1),
        })
        .collect()
}

/// The directory of the running executable, or its parent when that is cargo's `deps/` (test
/// binaries live there, the other binaries one level up). `$CAUSEWAY_LAB_BIN_DIR` wins.
pub fn default_bin_dir() -> anyhow::Result<PathBuf> {
    if let Some(dir) = std::env::var_os("CAUSEWAY_LAB_BIN_DIR").filter(|d| !d.is_empty()) {
        return Ok(PathBuf::from(dir));
    }
    let exe = std::env::current_exe().context("locating the running executable")?;
    let mut dir = exe
        .parent()
        .context("the executable has no directory")?
        .to_path_buf();
    if dir.file_name().is_some_and(|n| n == "deps") {
        dir.pop();
    }
    Ok(dir)
}

/// The binaries of [`BINARIES`] missing from `bin_dir`.
pub fn missing_binaries(bin_dir: &Path) -> Vec<&'static str> {
    BINARIES
        .into_iter()
        .filter(|b| !bin_dir.join(b).is_file())
        .collect()
}

/// The binaries of [`BINARIES`] missing from `bin_dir` or older than a source file of the
/// workspace this crate was built from (`*.rs`, `*.toml`, `*.proto` under the crates'
/// directories): what a test run must rebuild before it trusts them. A make-style check, so
/// that a workspace-wide `cargo test`, which already built them, does not build them again
/// with other features.
pub fn stale_binaries(bin_dir: &Path) -> Vec<&'static str> {
    let Some(workspace) = Path::new(env!("CARGO_MANIFEST_DIR")).parent() else {
        return missing_binaries(bin_dir);
    };
    let mut newest = std::time::SystemTime::UNIX_EPOCH;
    let mut dirs: Vec<PathBuf> = ["federator", "gateway", "dns", "e2e/src"]
        .iter()
        .map(|d| workspace.join(d))
        .collect();
    while let Some(dir) = dirs.pop() {
        let Ok(entries) = std::fs::read_dir(&dir) else {
            continue;
        };
        for e in entries.flatten() {
            let path = e.path();
            let Ok(meta) = e.metadata() else { continue };
            if meta.is_dir() {
                if !matches!(
                    e.file_name().to_str(),
                    Some("target" | "tests" | "bench" | "examples")
                ) {
                    dirs.push(path);
                }
            } else if path
                .extension()
                .is_some_and(|x| x == "rs" || x == "toml" || x == "proto")
            {
                if let Ok(m) = meta.modified() {
                    newest = newest.max(m);
                }
            }
        }
    }
    BINARIES
        .into_iter()
        .filter(|b| {
            std::fs::metadata(bin_dir.join(b))
                .and_then(|m| m.modified())
                .map_or(true, |built| built < newest)
        })
        .collect()
}

/// The cargo command that builds every binary the lab needs.
pub const BUILD_COMMAND: &str =
    "cargo build -p causeway-federator -p causeway-gateway -p causeway-e2e --bins";

/// Runs [`BUILD_COMMAND`] in the workspace this crate was built from, with the cargo that
/// runs us (`$CARGO`) when there is one. Cheap when everything is up to date.
pub fn build_binaries() -> anyhow::Result<()> {
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let workspace = Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .context("the e2e crate has no parent directory")?;
    let status = std::process::Command::new(&cargo)
        .args(BUILD_COMMAND.split_whitespace().skip(1))
        .current_dir(workspace)
        .stdin(std::process::Stdio::null())
        .status()
        .with_context(|| format!("running {}", Path::new(&cargo).display()))?;
    anyhow::ensure!(status.success(), "`{BUILD_COMMAND}` failed ({status})");
    Ok(())
}

// === address plan ===

/// The addresses of one cluster, before anything runs.
struct Plan {
    name: String,
    index: usize,
    netns: Option<String>,
    region: String,
    wan_ip: IpAddr,
    /// The cluster's service network (netns mode: /32s on loopback).
    svc_net: Ipv4Addr,
    gateway: GatewayInfo,
    federators: Vec<FederatorInfo>,
    exports: bool,
    /// Whether it runs the stateful demo.
    stateful: bool,
}

fn v4(a: u8, b: u8, c: u8, d: u8) -> IpAddr {
    IpAddr::V4(Ipv4Addr::new(a, b, c, d))
}

impl Plan {
    fn new(spec: &LabSpec, index: usize, name: &str) -> anyhow::Result<Plan> {
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

    fn svc_ip(&self, d: u8) -> IpAddr {
        let o = self.svc_net.octets();
        v4(o[0], o[1], o[2], d)
    }

    fn demo(&self, spec: &LabSpec) -> Vec<DemoService> {
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

    fn stateful(&self, spec: &LabSpec) -> Option<StatefulDemo> {
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
fn cluster_info(p: &Plan, spec: &LabSpec, pki_dir: &Path) -> ClusterInfo {
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

fn cluster_dir(state_dir: &Path, cluster: &str) -> PathBuf {
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
fn write_atomically(path: &Path, text: &str) -> anyhow::Result<()> {
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

// === Lab ===

/// A running lab. Dropping it stops every process and removes its namespaces and files, unless
/// [`Lab::detach`] was called (what `causeway-lab up` does).
pub struct Lab {
    state: LabState,
    /// What the lab was built from (clusters added later are planned from it).
    spec: LabSpec,
    procs: Mutex<Procs>,
    keep: bool,
    /// The temporary state directory of a test lab.
    _tempdir: Option<tempfile::TempDir>,
}

#[derive(Default)]
struct Procs {
    /// Children of this process, by process name.
    children: BTreeMap<String, Child>,
}

impl Lab {
    /// Builds and starts the lab of `spec` and waits until every cluster resolves and reaches
    /// every demo service. On error everything started so far is removed again.
    pub async fn up(mut spec: LabSpec) -> anyhow::Result<Lab> {
        let tempdir = if spec.state_dir.as_os_str().is_empty() {
            let dir = tempfile::Builder::new().prefix("causeway-lab-").tempdir()?;
            spec.state_dir = dir.path().to_path_buf();
            Some(dir)
        } else {
            None
        };
        anyhow::ensure!(
            spec.etcd_members >= 1 && spec.etcd_members <= 5,
            "etcd members must be 1..=5"
        );
        anyhow::ensure!(
            (1..=8).contains(&spec.federator_replicas),
            "federator replicas must be 1..=8"
        );
        let missing = missing_binaries(&spec.bin_dir);
        if !missing.is_empty() {
            bail!(
                "{} not found in {}; build them with `{BUILD_COMMAND}`",
                missing.join(", "),
                spec.bin_dir.display()
            );
        }
        let etcd_bin = crate::etcd::find_etcd_binary()?;
        if spec.mode == Mode::Netns {
            for ns in spec
                .clusters
                .iter()
                .filter_map(|c| spec.netns_of(c))
                .chain(spec.wan_netns())
            {
                if net::netns_exists(&ns) {
                    bail!("network namespace {ns} already exists: another lab runs with prefix {:?} (stop it with `causeway-lab down`)", spec.prefix);
                }
            }
            if net::which("nft").is_none() {
                bail!("nft (Debian package nftables) is needed for the lab's service addresses; run scripts/setup.sh");
            }
        }
        std::fs::create_dir_all(&spec.state_dir)
            .with_context(|| format!("creating {}", spec.state_dir.display()))?;
        let state_dir = spec
            .state_dir
            .canonicalize()
            .context("resolving the state directory")?;
        spec.state_dir = state_dir.clone();

        let plans: Vec<Plan> = spec
            .clusters
            .iter()
            .enumerate()
            .map(|(i, c)| Plan::new(&spec, i + 1, c))
            .collect::<anyhow::Result<_>>()?;
        let pki_dir = state_dir.join("pki");
        let etcd = etcd_info(&spec);
        let clusters = plans
            .iter()
            .map(|p| cluster_info(p, &spec, &pki_dir))
            .collect();
        let state = LabState {
            schema: LAB_STATE_SCHEMA,
            mode: spec.mode,
            state_dir: state_dir.clone(),
            prefix: spec.prefix.clone(),
            wan_netns: spec.wan_netns(),
            bin_dir: spec.bin_dir.clone(),
            pki_dir,
            vip_range: VIP_RANGE.to_string(),
            etcd,
            clusters,
            processes: Vec::new(),
        };
        let mut lab = Lab {
            state,
            spec: spec.clone(),
            procs: Mutex::new(Procs::default()),
            keep: false,
            _tempdir: tempdir,
        };
        // From here on a failure drops `lab`, which removes what was made.
        lab.state.save()?;
        lab.build(&spec, &plans, &etcd_bin).await?;
        Ok(lab)
    }

    async fn build(
        &mut self,
        spec: &LabSpec,
        plans: &[Plan],
        etcd_bin: &Path,
    ) -> anyhow::Result<()> {
        let started = Instant::now();
        self.certs()?;
        if spec.mode == Mode::Netns {
            self.network(plans)?;
        }
        self.etcd_pki()?;
        self.start_etcd(spec, etcd_bin)?;
        self.wait_etcd().await?;
        self.etcd_auth()?;
        tracing::info!(took = ?started.elapsed(), "etcd is up, with auth");
        for plan in plans {
            self.start_demo(plan)?;
        }
        for plan in plans {
            self.start_federators(spec, plan)?;
        }
        for plan in plans {
            for f in &plan.federators {
                self.wait_http_ok(plan.netns.as_deref(), f.admin, "/ready", &f.process)
                    .await?;
            }
        }
        for plan in plans {
            self.start_gateway(spec, plan)?;
        }
        for plan in plans {
            self.wait_http_ok(
                plan.netns.as_deref(),
                plan.gateway.admin,
                "/ready",
                &plan.gateway.process,
            )
            .await?;
        }
        self.wait_converged().await?;
        tracing::info!(took = ?started.elapsed(), "lab is up");
        Ok(())
    }

    // --- building blocks ---

    fn bin(&self, name: &str) -> PathBuf {
        self.state.bin_dir.join(name)
    }

    fn certs(&self) -> anyhow::Result<()> {
        let clusters = self.cluster_list();
        let mut cmd = std::process::Command::new(self.bin("causeway"));
        cmd.arg("certs")
            .arg("--out")
            .arg(&self.state.pki_dir)
            .arg("--clusters")
            .arg(clusters)
            .arg("--force");
        run_tool(cmd, "causeway certs")
    }

    /// The lab's cluster IDs, comma-separated.
    fn cluster_list(&self) -> String {
        let names: Vec<&str> = self
            .state
            .clusters
            .iter()
            .map(|c| c.name.as_str())
            .collect();
        names.join(",")
    }

    /// etcd's PKI: a server certificate for every member (also its peer identity) and a
    /// client certificate per etcd user.
    fn etcd_pki(&self) -> anyhow::Result<()> {
        let Some(tls) = &self.state.etcd.tls else {
            return Ok(());
        };
        let ips: Vec<IpAddr> = self
            .state
            .etcd
            .members
            .iter()
            .filter_map(|m| {
                let host = m.client_url.split("://").nth(1)?.rsplit_once(':')?.0;
                host.parse().ok()
            })
            .collect();
        let mut users: Vec<String> = self
            .state
            .clusters
            .iter()
            .map(|c| etcd_user(&c.name))
            .collect();
        users.push(causeway_api::keys::OPERATOR_ROLE.to_string());
        let users: Vec<&str> = users.iter().map(String::as_str).collect();
        crate::etcd::EtcdPki::write(&tls.dir, &ips, &users)?;
        Ok(())
    }

    /// TLS options of an etcd client as `user`, when the lab's etcd has TLS.
    pub fn etcd_tls_as(&self, user: &str) -> anyhow::Result<Option<etcd_client::TlsOptions>> {
        let Some(tls) = &self.state.etcd.tls else {
            return Ok(None);
        };
        let (cert, key) = tls.client(user);
        Ok(Some(crate::etcd::client_tls(&tls.ca, &cert, &key)?))
    }

    /// `causeway etcd-auth` as etcd's root, from where etcd is: roles per cluster, auth on.
    fn etcd_auth(&self) -> anyhow::Result<()> {
        let Some(tls) = &self.state.etcd.tls else {
            return Ok(());
        };
        let (cert, key) = tls.client("root");
        let mut cmd = match &self.state.wan_netns {
            Some(ns) => {
                let mut c = std::process::Command::new("ip");
                c.args(["netns", "exec", ns]).arg(self.bin("causeway"));
                c
            }
            None => std::process::Command::new(self.bin("causeway")),
        };
        cmd.arg("etcd-auth")
            .arg("--etcd-endpoints")
            .arg(self.state.etcd.endpoints.join(","))
            .arg("--etcd-ca")
            .arg(&tls.ca)
            .arg("--etcd-cert")
            .arg(&cert)
            .arg("--etcd-key")
            .arg(&key)
            .arg("--clusters")
            .arg(self.cluster_list());
        run_tool(cmd, "causeway etcd-auth")
    }

    fn network(&self, plans: &[Plan]) -> anyhow::Result<()> {
        let wan = self
            .state
            .wan_netns
            .as_deref()
            .context("no WAN namespace")?;
        net::add_netns(wan)?;
        net::ip_in(wan, &["link", "add", "br0", "type", "bridge"])?;
        net::ip_in(wan, &["link", "set", "br0", "up"])?;
        for k in 0..self.state.etcd.members.len() {
            let addr = format!("10.100.0.{}/24", 2 + k);
            net::ip_in(wan, &["addr", "add", &addr, "dev", "br0"])?;
        }
        for plan in plans {
            self.cluster_network(plan)?;
        }
        Ok(())
    }

    /// One cluster's namespace, its link to the WAN, its addresses and nftables rules.
    fn cluster_network(&self, plan: &Plan) -> anyhow::Result<()> {
        let wan = self
            .state
            .wan_netns
            .as_deref()
            .context("no WAN namespace")?;
        {
            let ns = plan.netns.as_deref().context("no cluster namespace")?;
            net::add_netns(ns)?;
            // Created inside the cluster namespace with its peer in the WAN namespace, so the
            // names only need to be unique there (and parallel labs do not collide).
            let peer = format!("veth{}", plan.index);
            net::ip_in(
                ns,
                &[
                    "link", "add", "wan0", "type", "veth", "peer", "name", &peer, "netns", wan,
                ],
            )?;
            net::ip_in(wan, &["link", "set", &peer, "master", "br0", "up"])?;
            net::ip_in(
                ns,
                &["addr", "add", &format!("{}/24", plan.wan_ip), "dev", "wan0"],
            )?;
            net::ip_in(ns, &["link", "set", "wan0", "up"])?;
            let mut octets: BTreeSet<u8> = BTreeSet::from([1]);
            octets.extend(DEMO_SERVICES.iter().map(|d| d.4));
            if plan.stateful {
                octets.extend(STATEFUL_REPLICA_OCTETS);
            }
            for k in 0..plan.federators.len() as u8 {
                octets.insert(2 + k);
                octets.insert(53 + k);
            }
            for o in octets {
                // On loopback (the VM kernels CI uses may lack the dummy driver), as /32s so
                // that the rest of the /24 stays unrouted.
                let addr = format!("{}/32", plan.svc_ip(o));
                net::ip_in(ns, &["addr", "add", &addr, "dev", "lo"])?;
            }
            // AnyIP: every ClusterSetIP is local here, and the gateway's wildcard listeners
            // accept connections to it.
            net::ip_in(ns, &["route", "add", "local", VIP_RANGE, "dev", "lo"])?;
            // What kube-proxy does: service IP:port → the backend.
            let mut rules = String::new();
            for d in self.state.cluster(&plan.name)?.demo.iter() {
                rules.push_str(&format!(
                    "    ip daddr {} tcp dport {} dnat to {}\n",
                    d.service_ip, d.port, d.backend
                ));
            }
            net::nft_in(
                ns,
                &format!(
                    "table ip causeway_lab {{\n  chain services {{\n    type nat hook output priority -100; policy accept;\n{rules}  }}\n}}\n"
                ),
            )?;
            // What a cloud security group does for a gateway host: from the WAN only the peer
            // port (and replies to connections the cluster opened) get in, whatever route a
            // WAN host adds towards the cluster's own addresses.
            net::nft_in(
                ns,
                &format!(
                    "table inet causeway_lab_wan {{\n  chain input {{\n    type filter hook input priority 0; policy accept;\n    iifname \"wan0\" ct state established,related accept\n    iifname \"wan0\" tcp dport {GATEWAY_PEER_PORT} accept\n    iifname \"wan0\" counter drop\n  }}\n}}\n"
                ),
            )?;
            let dns: Vec<IpAddr> = plan.federators.iter().map(|f| f.dns.ip()).collect();
            net::write_resolv_conf(ns, &dns)?;
        }
        Ok(())
    }

    fn add_process(&mut self, mut record: ProcessRecord) -> anyhow::Result<()> {
        let child = record.spawn()?;
        self.procs
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .children
            .insert(record.name.clone(), child);
        self.state.processes.push(record);
        self.state.save()?;
        Ok(())
    }

    fn log_path(&self, process: &str) -> PathBuf {
        self.state
            .state_dir
            .join("logs")
            .join(format!("{}.log", process.replace('/', "-")))
    }

    fn start_etcd(&mut self, spec: &LabSpec, etcd_bin: &Path) -> anyhow::Result<()> {
        let members = self.state.etcd.members.clone();
        let initial_cluster = members
            .iter()
            .map(|m| format!("{}={}", m.name, m.peer_url))
            .collect::<Vec<_>>()
            .join(",");
        for m in members {
            let mut args: Vec<String> = [
                "--name",
                &m.name,
                "--data-dir",
                &m.data_dir.display().to_string(),
                "--listen-client-urls",
                &m.client_url,
                "--advertise-client-urls",
                &m.client_url,
                "--listen-peer-urls",
                &m.peer_url,
                "--initial-advertise-peer-urls",
                &m.peer_url,
                "--initial-cluster",
                &initial_cluster,
                "--initial-cluster-state",
                "new",
                "--initial-cluster-token",
                &format!("{}etcd", spec.prefix),
                "--logger",
                "zap",
                "--log-outputs",
                "stderr",
            ]
            .iter()
            .map(|s| s.to_string())
            .collect();
            // Shorter elections than etcd's defaults (100 ms / 1 s) are not needed on one host,
            // but a member restart must not take long to be noticed either.
            args.extend(["--heartbeat-interval".into(), "100".into()]);
            args.extend(["--election-timeout".into(), "1000".into()]);
            if let Some(tls) = &self.state.etcd.tls {
                // Clients and peers alike need a certificate of the lab's etcd CA; the
                // members' own (server.pem) serves clients and dials peers.
                let (cert, key) = (tls.dir.join("server.pem"), tls.dir.join("server.key"));
                let (cert, key, ca) = (
                    cert.display().to_string(),
                    key.display().to_string(),
                    tls.ca.display().to_string(),
                );
                for (flag, value) in [
                    ("--cert-file", &cert),
                    ("--key-file", &key),
                    ("--trusted-ca-file", &ca),
                    ("--peer-cert-file", &cert),
                    ("--peer-key-file", &key),
                    ("--peer-trusted-ca-file", &ca),
                ] {
                    args.extend([flag.to_string(), value.clone()]);
                }
                args.extend([
                    "--client-cert-auth".into(),
                    "--peer-client-cert-auth".into(),
                ]);
            }
            let mut env = Vec::new();
            if cfg!(target_arch = "aarch64") {
                env.push(("ETCD_UNSUPPORTED_ARCH".to_string(), "arm64".to_string()));
            }
            self.add_process(ProcessRecord {
                name: m.process.clone(),
                netns: self.state.wan_netns.clone(),
                program: etcd_bin.to_path_buf(),
                args,
                env,
                log: self.log_path(&m.process),
                pid: None,
            })?;
        }
        Ok(())
    }

    /// Waits until every etcd member answers a status request.
    pub async fn wait_etcd(&self) -> anyhow::Result<()> {
        let root_tls = self.etcd_tls_as("root")?;
        for m in &self.state.etcd.members {
            let url = m.client_url.clone();
            let what = format!("etcd member {} at {url}", m.name);
            let ns = self.state.wan_netns.clone();
            let proc_name = m.process.clone();
            self.wait_or_explain(&what, &proc_name, STEP_TIMEOUT, || {
                let url = url.clone();
                let ns = ns.clone();
                let tls = root_tls.clone();
                async move {
                    net::run_in(ns.as_deref(), move || async move {
                        let mut opts = etcd_client::ConnectOptions::new()
                            .with_connect_timeout(Duration::from_secs(1))
                            .with_timeout(Duration::from_secs(2));
                        if let Some(tls) = tls {
                            opts = opts.with_tls(tls);
                        }
                        let mut c = etcd_client::Client::connect([url], Some(opts)).await.ok()?;
                        c.status().await.ok().map(|_| ())
                    })
                    .await
                    .ok()
                    .flatten()
                }
            })
            .await?;
        }
        Ok(())
    }

    fn start_demo(&mut self, plan: &Plan) -> anyhow::Result<()> {
        let info = self.state.cluster(&plan.name)?.clone();
        if info.demo.is_empty() && info.stateful.is_none() {
            return Ok(());
        }
        std::fs::create_dir_all(&info.exports_dir)?;
        if let Some(s) = &info.stateful {
            for r in &s.replicas {
                self.add_process(ProcessRecord {
                    name: r.process.clone(),
                    netns: plan.netns.clone(),
                    program: self.bin("causeway-demo"),
                    args: vec![
                        DemoKind::HttpEcho.subcommand().to_string(),
                        "--listen".to_string(),
                        r.address.to_string(),
                        "--cluster".to_string(),
                        plan.name.clone(),
                        "--hostname".to_string(),
                        r.hostname.clone(),
                    ],
                    env: Vec::new(),
                    log: self.log_path(&r.process),
                    pid: None,
                })?;
            }
            write_atomically(&s.export_file, &stateful_export_yaml(s, &BTreeSet::new()))?;
        }
        for d in &info.demo {
            let _ = std::fs::remove_file(&d.fail_file);
            self.add_process(ProcessRecord {
                name: d.process.clone(),
                netns: plan.netns.clone(),
                program: self.bin("causeway-demo"),
                args: vec![
                    d.kind.subcommand().to_string(),
                    "--listen".to_string(),
                    d.backend.to_string(),
                    "--cluster".to_string(),
                    plan.name.clone(),
                    "--fail-file".to_string(),
                    d.fail_file.display().to_string(),
                ],
                env: Vec::new(),
                log: self.log_path(&d.process),
                pid: None,
            })?;
            std::fs::write(&d.export_file, export_yaml(d))
                .with_context(|| format!("writing {}", d.export_file.display()))?;
        }
        Ok(())
    }

    fn start_federators(&mut self, spec: &LabSpec, plan: &Plan) -> anyhow::Result<()> {
        let info = self.state.cluster(&plan.name)?.clone();
        std::fs::create_dir_all(&info.exports_dir)?;
        for f in &plan.federators {
            let mut args: Vec<String> = vec![
                "--cluster".into(),
                plan.name.clone(),
                "--node".into(),
                f.node.clone(),
                "--etcd-endpoints".into(),
                self.state.etcd.endpoints.join(","),
                "--exports-dir".into(),
                info.exports_dir.display().to_string(),
                "--admin-listen".into(),
                f.admin.to_string(),
                "--config-listen".into(),
                f.config.to_string(),
                "--dns-listen".into(),
                f.dns.to_string(),
                // The federator holds its cluster's issuer: it signs its gateways' certificates
                // and its own (federator.pem is the fallback without one).
                "--issuer-cert".into(),
                info.certs.issuer_cert.display().to_string(),
                "--issuer-key".into(),
                info.certs.issuer_key.display().to_string(),
                "--tls-reload-interval".into(),
                "500ms".into(),
                "--trust-bundle".into(),
                info.certs.trust_bundle.display().to_string(),
                "--gateway-address".into(),
                plan.gateway.ingress.to_string(),
                "--vip-range".into(),
                VIP_RANGE.into(),
                "--locality".into(),
                format!("region={}", plan.region),
            ];
            if let Some(tls) = &self.state.etcd.tls {
                let (cert, key) = tls.client(&etcd_user(&plan.name));
                args.extend([
                    "--etcd-ca".into(),
                    tls.ca.display().to_string(),
                    "--etcd-cert".into(),
                    cert.display().to_string(),
                    "--etcd-key".into(),
                    key.display().to_string(),
                ]);
            }
            if let Some(ttl) = spec.lease_ttl {
                args.extend(["--lease-ttl".into(), format!("{}ms", ttl.as_millis())]);
            }
            if let Some(grace) = spec.stale_grace {
                args.extend(["--stale-grace".into(), format!("{}ms", grace.as_millis())]);
            }
            if let Some(life) = spec.certificate_lifetime {
                args.extend([
                    "--certificate-lifetime".into(),
                    format!("{}ms", life.as_millis()),
                ]);
            }
            self.add_process(ProcessRecord {
                name: f.process.clone(),
                netns: plan.netns.clone(),
                program: self.bin("causeway-federator"),
                args,
                env: Vec::new(),
                log: self.log_path(&f.process),
                pid: None,
            })?;
        }
        Ok(())
    }

    fn start_gateway(&mut self, spec: &LabSpec, plan: &Plan) -> anyhow::Result<()> {
        let info = self.state.cluster(&plan.name)?.clone();
        let g = &plan.gateway;
        std::fs::create_dir_all(&g.state_dir)?;
        // Cluster-side addresses only (the node address): only the peer listener is on the WAN.
        let listen = |a: SocketAddr| a.to_string();
        let mut args: Vec<String> = vec![
            "--cluster".into(),
            plan.name.clone(),
            "--node".into(),
            format!("{}-gateway", plan.name),
            "--cert".into(),
            info.certs.gateway_cert.display().to_string(),
            "--key".into(),
            info.certs.gateway_key.display().to_string(),
            "--trust-bundle".into(),
            info.certs.trust_bundle.display().to_string(),
            "--federator".into(),
            format!("https://{}", plan.federators[0].config),
            "--state-dir".into(),
            g.state_dir.display().to_string(),
            "--egress-listen".into(),
            listen(g.egress),
            "--peer-listen".into(),
            g.ingress.to_string(),
            "--admin-listen".into(),
            listen(g.admin),
        ];
        if spec.mode == Mode::Netns {
            args.extend(["--vip-range".into(), VIP_RANGE.into()]);
        }
        if spec.gateway_access_log {
            args.push("--access-log".into());
        }
        self.add_process(ProcessRecord {
            name: g.process.clone(),
            netns: plan.netns.clone(),
            program: self.bin("causeway-gateway"),
            args,
            env: Vec::new(),
            log: self.log_path(&g.process),
            pid: None,
        })
    }

    /// Waits until the mesh is whole: every federator sees every demo service exported by
    /// every exporting cluster with a ClusterSetIP, every gateway sees every peer up, and from
    /// every cluster the echo service resolves and answers.
    pub async fn wait_converged(&self) -> anyhow::Result<()> {
        let expected = self.expected_imports();
        for c in &self.state.clusters {
            let what = format!("{}'s federator to see every demo service", c.name);
            let expected = expected.clone();
            self.wait_or_explain(&what, &c.federators[0].process, STEP_TIMEOUT, || {
                let expected = expected.clone();
                async move {
                    let snap = self.snapshot(&c.name).await.ok()?;
                    let ok = expected.iter().all(|(svc, clusters)| {
                        snap.services.get(svc).is_some_and(|v| {
                            v.vip.is_some()
                                && clusters
                                    .iter()
                                    .all(|c| v.exports.get(c).is_some_and(|e| !e.stale))
                        })
                    });
                    let stateful_ok = self.stateful_seen(&snap, &c.name);
                    (ok && stateful_ok).then_some(())
                }
            })
            .await?;
        }
        for c in &self.state.clusters {
            let peers: Vec<String> = self
                .state
                .clusters
                .iter()
                .filter(|p| p.name != c.name)
                .map(|p| p.name.clone())
                .collect();
            let what = format!("{}'s gateway to see its peers up", c.name);
            self.wait_or_explain(&what, &c.gateway.process, STEP_TIMEOUT, || {
                let peers = peers.clone();
                async move {
                    let up = self.peers_answering(&c.name).await.ok()?;
                    peers.iter().all(|p| up.contains(p)).then_some(())
                }
            })
            .await?;
        }
        if self.state.mode == Mode::Netns && !expected.is_empty() {
            for c in &self.state.clusters {
                let what = format!("the echo service to answer in {}", c.name);
                self.wait_or_explain(&what, &c.gateway.process, STEP_TIMEOUT, || async move {
                    let a = self.call_echo(&c.name).await.ok()?;
                    a.status.is_success().then_some(())
                })
                .await?;
            }
        }
        Ok(())
    }

    /// Whether a cluster's snapshot has the stateful demo's import: exported, and in a cluster
    /// that reaches it through its gateway (netns mode, not the exporter), an address for every
    /// replica.
    fn stateful_seen(&self, snap: &MeshSnapshot, cluster: &str) -> bool {
        self.state.clusters.iter().all(|owner| {
            let Some(s) = &owner.stateful else {
                return true;
            };
            let (Ok(key), Ok(id)) = (
                ServiceKey::new(&s.namespace, &s.name),
                ClusterId::new(&owner.name),
            ) else {
                return false;
            };
            snap.services.get(&key).is_some_and(|v| {
                let exported = v.exports.get(&id).is_some_and(|e| !e.stale);
                let addressed = self.state.mode != Mode::Netns
                    || owner.name == cluster
                    || v.endpoint_vips
                        .get(&id)
                        .is_some_and(|m| s.replicas.iter().all(|r| m.contains_key(&r.hostname)));
                exported && addressed
            })
        })
    }

    /// Marks replicas of the stateful demo of `cluster` not ready (the others ready) by
    /// rewriting its export file, as an EndpointSlice would change when a pod fails its
    /// readiness probe.
    pub fn set_not_ready(&self, cluster: &str, not_ready: &[&str]) -> anyhow::Result<()> {
        let s = self
            .cluster(cluster)
            .stateful
            .as_ref()
            .with_context(|| format!("{cluster} runs no stateful demo"))?;
        let set = not_ready.iter().map(|h| h.to_string()).collect();
        write_atomically(&s.export_file, &stateful_export_yaml(s, &set))
    }

    /// Imports every cluster should see: each demo service with the clusters exporting it.
    pub fn expected_imports(&self) -> BTreeMap<ServiceKey, BTreeSet<ClusterId>> {
        let mut out: BTreeMap<ServiceKey, BTreeSet<ClusterId>> = BTreeMap::new();
        for c in &self.state.clusters {
            for d in &c.demo {
                if let (Ok(k), Ok(id)) = (
                    ServiceKey::new(&d.namespace, &d.name),
                    ClusterId::new(&c.name),
                ) {
                    out.entry(k).or_default().insert(id);
                }
            }
        }
        out
    }

    /// Polls `check` until it returns Some; on timeout the error names what was awaited and
    /// quotes the tail of the log of the process most likely at fault.
    async fn wait_or_explain<F, Fut, T>(
        &self,
        what: &str,
        process: &str,
        timeout: Duration,
        check: F,
    ) -> anyhow::Result<T>
    where
        F: FnMut() -> Fut,
        Fut: std::future::Future<Output = Option<T>>,
    {
        match crate::wait_for(what, timeout, check).await {
            Ok(v) => Ok(v),
            Err(e) => {
                let alive = self.is_running(process);
                let log = self.log_path(process);
                Err(e.context(format!(
                    "{process} is {}; tail of {}:\n{}",
                    if alive { "running" } else { "NOT running" },
                    log.display(),
                    tail(&log, 30)
                )))
            }
        }
    }

    async fn wait_http_ok(
        &self,
        netns: Option<&str>,
        addr: SocketAddr,
        path: &str,
        process: &str,
    ) -> anyhow::Result<()> {
        let what = format!("{process} to answer {path} on {addr}");
        self.wait_or_explain(&what, process, STEP_TIMEOUT, || async move {
            let (status, _) = self.admin_get(netns, addr, path).await.ok()?;
            (status == 200).then_some(())
        })
        .await
    }

    // --- state and processes ---

    /// What lab.json says, with the current pids.
    pub fn state(&self) -> &LabState {
        &self.state
    }

    pub fn cluster(&self, name: &str) -> &ClusterInfo {
        match self.state.cluster(name) {
            Ok(c) => c,
            Err(e) => panic!("{e}"),
        }
    }

    /// Adds a cluster `name` to the running lab, as an operator joins one to a running
    /// federation: its network namespace, a root of its own and certificates (`causeway certs
    /// --add`, touching no other cluster's files), its etcd user and role
    /// (`causeway etcd-auth`, idempotent), its federator and gateway. Returns once both are
    /// ready; it exports nothing. The other clusters learn of it through etcd.
    pub async fn add_cluster(&mut self, name: &str) -> anyhow::Result<()> {
        anyhow::ensure!(
            self.state.clusters.iter().all(|c| c.name != name),
            "cluster {name} is in the lab already"
        );
        let mut spec = self.spec.clone();
        spec.clusters.push(name.to_string());
        let plan = Plan::new(&spec, spec.clusters.len(), name)?;
        let info = cluster_info(&plan, &spec, &self.state.pki_dir);
        self.state.clusters.push(info);
        self.spec = spec.clone();
        self.state.save()?;
        if spec.mode == Mode::Netns {
            self.cluster_network(&plan)?;
        }
        let mut cmd = std::process::Command::new(self.bin("causeway"));
        cmd.arg("certs")
            .arg("--out")
            .arg(&self.state.pki_dir)
            .arg("--clusters")
            .arg(name)
            .arg("--add");
        run_tool(cmd, "causeway certs --add")?;
        if let Some(tls) = &self.state.etcd.tls {
            crate::etcd::EtcdPki::add_user(&tls.dir, &etcd_user(name))?;
        }
        self.etcd_auth()?;
        self.start_federators(&spec, &plan)?;
        for f in &plan.federators {
            self.wait_http_ok(plan.netns.as_deref(), f.admin, "/ready", &f.process)
                .await?;
        }
        self.start_gateway(&spec, &plan)?;
        self.wait_http_ok(
            plan.netns.as_deref(),
            plan.gateway.admin,
            "/ready",
            &plan.gateway.process,
        )
        .await?;
        Ok(())
    }

    /// Leaves the lab running when this handle is dropped (causeway-lab up).
    pub fn detach(mut self) -> LabState {
        self.keep = true;
        // The children go on without us; init reaps them once we exit.
        self.procs
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .children
            .clear();
        self.state.clone()
    }

    /// Whether the named process of the lab is running.
    pub fn is_running(&self, process: &str) -> bool {
        let mut procs = self.procs.lock().unwrap_or_else(|e| e.into_inner());
        match procs.children.get_mut(process) {
            Some(child) => matches!(child.try_wait(), Ok(None)),
            None => self
                .state
                .process(process)
                .ok()
                .and_then(|p| p.pid)
                .is_some_and(process::is_alive),
        }
    }

    /// Stops a process of the lab: SIGKILL when `hard` (a crash), else SIGTERM (a graceful
    /// stop). Returns once it is gone.
    pub fn stop(&mut self, process: &str, hard: bool) -> anyhow::Result<()> {
        let child = self
            .procs
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .children
            .remove(process);
        let record = self.state.process_mut(process)?;
        match child {
            Some(mut child) => process::stop_child(&mut child, hard),
            None => {
                if let Some(pid) = record.pid {
                    let expect = program_name(&record.program);
                    process::stop_pid(pid, &expect);
                }
            }
        }
        record.pid = None;
        self.state.save()?;
        Ok(())
    }

    /// Starts a stopped process of the lab again, with the same command line.
    pub fn start(&mut self, process: &str) -> anyhow::Result<()> {
        anyhow::ensure!(!self.is_running(process), "{process} is already running");
        let record = self.state.process_mut(process)?;
        let child = record.spawn()?;
        self.procs
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .children
            .insert(process.to_string(), child);
        self.state.save()?;
        Ok(())
    }

    /// The namespace of a cluster (None in loopback mode).
    pub fn netns(&self, cluster: &str) -> Option<String> {
        self.cluster(cluster).netns.clone()
    }

    /// Takes a cluster's WAN link down or up (netns mode): the cluster loses every other
    /// cluster and etcd, as when its network path dies.
    pub fn set_wan_link(&self, cluster: &str, up: bool) -> anyhow::Result<()> {
        let c = self.cluster(cluster);
        let ns = c
            .netns
            .as_deref()
            .context("the WAN link needs netns mode")?;
        let link = c.wan_link.as_deref().context("no WAN link")?;
        net::ip_in(ns, &["link", "set", link, if up { "up" } else { "down" }])?;
        Ok(())
    }

    // --- asking the lab ---

    /// GET `path` from an HTTP admin endpoint (federator, gateway) inside `netns`.
    pub async fn admin_get(
        &self,
        netns: Option<&str>,
        addr: SocketAddr,
        path: &str,
    ) -> anyhow::Result<(u16, String)> {
        let path = path.to_string();
        let a = net::try_run_in(netns, move || async move {
            probe::http_get(addr, &addr.to_string(), &path, REQUEST_TIMEOUT).await
        })
        .await?;
        Ok((
            a.status.as_u16(),
            String::from_utf8_lossy(&a.body).into_owned(),
        ))
    }

    /// The mesh snapshot of a cluster's first federator (`/debug/snapshot`).
    pub async fn snapshot(&self, cluster: &str) -> anyhow::Result<MeshSnapshot> {
        self.snapshot_of(cluster, 0).await.map(|(_, s)| s)
    }

    /// `(leader, snapshot)` of federator replica `replica` of `cluster`.
    pub async fn snapshot_of(
        &self,
        cluster: &str,
        replica: usize,
    ) -> anyhow::Result<(bool, MeshSnapshot)> {
        let c = self.cluster(cluster);
        let f = c
            .federators
            .get(replica)
            .context("no such federator replica")?;
        let (status, body) = self
            .admin_get(c.netns.as_deref(), f.admin, "/debug/snapshot")
            .await?;
        anyhow::ensure!(status == 200, "/debug/snapshot answered {status}: {body}");
        #[derive(serde::Deserialize)]
        struct Debug {
            leader: bool,
            snapshot: MeshSnapshot,
        }
        let d: Debug = serde_json::from_str(&body).context("parsing /debug/snapshot")?;
        Ok((d.leader, d.snapshot))
    }

    /// The imports a cluster's federator holds: each service with the clusters exporting it.
    pub async fn imports(
        &self,
        cluster: &str,
    ) -> anyhow::Result<BTreeMap<ServiceKey, BTreeSet<ClusterId>>> {
        let snap = self.snapshot(cluster).await?;
        Ok(snap
            .services
            .iter()
            .map(|(k, v)| (k.clone(), v.exports.keys().cloned().collect()))
            .collect())
    }

    /// The imports of every cluster, by cluster.
    pub async fn all_imports(
        &self,
    ) -> anyhow::Result<BTreeMap<String, BTreeMap<ServiceKey, BTreeSet<ClusterId>>>> {
        let mut out = BTreeMap::new();
        for c in &self.state.clusters {
            out.insert(c.name.clone(), self.imports(&c.name).await?);
        }
        Ok(out)
    }

    /// The peers a cluster's gateway currently sees up (`/peers`): not marked down by its
    /// probes (a peer is up until enough probes miss, even before the first one).
    pub async fn peers_up(&self, cluster: &str) -> anyhow::Result<BTreeSet<String>> {
        self.peers_where(cluster, |p| p["up"].as_bool() == Some(true))
            .await
    }

    /// The peers whose last probe by a cluster's gateway was answered: probed, up and not
    /// suspect (routed to in their normal order).
    pub async fn peers_answering(&self, cluster: &str) -> anyhow::Result<BTreeSet<String>> {
        self.peers_where(cluster, |p| {
            p["up"].as_bool() == Some(true)
                && p["probed"].as_bool() == Some(true)
                && p["suspect"].as_bool() == Some(false)
        })
        .await
    }

    async fn peers_where(
        &self,
        cluster: &str,
        keep: impl Fn(&serde_json::Value) -> bool,
    ) -> anyhow::Result<BTreeSet<String>> {
        let c = self.cluster(cluster);
        let (status, body) = self
            .admin_get(c.netns.as_deref(), c.gateway.admin, "/peers")
            .await?;
        anyhow::ensure!(status == 200, "/peers answered {status}: {body}");
        let peers: Vec<serde_json::Value> =
            serde_json::from_str(&body).context("parsing /peers")?;
        Ok(peers
            .iter()
            .filter(|p| keep(p))
            .filter_map(|p| p["cluster"].as_str().map(str::to_string))
            .collect())
    }

    /// A cluster's gateway's `/config_dump` (with the certificate it holds).
    pub async fn gateway_dump(&self, cluster: &str) -> anyhow::Result<serde_json::Value> {
        let c = self.cluster(cluster);
        let (status, body) = self
            .admin_get(c.netns.as_deref(), c.gateway.admin, "/config_dump")
            .await?;
        anyhow::ensure!(status == 200, "/config_dump answered {status}: {body}");
        serde_json::from_str(&body).context("parsing /config_dump")
    }

    /// A cluster's gateway's `/peers`, as JSON.
    pub async fn gateway_peers(&self, cluster: &str) -> anyhow::Result<Vec<serde_json::Value>> {
        let c = self.cluster(cluster);
        let (status, body) = self
            .admin_get(c.netns.as_deref(), c.gateway.admin, "/peers")
            .await?;
        anyhow::ensure!(status == 200, "/peers answered {status}: {body}");
        serde_json::from_str(&body).context("parsing /peers")
    }

    /// Runs the lab's `causeway` CLI with `args`; its standard output, or an error with both
    /// outputs.
    pub fn causeway(&self, args: &[&str]) -> anyhow::Result<String> {
        let out = std::process::Command::new(self.bin("causeway"))
            .args(args)
            .stdin(std::process::Stdio::null())
            .output()
            .context("running causeway")?;
        anyhow::ensure!(
            out.status.success(),
            "causeway {}: {}\n{}{}",
            args.join(" "),
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }

    /// The Prometheus text of a cluster's gateway.
    pub async fn gateway_metrics(&self, cluster: &str) -> anyhow::Result<String> {
        let c = self.cluster(cluster);
        let (status, body) = self
            .admin_get(c.netns.as_deref(), c.gateway.admin, "/metrics")
            .await?;
        anyhow::ensure!(status == 200, "gateway /metrics answered {status}");
        Ok(body)
    }

    /// The Prometheus text of a federator replica.
    pub async fn federator_metrics(&self, cluster: &str, replica: usize) -> anyhow::Result<String> {
        let c = self.cluster(cluster);
        let f = c
            .federators
            .get(replica)
            .context("no such federator replica")?;
        let (status, body) = self
            .admin_get(c.netns.as_deref(), f.admin, "/metrics")
            .await?;
        anyhow::ensure!(status == 200, "federator /metrics answered {status}");
        Ok(body)
    }

    /// What a cluster's DNS answers for a name (A records).
    pub async fn resolve(&self, cluster: &str, name: &str) -> anyhow::Result<Vec<IpAddr>> {
        let c = self.cluster(cluster);
        let servers = c.dns_servers.clone();
        let name = name.to_string();
        net::try_run_in(c.netns.as_deref(), move || async move {
            probe::resolve(&servers, &name, REQUEST_TIMEOUT).await
        })
        .await
    }

    /// Calls the demo echo service from inside a cluster the way a client there would: resolve
    /// `echo.demo.svc.clusterset.local` with the cluster's DNS, GET / on the answer.
    pub async fn call_echo(&self, cluster: &str) -> anyhow::Result<probe::HttpAnswer> {
        let c = self.cluster(cluster);
        let servers = c.dns_servers.clone();
        let name = format!("echo.{DEMO_NAMESPACE}.svc.clusterset.local");
        net::try_run_in(c.netns.as_deref(), move || async move {
            let ips = probe::resolve(&servers, &name, REQUEST_TIMEOUT).await?;
            probe::http_get(SocketAddr::new(ips[0], 80), &name, "/", REQUEST_TIMEOUT).await
        })
        .await
    }

    /// A [`probe::Prober`] calling the demo echo service from inside `cluster` every 50 ms.
    pub fn echo_prober(&self, cluster: &str) -> anyhow::Result<probe::Prober> {
        let c = self.cluster(cluster);
        let port = self
            .state
            .clusters
            .iter()
            .flat_map(|c| c.demo.iter())
            .find(|d| d.name == "echo")
            .map_or(80, |d| d.port);
        probe::Prober::start(
            c.netns.clone(),
            probe::ProbeTarget::http(
                c.dns_servers.clone(),
                format!("echo.{DEMO_NAMESPACE}.svc.clusterset.local"),
                port,
            ),
        )
    }

    // --- teardown ---

    /// Stops every process and removes the namespaces (and, for a test lab, the files).
    fn teardown(&mut self) {
        let children = std::mem::take(
            &mut self
                .procs
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .children,
        );
        stop_all(&self.state, children);
        remove_namespaces(&self.state);
        for p in &mut self.state.processes {
            p.pid = None;
        }
    }
}

impl Drop for Lab {
    fn drop(&mut self) {
        if !self.keep {
            self.teardown();
        }
    }
}

/// The file name of a program path: what `/proc/<pid>/exe` names.
fn program_name(program: &Path) -> String {
    program
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default()
}

/// SIGTERM to everything at once (gateways and federators first get to leave cleanly: a
/// federator revokes its lease), then waits, then SIGKILL what is left.
fn stop_all(state: &LabState, mut children: BTreeMap<String, Child>) {
    use nix::sys::signal::Signal;
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    let mut others = Vec::new();
    for p in &state.processes {
        if let Some(child) = children.get(&p.name) {
            process::signal(child.id(), Signal::SIGTERM);
        } else if let Some(pid) = p.pid {
            if process::is_alive(pid)
                && process::program_of(pid).as_deref() == Some(&program_name(&p.program))
            {
                process::signal(pid, Signal::SIGTERM);
                others.push(pid);
            }
        }
    }
    loop {
        children.retain(|_, c| matches!(c.try_wait(), Ok(None)));
        others.retain(|pid| process::is_alive(*pid));
        if (children.is_empty() && others.is_empty()) || std::time::Instant::now() >= deadline {
            break;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    for (_, mut c) in children {
        let _ = c.kill();
        let _ = c.wait();
    }
    for pid in others {
        process::signal(pid, Signal::SIGKILL);
    }
}

fn remove_namespaces(state: &LabState) {
    if state.mode != Mode::Netns {
        return;
    }
    for c in &state.clusters {
        if let Some(ns) = &c.netns {
            net::delete_netns(ns);
        }
    }
    if let Some(wan) = &state.wan_netns {
        net::delete_netns(wan);
    }
}

/// What `causeway-lab down` does: stops every process of the lab in `state_dir` (from its
/// lab.json), deletes its namespaces, and then, whatever lab.json said, every namespace left
/// with the prefix (a crashed run), and the lab's files. A lab.json of another prefix is left
/// alone. Idempotent. Returns what it did.
pub fn down(state_dir: &Path, prefix: &str) -> anyhow::Result<Vec<String>> {
    let mut done = Vec::new();
    let path = LabState::path(state_dir);
    if path.exists() {
        match LabState::load(&path) {
            // Another lab's state: `down --prefix X` must not take it along.
            Ok(state) if state.prefix != prefix => {
                done.push(format!(
                    "left the lab of {} alone (its prefix is {:?}, not {prefix:?})",
                    state_dir.display(),
                    state.prefix
                ));
                sweep_namespaces(prefix, &mut done);
                return Ok(done);
            }
            Ok(state) => {
                let alive = state
                    .processes
                    .iter()
                    .filter(|p| p.pid.is_some_and(process::is_alive))
                    .count();
                stop_all(&state, BTreeMap::new());
                done.push(format!("stopped {alive} processes"));
                remove_namespaces(&state);
            }
            Err(e) => done.push(format!("ignored an unreadable lab.json: {e:#}")),
        }
    }
    sweep_namespaces(prefix, &mut done);
    for sub in [
        "lab.json",
        "lab.json.tmp",
        "pki",
        "clusters",
        "etcd",
        "logs",
    ] {
        let p = state_dir.join(sub);
        let removed = if p.is_dir() {
            std::fs::remove_dir_all(&p).is_ok()
        } else {
            p.exists() && std::fs::remove_file(&p).is_ok()
        };
        if removed && sub == "lab.json" {
            done.push(format!("removed {}", state_dir.display()));
        }
    }
    // Only when empty: the user may have pointed --state-dir at a directory of their own.
    let _ = std::fs::remove_dir(state_dir);
    Ok(done)
}

/// Deletes the namespaces and /etc/netns entries left with `prefix` (a crashed run). Only for
/// a prefix of the lab's own form (`cw-`, `cwt<pid>x<n>-`): a bare `c` would also match
/// namespaces of other software.
fn sweep_namespaces(prefix: &str, done: &mut Vec<String>) {
    let own_form = prefix.len() >= 3
        && prefix.ends_with('-')
        && prefix[..prefix.len() - 1]
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit());
    if !net::can_use_namespaces() || !own_form {
        return;
    }
    let left = net::netns_with_prefix(prefix);
    if !left.is_empty() {
        for ns in &left {
            net::delete_netns(ns);
        }
        done.push(format!("deleted network namespaces {}", left.join(", ")));
    }
    // /etc/netns entries whose namespace is already gone.
    if let Ok(entries) = std::fs::read_dir("/etc/netns") {
        for e in entries.flatten() {
            let name = e.file_name().to_string_lossy().into_owned();
            if name.starts_with(prefix) {
                let _ = std::fs::remove_dir_all(e.path());
            }
        }
    }
}

fn etcd_info(spec: &LabSpec) -> EtcdInfo {
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

/// Runs one of our tools to completion; its stderr is the error when it fails.
fn run_tool(mut cmd: std::process::Command, what: &str) -> anyhow::Result<()> {
    let out = cmd
        .stdin(std::process::Stdio::null())
        .output()
        .with_context(|| format!("running {what}"))?;
    if !out.status.success() {
        bail!(
            "{what} failed: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(())
}

/// The etcd user of cluster `c`'s federators (its role writes only `clusters/<c>/`).
fn etcd_user(c: &str) -> String {
    format!("cluster-{c}")
}

/// The last `lines` lines of a log file.
pub fn tail(path: &Path, lines: usize) -> String {
    match std::fs::read_to_string(path) {
        Ok(text) => {
            let all: Vec<&str> = text.lines().collect();
            let from = all.len().saturating_sub(lines);
            if all.is_empty() {
                "(empty)".to_string()
            } else {
                all[from..].join("\n")
            }
        }
        Err(e) => format!("(cannot read: {e})"),
    }
}
