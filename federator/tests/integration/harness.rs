//! Runs real `causeway-federator` processes against a real etcd and reads their admin endpoints.

use std::path::Path;
use std::process::Stdio;

use anyhow::Context;
use serde_json::Value;
use tokio::process::{Child, Command};

pub(crate) const FEDERATOR: &str = env!("CARGO_BIN_EXE_causeway-federator");
pub(crate) const CLI: &str = env!("CARGO_BIN_EXE_causeway");

/// One federator process. Killed (SIGKILL) on drop.
pub(crate) struct Fed {
    pub(crate) cluster: String,
    pub(crate) admin: String,
    /// The gateway config endpoint (plaintext in these tests).
    pub(crate) config: String,
    /// The mesh DNS address, when started with `--dns-listen`.
    pub(crate) dns: Option<String>,
    args: Vec<String>,
    child: Child,
}

impl Fed {
    /// Starts a federator for `cluster` reading export files from `exports`.
    pub(crate) async fn start(
        cluster: &str,
        etcd: &str,
        exports: &Path,
        extra: &[&str],
    ) -> anyhow::Result<Fed> {
        let mut args: Vec<String> = vec![
            "--cluster".into(),
            cluster.into(),
            "--etcd-endpoints".into(),
            etcd.into(),
            "--exports-dir".into(),
            exports.display().to_string(),
            "--admin-listen".into(),
            "127.0.0.1:0".into(),
            "--exports-poll-interval".into(),
            "50ms".into(),
        ];
        // With a YAML config the test decides about the config endpoint itself.
        if !extra.contains(&"--config") {
            args.extend(["--config-listen".into(), "127.0.0.1:0".into()]);
        }
        args.extend(extra.iter().map(|s| s.to_string()));
        let (child, admin, config, dns) = spawn(&args).await?;
        Ok(Fed {
            cluster: cluster.into(),
            admin,
            config,
            dns,
            args,
            child,
        })
    }

    /// SIGKILL: no lease revoke, no goodbye.
    pub(crate) async fn kill(&mut self) {
        let _ = self.child.start_kill();
        let _ = self.child.wait().await;
    }

    /// Starts the same federator again (new admin port).
    pub(crate) async fn restart(&mut self) -> anyhow::Result<()> {
        let (child, admin, config, dns) = spawn(&self.args).await?;
        self.child = child;
        self.admin = admin;
        self.config = config;
        self.dns = dns;
        Ok(())
    }

    pub(crate) fn is_running(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }

    pub(crate) fn pid(&self) -> Option<u32> {
        self.child.id()
    }

    /// `/debug/snapshot` as JSON (`{"leader": bool, "snapshot": {...}}`).
    pub(crate) async fn debug(&self) -> anyhow::Result<Value> {
        let body = http_get(&self.admin, "/debug/snapshot").await?;
        serde_json::from_str(&body).context("parsing /debug/snapshot")
    }

    pub(crate) async fn snapshot(&self) -> anyhow::Result<Value> {
        Ok(self.debug().await?["snapshot"].clone())
    }

    pub(crate) async fn is_leader(&self) -> bool {
        matches!(self.debug().await, Ok(v) if v["leader"] == Value::Bool(true))
    }

    pub(crate) async fn metrics(&self) -> anyhow::Result<String> {
        http_get(&self.admin, "/metrics").await
    }

    /// The value of the series `name` (`name` or `name{label="value"}`).
    pub(crate) async fn metric(&self, name: &str) -> Option<f64> {
        let text = self.metrics().await.ok()?;
        causeway_api::prom::series(&text, name)
    }
}

async fn spawn(args: &[String]) -> anyhow::Result<(Child, String, String, Option<String>)> {
    spawn_federator(args, &[]).await
}

/// Starts `causeway-federator` with `args` and `env`, and waits for the addresses it prints:
/// admin always, config and DNS when `args` ask for them (`--config-listen`, `--dns-listen`).
/// Returns the child (killed on drop) and the admin, config ("" without) and DNS addresses.
/// `CAUSEWAY_TEST_LOG` sets the child's log filter (default `warn`).
pub(crate) async fn spawn_federator(
    args: &[String],
    env: &[(&str, &str)],
) -> anyhow::Result<(Child, String, String, Option<String>)> {
    let want_dns = args.iter().any(|a| a == "--dns-listen");
    let want_config = args.iter().any(|a| a == "--config-listen");
    let mut prefixes = vec!["admin listening on "];
    if want_config {
        prefixes.push("config listening on ");
    }
    if want_dns {
        prefixes.push("dns listening on ");
    }
    let mut cmd = Command::new(FEDERATOR);
    cmd.args(args)
        .envs(env.iter().copied())
        .env(
            "RUST_LOG",
            std::env::var("CAUSEWAY_TEST_LOG").unwrap_or_else(|_| "warn".into()),
        )
        .stderr(Stdio::inherit());
    let (child, mut addrs) = causeway_e2e::spawn_printing(&mut cmd, &prefixes)
        .await
        .context("waiting for the admin and config addresses")?;
    let dns = want_dns.then(|| addrs.pop().unwrap_or_default());
    let config = if want_config {
        addrs.pop().unwrap_or_default()
    } else {
        String::new()
    };
    let admin = addrs.pop().unwrap_or_default();
    Ok((child, admin, config, dns))
}

/// `GET` on a federator's admin listener: the body of a 200, an error otherwise.
pub(crate) async fn http_get(addr: &str, path: &str) -> anyhow::Result<String> {
    causeway_federator::cli::status::admin_get(addr, path).await
}

/// An export file for `demo/<name>` with one named port.
pub(crate) fn export_yaml(
    name: &str,
    port_name: &str,
    protocol: &str,
    port: u16,
    created: &str,
) -> String {
    format!(
        "apiVersion: causeway.io/v1\nkind: ServiceExport\nmetadata:\n  name: {name}\n  namespace: demo\n  creationTimestamp: \"{created}\"\nspec:\n  serviceIP: 10.96.0.10\n  ports:\n    - name: {port_name}\n      protocol: {protocol}\n      port: {port}\n  endpoints:\n    - address: 10.1.0.5\n"
    )
}

/// Writes a file atomically (rename), so the source never reads half of it.
pub(crate) fn write_file(path: &Path, text: &str) {
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, text).expect("write export");
    std::fs::rename(&tmp, path).expect("rename export");
}

/// Which clusters export `svc` in this snapshot, with their stale flag.
pub(crate) fn exporters(snap: &Value, svc: &str) -> Vec<(String, bool)> {
    snap["services"][svc]["exports"]
        .as_object()
        .map(|m| {
            m.iter()
                .map(|(c, e)| (c.clone(), e["stale"].as_bool().unwrap_or(false)))
                .collect()
        })
        .unwrap_or_default()
}

/// The set of service keys in a snapshot.
pub(crate) fn services(snap: &Value) -> Vec<String> {
    snap["services"]
        .as_object()
        .map(|m| m.keys().cloned().collect())
        .unwrap_or_default()
}

/// `dig +short` of an A record against a federator's DNS.
pub(crate) async fn dig_a(dns: &str, name: &str) -> anyhow::Result<Vec<String>> {
    let (host, port) = dns.rsplit_once(':').context("dns address")?;
    let out = Command::new("dig")
        .args([
            &format!("@{host}"),
            "-p",
            port,
            "+short",
            "+norecurse",
            "+time=1",
            "+tries=1",
            name,
            "A",
        ])
        .output()
        .await
        .context("running dig (bind9-dnsutils)")?;
    anyhow::ensure!(
        out.status.success(),
        "dig failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(str::to_string)
        .collect())
}
