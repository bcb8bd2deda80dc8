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

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;

use causeway_api::snapshot::InvalidExport;
use causeway_api::{
    BackendTlsMode, ClusterId, Endpoint, ExportRecord, Protocol, ServiceKey, ServicePort,
    ServiceType, SessionAffinity,
};
use k8s_openapi::api::core::v1::Service;
use k8s_openapi::api::discovery::v1::EndpointSlice;
use kube::api::Api;
use kube::runtime::reflector::{self, ObjectRef, Store};
use kube::runtime::watcher;
use kube::{Client, ResourceExt};
use tokio::sync::{watch, Notify};
use tokio_util::sync::CancellationToken;

use super::{LocalExport, LocalExports};
use crate::crds::{reason, ServiceExport};
use crate::kubewatch::KubeMetrics;
use crate::kubewatch::{reflect, WatchLog};

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
        ports: ports.into(),
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
        traffic_policy: traffic_policy.into(),
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
        }
        .into(),
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

// === the running source ===

/// Logs of the source's reflectors, under this module.
const WATCH_LOG: WatchLog = crate::kubewatch::watch_log!();

/// The writers of the source's reflector stores, for [`run`].
pub(crate) struct StoreWriters {
    exports: reflector::store::Writer<ServiceExport>,
    services: reflector::store::Writer<Service>,
    slices: reflector::store::Writer<EndpointSlice>,
}

/// The source's reflector stores (ServiceExports, Services, their EndpointSlices), empty until
/// [`run`] fills them; the ServiceExport status controller (`sink::status`) reads them too.
pub(crate) fn stores() -> (Stores, StoreWriters) {
    let (exports, exports_w) = reflector::store::<ServiceExport>();
    let (services, services_w) = reflector::store::<Service>();
    let (slices, slices_w) = reflector::store::<EndpointSlice>();
    (
        Stores {
            exports,
            services,
            slices,
        },
        StoreWriters {
            exports: exports_w,
            services: services_w,
            slices: slices_w,
        },
    )
}

/// Only the EndpointSlices that belong to a Service.
pub(crate) fn slices_watch() -> watcher::Config {
    watcher::Config::default().labels(LABEL_SLICE_SERVICE)
}

/// Runs the Kubernetes source until `shutdown`: keeps `stores` in sync and publishes
/// [`LocalExports`] on `tx`.
pub(crate) async fn run(
    client: Client,
    metrics: KubeMetrics,
    stores: Stores,
    writers: StoreWriters,
    tx: watch::Sender<LocalExports>,
    shutdown: CancellationToken,
) {
    let StoreWriters {
        exports: exports_w,
        services: services_w,
        slices: slices_w,
    } = writers;
    let changed = Arc::new(Notify::new());
    let slices_cfg = slices_watch();
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

    shutdown.cancelled().await;
    tasks.shutdown().await;
}

#[cfg(test)]
pub(crate) mod tests;
