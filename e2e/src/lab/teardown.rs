//! Stopping a lab: its processes (children and recorded pids) and its network namespaces,
//! from a running [`super::Lab`] or from lab.json alone (`causeway-lab down`).

use std::collections::BTreeMap;
use std::path::Path;
use std::process::Child;
use std::time::Duration;

use super::state::{LabState, Mode};

use super::net;
use super::process::{self};

/// The file name of a program path: what `/proc/<pid>/exe` names.
pub(super) fn program_name(program: &Path) -> String {
    program
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default()
}

/// SIGTERM to everything at once (gateways and federators first get to leave cleanly: a
/// federator revokes its lease), then waits, then SIGKILL what is left.
pub(super) fn stop_all(state: &LabState, mut children: BTreeMap<String, Child>) {
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

pub(super) fn remove_namespaces(state: &LabState) {
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
pub(super) fn sweep_namespaces(prefix: &str, done: &mut Vec<String>) {
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
