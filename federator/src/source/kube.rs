//! Kubernetes source: `ServiceExport` objects (multicluster.x-k8s.io/v1alpha1) in, the same
//! [`LocalExports`] as the file source out, and the export's conditions written back.
//!
//! - Three reflectors (ServiceExports, Services, EndpointSlices of Services) feed
//!   [`build`], a pure function from the objects to [`LocalExports`]; it runs again (debounced)
//!   whenever one of them changes.
//! - A kube-runtime `Controller` on ServiceExports (watching their Services and EndpointSlices,
//!   and re-run for all on every new mesh snapshot or leadership change) writes the conditions
//!   `Valid`, `Ready` and `Conflict` with the upstream MCS reasons. Only the leader writes them.
//!   The controller watches Services and EndpointSlices itself: kube-runtime's shared streams are
//!   still unstable, and a second watch is cheap next to getting the triggers wrong.
//!
//! An export is valid when its Service (same namespace and name) exists and is not
//! `ExternalName`; a Service with `clusterIP: None` is exported as `Headless`. ServiceExport
//! annotations set what a Service cannot say: `causeway.io/backend-tls` (`plaintext` or `mtls`),
//! `causeway.io/allowed-source-clusters` and `causeway.io/allowed-identities` (comma-separated),
//! `causeway.io/weight`, and the traffic policy: `causeway.io/timeout`, `causeway.io/retries`,
//! `causeway.io/max-concurrent`, `causeway.io/max-pending`,
//! `causeway.io/outlier-consecutive-errors`, `causeway.io/outlier-base-ejection`,
//! `causeway.io/rate-limit-rps`, `causeway.io/rate-limit-burst`, `causeway.io/failover`
//! (docs/kubernetes.md).

use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;

use causeway_api::backoff::Backoff;
use causeway_api::snapshot::InvalidExport;
use causeway_api::{
    BackendTlsMode, ClusterId, Endpoint, ExportRecord, MeshSnapshot, Protocol, ServiceKey,
    ServicePort, ServiceType, SessionAffinity,
};
use futures::StreamExt;
use k8s_openapi::api::core::v1::Service;
use k8s_openapi::api::discovery::v1::EndpointSlice;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use kube::api::{Api, Patch, PatchParams};
use kube::runtime::controller::{self, Action, Controller};
use kube::runtime::reflector::{self, ObjectRef, Store};
use kube::runtime::watcher;
use kube::{Client, ResourceExt};
use serde_json::json;
use tokio::sync::{watch, Notify};
use tokio_stream::wrappers::WatchStream;
use tokio_util::sync::CancellationToken;

use super::{LocalExport, LocalExports};
use crate::crds::{condition, reason, ServiceExport};
use crate::kubewatch::KubeMetrics;
use crate::kubewatch::{reflect, ControllerBackoff, WatchLog};

/// Label Kubernetes puts on the EndpointSlices of a Service.
pub(crate) const LABEL_SLICE_SERVICE: &str = "kubernetes.io/service-name";

/// ServiceExport annotations (see the module docs).
pub(crate) mod annotation {
    pub(crate) const BACKEND_TLS: &str = "causeway.io/backend-tls";
    pub(crate) const ALLOWED_SOURCE_CLUSTERS: &str = "causeway.io/allowed-source-clusters";
    pub(crate) const ALLOWED_IDENTITIES: &str = "causeway.io/allowed-identities";
    pub(crate) const WEIGHT: &str = "causeway.io/weight";
    pub(crate) const TIMEOUT: &str = "causeway.io/timeout";
    pub(crate) const RETRIES: &str = "causeway.io/retries";
    pub(crate) const MAX_CONCURRENT: &str = "causeway.io/max-concurrent";
    pub(crate) const MAX_PENDING: &str = "causeway.io/max-pending";
    pub(crate) const OUTLIER_CONSECUTIVE_ERRORS: &str = "causeway.io/outlier-consecutive-errors";
    pub(crate) const OUTLIER_BASE_EJECTION: &str = "causeway.io/outlier-base-ejection";
    pub(crate) const RATE_LIMIT_RPS: &str = "causeway.io/rate-limit-rps";
    pub(crate) const RATE_LIMIT_BURST: &str = "causeway.io/rate-limit-burst";
    pub(crate) const FAILOVER: &str = "causeway.io/failover";
}

/// How long the source waits after a change for more before it rebuilds.
const DEBOUNCE: Duration = Duration::from_millis(20);

/// Why an export is not valid: the `Valid=False` reason and a message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Invalid {
    pub reason: &'static str,
    pub message: String,
}

fn invalid(reason: &'static str, message: impl Into<String>) -> Invalid {
    Invalid {
        reason,
        message: message.into(),
    }
}

/// `ServiceExport <ns>/<name>`: how exports are named in errors and `LocalExport::origin`.
pub(crate) fn origin(se: &ServiceExport) -> String {
    format!(
        "ServiceExport {}/{}",
        se.namespace().unwrap_or_default(),
        se.name_any()
    )
}

// === building the exports ===

/// The export a ServiceExport stands for, given its Service and that Service's EndpointSlices.
pub(crate) fn export_of(
    se: &ServiceExport,
    svc: Option<&Service>,
    slices: &[Arc<EndpointSlice>],
) -> Result<(ServiceKey, LocalExport), Invalid> {
    let ns = se.namespace().unwrap_or_default();
    let name = se.name_any();
    let key =
        ServiceKey::new(&ns, &name).map_err(|e| invalid(reason::INVALID_EXPORT, e.to_string()))?;
    let svc = svc.ok_or_else(|| {
        invalid(
            reason::NO_SERVICE,
            format!("Service {ns}/{name} does not exist"),
        )
    })?;
    let spec = svc.spec.clone().unwrap_or_default();
    if spec.type_.as_deref() == Some("ExternalName") {
        return Err(invalid(
            reason::INVALID_SERVICE_TYPE,
            format!("Service {ns}/{name} is of type ExternalName, which cannot be exported"),
        ));
    }
    let headless = spec.cluster_ip.as_deref() == Some("None");
    let service_type = if headless {
        ServiceType::Headless
    } else {
        ServiceType::ClusterSetIP
    };
    let session_affinity = match spec.session_affinity.as_deref() {
        Some("ClientIP") => SessionAffinity::ClientIP,
        _ => SessionAffinity::None,
    };
    let svc_ports = spec.ports.clone().unwrap_or_default();
    if svc_ports.is_empty() {
        return Err(invalid(
            reason::INVALID_EXPORT,
            format!("Service {ns}/{name} has no ports"),
        ));
    }
    let mut ports = Vec::with_capacity(svc_ports.len());
    for (i, p) in svc_ports.iter().enumerate() {
        let port = u16::try_from(p.port)
            .ok()
            .filter(|p| *p != 0)
            .ok_or_else(|| {
                invalid(
                    reason::INVALID_EXPORT,
                    format!("spec.ports[{i}].port {} must be 1..=65535", p.port),
                )
            })?;
        let protocol = match p.protocol.as_deref() {
            None | Some("TCP") => Protocol::Tcp,
            Some("UDP") => Protocol::Udp,
            Some("SCTP") => Protocol::Sctp,
            Some(other) => {
                return Err(invalid(
                    reason::INVALID_EXPORT,
                    format!("spec.ports[{i}].protocol {other:?} must be TCP, UDP or SCTP"),
                ))
            }
        };
        let name = p.name.clone().unwrap_or_default();
        if !name.is_empty() {
            causeway_api::validate_dns_label("port name", &name)
                .map_err(|e| invalid(reason::INVALID_EXPORT, format!("spec.ports[{i}]: {e}")))?;
        }
        ports.push(ServicePort {
            name,
            protocol,
            port,
            app_protocol: p.app_protocol.clone(),
        });
    }

    // Endpoints from the Service's EndpointSlices. The target port is known per endpoint only
    // when the Service has one port (the gateway then dials it); otherwise the service port.
    let mut endpoints: BTreeMap<IpAddr, Endpoint> = BTreeMap::new();
    for slice in slices {
        let target = if ports.len() == 1 {
            slice
                .ports
                .as_ref()
                .and_then(|ps| ps.first())
                .and_then(|p| p.port)
                .and_then(|p| u16::try_from(p).ok())
                .filter(|p| *p != 0 && *p != ports[0].port)
        } else {
            None
        };
        for e in &slice.endpoints {
            // Kubernetes: a missing `ready` means ready; terminating endpoints are not.
            let ready = e.conditions.as_ref().and_then(|c| c.ready).unwrap_or(true);
            for a in &e.addresses {
                let Ok(address) = a.parse::<IpAddr>() else {
                    continue;
                };
                let endpoint = Endpoint {
                    address,
                    port: target,
                    ready,
                    hostname: e
                        .hostname
                        .clone()
                        .filter(|h| causeway_api::validate_dns_label("hostname", h).is_ok()),
                };
                // The same address in two slices (during a rollout): ready wins.
                endpoints
                    .entry(address)
                    .and_modify(|old| old.ready |= ready)
                    .or_insert(endpoint);
            }
        }
    }
    let endpoints: Vec<Endpoint> = endpoints.into_values().collect();
    let ready_endpoints = endpoints.iter().filter(|e| e.ready).count() as u32;

    // MCS API v0.5.0: labels and annotations for the imports, checked here so that an export
    // that Kubernetes would refuse on a ServiceImport is refused at its source, named.
    let carried = se.spec.spec.clone().unwrap_or_default();
    for (k, v) in &carried.exported_labels {
        check_label(k, Some(v)).map_err(|e| {
            invalid(
                reason::INVALID_EXPORT,
                format!("spec.exportedLabels[{k:?}]: {e}"),
            )
        })?;
    }
    for k in carried.exported_annotations.keys() {
        check_label(k, None).map_err(|e| {
            invalid(
                reason::INVALID_EXPORT,
                format!("spec.exportedAnnotations[{k:?}]: {e}"),
            )
        })?;
    }
    let annotation_bytes: usize = carried
        .exported_annotations
        .iter()
        .map(|(k, v)| k.len() + v.len())
        .sum();
    if annotation_bytes > 256 * 1024 {
        return Err(invalid(
            reason::INVALID_EXPORT,
            format!("spec.exportedAnnotations are {annotation_bytes} bytes; at most 262144"),
        ));
    }
    let annotations = se.annotations();
    let backend_tls_mode = match annotations.get(annotation::BACKEND_TLS).map(String::as_str) {
        None | Some("plaintext") => BackendTlsMode::Plaintext,
        Some("mtls") => BackendTlsMode::Mtls,
        Some(other) => {
            return Err(invalid(
                reason::INVALID_EXPORT,
                format!(
                    "annotation {} {other:?} must be plaintext or mtls",
                    annotation::BACKEND_TLS
                ),
            ))
        }
    };
    let list = |k: &str| -> Vec<String> {
        annotations
            .get(k)
            .map(|v| {
                v.split(',')
                    .map(str::trim)
                    .filter(|s| !s.is_empty())
                    .map(str::to_string)
                    .collect()
            })
            .unwrap_or_default()
    };
    let allowed_source_clusters = list(annotation::ALLOWED_SOURCE_CLUSTERS)
        .into_iter()
        .map(ClusterId::new)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| {
            invalid(
                reason::INVALID_EXPORT,
                format!("annotation {}: {e}", annotation::ALLOWED_SOURCE_CLUSTERS),
            )
        })?;
    let allowed_identities = list(annotation::ALLOWED_IDENTITIES);
    for id in &allowed_identities {
        id.parse::<causeway_api::spiffe::SpiffeId>().map_err(|e| {
            invalid(
                reason::INVALID_EXPORT,
                format!("annotation {}: {e}", annotation::ALLOWED_IDENTITIES),
            )
        })?;
    }
    let weight = match annotations.get(annotation::WEIGHT) {
        None => None,
        Some(w) => Some(w.trim().parse::<u32>().map_err(|_| {
            invalid(
                reason::INVALID_EXPORT,
                format!(
                    "annotation {} {w:?} is not a whole number",
                    annotation::WEIGHT
                ),
            )
        })?),
    };
    let traffic_policy = {
        use crate::policy::PolicyField as F;
        let fields = [
            (F::Timeout, annotation::TIMEOUT),
            (F::Retries, annotation::RETRIES),
            (F::MaxConcurrent, annotation::MAX_CONCURRENT),
            (F::MaxPending, annotation::MAX_PENDING),
            (
                F::OutlierConsecutiveErrors,
                annotation::OUTLIER_CONSECUTIVE_ERRORS,
            ),
            (F::OutlierBaseEjection, annotation::OUTLIER_BASE_EJECTION),
            (F::RateLimitRps, annotation::RATE_LIMIT_RPS),
            (F::RateLimitBurst, annotation::RATE_LIMIT_BURST),
            (F::Failover, annotation::FAILOVER),
        ];
        crate::policy::traffic_policy(
            fields
                .into_iter()
                .filter_map(|(f, name)| annotations.get(name).map(|v| (f, name, v.clone()))),
        )
        .map_err(|e| invalid(reason::INVALID_EXPORT, format!("annotation {e}")))?
    };
    let created_unix_ms = se
        .metadata
        .creation_timestamp
        .as_ref()
        .map(|t| t.0.as_millisecond())
        .unwrap_or_else(super::now_ms);
    let service_ip = if headless {
        None
    } else {
        spec.cluster_ip.as_deref().and_then(|ip| ip.parse().ok())
    };
    let record = ExportRecord {
        ports,
        service_type,
        session_affinity,
        created_unix_ms,
        ready_endpoints,
        backend_tls_mode,
        endpoints: super::published_endpoints(service_type, &endpoints),
        allowed_source_clusters,
        allowed_identities,
        weight,
        service_ip,
        traffic_policy,
        // Carried to the importing clusters' ServiceImports (MCS API v0.5.0).
        exported: causeway_api::Exported {
            // `Cluster` is Kubernetes' default (every Service has it set): the same as none, so
            // that exports from Kubernetes and from files agree.
            internal_traffic_policy: spec
                .internal_traffic_policy
                .clone()
                .filter(|p| p != "Cluster"),
            traffic_distribution: spec.traffic_distribution.clone(),
            labels: carried.exported_labels,
            annotations: carried.exported_annotations,
        },
        ..ExportRecord::default()
    };
    Ok((
        key,
        LocalExport {
            record,
            endpoints,
            origin: origin(se),
        },
    ))
}

/// Read access to the three reflector stores.
#[derive(Clone)]
pub(crate) struct Stores {
    pub exports: Store<ServiceExport>,
    pub services: Store<Service>,
    pub slices: Store<EndpointSlice>,
}

impl Stores {
    pub(crate) fn service(&self, ns: &str, name: &str) -> Option<Arc<Service>> {
        self.services.get(&ObjectRef::new(name).within(ns))
    }

    /// The EndpointSlices of Service `ns/name`.
    pub(crate) fn slices_of(&self, ns: &str, name: &str) -> Vec<Arc<EndpointSlice>> {
        let mut out: Vec<Arc<EndpointSlice>> = self
            .slices
            .state()
            .into_iter()
            .filter(|s| {
                s.namespace().as_deref() == Some(ns)
                    && s.labels().get(LABEL_SLICE_SERVICE).map(String::as_str) == Some(name)
            })
            .collect();
        out.sort_by_key(|s| s.name_any());
        out
    }

    /// The export of one ServiceExport, or why it is invalid.
    pub(crate) fn export_of(
        &self,
        se: &ServiceExport,
    ) -> Result<(ServiceKey, LocalExport), Invalid> {
        let ns = se.namespace().unwrap_or_default();
        let name = se.name_any();
        let svc = self.service(&ns, &name);
        export_of(se, svc.as_deref(), &self.slices_of(&ns, &name))
    }
}

/// Everything this cluster exports, from the objects in the stores.
pub(crate) fn build(stores: &Stores) -> LocalExports {
    let mut exports = stores.exports.state();
    exports.sort_by_key(|se| (se.namespace(), se.name_any()));
    let mut out = LocalExports {
        loaded: true,
        ..LocalExports::default()
    };
    for se in exports {
        // Being deleted: no longer exported.
        if se.metadata.deletion_timestamp.is_some() {
            continue;
        }
        match stores.export_of(&se) {
            Ok((key, export)) => {
                out.exports.insert(key, export);
            }
            Err(e) => out.invalid.push(InvalidExport {
                source: origin(&se),
                reason: format!("{}: {}", e.reason, e.message),
            }),
        }
    }
    out
}

/// A label (or annotation) key as Kubernetes takes it: an optional DNS-subdomain prefix and `/`,
/// then a name of at most 63 alphanumerics, `-`, `_`, `.`, starting and ending alphanumeric; and,
/// for labels, a value of that form or empty.
fn check_label(key: &str, value: Option<&str>) -> Result<(), String> {
    let name_ok = |n: &str| {
        !n.is_empty()
            && n.len() <= 63
            && n.bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b))
            && n.as_bytes()[0].is_ascii_alphanumeric()
            && n.as_bytes()[n.len() - 1].is_ascii_alphanumeric()
    };
    let (prefix, name) = match key.rsplit_once('/') {
        Some((p, n)) => (Some(p), n),
        None => (None, key),
    };
    if let Some(p) = prefix {
        let ok = !p.is_empty()
            && p.len() <= 253
            && p.split('.')
                .all(|l| causeway_api::validate_dns_label("prefix", l).is_ok());
        if !ok {
            return Err(format!("prefix {p:?} is not a DNS subdomain"));
        }
    }
    if !name_ok(name) {
        return Err(format!("name {name:?} is not a valid label name"));
    }
    if let Some(v) = value {
        if !v.is_empty() && !name_ok(v) {
            return Err(format!("value {v:?} is not a valid label value"));
        }
    }
    Ok(())
}

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

// === the running source ===

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
const STATUS_RETRY_MAX: Duration = Duration::from_secs(60);

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

/// Logs of the source's reflectors, under this module.
const WATCH_LOG: WatchLog = crate::kubewatch::watch_log!();

/// Runs the Kubernetes source until `shutdown`: publishes [`LocalExports`] on `tx` and, while
/// `leader` is true, writes ServiceExport conditions.
pub(crate) async fn run(
    client: Client,
    metrics: KubeMetrics,
    local: ClusterId,
    tx: watch::Sender<LocalExports>,
    snapshots: watch::Receiver<Arc<MeshSnapshot>>,
    leader: watch::Receiver<bool>,
    shutdown: CancellationToken,
) {
    let (exports, exports_w) = reflector::store::<ServiceExport>();
    let (services, services_w) = reflector::store::<Service>();
    let (slices, slices_w) = reflector::store::<EndpointSlice>();
    let stores = Stores {
        exports,
        services,
        slices,
    };
    let changed = Arc::new(Notify::new());
    // Only the EndpointSlices that belong to a Service.
    let slices_cfg = watcher::Config::default().labels(LABEL_SLICE_SERVICE);
    let mut tasks = tokio::task::JoinSet::new();
    tasks.spawn(reflect(
        Api::all(client.clone()),
        watcher::Config::default(),
        exports_w,
        changed.clone(),
        metrics.clone(),
        "serviceexports",
        WATCH_LOG,
    ));
    tasks.spawn(reflect(
        Api::all(client.clone()),
        watcher::Config::default(),
        services_w,
        changed.clone(),
        metrics.clone(),
        "services",
        WATCH_LOG,
    ));
    tasks.spawn(reflect(
        Api::all(client.clone()),
        slices_cfg.clone(),
        slices_w,
        changed.clone(),
        metrics.clone(),
        "endpointslices",
        WATCH_LOG,
    ));

    // Rebuild LocalExports after every change (debounced), once all three stores are listed.
    {
        let stores = stores.clone();
        let changed = changed.clone();
        tasks.spawn(async move {
            let ready = async {
                let _ = stores.exports.wait_until_ready().await;
                let _ = stores.services.wait_until_ready().await;
                let _ = stores.slices.wait_until_ready().await;
            };
            ready.await;
            loop {
                let next = build(&stores);
                tx.send_if_modified(|cur| {
                    if *cur == next {
                        false
                    } else {
                        *cur = next;
                        true
                    }
                });
                changed.notified().await;
                tokio::time::sleep(DEBOUNCE).await;
            }
        });
    }

    // Conditions: a controller over ServiceExports.
    {
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
        tasks.spawn(async move {
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
        });
    }

    shutdown.cancelled().await;
    tasks.shutdown().await;
}

#[cfg(test)]
mod tests;
