//! Network namespaces by `ip netns` name (`/run/netns/<name>`).

use std::path::Path;

use anyhow::Context as _;

/// Where `ip netns` keeps its namespaces.
pub const RUN_DIR: &str = "/run/netns";

/// Moves the calling thread into the network namespace `name`. Sockets it opens afterwards live
/// there; other threads are not affected.
pub fn enter(name: &str) -> anyhow::Result<()> {
    let path = Path::new(RUN_DIR).join(name);
    let file = std::fs::File::open(&path)
        .with_context(|| format!("opening {} (no such network namespace?)", path.display()))?;
    nix::sched::setns(&file, nix::sched::CloneFlags::CLONE_NEWNET)
        .with_context(|| format!("entering network namespace {name}"))?;
    Ok(())
}

/// Whether this process already runs in the network namespace `name`.
pub fn is_current(name: &str) -> bool {
    use std::os::unix::fs::MetadataExt as _;
    let mine = std::fs::metadata("/proc/self/ns/net");
    let theirs = std::fs::metadata(Path::new(RUN_DIR).join(name));
    match (mine, theirs) {
        (Ok(a), Ok(b)) => a.dev() == b.dev() && a.ino() == b.ino(),
        _ => false,
    }
}
