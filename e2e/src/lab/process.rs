//! The lab's processes: how each is started (so that it can be started again after a test
//! killed it), its pid, and how to stop it.

use std::fs::OpenOptions;
use std::os::unix::process::CommandExt as _;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use anyhow::Context as _;
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;

use super::net;

/// How long [`stop`] waits after SIGTERM before SIGKILL.
const STOP_GRACE: Duration = Duration::from_secs(5);

pub use causeway_probe::lab::ProcessRecord;

/// Starting a [`ProcessRecord`] (its data is causeway-probe's, shared with `causeway drill`).
pub trait Spawn {
    fn spawn(&mut self) -> anyhow::Result<Child>;
}

impl Spawn for ProcessRecord {
    /// Starts it (inside its namespace through `ip netns exec`, which execs the program, so the
    /// pid is the program's) in a process group of its own, so that a Ctrl-C meant for
    /// `causeway-lab` does not reach the lab it leaves running.
    fn spawn(&mut self) -> anyhow::Result<Child> {
        if let Some(dir) = self.log.parent() {
            std::fs::create_dir_all(dir)?;
        }
        let log = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)
            .with_context(|| format!("opening {}", self.log.display()))?;
        let mut cmd = match &self.netns {
            Some(ns) => {
                let mut c = Command::new(net::which("ip").context("ip is not installed")?);
                c.args(["netns", "exec", ns]).arg(&self.program);
                c
            }
            None => Command::new(&self.program),
        };
        cmd.args(&self.args)
            .envs(self.env.iter().map(|(k, v)| (k, v)))
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .process_group(0);
        // etcd reads ETCD_* as flags and refuses a flag given twice.
        for (key, _) in std::env::vars_os() {
            if key.to_string_lossy().starts_with("ETCD_") {
                cmd.env_remove(key);
            }
        }
        let child = cmd
            .spawn()
            .with_context(|| format!("starting {}: {}", self.name, self.command_line()))?;
        self.pid = Some(child.id());
        tracing::debug!(name = %self.name, pid = child.id(), "started");
        Ok(child)
    }
}

/// Whether `pid` is a live process (a zombie is not).
pub fn is_alive(pid: u32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        // The state follows the command name in parentheses, which may contain spaces.
        Ok(stat) => stat
            .rsplit_once(')')
            .and_then(|(_, rest)| rest.split_whitespace().next())
            .is_some_and(|state| state != "Z" && state != "X"),
        Err(_) => false,
    }
}

/// The program a pid runs (`/proc/<pid>/exe`'s file name), to check that a pid from lab.json
/// still belongs to the lab before signalling it.
pub fn program_of(pid: u32) -> Option<String> {
    std::fs::read_link(format!("/proc/{pid}/exe"))
        .ok()
        .and_then(|p| p.file_name().map(|n| n.to_string_lossy().into_owned()))
}

/// Sends `signal` to a pid; a pid that is gone is not an error.
pub fn signal(pid: u32, signal: Signal) {
    if let Ok(pid) = i32::try_from(pid) {
        let _ = kill(Pid::from_raw(pid), signal);
    }
}

/// Stops a child of this process: SIGTERM (SIGKILL with `hard`), then SIGKILL after a grace
/// period, and reaps it.
pub fn stop_child(child: &mut Child, hard: bool) {
    let pid = child.id();
    if matches!(child.try_wait(), Ok(Some(_))) {
        return;
    }
    signal(
        pid,
        if hard {
            Signal::SIGKILL
        } else {
            Signal::SIGTERM
        },
    );
    let deadline = std::time::Instant::now() + STOP_GRACE;
    while std::time::Instant::now() < deadline {
        if matches!(child.try_wait(), Ok(Some(_)) | Err(_)) {
            return;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    let _ = child.kill();
    let _ = child.wait();
}

/// Stops a process that is not our child (a lab started by another `causeway-lab`): SIGTERM,
/// then SIGKILL after a grace period. Its parent (init, once causeway-lab exited) reaps it.
/// `expect` is the program name the pid must run, so that a reused pid is left alone.
pub fn stop_pid(pid: u32, expect: &str) {
    if !is_alive(pid) || program_of(pid).is_some_and(|p| p != expect) {
        return;
    }
    signal(pid, Signal::SIGTERM);
    let deadline = std::time::Instant::now() + STOP_GRACE;
    while std::time::Instant::now() < deadline {
        if !is_alive(pid) {
            return;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    signal(pid, Signal::SIGKILL);
}
