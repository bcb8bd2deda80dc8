//! Observing drills: when a cluster drill (`clusters/<creator>/drills/<id>`) names this cluster
//! among its observers, the leading federator calls the service as a client here would (ask
//! the clusterset DNS, then send the request through the local gateway), from the
//! announcement (the baseline) until DNS and traffic are back after the drain, and writes what
//! it saw to `clusters/<this>/drill-reports/<creator>/<id>` for the creator to put in the Drill's
//! status.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use causeway_api::keys::{self, drill_report_key};
use causeway_api::model::{ClusterId, DrillRecord, DrillReport, SCHEMA_VERSION};
use causeway_api::net::Cidr;
use causeway_api::MeshSnapshot;
use causeway_probe::prober::{ProbeTarget, Prober};
use etcd_client::PutOptions;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use super::report::{self, Window};
use crate::config::{DrillOptions, EtcdConfig};
use crate::metrics::Metrics;

/// Bound of one DNS query and of one request.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(1);
/// How long a report stays in etcd (its lease), long after the creator has read it.
const REPORT_TTL: i64 = 3600;

#[derive(Debug, Clone)]
pub(crate) struct ObserverConfig {
    pub cluster: ClusterId,
    pub etcd: EtcdConfig,
    /// This federator's DNS server: the clusterset DNS the client asks.
    pub dns: Option<SocketAddr>,
    pub vip_range: Option<Cidr>,
    pub options: DrillOptions,
}

/// What one drill's observation is told of its record: `None` once the key is gone.
type RecordRx = watch::Receiver<Option<DrillRecord>>;

/// Runs until `shutdown`: starts an observation for every cluster drill naming this cluster,
/// while this replica leads (one report per cluster).
pub(crate) async fn run(
    cfg: ObserverConfig,
    mut snapshots: watch::Receiver<Arc<MeshSnapshot>>,
    mut leader: watch::Receiver<bool>,
    metrics: Arc<Metrics>,
    shutdown: CancellationToken,
) {
    let cfg = Arc::new(cfg);
    // Per drill name (`<creator>/<id>`): what its observation is told, and its task.
    let mut running: BTreeMap<
        String,
        (
            watch::Sender<Option<DrillRecord>>,
            tokio::task::JoinHandle<()>,
        ),
    > = BTreeMap::new();
    // Drills not observed for the cap, warned of once.
    let mut refused: std::collections::BTreeSet<String> = Default::default();
    loop {
        let snap = snapshots.borrow_and_update().clone();
        let leading = *leader.borrow_and_update();
        for (name, record) in &snap.drills {
            let Some((creator, id)) = name.split_once('/') else {
                continue; // an operator's drill: its own client measures it
            };
            if !record.observers.contains(&cfg.cluster) {
                continue;
            }
            match running.get(name) {
                Some((tx, _)) => {
                    tx.send_if_modified(|r| {
                        let changed = r.as_ref() != Some(record);
                        *r = Some(record.clone());
                        changed
                    });
                }
                None if leading && running.len() >= cfg.options.max_concurrent => {
                    let first_time = refused.insert(name.clone());
                    if first_time {
                        metrics
                            .drill_observations
                            .with_label_values(&["refused"])
                            .inc();
                        tracing::warn!(drill = %name, observing = running.len(), "not observing a drill: as many as drills.max_concurrent observed already");
                    }
                }
                None if leading => {
                    let Ok(creator) = ClusterId::new(creator) else {
                        continue;
                    };
                    let (tx, rx) = watch::channel(Some(record.clone()));
                    let task = tokio::spawn(observe(
                        cfg.clone(),
                        creator,
                        id.to_string(),
                        rx,
                        metrics.clone(),
                        shutdown.child_token(),
                    ));
                    running.insert(name.clone(), (tx, task));
                }
                None => {}
            }
        }
        refused.retain(|name| snap.drills.contains_key(name));
        // Drills whose key is gone are told so; finished observations are forgotten.
        running.retain(|name, (tx, task)| {
            if !snap.drills.contains_key(name) {
                tx.send_if_modified(|r| r.take().is_some());
            }
            !task.is_finished()
        });
        tokio::select! {
            r = snapshots.changed() => if r.is_err() { return },
            r = leader.changed() => if r.is_err() { return },
            _ = shutdown.cancelled() => return,
        }
    }
}

/// One drill, from the announcement to the report.
async fn observe(
    cfg: Arc<ObserverConfig>,
    creator: ClusterId,
    id: String,
    mut record: RecordRx,
    metrics: Arc<Metrics>,
    stop: CancellationToken,
) {
    let key = drill_report_key(&cfg.cluster, &creator, &id);
    let first = record.borrow().clone();
    let Some(first) = first else { return };
    let report = tokio::select! {
        r = measure(&cfg, &key, &first, &mut record) => r,
        _ = stop.cancelled() => return,
    };
    let result = if !report.error.is_empty() {
        "error"
    } else if report.passed {
        "passed"
    } else {
        "failed"
    };
    metrics
        .drill_observations
        .with_label_values(&[result])
        .inc();
    tracing::info!(drill = %format!("{creator}/{id}"), service = %first.service, drained = %first.cluster, result, verdict = %report.verdict, error = %report.error, "drill observed");
    if let Err(e) = write(&cfg.etcd, &key, &report).await {
        tracing::warn!(key, error = %e, "cannot write the drill report");
    }
}

/// Probes through the drill and returns the final report; writes `Probing` at the start.
async fn measure(
    cfg: &ObserverConfig,
    key: &str,
    first: &DrillRecord,
    record: &mut RecordRx,
) -> DrillReport {
    let failed = |error: String| DrillReport {
        schema: SCHEMA_VERSION,
        phase: report::DONE.to_string(),
        error,
        verdict: "FAIL: the drill's client could not run".to_string(),
        ..DrillReport::default()
    };
    let probe = first
        .probe
        .clone()
        .unwrap_or(causeway_api::model::DrillProbe {
            port: 80,
            path: "/".to_string(),
            interval_ms: 50,
        });
    let proxy = match &cfg.options.gateway_egress {
        Some(addr) => match tokio::net::lookup_host(addr.as_str()).await {
            Ok(mut a) => a.next(),
            Err(e) => return failed(format!("resolving drills.gateway_egress {addr}: {e}")),
        },
        None => None,
    };
    let dns = cfg.dns.map(|d| {
        // A wildcard listener is reached on loopback.
        if d.ip().is_unspecified() {
            SocketAddr::new(std::net::Ipv4Addr::LOCALHOST.into(), d.port())
        } else {
            d
        }
    });
    if dns.is_none() && proxy.is_none() {
        return failed(
            "this federator has no DNS server and no drills.gateway_egress to call through"
                .to_string(),
        );
    }
    let target = ProbeTarget {
        dns: dns.into_iter().collect(),
        name: format!(
            "{}.{}.svc.clusterset.local",
            first.service.name, first.service.namespace
        ),
        port: probe.port,
        path: probe.path.clone(),
        proxy,
        interval: Duration::from_millis(probe.interval_ms.max(10)),
        timeout: REQUEST_TIMEOUT,
    };
    let client = match Prober::start(None, target) {
        Ok(c) => c,
        Err(e) => return failed(format!("starting the client: {e:#}")),
    };
    let probing = DrillReport {
        schema: SCHEMA_VERSION,
        phase: report::PROBING.to_string(),
        ..DrillReport::default()
    };
    if let Err(e) = write(&cfg.etcd, key, &probing).await {
        tracing::warn!(key, error = %e, "cannot write the drill report");
    }

    // The drain begins when the record stops being pending (or at once, for a drill first
    // seen draining), and ends when its key is gone.
    let start = loop {
        match &*record.borrow_and_update() {
            Some(r) if !r.pending => break client.now(),
            Some(_) => {}
            None => {
                drop(client);
                return failed("the drill ended before it drained".to_string());
            }
        }
        if record.changed().await.is_err() {
            break client.now();
        }
    };
    let end_unix_ms = record.borrow().as_ref().map_or(0, |r| r.end_unix_ms);
    while record.borrow_and_update().is_some() {
        if record.changed().await.is_err() {
            break;
        }
    }
    let end = client.now();
    let interrupted = unix_ms() + 500 < end_unix_ms;

    let samples = client.samples();
    let base = report::phase(&samples, Duration::ZERO, start);
    let drained = first.cluster.to_string();
    let mut window = Window {
        // A local answer (the Service's own ClusterIP) moves only in the drained cluster; an
        // observer elsewhere that exports too keeps its own.
        expect_dns_move: cfg.cluster.to_string() == drained
            && base
                .dns
                .is_some_and(|ip| cfg.vip_range.is_some_and(|r| !r.contains(ip))),
        expect_traffic_back: base.clusters.contains_key(&drained),
        drained,
        start,
        end,
        interrupted,
        came_back: false,
    };
    if base.requests == 0 || base.clusters.is_empty() {
        let why = samples
            .iter()
            .rev()
            .find_map(|s| s.error.clone())
            .unwrap_or_else(|| "no request made".to_string());
        let mut r = failed(format!(
            "the service did not answer before the drill: {why}"
        ));
        r.baseline = base;
        return r;
    }
    let deadline = Instant::now() + cfg.options.failback_timeout;
    let interval = Duration::from_millis(probe.interval_ms.max(10));
    window.came_back = loop {
        if report::is_back(&client.samples(), &window, base.dns) {
            // A few more requests: failures right after failing back count.
            tokio::time::sleep(interval * 10).await;
            break true;
        }
        if Instant::now() >= deadline {
            break false;
        }
        tokio::time::sleep(interval).await;
    };
    let timeline = tokio::task::spawn_blocking(move || client.stop())
        .await
        .unwrap_or_else(|_| causeway_probe::prober::Timeline::new(Vec::new()));
    report::analyse(&timeline, &window)
}

async fn write(etcd: &EtcdConfig, key: &str, report: &DrillReport) -> anyhow::Result<()> {
    let mut client = crate::etcd::connect(etcd).await?;
    let lease = client.lease_grant(REPORT_TTL, None).await?.id();
    client
        .put(
            key,
            keys::encode(report),
            Some(PutOptions::new().with_lease(lease)),
        )
        .await?;
    Ok(())
}

pub(crate) fn unix_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64)
}
