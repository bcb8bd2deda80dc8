//! Network namespaces, links, routes and nftables rules of the lab, through the `ip` and `nft`
//! commands; and [`run_in`], which runs async code inside a namespace.

use std::future::Future;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use anyhow::{bail, Context as _};

/// Where `ip netns add` puts its namespace handles.
const NETNS_RUN_DIR: &str = causeway_probe::netns::RUN_DIR;
/// Where `ip netns exec` finds per-namespace /etc files (resolv.conf).
const NETNS_ETC_DIR: &str = "/etc/netns";

/// Whether this process runs as root.
pub fn is_root() -> bool {
    nix::unistd::geteuid().is_root()
}

/// Whether this process may create network namespaces (root, or CAP_SYS_ADMIN + CAP_NET_ADMIN,
/// which in practice means root) and has `ip`.
pub fn can_use_namespaces() -> bool {
    is_root() && which("ip").is_some()
}

/// The full path of a command found on PATH or in the sbin directories a non-root PATH lacks.
pub fn which(cmd: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain(["/usr/sbin", "/sbin", "/usr/bin", "/bin"].map(PathBuf::from))
        .map(|d| d.join(cmd))
        .find(|p| p.is_file())
}

/// Runs a command to completion; fails with its stderr when it exits non-zero.
pub fn run(program: &str, args: &[&str]) -> anyhow::Result<String> {
    let bin = which(program).unwrap_or_else(|| PathBuf::from(program));
    let out = Command::new(&bin)
        .args(args)
        .stdin(Stdio::null())
        .output()
        .with_context(|| format!("running {program}"))?;
    if !out.status.success() {
        bail!(
            "`{program} {}` failed ({}): {}",
            args.join(" "),
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// `ip <args>`
pub fn ip(args: &[&str]) -> anyhow::Result<String> {
    run("ip", args)
}

/// `ip -n <ns> <args>`
pub fn ip_in(ns: &str, args: &[&str]) -> anyhow::Result<String> {
    let mut all = vec!["-n", ns];
    all.extend_from_slice(args);
    ip(&all)
}

/// Feeds an nftables script to `nft -f -` inside `ns`.
pub fn nft_in(ns: &str, script: &str) -> anyhow::Result<()> {
    use std::io::Write as _;
    let nft = which("nft").context("nft (package nftables) is not installed")?;
    let ipbin = which("ip").context("ip (package iproute2) is not installed")?;
    let mut child = Command::new(ipbin)
        .args(["netns", "exec", ns])
        .arg(nft)
        .args(["-f", "-"])
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .context("running nft")?;
    child
        .stdin
        .take()
        .context("nft's stdin")?
        .write_all(script.as_bytes())?;
    let out = child.wait_with_output()?;
    if !out.status.success() {
        bail!(
            "nft in {ns} failed: {}\nscript:\n{script}",
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(())
}

// === namespaces ===

pub fn netns_exists(name: &str) -> bool {
    Path::new(NETNS_RUN_DIR).join(name).exists()
}

/// Names of the existing network namespaces that start with `prefix`.
pub fn netns_with_prefix(prefix: &str) -> Vec<String> {
    let Ok(entries) = std::fs::read_dir(NETNS_RUN_DIR) else {
        return Vec::new();
    };
    let mut names: Vec<String> = entries
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with(prefix))
        .collect();
    names.sort();
    names
}

/// Creates `name` with its loopback up. An existing namespace of that name is an error: it
/// belongs to another lab (or a crashed one, which `causeway-lab down` removes).
pub fn add_netns(name: &str) -> anyhow::Result<()> {
    if netns_exists(name) {
        bail!("network namespace {name} already exists (a lab is running, or a crashed one left it: `causeway-lab down` removes it)");
    }
    ip(&["netns", "add", name])?;
    ip_in(name, &["link", "set", "lo", "up"])?;
    Ok(())
}

/// Kills every process still inside `name`, deletes it and its /etc/netns directory. Quiet and
/// idempotent: cleanup paths call it whatever state things are in.
pub fn delete_netns(name: &str) {
    if netns_exists(name) {
        if let Ok(pids) = ip(&["netns", "pids", name]) {
            for pid in pids
                .split_whitespace()
                .filter_map(|p| p.parse::<i32>().ok())
            {
                let _ = nix::sys::signal::kill(
                    nix::unistd::Pid::from_raw(pid),
                    nix::sys::signal::Signal::SIGKILL,
                );
            }
        }
        if let Err(e) = ip(&["netns", "del", name]) {
            tracing::warn!(netns = name, error = %e, "cannot delete the network namespace");
        }
    }
    let etc = Path::new(NETNS_ETC_DIR).join(name);
    if etc.exists() {
        let _ = std::fs::remove_dir_all(etc);
    }
}

/// Makes `ip netns exec <name>` see a resolv.conf that points at `nameservers`.
pub fn write_resolv_conf(name: &str, nameservers: &[std::net::IpAddr]) -> anyhow::Result<()> {
    let dir = Path::new(NETNS_ETC_DIR).join(name);
    std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    let mut text = String::from("# written by causeway-lab\n");
    for ns in nameservers {
        text.push_str(&format!("nameserver {ns}\n"));
    }
    // A dead replica must not stall every lookup for the default 5 s.
    text.push_str("options timeout:1 attempts:2\n");
    let path = dir.join("resolv.conf");
    std::fs::write(&path, text).with_context(|| format!("writing {}", path.display()))
}

/// Moves the calling thread into the network namespace `name`. Sockets it opens afterwards live
/// there; other threads are not affected.
pub fn enter_netns(name: &str) -> anyhow::Result<()> {
    causeway_probe::netns::enter(name)
}

/// Runs `f` on a thread of its own inside the network namespace `netns` (None: this process's
/// namespace) with a single-threaded runtime, and returns its output.
pub async fn run_in<F, Fut, T>(netns: Option<&str>, f: F) -> anyhow::Result<T>
where
    F: FnOnce() -> Fut + Send + 'static,
    Fut: Future<Output = T>,
    T: Send + 'static,
{
    let netns = netns.map(str::to_string);
    let (tx, rx) = tokio::sync::oneshot::channel();
    std::thread::Builder::new()
        .name("lab-netns".to_string())
        .spawn(move || {
            let result = (|| {
                if let Some(ns) = &netns {
                    enter_netns(ns)?;
                }
                let rt = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                    .context("building a runtime")?;
                Ok(rt.block_on(f()))
            })();
            let _ = tx.send(result);
        })
        .context("spawning a thread")?;
    rx.await.context("the namespace thread panicked")?
}

/// [`run_in`] for code that returns a `Result` itself.
pub async fn try_run_in<F, Fut, T>(netns: Option<&str>, f: F) -> anyhow::Result<T>
where
    F: FnOnce() -> Fut + Send + 'static,
    Fut: Future<Output = anyhow::Result<T>>,
    T: Send + 'static,
{
    run_in(netns, f).await?
}
