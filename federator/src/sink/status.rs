//! The ServiceExport status controller: writes the three MCS conditions (`Valid`, `Ready`,
//! `Conflict`) on each ServiceExport while this replica leads, from the Kubernetes source's stores
//! and the latest snapshot. A sink of the snapshot like the others; the source only reads.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::Duration;

use causeway_api::backoff::Backoff;
use causeway_api::{ClusterId, MeshSnapshot, ServiceKey};
use futures::StreamExt;
use k8s_openapi::api::core::v1::Service;
use k8s_openapi::api::discovery::v1::EndpointSlice;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use kube::api::{Api, Patch, PatchParams};
use kube::runtime::controller::{self, Action, Controller};
use kube::runtime::reflector::ObjectRef;
use kube::runtime::watcher;
use kube::{Client, ResourceExt};
use serde_json::json;
use tokio::sync::watch;
use tokio_stream::wrappers::WatchStream;
use tokio_util::sync::CancellationToken;

use crate::crds::{condition, reason, ServiceExport};
use crate::kubewatch::{ControllerBackoff, KubeMetrics};
use crate::source::kube::{origin, slices_watch, Invalid, Stores, LABEL_SLICE_SERVICE};
use crate::source::LocalExport;

// === conditions ===

/// The three conditions of an export, as they should be. `observed_generation` is the
/// ServiceExport's generation.
pub(crate) fn desired_conditions(
    outcome: &Result<(ServiceKey, LocalExport), Invalid>,
    snapshot: &MeshSnapshot,
    local: &ClusterId,
    observed_generation: Option<i64>,
) -> Vec<Condition> {
    let cond = |type_: &str, status: &str, reason: &str, message: String| Condition {
        type_: type_.to_string(),
        status: status.to_string(),
        reason: reason.to_string(),
        message,
        observed_generation,
        last_transition_time: Time(k8s_openapi::jiff::Timestamp::now()),
    };
    let key = match outcome {
        Err(e) => {
            return vec![
                cond(condition::VALID, "False", e.reason, e.message.clone()),
                cond(
                    condition::READY,
                    "False",
                    reason::PENDING,
                    format!("not exported: {}", e.message),
                ),
                // Not in the mesh: nothing to conflict with yet (docs/kubernetes.md).
                cond(
                    condition::CONFLICT,
                    "Unknown",
                    reason::PENDING,
                    format!("not exported: {}", e.message),
                ),
            ];
        }
        Ok((key, _)) => key,
    };
    let valid = cond(
        condition::VALID,
        "True",
        reason::VALID,
        format!("Service {key} can be exported"),
    );
    let service = snapshot.services.get(key);
    let Some(view) = service.and_then(|s| s.exports.get(local)) else {
        return vec![
            valid,
            cond(
                condition::READY,
                "False",
                reason::PENDING,
                "waiting for the export to appear in the mesh (leader, etcd)".to_string(),
            ),
            cond(
                condition::CONFLICT,
                "Unknown",
                reason::PENDING,
                "not in the mesh yet".to_string(),
            ),
        ];
    };
    let ready = cond(
        condition::READY,
        "True",
        reason::EXPORTED,
        format!("exported to the clusterset as {}", key.clusterset_name()),
    );
    let conflict = if view.conditions.conflict() {
        // The oldest export wins (creation time, then cluster ID): name it.
        let winner = service
            .and_then(|s| {
                s.exports
                    .iter()
                    .min_by_key(|(c, e)| (e.record.created_unix_ms, (*c).clone()))
                    .map(|(c, _)| c.clone())
            })
            .map(|c| c.to_string())
            .unwrap_or_default();
        let others: BTreeSet<String> = service
            .map(|s| {
                s.exports
                    .keys()
                    .filter(|c| *c != local)
                    .map(ToString::to_string)
                    .collect()
            })
            .unwrap_or_default();
        cond(
            condition::CONFLICT,
            "True",
            &view.conditions.reason(),
            format!(
                "this export disagrees with the export(s) of {}; the oldest, of cluster {winner}, wins",
                others.into_iter().collect::<Vec<_>>().join(", ")
            ),
        )
    } else {
        cond(
            condition::CONFLICT,
            "False",
            reason::NO_CONFLICTS,
            "no conflicts with other clusters' exports".to_string(),
        )
    };
    vec![valid, ready, conflict]
}

/// Merges `desired` into `current`: conditions of other types stay, a condition whose status did
/// not change keeps its `lastTransitionTime`. Returns `None` when nothing changed.
pub(crate) fn merge_conditions(
    current: &[Condition],
    desired: Vec<Condition>,
) -> Option<Vec<Condition>> {
    let mut out: Vec<Condition> = current
        .iter()
        .filter(|c| !desired.iter().any(|d| d.type_ == c.type_))
        .cloned()
        .collect();
    let mut changed = false;
    for mut d in desired {
        match current.iter().find(|c| c.type_ == d.type_) {
            Some(c) if c.status == d.status => {
                d.last_transition_time = c.last_transition_time.clone();
                if c.reason != d.reason
                    || c.message != d.message
                    || c.observed_generation != d.observed_generation
                {
                    changed = true;
                }
            }
            _ => changed = true,
        }
        out.push(d);
    }
    changed.then_some(out)
}

// === the controller ===

struct Ctx {
    client: Client,
    metrics: KubeMetrics,
    stores: Stores,
    snapshots: watch::Receiver<Arc<MeshSnapshot>>,
    leader: watch::Receiver<bool>,
    local: ClusterId,
    /// Status writes that failed, by export: each retries after its own backoff, which a
    /// success ends.
    retries: std::sync::Mutex<BTreeMap<String, Backoff>>,
}

/// The first retry of a failed status write, doubling to [`STATUS_RETRY_MAX`].
const STATUS_RETRY_FIRST: Duration = Duration::from_millis(500);
const STATUS_RETRY_MAX: Duration = Duration::from_secs(5);

impl Ctx {
    /// How long export `origin` waits before its next try.
    fn retry_in(&self, origin: &str) -> Duration {
        let mut retries = self.retries.lock().unwrap_or_else(|e| e.into_inner());
        retries
            .entry(origin.to_string())
            .or_insert_with(|| Backoff::new(STATUS_RETRY_FIRST, STATUS_RETRY_MAX))
            .next_wait()
    }

    /// Ends export `origin`'s backoff: written, or nothing left to write.
    fn succeeded(&self, origin: &str) {
        let mut retries = self.retries.lock().unwrap_or_else(|e| e.into_inner());
        if !retries.is_empty() {
            retries.remove(origin);
        }
    }
}

#[derive(Debug, thiserror::Error)]
#[error("writing the status of {export}: {source}")]
pub(crate) struct StatusError {
    export: String,
    source: kube::Error,
}

async fn reconcile(se: Arc<ServiceExport>, ctx: Arc<Ctx>) -> Result<Action, StatusError> {
    if !*ctx.leader.borrow() {
        // The leader writes conditions; a leadership change re-runs every export.
        return Ok(Action::await_change());
    }
    let outcome = ctx.stores.export_of(&se);
    let snapshot = ctx.snapshots.borrow().clone();
    let desired = desired_conditions(&outcome, &snapshot, &ctx.local, se.metadata.generation);
    let current = se
        .status
        .as_ref()
        .map(|s| s.conditions.clone())
        .unwrap_or_default();
    let Some(conditions) = merge_conditions(&current, desired) else {
        ctx.succeeded(&origin(&se));
        return Ok(Action::await_change());
    };
    let ns = se.namespace().unwrap_or_default();
    let api: Api<ServiceExport> = Api::namespaced(ctx.client.clone(), &ns);
    let written = api
        .patch_status(
            &se.name_any(),
            &PatchParams::default(),
            &Patch::Merge(json!({ "status": { "conditions": conditions } })),
        )
        .await
        .map_err(|source| StatusError {
            export: origin(&se),
            source,
        });
    ctx.metrics.wrote("ServiceExport", written.is_ok());
    written?;
    ctx.succeeded(&origin(&se));
    tracing::debug!(export = %origin(&se), "ServiceExport conditions written");
    Ok(Action::await_change())
}

fn error_policy(se: Arc<ServiceExport>, err: &StatusError, ctx: Arc<Ctx>) -> Action {
    let export = origin(&se);
    let wait = ctx.retry_in(&export);
    tracing::warn!(%export, error = %err, retry_in = ?wait, "ServiceExport status not written; retrying");
    Action::requeue(wait)
}

/// Runs the controller until `shutdown`: reconciles every export on a change of it, its Service
/// or its slices, and all of them on a new snapshot or a leadership change.
pub(crate) async fn run(
    client: Client,
    metrics: KubeMetrics,
    stores: Stores,
    snapshots: watch::Receiver<Arc<MeshSnapshot>>,
    leader: watch::Receiver<bool>,
    local: ClusterId,
    shutdown: CancellationToken,
) {
    let slices_cfg = slices_watch();
    let ctx = Arc::new(Ctx {
        client: client.clone(),
        metrics: metrics.clone(),
        stores: stores.clone(),
        snapshots: snapshots.clone(),
        leader: leader.clone(),
        local,
        retries: Default::default(),
    });
    let same_name = |svc: Service| {
        Some(ObjectRef::<ServiceExport>::new(&svc.name_any()).within(&svc.namespace()?))
    };
    let slice_owner = |slice: EndpointSlice| {
        let name = slice.labels().get(LABEL_SLICE_SERVICE)?.clone();
        Some(ObjectRef::<ServiceExport>::new(&name).within(&slice.namespace()?))
    };
    let triggers = futures::stream::select(
        WatchStream::new(snapshots).map(|_| ()),
        WatchStream::new(leader).map(|_| ()),
    );
    let stop = shutdown.clone();
    let controller = Controller::new(
        Api::<ServiceExport>::all(client.clone()),
        watcher::Config::default(),
    )
    .with_config(controller::Config::default().debounce(Duration::from_millis(50)))
    // Bounded, so that a relist after an API server restart comes within seconds.
    .trigger_backoff(ControllerBackoff::default())
    .watches(
        Api::<Service>::all(client.clone()),
        watcher::Config::default(),
        same_name,
    )
    .watches(Api::<EndpointSlice>::all(client), slices_cfg, slice_owner)
    .reconcile_all_on(triggers)
    .graceful_shutdown_on(async move { stop.cancelled().await });
    controller
        .run(reconcile, error_policy, ctx)
        .for_each(|res| async move {
            if let Err(e) = res {
                // A deleted export is "not found" once: nothing to write.
                if !matches!(e, controller::Error::ObjectNotFound(_)) {
                    tracing::debug!(error = %e, "ServiceExport reconcile");
                }
            }
        })
        .await;
}

#[cfg(test)]
mod tests;
