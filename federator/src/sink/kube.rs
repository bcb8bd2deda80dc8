//! Kubernetes sink: for every import of the mesh, in every namespace of that name that exists in
//! this cluster, a `ServiceImport`, a derived `Service` owned by it whose ClusterIP is the
//! ClusterSetIP (it selects the local gateway pods), and, for headless imports, EndpointSlices
//! per exporting cluster. Where other clusters' pods are reached only through the gateway (not a
//! flat pod network), each endpoint of another cluster of a headless import also gets a derived
//! Service of its own (`<svc>-clusterset-<cluster>-<name>`): its ClusterIP is the endpoint's
//! address in this cluster, and it leads to the gateway port kept for that endpoint, from where
//! the gateway sends it to exactly that endpoint. All of it goes when the import goes.
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
use k8s_openapi::api::core::v1::{Namespace, Pod, Service};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use kube::api::{Api, DeleteParams, Patch, PatchParams};
use kube::runtime::reflector::{self, ObjectRef, Store};
use kube::runtime::watcher;
use kube::{Client, ResourceExt};
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};
use tokio::sync::{watch, Notify};
use tokio_util::sync::CancellationToken;

use crate::crds::{
    ServiceImport, LABEL_MANAGED_BY, LABEL_SERVICE_NAME, LABEL_SOURCE_CLUSTER, MANAGER,
};
use crate::kubewatch::KubeMetrics;
use crate::ports::{EndpointPorts, GatewayPorts};

/// Label of a remote endpoint's derived Service: the endpoint's DNS label in its cluster (which
/// [`LABEL_SOURCE_CLUSTER`] names).
pub(crate) const LABEL_ENDPOINT: &str = "causeway.io/endpoint";

/// Label Kubernetes reads to tie EndpointSlices to their Service.
const LABEL_SLICE_SERVICE: &str = "kubernetes.io/service-name";
const LABEL_SLICE_MANAGED_BY: &str = "endpointslice.kubernetes.io/managed-by";

const DEBOUNCE: Duration = Duration::from_millis(20);
/// After failed writes the next pass comes after a wait that doubles up to this.
const RETRY_MAX: Duration = Duration::from_secs(30);

/// The sink's config (`kube:` in the federator config).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct KubeOptions {
    /// Labels of the local gateway pods. Derived Services have no selector (a selector matches
    /// pods of its own namespace only, and the gateways run in `gateway_namespace`): the sink
    /// writes their EndpointSlices from the gateway pods these labels select.
    pub gateway_selector: BTreeMap<String, String>,
    /// The namespace the gateway pods run in (the chart's release namespace).
    pub gateway_namespace: String,
    /// The gateway's egress port (HTTP routed by Host): the target of import ports that have no
    /// gateway port of their own (UDP, or past `gateway_port_count`).
    pub gateway_port: u16,
    /// Gateway listener ports for the TCP ports of ClusterSetIP imports, `gateway_port_first`
    /// onwards: each import port gets one, and its derived Service port targets it
    /// ([`crate::ports::gateway_ports`]).
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
            gateway_namespace: "causeway-system".to_string(),
            gateway_port: 15001,
            gateway_port_first: 20000,
            gateway_port_count: 10000,
        }
    }
}

/// Name of the derived Service of import `svc`: `<svc>-clusterset`, shortened with a hash when
/// that is longer than a DNS label.
pub(crate) fn derived_name(svc: &str) -> String {
    fit(&format!("{svc}-clusterset"))
}

fn fit(name: &str) -> String {
    if name.len() <= 63 {
        return name.to_string();
    }
    let h = crate::ports::fnv1a(name.as_bytes());
    format!("{}-{h:08x}", name[..54].trim_end_matches('-'))
}

/// Name of the derived Service of endpoint `name` of `cluster` of import `svc`.
pub(crate) fn endpoint_service_name(svc: &str, cluster: &str, name: &str) -> String {
    fit(&format!("{svc}-clusterset-{cluster}-{name}"))
}

fn labels(svc: &str) -> Value {
    json!({ LABEL_MANAGED_BY: MANAGER, LABEL_SERVICE_NAME: svc })
}

/// A local gateway pod, as the derived Services' EndpointSlices list it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct GatewayPod {
    pub namespace: String,
    pub name: String,
    pub ip: IpAddr,
    /// Its `Ready` condition.
    pub ready: bool,
}

/// The gateway pods of a Pod store: those with an IP and not being deleted, in name order.
fn gateway_pods(pods: &Store<Pod>) -> Vec<GatewayPod> {
    let mut out: Vec<GatewayPod> = pods
        .state()
        .iter()
        .filter(|p| p.metadata.deletion_timestamp.is_none())
        .filter_map(|p| {
            let status = p.status.as_ref()?;
            let ip = status.pod_ip.as_deref()?.parse().ok()?;
            let ready = status
                .conditions
                .iter()
                .flatten()
                .any(|c| c.type_ == "Ready" && c.status == "True");
            Some(GatewayPod {
                namespace: p.namespace().unwrap_or_default(),
                name: p.name_any(),
                ip,
                ready,
            })
        })
        .collect();
    out.sort_by(|a, b| a.name.cmp(&b.name));
    out
}

/// Everything the sink wants to exist for one import in one namespace.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct DesiredImport {
    pub key: ServiceKey,
    /// The ServiceImport (apply body, without `status`).
    pub import: Value,
    /// Its `status`.
    pub status: Value,
    /// The derived Service (apply body; the owner reference is added once the import has a uid).
    pub service: Value,
    /// EndpointSlices by name: of the remote endpoints per cluster (headless imports), or of the
    /// local gateway pods (ClusterSetIP imports, whose derived Service has no selector, and
    /// remote endpoints' derived Services).
    pub slices: BTreeMap<String, Value>,
    /// Derived Services of other clusters' endpoints of a headless import, by name.
    pub endpoint_services: BTreeMap<String, Value>,
}

/// How a headless import's endpoints of other clusters are reached when pods are not reachable
/// across clusters: through a derived Service each, leading to the gateway.
#[derive(Debug, Clone, Default)]
pub(crate) struct RemoteEndpoints {
    pub local: Option<causeway_api::ClusterId>,
    /// Gateway ports of the endpoints ([`crate::ports::gateway_port_plan`]).
    pub ports: EndpointPorts,
    /// ClusterIP each endpoint's derived Service holds: (import, cluster, name) → address.
    pub held: BTreeMap<(ServiceKey, causeway_api::ClusterId, String), IpAddr>,
    /// This cluster allocates VIPs: an endpoint's Service asks for the endpoint's VIP as its
    /// ClusterIP, and waits for it.
    pub vips: bool,
}

fn family(ip: IpAddr) -> &'static str {
    match ip {
        IpAddr::V4(_) => "IPv4",
        IpAddr::V6(_) => "IPv6",
    }
}

/// The EndpointSlices listing the gateway pods on `ports` (the targets of `service_ports`, named
/// as those, which is how kube-proxy pairs them) for Service `service`: one per address family,
/// and an empty IPv4 one when no gateway pod has an address yet (as Kubernetes' own controller
/// keeps one per Service), so that the slice set does not flap.
fn gateway_slices(
    service: &str,
    ns: &str,
    service_ports: &[Value],
    labels: Value,
    gateways: &[GatewayPod],
) -> BTreeMap<String, Value> {
    let slice_ports: Vec<Value> = service_ports
        .iter()
        .map(|p| {
            let mut v = json!({"port": p["targetPort"], "protocol": p["protocol"]});
            v["name"] = p.get("name").cloned().unwrap_or(json!(""));
            if let Some(a) = p.get("appProtocol") {
                v["appProtocol"] = a.clone();
            }
            v
        })
        .collect();
    let mut by_family: BTreeMap<&str, Vec<Value>> = BTreeMap::new();
    for g in gateways {
        by_family.entry(family(g.ip)).or_default().push(json!({
            "addresses": [g.ip.to_string()],
            "conditions": {"ready": g.ready, "serving": g.ready, "terminating": false},
            "targetRef": {"kind": "Pod", "namespace": g.namespace, "name": g.name},
        }));
    }
    by_family.entry("IPv4").or_default();
    let mut out = BTreeMap::new();
    for (family, endpoints) in by_family {
        let suffix = if family == "IPv6" {
            "-gateways-v6"
        } else {
            "-gateways"
        };
        let name = fit(&format!("{service}{suffix}"));
        out.insert(
            name.clone(),
            json!({
                "apiVersion": "discovery.k8s.io/v1",
                "kind": "EndpointSlice",
                "metadata": {"name": name, "namespace": ns, "labels": labels},
                "addressType": family,
                "ports": slice_ports,
                "endpoints": endpoints,
            }),
        );
    }
    out
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

/// Metadata of an import's object: the exporters' labels and annotations (the oldest export's),
/// then `ours` (an object of labels), which win over an exporter's label of the same name.
fn carried_metadata(name: &str, ns: &str, exported: &causeway_api::Exported, ours: Value) -> Value {
    let mut labels: serde_json::Map<String, Value> = exported
        .labels
        .iter()
        .map(|(k, v)| (k.clone(), json!(v)))
        .collect();
    if let Value::Object(ours) = ours {
        labels.extend(ours);
    }
    let mut metadata = json!({"name": name, "namespace": ns, "labels": labels});
    if !exported.annotations.is_empty() {
        metadata["annotations"] = json!(exported.annotations);
    }
    metadata
}

/// The objects of one import. `cluster_ip` is the derived Service's ClusterIP once it has one.
pub(crate) fn desired_import(
    view: &ServiceView,
    opts: &KubeOptions,
    cluster_ip: Option<&str>,
    gateway_ports: &GatewayPorts,
    gateways: &[GatewayPod],
    remote: Option<&RemoteEndpoints>,
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
        let family = match ip.parse::<IpAddr>() {
            Ok(IpAddr::V6(_)) => "IPv6",
            _ => "IPv4",
        };
        spec["ipFamilies"] = json!([family]);
    }
    let exported = &view.import.exported;
    if let Some(p) = &exported.internal_traffic_policy {
        spec["internalTrafficPolicy"] = json!(p);
    }
    if let Some(d) = &exported.traffic_distribution {
        spec["trafficDistribution"] = json!(d);
    }
    let import = json!({
        "apiVersion": "multicluster.x-k8s.io/v1alpha1",
        "kind": "ServiceImport",
        "metadata": carried_metadata(svc, ns, exported, json!({LABEL_MANAGED_BY: MANAGER})),
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
        "ports": service_ports.clone(),
        "sessionAffinity": affinity,
    });
    if headless {
        service_spec["clusterIP"] = json!("None");
    } else {
        service_spec["type"] = json!("ClusterIP");
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
        "metadata": carried_metadata(&derived, ns, exported, labels(svc)),
        "spec": service_spec,
    });

    let mut slices = BTreeMap::new();
    let slice_labels = |cluster: Option<&str>| {
        let mut l = labels(svc);
        l[LABEL_SLICE_SERVICE] = json!(derived);
        l[LABEL_SLICE_MANAGED_BY] = json!(MANAGER);
        if let Some(c) = cluster {
            l[LABEL_SOURCE_CLUSTER] = json!(c);
        }
        l
    };
    if !headless {
        slices.extend(gateway_slices(
            &derived,
            ns,
            &service_ports,
            slice_labels(None),
            gateways,
        ));
    }
    let mut endpoint_services = BTreeMap::new();
    if headless {
        for (cluster, export) in &view.exports {
            // Another cluster's endpoints, reached through the gateway: each at the ClusterIP of
            // its own derived Service (left out until that has one).
            let via = remote.filter(|r| r.local.as_ref() != Some(cluster));
            let mut by_family: BTreeMap<&str, Vec<Value>> = BTreeMap::new();
            let mut named = BTreeSet::new();
            for e in &export.record.endpoints {
                let label = e.dns_label();
                let address = match via {
                    None => Some(e.address),
                    Some(r) => {
                        if named.insert(label.clone()) {
                            if let Some((name, body)) =
                                endpoint_service(view, cluster, &label, r, &slice_labels)
                            {
                                slices.extend(gateway_slices(
                                    &name,
                                    ns,
                                    body["spec"]["ports"].as_array().map_or(&[][..], |v| v),
                                    {
                                        let mut l = slice_labels(Some(cluster.as_str()));
                                        l[LABEL_SLICE_SERVICE] = json!(name);
                                        l
                                    },
                                    gateways,
                                ));
                                endpoint_services.insert(name, body);
                            }
                        }
                        r.held
                            .get(&(key.clone(), cluster.clone(), label.clone()))
                            .copied()
                    }
                };
                let Some(address) = address else {
                    continue;
                };
                let mut ep = json!({
                    "addresses": [address.to_string()],
                    "conditions": {"ready": e.ready && !export.drained},
                });
                if let Some(h) = &e.hostname {
                    ep["hostname"] = json!(h);
                }
                by_family.entry(family(address)).or_default().push(ep);
            }
            if via.is_some() {
                // A slice per family the cluster's endpoints would have, so that the set does
                // not flap while addresses come.
                for e in &export.record.endpoints {
                    by_family.entry(family(e.address)).or_default();
                }
            }
            for (family, endpoints) in by_family {
                let suffix = if family == "IPv6" { "-v6" } else { "" };
                let name = fit(&format!("{derived}-{cluster}{suffix}"));
                slices.insert(
                    name.clone(),
                    json!({
                        "apiVersion": "discovery.k8s.io/v1",
                        "kind": "EndpointSlice",
                        "metadata": {"name": name, "namespace": ns, "labels": slice_labels(Some(cluster.as_str()))},
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
        endpoint_services,
    }
}

/// The derived Service of endpoint `label` of `cluster` of a headless import: a ClusterIP (the
/// endpoint's VIP with `vips`) whose ports target the gateway ports kept for that endpoint.
/// None while it has no gateway port (none left) or, with `vips`, no VIP yet.
fn endpoint_service(
    view: &ServiceView,
    cluster: &causeway_api::ClusterId,
    label: &str,
    remote: &RemoteEndpoints,
    slice_labels: &dyn Fn(Option<&str>) -> Value,
) -> Option<(String, Value)> {
    let key = &view.import.key;
    let (ns, svc) = (key.namespace.as_str(), key.name.as_str());
    let service_ports: Vec<Value> = ports(view)
        .into_iter()
        .filter_map(|mut p| {
            let port = p["port"].as_u64().and_then(|n| u16::try_from(n).ok())?;
            let gp = remote
                .ports
                .get(&(key.clone(), cluster.clone(), label.to_string(), port))?;
            p["targetPort"] = json!(gp);
            Some(p)
        })
        .collect();
    if service_ports.is_empty() {
        return None;
    }
    let mut spec = json!({"type": "ClusterIP", "ports": service_ports});
    if remote.vips {
        let vip = view.endpoint_vips.get(cluster)?.get(label)?;
        spec["clusterIP"] = json!(vip.to_string());
    }
    let name = endpoint_service_name(svc, cluster.as_str(), label);
    let mut labels = slice_labels(Some(cluster.as_str()));
    if let Value::Object(m) = &mut labels {
        // A Service, not a slice: only ours and the import's.
        m.remove(LABEL_SLICE_SERVICE);
        m.remove(LABEL_SLICE_MANAGED_BY);
    }
    labels[LABEL_ENDPOINT] = json!(label);
    let body = json!({
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {"name": name, "namespace": ns, "labels": labels},
        "spec": spec,
    });
    Some((name, body))
}

/// Whether `want` is contained in `have`: every key of an object, every element of an array (same
/// length), every scalar equal. Fields the server adds (uid, defaults) do not count as changes.
pub(crate) fn contains(have: &Value, want: &Value) -> bool {
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
    /// The local gateway pods (`gateway_namespace`, `gateway_selector`).
    pods: Store<Pod>,
}

fn namespace_live(ns: &Namespace) -> bool {
    ns.metadata.deletion_timestamp.is_none()
        && ns.status.as_ref().and_then(|s| s.phase.as_deref()) != Some("Terminating")
}

/// A write of the sink that failed, naming the object.
#[derive(Debug, thiserror::Error)]
#[error("{action} {object}: {source}")]
pub(crate) struct SinkError {
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

/// Counts writes, logs the failed ones.
struct Failures<'a> {
    failed: usize,
    metrics: &'a KubeMetrics,
}

impl Failures<'_> {
    /// Counts a failed [`Sink::apply`] (a successful one counted itself).
    fn note_write<T>(&mut self, kind: &str, r: Result<T, SinkError>) {
        if let Err(e) = r {
            self.note(kind, Err(e));
        }
    }

    fn note(&mut self, kind: &str, r: Result<(), SinkError>) {
        self.metrics.wrote(kind, r.is_ok());
        if let Err(e) = r {
            tracing::warn!(error = %e, "Kubernetes sink write failed; retrying");
            self.failed += 1;
        }
    }
}

/// Why a derived Service could not get its ClusterSetIP, and when to try again.
#[derive(Debug, Clone)]
struct Refused {
    message: String,
    failures: u32,
    retry_at: tokio::time::Instant,
}

/// Longest wait before a refused ClusterSetIP is asked for again.
const REFUSED_RETRY_MAX: Duration = Duration::from_secs(60);

/// What the sink last wrote to an object: the body, the resourceVersion it had before and the
/// one the write returned. While the store still shows one of those two and the body wanted is the
/// same, the write is not repeated: a watch that lags (or is relisting after an API server
/// restart) must not make the sink write the same thing again and again.
#[derive(Debug, Clone)]
struct Written {
    body: Value,
    before: Option<String>,
    after: Option<String>,
}

type WrittenKey = (ServiceKey, String);

/// The state the sink keeps between passes.
struct Sink {
    client: Client,
    opts: KubeOptions,
    metrics: KubeMetrics,
    /// This cluster allocates VIPs (`vip_range`): ClusterSetIP imports wait for theirs.
    vips: bool,
    /// By import and object (`ServiceImport`, `Service/<name>`, `EndpointSlice/<name>`), so that
    /// an import's entries go with it.
    written: BTreeMap<WrittenKey, Written>,
    /// Imports whose derived Service the cluster refused (e.g. the ClusterSetIP is another
    /// Service's).
    refused: BTreeMap<ServiceKey, Refused>,
    /// The addresses derived Services hold (for DNS).
    held: watch::Sender<Arc<HeldAddresses>>,
}

/// The addresses the derived Services hold in this cluster.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct HeldAddresses {
    /// ClusterIP each derived Service of a ClusterSetIP import holds, by import.
    pub services: BTreeMap<ServiceKey, IpAddr>,
    /// ClusterIP each remote endpoint's derived Service holds, by (import, cluster, endpoint).
    pub endpoints: BTreeMap<(ServiceKey, causeway_api::ClusterId, String), IpAddr>,
}

fn rv(v: &Value) -> Option<String> {
    v.pointer("/metadata/resourceVersion")
        .and_then(Value::as_str)
        .map(str::to_string)
}

/// Now, in whole seconds (RFC 3339), as Kubernetes writes condition and event times.
fn now_seconds() -> String {
    k8s_openapi::jiff::Timestamp::now()
        .round(k8s_openapi::jiff::Unit::Second)
        .map(|t| t.to_string())
        .unwrap_or_default()
}

fn is_refused_ip(e: &kube::Error) -> bool {
    matches!(e, kube::Error::Api(s) if s.code == 422
        && (s.message.contains("already allocated") || s.message.contains("clusterIP")
            || s.message.contains("clusterIPs")))
}

/// The kind of a Kubernetes object type, as logs and metrics name it.
fn kind_of<K: kube::Resource<DynamicType = ()>>() -> String {
    K::kind(&()).into_owned()
}

/// Deletes `ns/name` (already gone is fine); an error names the object and `action`.
async fn delete<K>(
    api: &Api<K>,
    ns: &str,
    name: &str,
    action: &'static str,
) -> Result<(), SinkError>
where
    K: kube::Resource<DynamicType = ()> + Clone + serde::de::DeserializeOwned + std::fmt::Debug,
{
    api.delete(name, &DeleteParams::background())
        .await
        .map(|_| ())
        .or_else(ignore_not_found)
        .map_err(err(action, format!("{} {ns}/{name}", kind_of::<K>())))
}

/// Whether `body` asks for another ClusterIP than the object holds: it cannot change, so the
/// object is replaced (deleted, and made again by the next pass).
fn ip_changes(body: &Value, have: Option<&str>) -> bool {
    matches!((body["spec"]["clusterIP"].as_str(), have), (Some(want), Some(have)) if want != have)
}

/// The names of the objects of `store` in `ns` made by us for import `svc` (only per-endpoint
/// Services with `endpoints`) that `wanted` no longer names.
fn stale_of<K>(
    store: &Store<K>,
    ns: &str,
    svc: &str,
    endpoints: bool,
    wanted: impl Fn(&str) -> bool,
) -> Vec<String>
where
    K: kube::Resource<DynamicType = ()> + Clone,
{
    store
        .state()
        .iter()
        .filter(|o| {
            o.namespace().as_deref() == Some(ns)
                && is_ours(o.meta())
                && (!endpoints || o.labels().contains_key(LABEL_ENDPOINT))
                && o.labels().get(LABEL_SERVICE_NAME).map(String::as_str) == Some(svc)
        })
        .map(|o| o.name_any())
        .filter(|n| !wanted(n))
        .collect()
}

impl Sink {
    /// Applies `body` to the object `name` of import `import` (now `have`; `None`: absent)
    /// unless it already holds it or our last write of it is still to be seen, and remembers
    /// the write. `Ok(None)`: nothing to write. The one write path of every object kind.
    async fn apply<K>(
        &mut self,
        api: &Api<K>,
        import: &ServiceKey,
        name: &str,
        have: Option<&Value>,
        body: &Value,
    ) -> Result<Option<K>, SinkError>
    where
        K: kube::Resource<DynamicType = ()>
            + Clone
            + serde::de::DeserializeOwned
            + Serialize
            + std::fmt::Debug,
    {
        let kind = kind_of::<K>();
        let key = (import.clone(), format!("{kind}/{name}"));
        if !self.needs_write(&key, have, body) {
            return Ok(None);
        }
        let ns = import.namespace.as_str();
        let written = api
            .patch(
                name,
                &PatchParams::apply(MANAGER).force(),
                &Patch::Apply(body),
            )
            .await
            .map_err(err("applying", format!("{kind} {ns}/{name}")))?;
        self.metrics.wrote(&kind, true);
        let after = written.meta().resource_version.clone();
        self.wrote(key, body, have, after);
        Ok(Some(written))
    }

    /// Deletes the objects `stale` of import `import`, forgetting what was written to them.
    async fn prune<K>(
        &mut self,
        api: &Api<K>,
        import: &ServiceKey,
        ns: &str,
        stale: Vec<String>,
        failures: &mut Failures<'_>,
    ) where
        K: kube::Resource<DynamicType = ()> + Clone + serde::de::DeserializeOwned + std::fmt::Debug,
    {
        let kind = kind_of::<K>();
        for name in stale {
            self.written
                .remove(&(import.clone(), format!("{kind}/{name}")));
            failures.note(&kind, delete(api, ns, &name, "deleting").await);
        }
    }

    /// Whether `body` must be written over `current` (`None`: the object does not exist).
    fn needs_write(&self, key: &WrittenKey, current: Option<&Value>, body: &Value) -> bool {
        let Some(current) = current else {
            return true;
        };
        if contains(current, body) {
            return false;
        }
        match self.written.get(key) {
            Some(w) if &w.body == body => {
                let now = rv(current);
                // Our own write not seen yet: wait for the watch instead of writing again.
                !(now == w.before || now == w.after)
            }
            _ => true,
        }
    }

    fn wrote(
        &mut self,
        key: WrittenKey,
        body: &Value,
        before: Option<&Value>,
        after: Option<String>,
    ) {
        self.written.insert(
            key,
            Written {
                body: body.clone(),
                before: before.and_then(rv),
                after,
            },
        );
    }

    /// One pass: makes the cluster's objects match the snapshot. Returns how many writes failed.
    /// With `vips`, ClusterSetIP imports wait for their VIP, so that their Service is made once,
    /// with it, instead of with any ClusterIP first and replaced when the VIP comes.
    async fn sync(&mut self, stores: &Stores, snap: &MeshSnapshot) -> usize {
        let metrics = self.metrics.clone();
        let mut failures = Failures {
            failed: 0,
            metrics: &metrics,
        };
        let client = self.client.clone();
        let live: BTreeSet<String> = stores
            .namespaces
            .state()
            .iter()
            .filter(|n| namespace_live(n))
            .map(|n| n.name_any())
            .collect();
        // Over the whole snapshot, as the gateway config does, so that both agree.
        let (gateway_ports, endpoint_ports) = crate::ports::gateway_port_plan(
            snap,
            self.opts.gateway_port_first,
            self.opts.gateway_port_count,
        );
        let remote = snap.headless_via_gateway.then(|| RemoteEndpoints {
            local: snap.local_cluster.clone(),
            ports: endpoint_ports,
            held: held_endpoint_addresses(stores),
            vips: self.vips,
        });
        let gateways = gateway_pods(&stores.pods);
        let wanted: BTreeMap<&ServiceKey, &ServiceView> = snap
            .services
            .iter()
            .filter(|(k, _)| live.contains(&k.namespace))
            .map(|(k, v)| (k, &**v))
            .collect();
        self.refused.retain(|k, _| wanted.contains_key(k));
        let now = tokio::time::Instant::now();

        for (key, view) in &wanted {
            let clusterset_ip = view.import.service_type == ServiceType::ClusterSetIP;
            let waiting_for_vip = self.vips && view.vip.is_none() && clusterset_ip;
            let (ns, svc) = (key.namespace.as_str(), key.name.as_str());
            let derived = derived_name(svc);
            let current_svc = stores.services.get(&ObjectRef::new(&derived).within(ns));
            let cluster_ip = current_svc
                .as_ref()
                .and_then(|s| s.spec.as_ref())
                .and_then(|s| s.cluster_ip.clone())
                .filter(|ip| !ip.is_empty() && ip != "None");
            let want = desired_import(
                view,
                &self.opts,
                cluster_ip.as_deref(),
                &gateway_ports,
                &gateways,
                remote.as_ref(),
            );
            let imports: Api<ServiceImport> = Api::namespaced(client.clone(), ns);

            // The ServiceImport first: the derived objects carry its uid.
            let current = stores.imports.get(&ObjectRef::new(svc).within(ns));
            let current_value = current.as_deref().map(to_value);
            let written = self
                .apply(&imports, key, svc, current_value.as_ref(), &want.import)
                .await;
            let import = match (written, current) {
                (Ok(Some(si)), current) => {
                    if current.is_none() {
                        tracing::info!(import = %key, "ServiceImport created");
                    }
                    Arc::new(si)
                }
                (Ok(None), Some(current)) => current,
                (Ok(None), None) => continue,
                (Err(e), _) => {
                    failures.note("ServiceImport", Err(e));
                    continue;
                }
            };

            // Ready, as the MCS API (v0.5.0) defines it for ServiceImports.
            let refused = self.refused.get(*key).cloned();
            let (ready, reason, message) = if let Some(r) = &refused {
                ("False", "ClusterSetIPUnavailable", r.message.clone())
            } else if !clusterset_ip {
                (
                    "True",
                    "Ready",
                    "headless: DNS answers the endpoints".to_string(),
                )
            } else if waiting_for_vip || cluster_ip.is_none() {
                (
                    "False",
                    "Pending",
                    "waiting for the ClusterSetIP".to_string(),
                )
            } else {
                (
                    "True",
                    "Ready",
                    format!(
                        "Service {ns}/{derived} holds the ClusterSetIP {}",
                        cluster_ip.as_deref().unwrap_or_default()
                    ),
                )
            };
            let mut status = want.status.clone();
            let have_status = to_value(&*import)["status"].clone();
            let have_ready = have_status["conditions"]
                .as_array()
                .and_then(|c| c.iter().find(|c| c["type"] == "Ready"))
                .cloned();
            let same_ready = have_ready.as_ref().is_some_and(|c| {
                c["status"] == ready && c["reason"] == reason && c["message"] == message.as_str()
            });
            let transition = match &have_ready {
                Some(c) if c["status"] == ready => c["lastTransitionTime"].clone(),
                _ => json!(now_seconds()),
            };
            status["conditions"] = json!([{
                "type": "Ready",
                "status": ready,
                "reason": reason,
                "message": message,
                "lastTransitionTime": transition,
            }]);
            if !same_ready || !contains(&have_status, &want.status) {
                failures.note(
                    "ServiceImport",
                    imports
                        .patch_status(
                            svc,
                            &PatchParams::default(),
                            &Patch::Merge(json!({ "status": status })),
                        )
                        .await
                        .map(|_| ())
                        .map_err(err("writing the status of", format!("ServiceImport {key}"))),
                );
            }
            if waiting_for_vip {
                continue;
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
            if ip_changes(&service, cluster_ip.as_deref()) {
                failures.note(
                    "Service",
                    delete(&services, ns, &derived, "replacing").await,
                );
                continue;
            }
            let have = current_svc.as_deref().map(to_value);
            let refused_wait = refused.as_ref().is_some_and(|r| now < r.retry_at);
            if !refused_wait {
                match self
                    .apply(&services, key, &derived, have.as_ref(), &service)
                    .await
                {
                    Ok(None) => {}
                    Ok(Some(_)) => {
                        if self.refused.remove(*key).is_some() {
                            tracing::info!(import = %key, "derived Service got its ClusterSetIP");
                        }
                    }
                    Err(SinkError { source: e, .. }) if is_refused_ip(&e) => {
                        failures.metrics.wrote("Service", false);
                        let message = match &e {
                            kube::Error::Api(s) => s.message.clone(),
                            e => e.to_string(),
                        };
                        let failures_so_far = refused.as_ref().map_or(0, |r| r.failures) + 1;
                        let wait = Duration::from_secs(2u64.saturating_pow(failures_so_far))
                            .min(REFUSED_RETRY_MAX);
                        if refused.is_none() {
                            tracing::warn!(
                                import = %key,
                                service = %format!("{ns}/{derived}"),
                                clusterset_ip = service["spec"]["clusterIP"].as_str().unwrap_or(""),
                                error = %message,
                                "the cluster refused the derived Service's ClusterSetIP; DNS answers nothing for it until it holds it"
                            );
                            self.event(ns, svc, &uid, "ClusterSetIPUnavailable", &message)
                                .await;
                        }
                        self.refused.insert(
                            (*key).clone(),
                            Refused {
                                message,
                                failures: failures_so_far,
                                retry_at: now + wait,
                            },
                        );
                    }
                    Err(e) => failures.note("Service", Err(e)),
                }
            }

            // Remote endpoints' derived Services, before the slices that list their ClusterIPs.
            for (name, body) in &want.endpoint_services {
                let mut body = body.clone();
                body["metadata"]["ownerReferences"] = owner.clone();
                let have_svc = stores.services.get(&ObjectRef::new(name).within(ns));
                let have_ip = have_svc
                    .as_ref()
                    .and_then(|s| s.spec.as_ref())
                    .and_then(|s| s.cluster_ip.clone());
                if ip_changes(&body, have_ip.as_deref()) {
                    failures.note("Service", delete(&services, ns, name, "replacing").await);
                    continue;
                }
                let have = have_svc.as_deref().map(to_value);
                let r = self.apply(&services, key, name, have.as_ref(), &body).await;
                failures.note_write("Service", r);
            }
            let stale = stale_of(&stores.services, ns, svc, true, |n| {
                want.endpoint_services.contains_key(n)
            });
            self.prune(&services, key, ns, stale, &mut failures).await;

            let slices: Api<EndpointSlice> = Api::namespaced(client.clone(), ns);
            for (name, slice) in &want.slices {
                let mut slice = slice.clone();
                slice["metadata"]["ownerReferences"] = owner.clone();
                let have = stores
                    .slices
                    .get(&ObjectRef::new(name).within(ns))
                    .map(|s| to_value(&*s));
                let r = self.apply(&slices, key, name, have.as_ref(), &slice).await;
                failures.note_write("EndpointSlice", r);
            }
            let stale = stale_of(&stores.slices, ns, svc, false, |n| {
                want.slices.contains_key(n)
            });
            self.prune(&slices, key, ns, stale, &mut failures).await;
        }

        // What no import wants any more. Deleting the ServiceImport lets the garbage collector
        // take its Service and slices; deleting those too keeps this right where no collector
        // runs.
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
            failures.note("ServiceImport", delete(&api, &ns, &name, "deleting").await);
            tracing::info!(import = %format!("{ns}/{name}"), "ServiceImport removed");
        }
        for svc in stores.services.state() {
            let ns = svc.namespace().unwrap_or_default();
            let Some(import) = svc.labels().get(LABEL_SERVICE_NAME) else {
                continue;
            };
            // Only a derived Service by its name: a Service someone else labelled like ours
            // is not ours to delete.
            let derived = svc.name_any() == derived_name(import)
                || (is_ours(&svc.metadata) && svc.labels().contains_key(LABEL_ENDPOINT));
            if wanted_keys.contains(&(ns.clone(), import.clone())) || !derived {
                continue;
            }
            let api: Api<Service> = Api::namespaced(client.clone(), &ns);
            failures.note(
                "Service",
                delete(&api, &ns, &svc.name_any(), "deleting").await,
            );
        }
        for slice in stores.slices.state() {
            let ns = slice.namespace().unwrap_or_default();
            let Some(import) = slice.labels().get(LABEL_SERVICE_NAME) else {
                continue;
            };
            if !is_ours(&slice.metadata) || wanted_keys.contains(&(ns.clone(), import.clone())) {
                continue;
            }
            let api: Api<EndpointSlice> = Api::namespaced(client.clone(), &ns);
            let r = delete(&api, &ns, &slice.name_any(), "deleting").await;
            failures.note("EndpointSlice", r);
        }
        self.written
            .retain(|(import, _), _| wanted.contains_key(import));
        failures.failed
    }

    /// An Event on the ServiceImport (core/v1), for `kubectl describe` and `kubectl get events`.
    async fn event(&self, ns: &str, name: &str, uid: &str, reason: &str, message: &str) {
        let api: Api<k8s_openapi::api::core::v1::Event> = Api::namespaced(self.client.clone(), ns);
        let now = now_seconds();
        let body = json!({
            "apiVersion": "v1",
            "kind": "Event",
            "metadata": {"generateName": format!("{name}."), "namespace": ns},
            "involvedObject": {
                "apiVersion": "multicluster.x-k8s.io/v1alpha1",
                "kind": "ServiceImport",
                "namespace": ns,
                "name": name,
                "uid": uid,
            },
            "reason": reason,
            "message": message,
            "type": "Warning",
            "source": {"component": MANAGER},
            "reportingComponent": MANAGER,
            "reportingInstance": MANAGER,
            "firstTimestamp": now,
            "lastTimestamp": now,
            "count": 1,
        });
        let result = match serde_json::from_value(body) {
            Ok(ev) => api
                .create(&kube::api::PostParams::default(), &ev)
                .await
                .map(|_| ()),
            Err(e) => {
                tracing::debug!(error = %e, "Event body");
                return;
            }
        };
        self.metrics.wrote("Event", result.is_ok());
        if let Err(e) = result {
            tracing::debug!(error = %e, "Event not written");
        }
    }

    /// The earliest time a refused ClusterSetIP is to be asked for again.
    fn next_refused_retry(&self) -> Option<tokio::time::Instant> {
        self.refused.values().map(|r| r.retry_at).min()
    }

    /// Publishes the ClusterIPs the derived Services hold, for DNS.
    fn publish_held(&self, stores: &Stores, snap: &MeshSnapshot) {
        let mut held = HeldAddresses {
            endpoints: held_endpoint_addresses(stores),
            ..Default::default()
        };
        held.endpoints.retain(|(key, _, _), _| {
            snap.services
                .get(key)
                .is_some_and(|v| v.import.service_type == ServiceType::Headless)
        });
        for (key, view) in &snap.services {
            if view.import.service_type != ServiceType::ClusterSetIP {
                continue;
            }
            let derived = derived_name(&key.name);
            let Some(svc) = stores
                .services
                .get(&ObjectRef::new(&derived).within(&key.namespace))
            else {
                continue;
            };
            if !is_ours(&svc.metadata) {
                continue;
            }
            let ip = svc
                .spec
                .as_ref()
                .and_then(|s| s.cluster_ip.as_deref())
                .and_then(|ip| ip.parse::<IpAddr>().ok());
            if let Some(ip) = ip {
                held.services.insert(key.clone(), ip);
            }
        }
        self.held.send_if_modified(|cur| {
            if **cur == held {
                false
            } else {
                *cur = Arc::new(held);
                true
            }
        });
    }
}

/// The ClusterIPs remote endpoints' derived Services hold, by (import, cluster, endpoint).
fn held_endpoint_addresses(
    stores: &Stores,
) -> BTreeMap<(ServiceKey, causeway_api::ClusterId, String), IpAddr> {
    let mut out = BTreeMap::new();
    for svc in stores.services.state() {
        if !is_ours(&svc.metadata) {
            continue;
        }
        let labels = svc.labels();
        let (Some(import), Some(cluster), Some(endpoint)) = (
            labels.get(LABEL_SERVICE_NAME),
            labels.get(LABEL_SOURCE_CLUSTER),
            labels.get(LABEL_ENDPOINT),
        ) else {
            continue;
        };
        let ns = svc.namespace().unwrap_or_default();
        let (Ok(key), Ok(cluster)) = (
            ServiceKey::new(&ns, import),
            causeway_api::ClusterId::new(cluster),
        ) else {
            continue;
        };
        let ip = svc
            .spec
            .as_ref()
            .and_then(|s| s.cluster_ip.as_deref())
            .and_then(|ip| ip.parse::<IpAddr>().ok());
        if let Some(ip) = ip {
            out.insert((key, cluster, endpoint.clone()), ip);
        }
    }
    out
}

/// Labelled as ours: `app.kubernetes.io/managed-by: causeway-federator`, and for EndpointSlices
/// also `endpointslice.kubernetes.io/managed-by: causeway-federator` (kube-controller-manager
/// copies a Service's labels onto the slices it makes, the first label among them; its own
/// `endpointslice.kubernetes.io/managed-by` is what tells them apart).
fn is_ours(meta: &k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta) -> bool {
    let labels = meta.labels.as_ref();
    let get = |k: &str| labels.and_then(|l| l.get(k)).map(String::as_str);
    get(LABEL_MANAGED_BY) == Some(MANAGER)
        && (get(LABEL_SLICE_SERVICE).is_none() || get(LABEL_SLICE_MANAGED_BY) == Some(MANAGER))
}

/// The snapshot DNS answers from in Kubernetes mode: a ClusterSetIP import's address is the one
/// its derived Service holds here (with `vips`: only when that is the import's VIP), never an
/// address the cluster gave to another Service; likewise a remote headless endpoint's address
/// is its derived Service's ClusterIP.
pub(crate) fn dns_view(snap: &MeshSnapshot, held: &HeldAddresses, vips: bool) -> MeshSnapshot {
    let mut out = snap.clone();
    for (key, view) in out.services.iter_mut() {
        if view.import.service_type == ServiceType::Headless {
            if !snap.headless_via_gateway {
                continue;
            }
            let mut given: BTreeMap<causeway_api::ClusterId, BTreeMap<String, IpAddr>> =
                BTreeMap::new();
            for ((_, cluster, name), ip) in held.endpoints.iter().filter(|((k, _, _), _)| k == key)
            {
                let vip = view.endpoint_vips.get(cluster).and_then(|m| m.get(name));
                if !vips || vip == Some(ip) {
                    given
                        .entry(cluster.clone())
                        .or_default()
                        .insert(name.clone(), *ip);
                }
            }
            if given != view.endpoint_vips {
                Arc::make_mut(view).endpoint_vips = given;
            }
            continue;
        }
        if view.import.service_type != ServiceType::ClusterSetIP {
            continue;
        }
        let holds = held.services.get(key).copied();
        let address = if vips {
            view.vip.filter(|v| holds == Some(*v))
        } else {
            holds
        };
        if address != view.vip {
            Arc::make_mut(view).vip = address;
        }
    }
    out
}

/// Logs of the sink's reflectors, under this module.
const WATCH_LOG: crate::kubewatch::WatchLog = crate::kubewatch::watch_log!();

/// Runs the Kubernetes sink until `shutdown`. `vips`: this cluster allocates VIPs (`vip_range`),
/// which become the derived Services' ClusterIPs. `held` gets the ClusterIPs the derived Services
/// hold ([`dns_view`]).
#[allow(clippy::too_many_arguments)]
pub(crate) async fn run(
    client: Client,
    opts: KubeOptions,
    metrics: KubeMetrics,
    vips: bool,
    mut snapshots: watch::Receiver<Arc<MeshSnapshot>>,
    mut leader: watch::Receiver<bool>,
    held: watch::Sender<Arc<HeldAddresses>>,
    shutdown: CancellationToken,
) {
    use crate::kubewatch::reflect;
    let (namespaces, namespaces_w) = reflector::store();
    let (imports, imports_w) = reflector::store();
    let (services, services_w) = reflector::store();
    let (slices, slices_w) = reflector::store();
    let (pods, pods_w) = reflector::store();
    let stores = Stores {
        namespaces,
        imports,
        services,
        slices,
        pods,
    };
    let changed = Arc::new(Notify::new());
    let managed = watcher::Config::default().labels(&format!("{LABEL_MANAGED_BY}={MANAGER}"));
    // Only our own slices: kube-controller-manager's copies of our labels are not ours.
    let our_slices = watcher::Config::default().labels(&format!(
        "{LABEL_MANAGED_BY}={MANAGER},{LABEL_SLICE_MANAGED_BY}={MANAGER}"
    ));
    let gateway_labels = opts
        .gateway_selector
        .iter()
        .map(|(k, v)| format!("{k}={v}"))
        .collect::<Vec<_>>()
        .join(",");
    let mut tasks = tokio::task::JoinSet::new();
    tasks.spawn(reflect(
        Api::<Namespace>::all(client.clone()),
        watcher::Config::default(),
        namespaces_w,
        changed.clone(),
        metrics.clone(),
        "namespaces",
        WATCH_LOG,
    ));
    tasks.spawn(reflect(
        Api::<ServiceImport>::all(client.clone()),
        managed.clone(),
        imports_w,
        changed.clone(),
        metrics.clone(),
        "serviceimports",
        WATCH_LOG,
    ));
    tasks.spawn(reflect(
        Api::<Service>::all(client.clone()),
        managed,
        services_w,
        changed.clone(),
        metrics.clone(),
        "services",
        WATCH_LOG,
    ));
    tasks.spawn(reflect(
        Api::<EndpointSlice>::all(client.clone()),
        our_slices,
        slices_w,
        changed.clone(),
        metrics.clone(),
        "endpointslices",
        WATCH_LOG,
    ));
    tasks.spawn(reflect(
        Api::<Pod>::namespaced(client.clone(), &opts.gateway_namespace),
        watcher::Config::default().labels(&gateway_labels),
        pods_w,
        changed.clone(),
        metrics.clone(),
        "pods",
        WATCH_LOG,
    ));

    let mut sink = Sink {
        client,
        opts,
        metrics,
        vips,
        written: BTreeMap::new(),
        refused: BTreeMap::new(),
        held,
    };
    let work = async {
        let ready = stores.namespaces.wait_until_ready().await.is_ok()
            && stores.imports.wait_until_ready().await.is_ok()
            && stores.services.wait_until_ready().await.is_ok()
            && stores.slices.wait_until_ready().await.is_ok()
            && stores.pods.wait_until_ready().await.is_ok();
        if !ready {
            return;
        }
        let mut backoff = crate::kubewatch::backoff(RETRY_MAX);
        let mut retry_at: Option<tokio::time::Instant> = None;
        loop {
            let snap = snapshots.borrow_and_update().clone();
            let is_leader = *leader.borrow_and_update();
            if is_leader && snap.synced {
                let failed = sink.sync(&stores, &snap).await;
                sink.metrics.sink_passes.inc();
                // Failed writes are retried with a growing wait (reset by a pass without
                // failures); a refused ClusterSetIP on its own schedule.
                retry_at = if failed > 0 {
                    Some(tokio::time::Instant::now() + backoff.next_wait())
                } else {
                    backoff.reset();
                    None
                };
                if let Some(r) = sink.next_refused_retry() {
                    retry_at = Some(retry_at.map_or(r, |t| t.min(r)));
                }
            }
            sink.publish_held(&stores, &snap);
            let wake = async {
                match retry_at {
                    Some(t) => tokio::time::sleep_until(t).await,
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                _ = changed.notified() => {}
                r = snapshots.changed() => if r.is_err() { return },
                r = leader.changed() => if r.is_err() { return },
                _ = wake => {}
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
