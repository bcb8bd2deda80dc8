//! Drill resources (`causeway.io/v1alpha1`, Kubernetes mode): the leading federator of the
//! cluster where a Drill is created checks it against the clusterset (conditions with reasons
//! when it cannot run), writes `clusters/<this>/drills/<id>` under a lease of its own that it
//! keeps alive while the drill runs, waits for the observers' baseline, drains, ends the drain
//! on time or when the Drill is deleted (or when this federator dies: the lease lapses), and
//! puts the observers' reports into the Drill's status.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use causeway_api::keys::{self, cluster_drill_key};
use causeway_api::model::{
    ClusterId, DrillProbe, DrillRecord, DrillReport, ServiceKey, DRILL_PATH_MAX, SCHEMA_VERSION,
};
use causeway_api::MeshSnapshot;
use etcd_client::PutOptions;
use futures::StreamExt;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use kube::api::{Api, Patch, PatchParams};
use kube::runtime::{reflector, watcher, WatchStreamExt};
use kube::ResourceExt;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use super::observer::unix_ms;
use super::report::{self, DONE, PROBING};
use crate::config::{parse_duration, DrillOptions, EtcdConfig};
use crate::crds::{Drill, DrillEventStatus, DrillObserverStatus, DrillPhaseStatus, DrillSpec};
use crate::metrics::Metrics;

/// Phases of [`DrillStatus::phase`].
pub(crate) mod phase {
    pub(crate) const REJECTED: &str = "Rejected";
    pub(crate) const BASELINE: &str = "Baseline";
    pub(crate) const RUNNING: &str = "Running";
    pub(crate) const FAILING_BACK: &str = "FailingBack";
    pub(crate) const SUCCEEDED: &str = "Succeeded";
    pub(crate) const FAILED: &str = "Failed";

    pub(crate) fn is_terminal(p: &str) -> bool {
        matches!(p, REJECTED | SUCCEEDED | FAILED)
    }
}

/// Reasons of the `Accepted` condition.
pub(crate) mod reason {
    pub(crate) const ACCEPTED: &str = "Accepted";
    pub(crate) const INVALID_SPEC: &str = "InvalidSpec";
    pub(crate) const UNKNOWN_SERVICE: &str = "UnknownService";
    pub(crate) const CLUSTER_NOT_EXPORTING: &str = "ClusterNotExporting";
    pub(crate) const UNKNOWN_CLUSTER: &str = "UnknownCluster";
    pub(crate) const OVERLAPPING_DRILL: &str = "OverlappingDrill";
    pub(crate) const NO_FAILOVER_TARGET: &str = "NoFailoverTarget";
    pub(crate) const TOO_MANY_DRILLS: &str = "TooManyDrills";
    pub(crate) const INTERRUPTED: &str = "Interrupted";
}

const ACCEPTED: &str = "Accepted";
const PASSED: &str = "Passed";
/// The least baseline the observers get before the drain, and the most they are waited for.
const BASELINE_MIN: Duration = Duration::from_secs(1);
const BASELINE_MAX: Duration = Duration::from_secs(10);
/// After the drain, how much longer than their failback timeout the observers are waited for.
const REPORT_GRACE: Duration = Duration::from_secs(15);
const MIN_DRILL: Duration = Duration::from_secs(2);

#[derive(Debug, Clone)]
pub(crate) struct ControllerConfig {
    pub cluster: ClusterId,
    pub etcd: EtcdConfig,
    pub options: DrillOptions,
}

/// A checked Drill: what to write and whom to wait for.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Plan {
    pub service: ServiceKey,
    pub cluster: ClusterId,
    pub duration: Duration,
    pub observers: Vec<ClusterId>,
    pub probe: DrillProbe,
}

/// A Drill this federator runs.
struct Run {
    stop: CancellationToken,
    task: tokio::task::JoinHandle<()>,
    /// What it drains, for the overlap check before the snapshot shows it.
    drains: (ServiceKey, ClusterId),
}

/// Why a Drill cannot run: the `Accepted=False` condition's reason and message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Rejection {
    pub reason: &'static str,
    pub message: String,
}

fn reject(reason: &'static str, message: impl Into<String>) -> Rejection {
    Rejection {
        reason,
        message: message.into(),
    }
}

/// Checks a Drill of namespace `ns` against the clusterset as `snap` sees it.
pub(crate) fn validate(
    ns: &str,
    spec: &DrillSpec,
    snap: &MeshSnapshot,
    local: &ClusterId,
    opts: &DrillOptions,
) -> Result<Plan, Rejection> {
    use reason::*;
    let service = ServiceKey::new(ns, &spec.service)
        .map_err(|e| reject(INVALID_SPEC, format!("spec.service: {e}")))?;
    let cluster = ClusterId::new(&spec.cluster)
        .map_err(|e| reject(INVALID_SPEC, format!("spec.cluster: {e}")))?;
    let duration = match &spec.duration {
        Some(d) => {
            parse_duration(d).map_err(|e| reject(INVALID_SPEC, format!("spec.duration: {e}")))?
        }
        None => Duration::from_secs(60),
    };
    if duration < MIN_DRILL || duration > opts.max_duration {
        return Err(reject(
            INVALID_SPEC,
            format!(
                "spec.duration {duration:?} is outside {MIN_DRILL:?}..{:?} (drills.max_duration)",
                opts.max_duration
            ),
        ));
    }
    let interval = match &spec.interval {
        Some(i) => {
            parse_duration(i).map_err(|e| reject(INVALID_SPEC, format!("spec.interval: {e}")))?
        }
        None => Duration::from_millis(50),
    };
    if interval < Duration::from_millis(10) || interval > Duration::from_secs(10) {
        return Err(reject(INVALID_SPEC, "spec.interval must be 10ms..10s"));
    }
    let path = spec.path.clone().unwrap_or_else(|| "/".to_string());
    if !path.starts_with('/')
        || path.len() > DRILL_PATH_MAX
        || path.bytes().any(|b| !(0x21..0x7f).contains(&b))
    {
        return Err(reject(
            INVALID_SPEC,
            format!("spec.path must be an absolute path of at most {DRILL_PATH_MAX} visible ASCII characters"),
        ));
    }
    let mut observers = Vec::new();
    if spec.observe_from.is_empty() {
        observers.push(cluster.clone());
        if &cluster != local {
            observers.push(local.clone());
        }
    } else {
        for o in &spec.observe_from {
            let o = ClusterId::new(o)
                .map_err(|e| reject(INVALID_SPEC, format!("spec.observeFrom: {e}")))?;
            if !observers.contains(&o) {
                observers.push(o);
            }
        }
    }
    for c in observers.iter().chain(std::iter::once(&cluster)) {
        if !snap.clusters.contains_key(c) {
            return Err(reject(
                UNKNOWN_CLUSTER,
                format!("cluster {c} is not a member of the clusterset"),
            ));
        }
    }
    let Some(view) = snap.service(&service) else {
        return Err(reject(
            UNKNOWN_SERVICE,
            format!("no cluster exports {service}"),
        ));
    };
    let Some(export) = view.exports.get(&cluster) else {
        return Err(reject(
            CLUSTER_NOT_EXPORTING,
            format!(
                "cluster {cluster} does not export {service} (exported by {})",
                view.exports
                    .keys()
                    .map(|c| c.as_str())
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
        ));
    };
    if snap.export_drained(&service, &cluster, export)
        || snap
            .drills
            .values()
            .any(|d| d.service == service && d.cluster == cluster)
    {
        return Err(reject(
            OVERLAPPING_DRILL,
            format!(
                "{service} is already drained in {cluster} (another drill or the export's drain)"
            ),
        ));
    }
    let others: Vec<&ClusterId> = view
        .exports
        .iter()
        .filter(|(c, e)| *c != &cluster && snap.serves(&service, c, e))
        .map(|(c, _)| c)
        .collect();
    if others.is_empty() {
        return Err(reject(
            NO_FAILOVER_TARGET,
            format!("no other cluster serves {service}: draining {cluster} would leave its callers with nothing"),
        ));
    }
    let port = match spec.port {
        Some(p) if view.import.ports.iter().any(|sp| sp.port == p) => p,
        Some(p) => {
            return Err(reject(
                INVALID_SPEC,
                format!("spec.port {p} is not a port of {service}"),
            ))
        }
        None => match view.import.ports.first() {
            Some(p) => p.port,
            None => return Err(reject(INVALID_SPEC, format!("{service} has no ports"))),
        },
    };
    Ok(Plan {
        service,
        cluster,
        duration,
        observers,
        probe: DrillProbe {
            port,
            path,
            interval_ms: interval.as_millis() as u64,
        },
    })
}

/// `<name>-<ns>-<ms>` of a Drill, cut to an RFC 1123 label.
fn drill_id(ns: &str, name: &str, now_ms: i64) -> String {
    let suffix = format!("-{now_ms}");
    let mut head = format!("{name}-{ns}");
    head.truncate(63 - suffix.len());
    let head = head.trim_end_matches(|c: char| !c.is_ascii_alphanumeric());
    format!("{head}{suffix}")
}

fn rfc3339(unix_ms: i64) -> String {
    Time(
        k8s_openapi::jiff::Timestamp::from_millisecond(unix_ms)
            .unwrap_or(k8s_openapi::jiff::Timestamp::UNIX_EPOCH),
    )
    .0
    .to_string()
}

fn condition(
    type_: &str,
    ok: bool,
    reason: &str,
    message: &str,
    generation: Option<i64>,
) -> Condition {
    Condition {
        type_: type_.to_string(),
        status: if ok { "True" } else { "False" }.to_string(),
        reason: reason.to_string(),
        message: message.to_string(),
        observed_generation: generation,
        last_transition_time: Time(k8s_openapi::jiff::Timestamp::now()),
    }
}

/// The status of each of the plan's observers from the reports so far.
fn observer_statuses(
    plan: &Plan,
    reports: &BTreeMap<ClusterId, DrillReport>,
) -> Vec<DrillObserverStatus> {
    plan.observers
        .iter()
        .map(|o| observer_status(o, reports.get(o)))
        .collect()
}

/// The status of one observer from its report (`None`: nothing yet).
pub(crate) fn observer_status(cluster: &ClusterId, r: Option<&DrillReport>) -> DrillObserverStatus {
    let Some(r) = r else {
        return DrillObserverStatus {
            cluster: cluster.to_string(),
            phase: "Waiting".to_string(),
            ..Default::default()
        };
    };
    let phase = |p: &causeway_api::model::DrillPhase| DrillPhaseStatus {
        dns: p.dns.map(|i| i.to_string()),
        clusters: p.clusters.clone(),
        requests: p.requests,
        failed: p.failed,
    };
    let done = r.phase == DONE;
    DrillObserverStatus {
        cluster: cluster.to_string(),
        phase: if done { DONE } else { PROBING }.to_string(),
        error: (!r.error.is_empty()).then(|| r.error.chars().take(1024).collect()),
        passed: done && r.passed,
        verdict: (!r.verdict.is_empty()).then(|| r.verdict.chars().take(256).collect()),
        dns_expected_to_move: r.dns_expected_to_move,
        dns_moved_ms: r.dns_moved_ms,
        traffic_moved_ms: r.traffic_moved_ms,
        dns_back_ms: r.dns_back_ms,
        traffic_back_ms: r.traffic_back_ms,
        baseline: done.then(|| phase(&r.baseline)),
        failover: done.then(|| phase(&r.failover)),
        failback: done.then(|| phase(&r.failback)),
        timeline: r
            .timeline
            .iter()
            .take(causeway_api::model::DRILL_TIMELINE_MAX)
            .map(|e| DrillEventStatus {
                at_ms: e.at_ms,
                event: e.event.chars().take(256).collect(),
            })
            .collect(),
    }
}

/// The report text of a finished Drill, as `causeway drill` prints it.
pub(crate) fn report_text(
    drill: &str,
    plan: &Plan,
    reports: &BTreeMap<ClusterId, DrillReport>,
    drained_for: Duration,
    passed: bool,
) -> String {
    use std::fmt::Write as _;
    let mut t = String::new();
    let _ = writeln!(
        t,
        "drill {drill}: drain {} in {} for {}s, observed from {}",
        plan.service,
        plan.cluster,
        plan.duration.as_secs_f64().ceil(),
        plan.observers
            .iter()
            .map(|c| c.as_str())
            .collect::<Vec<_>>()
            .join(", ")
    );
    for o in &plan.observers {
        let _ = writeln!(t, "  from {o}:");
        match reports.get(o) {
            Some(r) if r.phase == DONE => {
                t.push_str(&report::text(
                    r,
                    plan.cluster.as_str(),
                    Some(drained_for),
                    "    ",
                ));
                let _ = writeln!(t, "    result:   {}", r.verdict);
            }
            _ => {
                let _ = writeln!(t, "    no report (its federator did not answer in time)");
            }
        }
    }
    let _ = writeln!(
        t,
        "  result:   {}",
        if passed {
            "PASS: traffic moved away and came back, seen from every observer"
        } else {
            "FAIL: see the observers above"
        }
    );
    t
}

/// Runs until `shutdown`: every Drill of the cluster, while this replica leads.
pub(crate) async fn run(
    client: kube::Client,
    cfg: ControllerConfig,
    snapshots: watch::Receiver<Arc<MeshSnapshot>>,
    mut leader: watch::Receiver<bool>,
    metrics: Arc<Metrics>,
    shutdown: CancellationToken,
) {
    let cfg = Arc::new(cfg);
    let all: Api<Drill> = Api::all(client.clone());
    let (store, writer) = reflector::store();
    let mut stream = reflector(
        writer,
        watcher(all, watcher::Config::default()).default_backoff(),
    )
    .boxed();
    let mut snaps = snapshots.clone();
    // Runs by the Drill's UID.
    let mut runs: BTreeMap<String, Run> = BTreeMap::new();
    let mut tick = tokio::time::interval(Duration::from_millis(500));
    loop {
        tokio::select! {
            ev = stream.next() => match ev {
                Some(Ok(_)) => {}
                Some(Err(e)) => {
                    tracing::warn!(error = %e, "watching Drills (is the Drill CRD installed?)");
                }
                None => return,
            },
            r = leader.changed() => if r.is_err() { return },
            r = snaps.changed() => if r.is_err() { return },
            _ = tick.tick() => {}
            _ = shutdown.cancelled() => {
                for (_, Run { stop, .. }) in std::mem::take(&mut runs) {
                    stop.cancel();
                }
                return;
            }
        }
        let leading = *leader.borrow_and_update();
        let snap = snaps.borrow_and_update().clone();
        runs.retain(|_, r| !r.task.is_finished());
        let drills = store.state();
        // Deleted Drills (or no longer leading): stop their runs, which revoke the lease.
        runs.retain(|uid, Run { stop, .. }| {
            let live = leading
                && drills.iter().any(|d| {
                    d.uid().as_deref() == Some(uid.as_str())
                        && d.metadata.deletion_timestamp.is_none()
                });
            if !live {
                stop.cancel();
                if leading {
                    metrics.drills.with_label_values(&["deleted"]).inc();
                }
            }
            live
        });
        if !leading || !snap.synced {
            continue;
        }
        for d in drills.iter() {
            let (Some(uid), Some(ns)) = (d.uid(), d.namespace()) else {
                continue;
            };
            if d.metadata.deletion_timestamp.is_some() || runs.contains_key(&uid) {
                continue;
            }
            let api: Api<Drill> = Api::namespaced(client.clone(), &ns);
            let name = d.name_any();
            let phase = d
                .status
                .as_ref()
                .and_then(|s| s.phase.clone())
                .unwrap_or_default();
            if phase::is_terminal(&phase) {
                continue;
            }
            if !phase.is_empty() {
                // Running, but not by this replica: the one that ran it stopped and its lease
                // ended the drain.
                // A merge patch replaces the list: keep the other conditions (Accepted).
                let mut conditions: Vec<Condition> = d
                    .status
                    .as_ref()
                    .map(|s| s.conditions.clone())
                    .unwrap_or_default();
                conditions.retain(|c| c.type_ != PASSED);
                conditions.push(condition(
                    PASSED,
                    false,
                    reason::INTERRUPTED,
                    "the federator running the drill stopped; its lease ended the drain early",
                    d.metadata.generation,
                ));
                let status = serde_json::json!({"status": {
                    "phase": phase::FAILED,
                    "conditions": conditions,
                }});
                if patch_status(&api, &name, status).await {
                    metrics.drills.with_label_values(&["interrupted"]).inc();
                }
                continue;
            }
            let checked = if runs.len() >= cfg.options.max_concurrent {
                Err(reject(
                    reason::TOO_MANY_DRILLS,
                    format!(
                        "this cluster's federator runs {} drills already (drills.max_concurrent)",
                        runs.len()
                    ),
                ))
            } else {
                validate(&ns, &d.spec, &snap, &cfg.cluster, &cfg.options).and_then(|plan| {
                    // Accepted in this pass but not in the snapshot yet.
                    let overlapping = runs
                        .values()
                        .any(|r| r.drains.0 == plan.service && r.drains.1 == plan.cluster);
                    if overlapping {
                        Err(reject(
                            reason::OVERLAPPING_DRILL,
                            format!(
                                "another Drill drains {} in {} already",
                                plan.service, plan.cluster
                            ),
                        ))
                    } else {
                        Ok(plan)
                    }
                })
            };
            match checked {
                Err(r) => {
                    tracing::info!(drill = %format!("{ns}/{name}"), reason = r.reason, message = %r.message, "Drill rejected");
                    let status = serde_json::json!({"status": {
                        "phase": phase::REJECTED,
                        "conditions": [condition(ACCEPTED, false, r.reason, &r.message, d.metadata.generation)],
                    }});
                    if patch_status(&api, &name, status).await {
                        metrics.drills.with_label_values(&["rejected"]).inc();
                    }
                }
                Ok(plan) => {
                    let stop = shutdown.child_token();
                    let drains = (plan.service.clone(), plan.cluster.clone());
                    let task = tokio::spawn(run_one(
                        cfg.clone(),
                        api,
                        name,
                        d.metadata.generation,
                        plan,
                        snapshots.clone(),
                        metrics.clone(),
                        stop.clone(),
                    ));
                    runs.insert(uid, Run { stop, task, drains });
                }
            }
        }
    }
}

/// Patches a Drill's status (merge); false (logged) when the write failed.
async fn patch_status(api: &Api<Drill>, name: &str, status: serde_json::Value) -> bool {
    match api
        .patch_status(name, &PatchParams::default(), &Patch::Merge(status))
        .await
    {
        Ok(_) => true,
        Err(e) => {
            tracing::warn!(drill = name, error = %e, "cannot write the Drill's status");
            false
        }
    }
}

/// One accepted Drill, from the announcement to its last status.
#[allow(clippy::too_many_arguments)]
async fn run_one(
    cfg: Arc<ControllerConfig>,
    api: Api<Drill>,
    name: String,
    generation: Option<i64>,
    plan: Plan,
    mut snapshots: watch::Receiver<Arc<MeshSnapshot>>,
    metrics: Arc<Metrics>,
    stop: CancellationToken,
) {
    let ns = plan.service.namespace.clone();
    let id = drill_id(&ns, &name, unix_ms());
    let key = cluster_drill_key(&cfg.cluster, &id);
    let reports_name = format!("{}/{id}", cfg.cluster);
    let mut etcd = match crate::etcd::connect(&cfg.etcd).await {
        Ok(c) => c,
        Err(e) => {
            tracing::warn!(drill = %name, error = %e, "cannot reach etcd for the drill");
            return;
        }
    };
    let ttl = cfg.options.lease_ttl.as_secs().max(2) as i64;
    let lease = match etcd.lease_grant(ttl, None).await {
        Ok(l) => l.id(),
        Err(e) => {
            tracing::warn!(drill = %name, error = %e, "cannot grant the drill's lease");
            return;
        }
    };
    // Kept alive while this task runs; dropped (and revoked) when it ends.
    let keepalive = {
        let mut etcd = etcd.clone();
        let every = Duration::from_secs((ttl as u64 / 3).max(1));
        api_task(async move {
            let Ok((mut keeper, mut responses)) = etcd.lease_keep_alive(lease).await else {
                return;
            };
            loop {
                if keeper.keep_alive().await.is_err() {
                    return;
                }
                let _ = responses.message().await;
                tokio::time::sleep(every).await;
            }
        })
    };
    let mut record = DrillRecord {
        schema: SCHEMA_VERSION,
        service: plan.service.clone(),
        cluster: plan.cluster.clone(),
        start_unix_ms: 0,
        end_unix_ms: 0,
        pending: true,
        observers: plan.observers.clone(),
        probe: Some(plan.probe.clone()),
        origin: format!("{ns}/{name}"),
    };
    let put = |etcd: &mut etcd_client::Client, record: &DrillRecord| {
        let mut etcd = etcd.clone();
        let (key, value) = (key.clone(), keys::encode(record));
        async move {
            etcd.put(key, value, Some(PutOptions::new().with_lease(lease)))
                .await
                .map(|_| ())
        }
    };
    if let Err(e) = put(&mut etcd, &record).await {
        tracing::warn!(drill = %name, key, error = %e, "cannot write the drill");
        return;
    }
    let waiting: Vec<DrillObserverStatus> = plan
        .observers
        .iter()
        .map(|o| observer_status(o, None))
        .collect();
    patch_status(
        &api,
        &name,
        serde_json::json!({"status": {
            "phase": phase::BASELINE,
            "drillId": key,
            "observers": waiting,
            "conditions": [condition(ACCEPTED, true, reason::ACCEPTED,
                &format!("draining {} in {} for {:?} after a baseline, observed from {}", plan.service, plan.cluster, plan.duration,
                    plan.observers.iter().map(|c| c.as_str()).collect::<Vec<_>>().join(", ")), generation)],
        }}),
    )
    .await;
    tracing::info!(drill = %format!("{ns}/{name}"), key, "Drill accepted");

    // The baseline: every observer probing (or BASELINE_MAX), and at least BASELINE_MIN.
    let began = tokio::time::Instant::now();
    let reports = |s: &MeshSnapshot| {
        s.drill_reports
            .get(&reports_name)
            .cloned()
            .unwrap_or_default()
    };
    loop {
        let r = reports(&snapshots.borrow_and_update());
        let all = plan.observers.iter().all(|o| r.contains_key(o));
        if (all && began.elapsed() >= BASELINE_MIN) || began.elapsed() >= BASELINE_MAX {
            break;
        }
        tokio::select! {
            _ = snapshots.changed() => {}
            _ = tokio::time::sleep(Duration::from_millis(100)) => {}
            _ = stop.cancelled() => {
                let _ = etcd.lease_revoke(lease).await;
                return;
            }
        }
    }

    // The drain.
    let start = unix_ms();
    record.pending = false;
    record.start_unix_ms = start;
    record.end_unix_ms = start + plan.duration.as_millis() as i64;
    if let Err(e) = put(&mut etcd, &record).await {
        tracing::warn!(drill = %name, key, error = %e, "cannot start the drain");
        let _ = etcd.lease_revoke(lease).await;
        return;
    }
    // The observers that reported their baseline are probing now.
    let probing = observer_statuses(&plan, &reports(&snapshots.borrow_and_update()));
    patch_status(
        &api,
        &name,
        serde_json::json!({"status": {
            "phase": phase::RUNNING,
            "startTime": rfc3339(start),
            "endTime": rfc3339(record.end_unix_ms),
            "observers": probing,
        }}),
    )
    .await;
    let deleted = tokio::select! {
        _ = tokio::time::sleep(plan.duration) => false,
        _ = stop.cancelled() => true,
    };
    let revoked = etcd.lease_revoke(lease).await;
    drop(keepalive);
    if let Err(e) = revoked {
        tracing::warn!(drill = %name, error = %e, "cannot revoke the drill's lease; it ends with its TTL");
    }
    let end = unix_ms();
    if deleted {
        tracing::info!(drill = %format!("{ns}/{name}"), "Drill deleted: drain ended");
        return;
    }
    patch_status(
        &api,
        &name,
        serde_json::json!({"status": {"phase": phase::FAILING_BACK, "endTime": rfc3339(end)}}),
    )
    .await;

    // The observers' reports.
    let deadline = tokio::time::Instant::now() + cfg.options.failback_timeout + REPORT_GRACE;
    let mut shown = Vec::new();
    let last = loop {
        let r = reports(&snapshots.borrow_and_update());
        let observers = observer_statuses(&plan, &r);
        if observers != shown {
            patch_status(
                &api,
                &name,
                serde_json::json!({"status": {"observers": observers}}),
            )
            .await;
            shown = observers;
        }
        let done = plan
            .observers
            .iter()
            .all(|o| r.get(o).is_some_and(|r| r.phase == DONE));
        if done || tokio::time::Instant::now() >= deadline {
            break r;
        }
        tokio::select! {
            _ = snapshots.changed() => {}
            _ = tokio::time::sleep(Duration::from_millis(200)) => {}
            _ = stop.cancelled() => return,
        }
    };
    let passed = plan
        .observers
        .iter()
        .all(|o| last.get(o).is_some_and(|r| r.phase == DONE && r.passed));
    let text = report_text(
        &format!("{ns}/{name}"),
        &plan,
        &last,
        Duration::from_millis((end - start).max(0) as u64),
        passed,
    );
    let (verdict_reason, message) = if passed {
        (
            "TrafficMovedAndCameBack",
            "traffic moved away and came back, seen from every observer".to_string(),
        )
    } else {
        let failing: Vec<&str> = plan
            .observers
            .iter()
            .filter(|o| !last.get(*o).is_some_and(|r| r.phase == DONE && r.passed))
            .map(|o| o.as_str())
            .collect();
        (
            "FailoverOrFailbackFailed",
            format!("not seen passing from {}", failing.join(", ")),
        )
    };
    patch_status(
        &api,
        &name,
        serde_json::json!({"status": {
            "phase": if passed { phase::SUCCEEDED } else { phase::FAILED },
            "report": text,
            "conditions": [
                condition(ACCEPTED, true, reason::ACCEPTED, "the drill ran", generation),
                condition(PASSED, passed, verdict_reason, &message, generation),
            ],
        }}),
    )
    .await;
    metrics
        .drills
        .with_label_values(&[if passed { "passed" } else { "failed" }])
        .inc();
    tracing::info!(drill = %format!("{ns}/{name}"), passed, "Drill finished");
}

/// Spawns `f`, aborted when the guard is dropped.
fn api_task<F>(f: F) -> causeway_api::task::AbortOnDrop
where
    F: std::future::Future<Output = ()> + Send + 'static,
{
    causeway_api::task::AbortOnDrop(tokio::spawn(f))
}

#[cfg(test)]
mod tests {
    use super::*;
    use causeway_api::model::{ClusterRecord, ExportRecord, Protocol, ServicePort};
    use causeway_api::snapshot::{ClusterState, ClusterView, ServiceView};

    fn c(s: &str) -> ClusterId {
        ClusterId::new(s).unwrap()
    }

    /// `demo/echo` exported by east (2 ready) and west (`west_ready` ready); north is a member
    /// exporting nothing.
    fn snap(west_ready: u32) -> MeshSnapshot {
        let key = ServiceKey::new("demo", "echo").unwrap();
        let record = |ready| ExportRecord {
            ports: vec![ServicePort {
                name: "http".into(),
                protocol: Protocol::Tcp,
                port: 80,
                app_protocol: None,
            }]
            .into(),
            created_unix_ms: 1,
            ready_endpoints: ready,
            ..ExportRecord::default()
        };
        let view = ServiceView::merged(
            &key,
            [(c("east"), record(2)), (c("west"), record(west_ready))],
        )
        .unwrap();
        let mut s = MeshSnapshot::default();
        s.services.insert(key, view.into());
        for name in ["east", "west", "north"] {
            s.clusters.insert(
                c(name),
                ClusterView {
                    record: ClusterRecord {
                        schema: SCHEMA_VERSION,
                        gateway_addresses: vec![],
                        trust_domain: "td".into(),
                        trust_bundle_pem: String::new(),
                        locality: BTreeMap::new(),
                        federator_version: String::new(),
                        certificate_not_after: None,
                    },
                    state: ClusterState::Up,
                    last_change_unix_ms: 0,
                    stale_since_unix_ms: None,
                    synced_revision: None,
                },
            );
        }
        s
    }

    fn spec(service: &str, cluster: &str) -> DrillSpec {
        DrillSpec {
            service: service.into(),
            cluster: cluster.into(),
            duration: Some("5s".into()),
            observe_from: vec![],
            port: None,
            path: None,
            interval: None,
        }
    }

    fn reason_of(ns: &str, s: &DrillSpec, snap: &MeshSnapshot) -> &'static str {
        match validate(ns, s, snap, &c("west"), &DrillOptions::default()) {
            Ok(p) => panic!("accepted: {p:?}"),
            Err(r) => {
                assert!(!r.message.is_empty());
                r.reason
            }
        }
    }

    #[test]
    fn a_valid_drill_is_planned_with_defaults() {
        let p = validate(
            "demo",
            &spec("echo", "east"),
            &snap(1),
            &c("west"),
            &DrillOptions::default(),
        )
        .unwrap();
        assert_eq!(p.service.to_string(), "demo/echo");
        assert_eq!(p.cluster, c("east"));
        assert_eq!(p.duration, Duration::from_secs(5));
        assert_eq!(p.observers, vec![c("east"), c("west")]);
        assert_eq!(
            p.probe,
            DrillProbe {
                port: 80,
                path: "/".into(),
                interval_ms: 50
            }
        );
    }

    #[test]
    fn every_reason_a_drill_cannot_run_is_named() {
        use reason::*;
        let s = snap(1);
        // The namespace is the Drill's: the same name elsewhere is another service.
        assert_eq!(
            reason_of("other", &spec("echo", "east"), &s),
            UNKNOWN_SERVICE
        );
        assert_eq!(
            reason_of("demo", &spec("nope", "east"), &s),
            UNKNOWN_SERVICE
        );
        assert_eq!(
            reason_of("demo", &spec("echo", "north"), &s),
            CLUSTER_NOT_EXPORTING
        );
        assert_eq!(
            reason_of("demo", &spec("echo", "south"), &s),
            UNKNOWN_CLUSTER
        );
        let mut far = spec("echo", "east");
        far.observe_from = vec!["south".into()];
        assert_eq!(reason_of("demo", &far, &s), UNKNOWN_CLUSTER);
        // West has no ready endpoints: draining east leaves nothing.
        assert_eq!(
            reason_of("demo", &spec("echo", "east"), &snap(0)),
            NO_FAILOVER_TARGET
        );

        let mut busy = snap(1);
        busy.drills.insert(
            "west/other".into(),
            DrillRecord {
                service: "demo/echo".parse().unwrap(),
                cluster: c("east"),
                start_unix_ms: 0,
                end_unix_ms: i64::MAX,
                pending: true,
                observers: vec![],
                probe: None,
                origin: String::new(),
                schema: SCHEMA_VERSION,
            },
        );
        assert_eq!(
            reason_of("demo", &spec("echo", "east"), &busy),
            OVERLAPPING_DRILL
        );

        for bad in [
            DrillSpec {
                duration: Some("1s".into()),
                ..spec("echo", "east")
            },
            DrillSpec {
                duration: Some("2h".into()),
                ..spec("echo", "east")
            },
            DrillSpec {
                duration: Some("soon".into()),
                ..spec("echo", "east")
            },
            DrillSpec {
                interval: Some("1ms".into()),
                ..spec("echo", "east")
            },
            DrillSpec {
                port: Some(81),
                ..spec("echo", "east")
            },
            DrillSpec {
                path: Some("no-slash".into()),
                ..spec("echo", "east")
            },
            DrillSpec {
                path: Some("/a b".into()),
                ..spec("echo", "east")
            },
            DrillSpec {
                path: Some(format!("/{}", "a".repeat(300))),
                ..spec("echo", "east")
            },
            DrillSpec {
                service: "Not_A_Name".into(),
                ..spec("echo", "east")
            },
            DrillSpec {
                cluster: "-x".into(),
                ..spec("echo", "east")
            },
        ] {
            assert_eq!(reason_of("demo", &bad, &s), INVALID_SPEC, "{bad:?}");
        }
    }

    #[test]
    fn drill_ids_are_labels_unique_per_start() {
        let id = drill_id("demo", "echo-drill-x7k2p", 1_780_000_000_000);
        assert_eq!(id, "echo-drill-x7k2p-demo-1780000000000");
        let long = drill_id(&"n".repeat(63), &"d".repeat(63), 1_780_000_000_000);
        assert!(long.len() <= 63, "{long}");
        assert!(keys::Key::parse(&cluster_drill_key(&c("west"), &long)).is_ok());
    }
}
