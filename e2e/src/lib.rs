//! Causeway test fixtures and the local lab.
//!
//! - [`etcd::EtcdServer`]: a real etcd process on free loopback ports, killed on drop.
//! - [`kubeapi::KubeApiServer`]: a Kubernetes-API-compatible test server (a fixture, not an API
//!   server) for the kube client, kube-runtime controllers and `kubectl --validate=false`.
//! - [`wait_for`]: poll a condition with a deadline, the way tests synchronise (never `sleep`).

use std::future::Future;
use std::time::Duration;

use tokio::time::Instant;

pub mod etcd;
pub mod kubeapi;
pub mod lab;

pub use etcd::{EtcdPki, EtcdServer, EtcdServerBuilder, EtcdTls};

/// How often [`wait_for`] asks again.
const WAIT_FOR_INTERVAL: Duration = Duration::from_millis(25);

/// Calls `f` every 25 ms until it returns `Some(value)`, and returns that value; fails, naming
/// `what`, when `timeout` passes first. A call of `f` that is still running at the deadline is
/// abandoned, so a hanging check cannot stretch the wait.
///
/// ```no_run
/// # async fn demo(server: &causeway_e2e::EtcdServer) -> anyhow::Result<()> {
/// use std::time::Duration;
/// let mut client = server.client().await?;
/// let value = causeway_e2e::wait_for("key /a to appear", Duration::from_secs(5), || {
///     let mut client = client.clone();
///     async move {
///         let resp = client.get("/a", None).await.ok()?;
///         resp.kvs().first().map(|kv| kv.value().to_vec())
///     }
/// })
/// .await?;
/// # Ok(()) }
/// ```
pub async fn wait_for<F, Fut, T>(what: &str, timeout: Duration, mut f: F) -> anyhow::Result<T>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let start = Instant::now();
    let deadline = start + timeout;
    let mut attempts = 0u64;
    loop {
        attempts += 1;
        // `timeout_at` polls `f()` once even at the deadline, so the last check still happens.
        match tokio::time::timeout_at(deadline, f()).await {
            Ok(Some(value)) => return Ok(value),
            Ok(None) => {}
            Err(_) => break,
        }
        let now = Instant::now();
        if now >= deadline {
            break;
        }
        tokio::time::sleep_until((now + WAIT_FOR_INTERVAL).min(deadline)).await;
    }
    anyhow::bail!(
        "timed out after {:?} waiting for {what} ({attempts} checks)",
        start.elapsed()
    )
}

/// Spawns `cmd` (stdout piped, killed on drop) and waits up to 20 s for a stdout line starting
/// with each of `prefixes` (`"admin listening on "`, ...): the child and the rest of each such
/// line, trimmed, in the order of `prefixes`. Its stdout is drained afterwards, so it never
/// blocks on a full pipe. The caller sets the environment and stderr.
pub async fn spawn_printing(
    cmd: &mut tokio::process::Command,
    prefixes: &[&str],
) -> anyhow::Result<(tokio::process::Child, Vec<String>)> {
    use anyhow::Context as _;
    use tokio::io::AsyncBufReadExt as _;
    let mut child = cmd
        .stdout(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .with_context(|| format!("spawning {:?}", cmd.as_std().get_program()))?;
    let stdout = child.stdout.take().context("stdout")?;
    let mut lines = tokio::io::BufReader::new(stdout).lines();
    let mut found: Vec<Option<String>> = vec![None; prefixes.len()];
    tokio::time::timeout(Duration::from_secs(20), async {
        while found.iter().any(Option::is_none) {
            let Some(line) = lines.next_line().await? else {
                anyhow::bail!("exited before it printed {prefixes:?}");
            };
            for (i, p) in prefixes.iter().enumerate() {
                if let Some(rest) = line.strip_prefix(p) {
                    found[i] = Some(rest.trim().to_string());
                }
            }
        }
        Ok(())
    })
    .await
    .with_context(|| format!("waiting for {prefixes:?}"))??;
    tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
    Ok((
        child,
        found.into_iter().map(Option::unwrap_or_default).collect(),
    ))
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicU32, Ordering};

    use super::*;

    #[tokio::test]
    async fn wait_for_returns_the_first_some() {
        let calls = AtomicU32::new(0);
        let got = wait_for("the third call", Duration::from_secs(5), || async {
            let n = calls.fetch_add(1, Ordering::SeqCst) + 1;
            (n == 3).then_some(n)
        })
        .await
        .expect("condition becomes true");
        assert_eq!(got, 3);
    }

    #[tokio::test]
    async fn wait_for_names_what_it_waited_for_on_timeout() {
        let err = wait_for("pigs to fly", Duration::from_millis(100), || async {
            None::<()>
        })
        .await
        .expect_err("never true");
        let msg = err.to_string();
        assert!(msg.contains("pigs to fly"), "{msg}");
        assert!(msg.contains("timed out"), "{msg}");
    }

    #[tokio::test]
    async fn wait_for_abandons_a_hanging_check_at_the_deadline() {
        let started = Instant::now();
        let err = wait_for("a hanging check", Duration::from_millis(200), || {
            std::future::pending::<Option<()>>()
        })
        .await
        .expect_err("never answers");
        assert!(started.elapsed() < Duration::from_secs(5), "{err}");
    }
}
