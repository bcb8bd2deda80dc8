//! What a lab is made of before it runs: its clusters and namespaces ([`LabSpec`]), the
//! binaries it runs and how they are built, and the lab's fixed names and timeouts.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use anyhow::Context as _;

use super::state::Mode;

use super::net;

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

/// How long `up` waits for each step (etcd, a federator, the mesh to converge).
pub(crate) const STEP_TIMEOUT: Duration = Duration::from_secs(60);
/// Bound of one admin or probe request.
pub(crate) const REQUEST_TIMEOUT: Duration = Duration::from_secs(2);

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

    pub(super) fn netns_of(&self, cluster: &str) -> Option<String> {
        (self.mode == Mode::Netns).then(|| format!("{}{cluster}", self.prefix))
    }

    pub(super) fn wan_netns(&self) -> Option<String> {
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
