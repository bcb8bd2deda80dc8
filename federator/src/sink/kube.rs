//! Kubernetes sink: for every import of the mesh, in every namespace of that name that exists in
//! this cluster, a `ServiceImport`, a derived `Service` owned by it whose ClusterIP is the
//! ClusterSetIP (it selects the local gateway pods), and, for headless imports, EndpointSlices
//! per exporting cluster. All of it goes when the import goes.
//!
//! Level-triggered: after any change (a new mesh snapshot, leadership, a namespace, or one of our
//! objects changed or deleted by someone else), [`desired_import`] computes every object from the
//! snapshot and the namespaces, and `sync` writes what differs from the reflector stores
//! (server-side apply, field manager `causeway-federator`) and deletes what is no longer wanted.
//! Not a per-object kube-runtime `Controller`: the set of objects comes from the mesh snapshot, not
//! from a Kubernetes object, so a controller would need this loop to create its objects anyway.
//!
//! Only objects labelled `app.kubernetes.io/managed-by: causeway-federator` are ever changed or
//! deleted. Only the leader writes, and only once the snapshot is synced (an empty snapshot at
//! start must not delete every import).

use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;

use causeway_api::snapshot::ServiceView;
use causeway_api::{MeshSnapshot, ServiceKey, ServiceType, SessionAffinity};
use futures::StreamExt;
use k8s_openapi::api::core::v1::{Namespace, Service};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use kube::api::{Api, DeleteParams, Patch, PatchParams};
use kube::runtime::reflector::{self, ObjectRef, Store};
use kube::runtime::{watcher, WatchStreamExt};
use kube::{Client, ResourceExt};
use prometheus::{IntCounterVec, Opts, Registry};
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};
use tokio::sync::{watch, Notify};
use tokio_util::sync::CancellationToken;

use crate::crds::{
    ServiceImport, LABEL_MANAGED_BY, LABEL_SERVICE_NAME, LABEL_SOURCE_CLUSTER, MANAGER,
};
use crate::gwconfig::GatewayPorts;

/// Label Kubernetes reads to tie EndpointSlices to their Service.
const LABEL_SLICE_SERVICE: &str = "kubernetes.io/service-name";
const LABEL_SLICE_MANAGED_BY: &str = "endpointslice.kubernetes.io/managed-by";

const DEBOUNCE: Duration = Duration::from_millis(20);
/// After a failed write, the next pass comes at the latest this much later.
const RETRY: Duration = Duration::from_secs(2);

/// The sink's config (`kube:` in the federator config).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct KubeOptions {
    /// Labels of the local gateway pods; derived Services select them.
    pub gateway_selector: BTreeMap<String, String>,
    /// The gateway's egress port (HTTP routed by Host): the target of import ports that have no
    /// gateway port of their own (UDP, or past `gateway_port_count`).
    pub gateway_port: u16,
    /// Gateway listener ports for the TCP ports of ClusterSetIP imports, `gateway_port_first`
    /// onwards: each import port gets one, and its derived Service port targets it
    /// ([`crate::gwconfig::gateway_ports`]).
    pub gateway_port_first: u16,
    pub gateway_port_count: u16,
}

impl Default for KubeOptions {
    fn default() -> Self {
        Self {
            gateway_selector: BTreeMap::from([(
                "app.kubernetes.io/name".to_string(),
                "causeway-gateway".to_string(),
            )]),
            gateway_port: 15001,
            gateway_port_first: 20000,
            gateway_port_count: 10000,
        }
    }
}

/// Name of the derived Service of import `svc`: `<svc>-clusterset`, shortened with a hash when
/// that is longer than a DNS label.
pub fn derived_name(svc: &str) -> String {
    fit(&format!("{svc}-clusterset"))
}

fn fit(name: &str) -> String {
    if name.len() <= 63 {
        return name.to_string();
    }
    let h = crate::gwconfig::fnv1a(name.as_bytes());
    format!("{}-{h:08x}", name[..54].trim_end_matches('-'))
}

fn labels(svc: &str) -> Value {
    json!({ LABEL_MANAGED_BY: MANAGER, LABEL_SERVICE_NAME: svc })
}

/// Everything the sink wants to exist for one import in one namespace.
#[derive(Debug, Clone, PartialEq)]
pub struct DesiredImport {
    pub key: ServiceKey,
    /// The ServiceImport (apply body, without `status`).
    pub import: Value,
    /// Its `status`.
    pub status: Value,
    /// The derived Service (apply body; the owner reference is added once the import has a uid).
    pub service: Value,
    /// EndpointSlices by name (headless imports only).
    pub slices: BTreeMap<String, Value>,
}

fn ports(view: &ServiceView) -> Vec<Value> {
    view.import
        .ports
        .iter()
        .map(|p| {
            let mut v = json!({"protocol": p.protocol.to_string(), "port": p.port});
            if !p.name.is_empty() {
                v["name"] = json!(p.name);
            }
            if let Some(a) = &p.app_protocol {
                v["appProtocol"] = json!(a);
            }
            v
        })
        .collect()
}

/// The objects of one import. `cluster_ip` is the derived Service's ClusterIP once it has one.
pub fn desired_import(
    view: &ServiceView,
    opts: &KubeOptions,
    cluster_ip: Option<&str>,
    gateway_ports: &GatewayPorts,
) -> DesiredImport {
    let key = &view.import.key;
    let (ns, svc) = (key.namespace.as_str(), key.name.as_str());
    let headless = view.import.service_type == ServiceType::Headless;
    let affinity = match view.import.session_affinity {
        SessionAffinity::ClientIP => "ClientIP",
        SessionAffinity::None => "None",
    };
    let mut spec = json!({
        "type": view.import.service_type.to_string(),
        "ports": ports(view),
        "sessionAffinity": affinity,
    });
    if let (false, Some(ip)) = (headless, cluster_ip) {
        spec["ips"] = json!([ip]);
    }
    let import = json!({
        "apiVersion": "multicluster.x-k8s.io/v1alpha1",
        "kind": "ServiceImport",
        "metadata": {"name": svc, "namespace": ns, "labels": {LABEL_MANAGED_BY: MANAGER}},
        "spec": spec,
    });
    let status = json!({
        "clusters": view.import.clusters.iter().map(|c| json!({"cluster": c.as_str()})).collect::<Vec<_>>(),
    });

    let derived = derived_name(svc);
    let service_ports: Vec<Value> = ports(view)
        .into_iter()
        .map(|mut p| {
            // Clients' connections to the ClusterSetIP land on the local gateway, on the port
            // it keeps for this import port (routed whatever the protocol), else on its egress
            // port (HTTP routed by Host).
            let port = p["port"].as_u64().and_then(|n| u16::try_from(n).ok());
            p["targetPort"] = if headless {
                p["port"].clone()
            } else {
                match port.and_then(|n| gateway_ports.get(&(key.clone(), n))) {
                    Some(gp) => json!(gp),
                    None => json!(opts.gateway_port),
                }
            };
            p
        })
        .collect();
    let mut service_spec = json!({
        "ports": service_ports,
        "sessionAffinity": affinity,
    });
    if headless {
        service_spec["clusterIP"] = json!("None");
    } else {
        service_spec["type"] = json!("ClusterIP");
        service_spec["selector"] = json!(opts.gateway_selector);
        // With `vip_range` (a block of the Service CIDR kept for Causeway) the import has a VIP
        // in etcd; asking for it as the ClusterIP makes the DNS answer, the ServiceImport and the
        // Service agree. Without it, the Service gets any ClusterIP.
        if let Some(vip) = view.vip {
            service_spec["clusterIP"] = json!(vip.to_string());
        }
    }
    let service = json!({
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {"name": derived, "namespace": ns, "labels": labels(svc)},
        "spec": service_spec,
    });

    let mut slices = BTreeMap::new();
    if headless {
        for (cluster, export) in &view.exports {
            let mut by_family: BTreeMap<&str, Vec<Value>> = BTreeMap::new();
            for e in &export.record.endpoints {
                let family = match e.address {
                    IpAddr::V4(_) => "IPv4",
                    IpAddr::V6(_) => "IPv6",
                };
                let mut ep = json!({
                    "addresses": [e.address.to_string()],
                    "conditions": {"ready": e.ready && !export.drained},
                });
                if let Some(h) = &e.hostname {
                    ep["hostname"] = json!(h);
                }
                by_family.entry(family).or_default().push(ep);
            }
            for (family, endpoints) in by_family {
                let suffix = if family == "IPv6" { "-v6" } else { "" };
                let name = fit(&format!("{derived}-{cluster}{suffix}"));
                let mut slice_labels = labels(svc);
                slice_labels[LABEL_SLICE_SERVICE] = json!(derived);
                slice_labels[LABEL_SOURCE_CLUSTER] = json!(cluster.as_str());
                slice_labels[LABEL_SLICE_MANAGED_BY] = json!(MANAGER);
                slices.insert(
                    name.clone(),
                    json!({
                        "apiVersion": "discovery.k8s.io/v1",
                        "kind": "EndpointSlice",
                        "metadata": {"name": name, "namespace": ns, "labels": slice_labels},
                        "addressType": family,
                        "ports": ports(view),
                        "endpoints": endpoints,
                    }),
                );
            }
        }
    }
    DesiredImport {
        key: key.clone(),
        import,
        status,
        service,
        slices,
    }
}

/// Whether `want` is contained in `have`: every key of an object, every element of an array (same
/// length), every scalar equal. Fields the server adds (uid, defaults) do not count as changes.
pub fn contains(have: &Value, want: &Value) -> bool {
    match (have, want) {
        (Value::Object(h), Value::Object(w)) => w
            .iter()
            .all(|(k, wv)| h.get(k).is_some_and(|hv| contains(hv, wv))),
        (Value::Array(h), Value::Array(w)) => {
            h.len() == w.len() && h.iter().zip(w).all(|(hv, wv)| contains(hv, wv))
        }
        _ => have == want,
    }
}

// === the running sink ===

#[derive(Clone)]
struct Stores {
    namespaces: Store<Namespace>,
    imports: Store<ServiceImport>,
    services: Store<Service>,
    slices: Store<EndpointSlice>,
}

fn namespace_live(ns: &Namespace) -> bool {
    ns.metadata.deletion_timestamp.is_none()
        && ns.status.as_ref().and_then(|s| s.phase.as_deref()) != Some("Terminating")
}

/// A write of the sink that failed, naming the object.
#[derive(Debug, thiserror::Error)]
#[error("{action} {object}: {source}")]
pub struct SinkError {
    action: &'static str,
    object: String,
    source: kube::Error,
}

fn err(action: &'static str, object: impl Into<String>) -> impl FnOnce(kube::Error) -> SinkError {
    let object = object.into();
    move |source| SinkError {
        action,
        object,
        source,
    }
}

fn ignore_not_found(e: kube::Error) -> Result<(), kube::Error> {
    match e {
        kube::Error::Api(s) if s.code == 404 => Ok(()),
        e => Err(e),
    }
}

fn to_value<K: Serialize>(k: &K) -> Value {
    serde_json::to_value(k).unwrap_or(Value::Null)
}

/// Metrics of the Kubernetes source and sink.
#[derive(Clone)]
pub struct KubeMetrics {
    /// `causeway_federator_kube_writes_total{kind, result}`: writes to the Kubernetes API.
    pub writes: IntCounterVec,
    /// `causeway_federator_kube_watch_errors_total{resource}`: failed lists and watches.
    pub watch_errors: IntCounterVec,
}

impl KubeMetrics {
    /// Registers the metrics in `registry` (kept unregistered if the names are taken).
    pub fn new(registry: &Registry) -> Self {
        let vec = |name: &str, help: &str, labels: &[&str]| {
            let v = IntCounterVec::new(Opts::new(name, help), labels).expect("valid metric");
            if let Err(e) = registry.register(Box::new(v.clone())) {
                tracing::warn!(metric = name, error = %e, "metric not registered");
            }
            v
        };
        Self {
            writes: vec(
                "causeway_federator_kube_writes_total",
                "Writes of the Kubernetes source and sink, by object kind and result (ok, error).",
                &["kind", "result"],
            ),
            watch_errors: vec(
                "causeway_federator_kube_watch_errors_total",
                "Failed Kubernetes lists and watches, by resource (they are retried).",
                &["resource"],
            ),
        }
    }

    /// Counts one write.
    pub fn wrote(&self, kind: &str, ok: bool) {
        self.writes
            .with_label_values(&[kind, if ok { "ok" } else { "error" }])
            .inc();
    }
}

/// Counts writes, logs the failed ones.
struct Failures<'a> {
    failed: usize,
    metrics: &'a KubeMetrics,
}

impl Failures<'_> {
    fn note(&mut self, kind: &str, r: Result<(), SinkError>) {
        self.metrics.wrote(kind, r.is_ok());
        if let Err(e) = r {
            tracing::warn!(error = %e, "Kubernetes sink write failed; retrying");
            self.failed += 1;
        }
    }
}

/// One pass: makes the cluster's objects match the snapshot. Returns how many writes failed.
/// With `vips`, ClusterSetIP imports wait for their VIP, so that their Service is made once, with
/// it, instead of with any ClusterIP first and replaced when the VIP comes.
async fn sync(
    client: &Client,
    opts: &KubeOptions,
    metrics: &KubeMetrics,
    vips: bool,
    stores: &Stores,
    snap: &MeshSnapshot,
) -> usize {
    let apply = PatchParams::apply(MANAGER).force();
    let mut failures = Failures { failed: 0, metrics };
    let live: BTreeSet<String> = stores
        .namespaces
        .state()
        .iter()
        .filter(|n| namespace_live(n))
        .map(|n| n.name_any())
        .collect();
    // Over the whole snapshot, as the gateway config does, so that both agree.
    let gateway_ports =
        crate::gwconfig::gateway_ports(snap, opts.gateway_port_first, opts.gateway_port_count);
    let wanted: BTreeMap<&ServiceKey, &ServiceView> = snap
        .services
        .iter()
        .filter(|(k, _)| live.contains(&k.namespace))
        .map(|(k, v)| (k, &**v))
        .collect();

    for (key, view) in &wanted {
        if vips && view.vip.is_none() && view.import.service_type == ServiceType::ClusterSetIP {
            continue;
        }
        let (ns, svc) = (key.namespace.as_str(), key.name.as_str());
        let derived = derived_name(svc);
        let current_svc = stores.services.get(&ObjectRef::new(&derived).within(ns));
        let cluster_ip = current_svc
            .as_ref()
            .and_then(|s| s.spec.as_ref())
            .and_then(|s| s.cluster_ip.clone())
            .filter(|ip| !ip.is_empty() && ip != "None");
        let want = desired_import(view, opts, cluster_ip.as_deref(), &gateway_ports);
        let imports: Api<ServiceImport> = Api::namespaced(client.clone(), ns);

        // The ServiceImport first: the derived objects carry its uid.
        let current = stores.imports.get(&ObjectRef::new(svc).within(ns));
        let current_value = current.as_deref().map(to_value).unwrap_or(Value::Null);
        let import = if current.is_none() || !contains(&current_value, &want.import) {
            match imports
                .patch(svc, &apply, &Patch::Apply(&want.import))
                .await
                .map_err(err("applying", format!("ServiceImport {key}")))
            {
                Ok(si) => {
                    failures.metrics.wrote("ServiceImport", true);
                    if current.is_none() {
                        tracing::info!(import = %key, "ServiceImport created");
                    }
                    Arc::new(si)
                }
                Err(e) => {
                    failures.note("ServiceImport", Err(e));
                    continue;
                }
            }
        } else if let Some(current) = current {
            current
        } else {
            continue;
        };
        if !contains(&to_value(&*import)["status"], &want.status) {
            failures.note(
                "ServiceImport",
                imports
                    .patch_status(
                        svc,
                        &PatchParams::default(),
                        &Patch::Merge(json!({ "status": want.status })),
                    )
                    .await
                    .map(|_| ())
                    .map_err(err("writing the status of", format!("ServiceImport {key}"))),
            );
        }
        let Some(uid) = import.metadata.uid.clone() else {
            continue;
        };
        let owner = json!([{
            "apiVersion": "multicluster.x-k8s.io/v1alpha1",
            "kind": "ServiceImport",
            "name": svc,
            "uid": uid,
            "controller": true,
            "blockOwnerDeletion": true,
        }]);

        let mut service = want.service.clone();
        service["metadata"]["ownerReferences"] = owner.clone();
        let services: Api<Service> = Api::namespaced(client.clone(), ns);
        if let (Some(want_ip), Some(have_ip)) =
            (service["spec"]["clusterIP"].as_str(), cluster_ip.as_deref())
        {
            if want_ip != have_ip {
                // A ClusterIP cannot change: replace the Service (the next pass recreates it).
                failures.note(
                    "Service",
                    services
                        .delete(&derived, &DeleteParams::background())
                        .await
                        .map(|_| ())
                        .or_else(ignore_not_found)
                        .map_err(err("replacing", format!("Service {ns}/{derived}"))),
                );
                continue;
            }
        }
        let have = current_svc.as_deref().map(to_value).unwrap_or(Value::Null);
        if current_svc.is_none() || !contains(&have, &service) {
            failures.note(
                "Service",
                services
                    .patch(&derived, &apply, &Patch::Apply(&service))
                    .await
                    .map(|_| ())
                    .map_err(err("applying", format!("Service {ns}/{derived}"))),
            );
        }

        let slices: Api<EndpointSlice> = Api::namespaced(client.clone(), ns);
        for (name, slice) in &want.slices {
            let mut slice = slice.clone();
            slice["metadata"]["ownerReferences"] = owner.clone();
            let have = stores
                .slices
                .get(&ObjectRef::new(name).within(ns))
                .map(|s| to_value(&*s));
            if !have.is_some_and(|h| contains(&h, &slice)) {
                failures.note(
                    "EndpointSlice",
                    slices
                        .patch(name, &apply, &Patch::Apply(&slice))
                        .await
                        .map(|_| ())
                        .map_err(err("applying", format!("EndpointSlice {ns}/{name}"))),
                );
            }
        }
        for old in stores.slices.state() {
            let mine = old.namespace().as_deref() == Some(ns)
                && old.labels().get(LABEL_SERVICE_NAME).map(String::as_str) == Some(svc);
            if mine && !want.slices.contains_key(&old.name_any()) {
                failures.note(
                    "EndpointSlice",
                    slices
                        .delete(&old.name_any(), &DeleteParams::background())
                        .await
                        .map(|_| ())
                        .or_else(ignore_not_found)
                        .map_err(err(
                            "deleting",
                            format!("EndpointSlice {ns}/{}", old.name_any()),
                        )),
                );
            }
        }
    }

    // What no import wants any more. Deleting the ServiceImport lets the garbage collector take
    // its Service and slices; deleting those too keeps this right where no collector runs.
    let wanted_keys: BTreeSet<(String, String)> = wanted
        .keys()
        .map(|k| (k.namespace.clone(), k.name.clone()))
        .collect();
    for si in stores.imports.state() {
        let (ns, name) = (si.namespace().unwrap_or_default(), si.name_any());
        if wanted_keys.contains(&(ns.clone(), name.clone())) {
            continue;
        }
        let api: Api<ServiceImport> = Api::namespaced(client.clone(), &ns);
        failures.note(
            "ServiceImport",
            api.delete(&name, &DeleteParams::background())
                .await
                .map(|_| ())
                .or_else(ignore_not_found)
                .map_err(err("deleting", format!("ServiceImport {ns}/{name}"))),
        );
        tracing::info!(import = %format!("{ns}/{name}"), "ServiceImport removed");
    }
    for svc in stores.services.state() {
        let ns = svc.namespace().unwrap_or_default();
        let Some(import) = svc.labels().get(LABEL_SERVICE_NAME) else {
            continue;
        };
        if wanted_keys.contains(&(ns.clone(), import.clone())) {
            continue;
        }
        let api: Api<Service> = Api::namespaced(client.clone(), &ns);
        failures.note(
            "Service",
            api.delete(&svc.name_any(), &DeleteParams::background())
                .await
                .map(|_| ())
                .or_else(ignore_not_found)
                .map_err(err("deleting", format!("Service {ns}/{}", svc.name_any()))),
        );
    }
    for slice in stores.slices.state() {
        let ns = slice.namespace().unwrap_or_default();
        let Some(import) = slice.labels().get(LABEL_SERVICE_NAME) else {
            continue;
        };
        if wanted_keys.contains(&(ns.clone(), import.clone())) {
            continue;
        }
        let api: Api<EndpointSlice> = Api::namespaced(client.clone(), &ns);
        failures.note(
            "EndpointSlice",
            api.delete(&slice.name_any(), &DeleteParams::background())
                .await
                .map(|_| ())
                .or_else(ignore_not_found)
                .map_err(err(
                    "deleting",
                    format!("EndpointSlice {ns}/{}", slice.name_any()),
                )),
        );
    }
    failures.failed
}

/// Keeps a reflector store in sync, pokes `changed` on every event, counts watch errors.
pub(crate) async fn reflect<K>(
    api: Api<K>,
    cfg: watcher::Config,
    writer: reflector::store::Writer<K>,
    changed: Arc<Notify>,
    metrics: KubeMetrics,
    what: &'static str,
) where
    K: kube::Resource<DynamicType = ()>
        + Clone
        + serde::de::DeserializeOwned
        + std::fmt::Debug
        + Send
        + Sync
        + 'static,
{
    let stream = reflector::reflector(writer, watcher(api, cfg).default_backoff());
    let mut stream = std::pin::pin!(stream);
    while let Some(ev) = stream.next().await {
        match ev {
            Ok(_) => changed.notify_one(),
            Err(e) => {
                metrics.watch_errors.with_label_values(&[what]).inc();
                tracing::warn!(resource = what, error = %e, "Kubernetes watch failed; retrying")
            }
        }
    }
}

/// Runs the Kubernetes sink until `shutdown`. `vips`: this cluster allocates VIPs (`vip_range`),
/// which become the derived Services' ClusterIPs.
pub async fn run(
    client: Client,
    opts: KubeOptions,
    metrics: KubeMetrics,
    vips: bool,
    mut snapshots: watch::Receiver<Arc<MeshSnapshot>>,
    mut leader: watch::Receiver<bool>,
    shutdown: CancellationToken,
) {
    let (namespaces, namespaces_w) = reflector::store();
    let (imports, imports_w) = reflector::store();
    let (services, services_w) = reflector::store();
    let (slices, slices_w) = reflector::store();
    let stores = Stores {
        namespaces,
        imports,
        services,
        slices,
    };
    let changed = Arc::new(Notify::new());
    let managed = watcher::Config::default().labels(&format!("{LABEL_MANAGED_BY}={MANAGER}"));
    let mut tasks = tokio::task::JoinSet::new();
    tasks.spawn(reflect(
        Api::<Namespace>::all(client.clone()),
        watcher::Config::default(),
        namespaces_w,
        changed.clone(),
        metrics.clone(),
        "namespaces",
    ));
    tasks.spawn(reflect(
        Api::<ServiceImport>::all(client.clone()),
        managed.clone(),
        imports_w,
        changed.clone(),
        metrics.clone(),
        "serviceimports",
    ));
    tasks.spawn(reflect(
        Api::<Service>::all(client.clone()),
        managed.clone(),
        services_w,
        changed.clone(),
        metrics.clone(),
        "services",
    ));
    tasks.spawn(reflect(
        Api::<EndpointSlice>::all(client.clone()),
        managed,
        slices_w,
        changed.clone(),
        metrics.clone(),
        "endpointslices",
    ));

    let work = async {
        let ready = stores.namespaces.wait_until_ready().await.is_ok()
            && stores.imports.wait_until_ready().await.is_ok()
            && stores.services.wait_until_ready().await.is_ok()
            && stores.slices.wait_until_ready().await.is_ok();
        if !ready {
            return;
        }
        let mut retry = false;
        loop {
            let snap = snapshots.borrow_and_update().clone();
            let is_leader = *leader.borrow_and_update();
            if is_leader && snap.synced {
                retry = sync(&client, &opts, &metrics, vips, &stores, &snap).await > 0;
            }
            let backoff = async {
                if retry {
                    tokio::time::sleep(RETRY).await
                } else {
                    std::future::pending().await
                }
            };
            tokio::select! {
                _ = changed.notified() => {}
                r = snapshots.changed() => if r.is_err() { return },
                r = leader.changed() => if r.is_err() { return },
                _ = backoff => {}
            }
            tokio::time::sleep(DEBOUNCE).await;
        }
    };
    tokio::select! {
        _ = work => {}
        _ = shutdown.cancelled() => {}
    }
    tasks.shutdown().await;
}

#[cfg(test)]
mod tests;
