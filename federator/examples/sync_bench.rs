//! Federator sync benchmarks (issue "Federator: sync exports between clusters through etcd").
//! Not a test: it prints figures for docs/benchmarks.md. Run it with a release build:
//!
//! ```text
//! cargo build --release -p causeway-federator --bins --examples
//! target/release/examples/sync_bench [--changes 200] [--clusters 50] [--exports 2000] [--probes 50]
//! ```
//!
//! 1. Propagation east → west: two real federator processes on one real etcd; `--changes` edits
//!    of an export file in east; the time from the file's rename until west's `/debug/snapshot`
//!    shows the new content.
//! 2. Scale: `--clusters` simulated publishers write `--exports` exports each into one etcd (every
//!    cluster exports the same services, so the merge has work to do), then one real federator
//!    starts: time to its first full snapshot, its RSS, and the propagation of one change (a put,
//!    until the federator's `snapshot_revision` metric passes the put's revision), `--probes` times.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use causeway_api::keys;
use causeway_api::{
    ClusterId, ClusterRecord, ExportRecord, Protocol, ServiceKey, ServicePort, SyncedRecord,
};
use causeway_e2e::EtcdServer;
use causeway_federator::cli::status::admin_get;
use etcd_client::{PutOptions, Txn, TxnOp};
use tokio::process::{Child, Command};

fn arg(name: &str, default: usize) -> usize {
    let args: Vec<String> = std::env::args().collect();
    args.iter()
        .position(|a| a == name)
        .and_then(|i| args.get(i + 1))
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn federator_bin() -> anyhow::Result<PathBuf> {
    // target/<profile>/examples/sync_bench -> target/<profile>/causeway-federator
    let exe = std::env::current_exe()?;
    let bin = exe
        .parent()
        .and_then(Path::parent)
        .map(|d| d.join("causeway-federator"))
        .context("locating causeway-federator")?;
    anyhow::ensure!(
        bin.exists(),
        "{} is missing: cargo build --release -p causeway-federator --bins",
        bin.display()
    );
    Ok(bin)
}

async fn spawn(bin: &Path, args: &[&str]) -> anyhow::Result<(Child, String)> {
    // SYNC_BENCH_WRAP="heaptrack -o /tmp/ht" runs the federators under a profiler (with
    // --changes 0, only the scale run's one).
    let wrap: Vec<String> = std::env::var("SYNC_BENCH_WRAP")
        .unwrap_or_default()
        .split_whitespace()
        .map(str::to_owned)
        .collect();
    let mut cmd = match wrap.split_first() {
        Some((first, rest)) => {
            let mut cmd = Command::new(first);
            cmd.args(rest).arg(bin);
            cmd
        }
        None => Command::new(bin),
    };
    cmd.args(args).env("RUST_LOG", "error");
    let (child, mut addrs) =
        causeway_e2e::spawn_printing(&mut cmd, &["admin listening on "]).await?;
    Ok((child, addrs.pop().unwrap_or_default()))
}

async fn metric(addr: &str, name: &str) -> Option<f64> {
    let text = admin_get(addr, "/metrics").await.ok()?;
    causeway_api::prom::series(&text, name)
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    let idx = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[idx.min(sorted.len() - 1)]
}

fn report(what: &str, mut samples: Vec<Duration>) {
    samples.sort();
    println!(
        "{what}: n={} p50={:.1}ms p90={:.1}ms p99={:.1}ms max={:.1}ms",
        samples.len(),
        percentile(&samples, 0.5).as_secs_f64() * 1e3,
        percentile(&samples, 0.9).as_secs_f64() * 1e3,
        percentile(&samples, 0.99).as_secs_f64() * 1e3,
        samples.last().copied().unwrap_or_default().as_secs_f64() * 1e3
    );
}

fn rss_mib(pid: u32) -> (f64, f64) {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    let field = |name: &str| {
        status
            .lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|v| v.split_whitespace().next()?.parse::<f64>().ok())
            .unwrap_or(0.0)
            / 1024.0
    };
    (field("VmRSS:"), field("VmHWM:"))
}

async fn propagation(bin: &Path, changes: usize) -> anyhow::Result<()> {
    if changes == 0 {
        return Ok(());
    }
    let etcd = EtcdServer::start().await?;
    let (de, dw) = (tempfile::tempdir()?, tempfile::tempdir()?);
    let ep = etcd.endpoint();
    let common = [
        "--admin-listen",
        "127.0.0.1:0",
        "--config-listen",
        "127.0.0.1:0",
        "--etcd-endpoints",
        &ep,
    ];
    let de_s = de.path().display().to_string();
    let dw_s = dw.path().display().to_string();
    let (_east, _) = spawn(
        bin,
        &[&common[..], &["--cluster", "east", "--exports-dir", &de_s]].concat(),
    )
    .await?;
    let (_west, west) = spawn(
        bin,
        &[&common[..], &["--cluster", "west", "--exports-dir", &dw_s]].concat(),
    )
    .await?;
    let file = de.path().join("echo.yaml");
    let mut samples = Vec::with_capacity(changes);
    for i in 0..changes {
        let port = 1000 + i;
        let text = format!(
            "metadata: {{name: echo, namespace: demo, creationTimestamp: \"2026-01-01T00:00:00Z\"}}\nspec:\n  ports: [{{name: http, port: {port}}}]\n  endpoints: [{{address: 10.1.0.5}}]\n"
        );
        let tmp = de.path().join("echo.tmp");
        std::fs::write(&tmp, text)?;
        let start = Instant::now();
        std::fs::rename(&tmp, &file)?;
        let needle = format!("\"port\": {port}");
        loop {
            if start.elapsed() > Duration::from_secs(10) {
                bail!("change {i} did not reach west within 10 s");
            }
            let body = admin_get(&west, "/debug/snapshot").await?;
            if body.contains(&needle) {
                break;
            }
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
        samples.push(start.elapsed());
    }
    report(
        &format!("propagation east->west (file rename -> west snapshot), {changes} changes"),
        samples,
    );
    Ok(())
}

fn export_record(created: i64) -> ExportRecord {
    ExportRecord {
        ports: vec![
            ServicePort {
                name: "http".into(),
                protocol: Protocol::Tcp,
                port: 80,
                app_protocol: Some("http".into()),
            },
            ServicePort {
                name: "grpc".into(),
                protocol: Protocol::Tcp,
                port: 9090,
                app_protocol: Some("grpc".into()),
            },
        ]
        .into(),
        created_unix_ms: created,
        ready_endpoints: 3,
        service_ip: Some("10.96.0.10".parse().expect("ip")),
        ..ExportRecord::default()
    }
}

async fn scale(bin: &Path, clusters: usize, exports: usize, probes: usize) -> anyhow::Result<()> {
    let etcd = EtcdServer::start().await?;
    let mut client = etcd.client().await?;
    let load = Instant::now();
    for c in 0..clusters {
        let cluster = ClusterId::new(format!("c{c:03}"))?;
        let lease = client.lease_grant(600, None).await?.id();
        let opts = || Some(PutOptions::new().with_lease(lease));
        let rec = ClusterRecord {
            schema: causeway_api::SCHEMA_VERSION,
            gateway_addresses: vec![format!("10.100.{}.{}:15443", c / 250, c % 250)],
            trust_domain: format!("{cluster}.causeway.mesh"),
            trust_bundle_pem: String::new(),
            locality: Default::default(),
            federator_version: "bench".into(),
            certificate_not_after: None,
        };
        client
            .put(keys::cluster_key(&cluster), keys::encode(&rec), opts())
            .await?;
        let mut ops = Vec::with_capacity(100);
        for s in 0..exports {
            let key = ServiceKey::new("bench", format!("svc-{s:05}"))?;
            ops.push(TxnOp::put(
                keys::export_key(&key, &cluster),
                keys::encode(&export_record(c as i64)),
                opts(),
            ));
            if ops.len() == 100 {
                client
                    .txn(Txn::new().and_then(std::mem::take(&mut ops)))
                    .await?;
            }
        }
        if !ops.is_empty() {
            client.txn(Txn::new().and_then(ops)).await?;
        }
        let rev = client
            .get(keys::cluster_key(&cluster), None)
            .await?
            .header()
            .map(|h| h.revision())
            .unwrap_or(0);
        client
            .put(
                keys::synced_key(&cluster),
                keys::encode(&SyncedRecord {
                    schema: causeway_api::SCHEMA_VERSION,
                    revision: rev,
                }),
                opts(),
            )
            .await?;
    }
    let total = clusters * exports;
    println!(
        "loaded {clusters} clusters x {exports} exports = {total} keys into etcd in {:.1}s",
        load.elapsed().as_secs_f64()
    );

    let dir = tempfile::tempdir()?;
    let ep = etcd.endpoint();
    let dir_s = dir.path().display().to_string();
    let start = Instant::now();
    let (child, admin) = spawn(
        bin,
        &[
            "--cluster",
            "observer",
            "--etcd-endpoints",
            &ep,
            "--exports-dir",
            &dir_s,
            "--admin-listen",
            "127.0.0.1:0",
            "--config-listen",
            "127.0.0.1:0",
        ],
    )
    .await?;
    let pid = child.id().context("pid")?;
    loop {
        if start.elapsed() > Duration::from_secs(120) {
            bail!("no full snapshot within 120 s");
        }
        let text = admin_get(&admin, "/metrics").await.unwrap_or_default();
        let sum: f64 = text
            .lines()
            .filter(|l| l.starts_with("causeway_federator_exports{"))
            .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
            .sum();
        if sum as usize >= total {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let first = start.elapsed();
    let (rss, hwm) = rss_mib(pid);
    println!("time to first full snapshot ({total} exports, {exports} imports): {:.2}s (process start included)", first.as_secs_f64());
    println!("federator RSS after the first snapshot: {rss:.1} MiB (peak {hwm:.1} MiB)");

    let cluster = ClusterId::new("c000")?;
    let mut samples = Vec::with_capacity(probes);
    for i in 0..probes {
        let key = ServiceKey::new("bench", format!("svc-{:05}", i % exports))?;
        let mut rec = export_record(0);
        rec.ready_endpoints = 10 + i as u32;
        let begin = Instant::now();
        let resp = client
            .put(keys::export_key(&key, &cluster), keys::encode(&rec), None)
            .await?;
        let rev = resp.header().map(|h| h.revision()).unwrap_or(0) as f64;
        loop {
            if begin.elapsed() > Duration::from_secs(30) {
                bail!("change {i} not applied within 30 s");
            }
            if metric(&admin, "causeway_federator_snapshot_revision")
                .await
                .is_some_and(|r| r >= rev)
            {
                break;
            }
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
        samples.push(begin.elapsed());
    }
    report(
        &format!("one change's propagation at {total} exports (etcd put -> snapshot)"),
        samples,
    );
    let (rss, hwm) = rss_mib(pid);
    println!("federator RSS after the changes: {rss:.1} MiB (peak {hwm:.1} MiB)");
    drop(child);
    Ok(())
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let bin = federator_bin()?;
    propagation(&bin, arg("--changes", 200)).await?;
    scale(
        &bin,
        arg("--clusters", 50),
        arg("--exports", 2000),
        arg("--probes", 50),
    )
    .await?;
    Ok(())
}
