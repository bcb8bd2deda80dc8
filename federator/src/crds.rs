//! The MCS API custom resources (KEP-1645), `multicluster.x-k8s.io/v1alpha1`: `ServiceExport` and
//! `ServiceImport`, as Rust types. The CRDs in `helm/causeway/crds/` are generated from them
//! (`causeway crds`); a test keeps the committed file equal to the generated one.
//!
//! Condition types and reasons follow the upstream API (sigs.k8s.io/mcs-api): `Valid`, `Ready` and
//! `Conflict` on a ServiceExport.

use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::{
    CustomResourceDefinition, JSONSchemaProps,
};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition;
use kube::{CustomResource, CustomResourceExt};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// Label on derived objects (Services, EndpointSlices) naming the ServiceImport they belong to.
pub(crate) const LABEL_SERVICE_NAME: &str = "multicluster.kubernetes.io/service-name";
/// Label on EndpointSlices naming the cluster whose endpoints they hold.
pub(crate) const LABEL_SOURCE_CLUSTER: &str = "multicluster.kubernetes.io/source-cluster";
/// Label on objects the sink owns; it lists and deletes only those.
pub(crate) const LABEL_MANAGED_BY: &str = "app.kubernetes.io/managed-by";
/// Value of [`LABEL_MANAGED_BY`], and the server-side apply field manager.
pub(crate) const MANAGER: &str = "causeway-federator";

/// Condition types of a ServiceExport.
pub(crate) mod condition {
    /// Whether the export can be exported at all (its Service exists and is exportable).
    pub(crate) const VALID: &str = "Valid";
    /// Whether the export is in the mesh (published and seen back in the merged view).
    pub(crate) const READY: &str = "Ready";
    /// Whether the export's properties conflict with other clusters' exports of the service.
    pub(crate) const CONFLICT: &str = "Conflict";
}

/// Condition reasons of a ServiceExport.
pub(crate) mod reason {
    pub(crate) const VALID: &str = "Valid";
    pub(crate) const NO_SERVICE: &str = "NoService";
    pub(crate) const INVALID_SERVICE_TYPE: &str = "InvalidServiceType";
    /// The export's name or ports cannot be represented in the mesh (not an RFC 1123 label, ...).
    pub(crate) const INVALID_EXPORT: &str = "InvalidExport";
    pub(crate) const EXPORTED: &str = "Exported";
    pub(crate) const PENDING: &str = "Pending";
    pub(crate) const NO_CONFLICTS: &str = "NoConflicts";
}

/// ServiceExport declares that the Service of the same name and namespace is exported to the
/// clusterset. v1alpha1 has no spec; the status carries the conditions.
#[derive(CustomResource, Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[kube(
    group = "multicluster.x-k8s.io",
    version = "v1alpha1",
    kind = "ServiceExport",
    doc = "ServiceExport declares that the Service of the same name and namespace is exported to the clusterset.",
    plural = "serviceexports",
    shortname = "svcex",
    namespaced,
    no_spec,
    status = "ServiceExportStatus",
    printcolumn = r#"{"name":"Valid","type":"string","jsonPath":".status.conditions[?(@.type==\"Valid\")].status"}"#,
    printcolumn = r#"{"name":"Ready","type":"string","jsonPath":".status.conditions[?(@.type==\"Ready\")].status"}"#,
    printcolumn = r#"{"name":"Conflict","type":"string","jsonPath":".status.conditions[?(@.type==\"Conflict\")].reason"}"#,
    printcolumn = r#"{"name":"Age","type":"date","jsonPath":".metadata.creationTimestamp"}"#
)]
pub(crate) struct ServiceExportSpec {
    /// `spec` (MCS API v0.5.0, optional; v1alpha1 objects have none). The derive flattens this
    /// struct onto the object's root, so this field is the object's own `spec`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub spec: Option<ExportSpec>,
}

/// `spec` of a ServiceExport: what the importing clusters carry onto their ServiceImport and
/// derived Service. The oldest export's apply; a differing one is a `LabelsConflict` /
/// `AnnotationsConflict`.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub(crate) struct ExportSpec {
    #[serde(default, skip_serializing_if = "std::collections::BTreeMap::is_empty")]
    pub exported_labels: std::collections::BTreeMap<String, String>,
    #[serde(default, skip_serializing_if = "std::collections::BTreeMap::is_empty")]
    pub exported_annotations: std::collections::BTreeMap<String, String>,
}

/// Status of a ServiceExport.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
pub(crate) struct ServiceExportStatus {
    /// `Valid`, `Ready` and `Conflict`, each at most once.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(extend("x-kubernetes-list-type" = "map", "x-kubernetes-list-map-keys" = ["type"]))]
    pub conditions: Vec<Condition>,
}

/// ServiceImport describes a service imported from clusters in the clusterset. The federator
/// writes it; users read it.
#[derive(CustomResource, Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[kube(
    group = "multicluster.x-k8s.io",
    version = "v1alpha1",
    kind = "ServiceImport",
    doc = "ServiceImport describes a service imported from the clusters of the clusterset; Causeway writes it.",
    plural = "serviceimports",
    shortname = "svcim",
    namespaced,
    status = "ServiceImportStatus",
    printcolumn = r#"{"name":"Type","type":"string","jsonPath":".spec.type"}"#,
    printcolumn = r#"{"name":"IP","type":"string","jsonPath":".spec.ips"}"#,
    printcolumn = r#"{"name":"Age","type":"date","jsonPath":".metadata.creationTimestamp"}"#
)]
#[serde(rename_all = "camelCase")]
pub(crate) struct ServiceImportSpec {
    #[schemars(extend("x-kubernetes-list-type" = "atomic"))]
    pub ports: Vec<ImportPort>,
    /// The ClusterSetIP (at most one per IP family) for `ClusterSetIP` imports.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 2))]
    pub ips: Vec<String>,
    #[serde(rename = "type")]
    pub service_type: ImportType,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub session_affinity: Option<SessionAffinity>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub session_affinity_config: Option<SessionAffinityConfig>,
    /// The IP families of `ips` (MCS API v0.5.0).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 2))]
    pub ip_families: Vec<String>,
    /// The exporting Services' `internalTrafficPolicy` (the oldest export's).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub internal_traffic_policy: Option<String>,
    /// The exporting Services' `trafficDistribution` (the oldest export's).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub traffic_distribution: Option<String>,
}

#[derive(Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq, JsonSchema)]
pub(crate) enum ImportType {
    #[default]
    ClusterSetIP,
    Headless,
}

#[derive(Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq, JsonSchema)]
pub(crate) enum SessionAffinity {
    #[default]
    None,
    ClientIP,
}

#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub(crate) struct SessionAffinityConfig {
    #[serde(default, rename = "clientIP", skip_serializing_if = "Option::is_none")]
    pub client_ip: Option<ClientIpConfig>,
}

#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub(crate) struct ClientIpConfig {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeout_seconds: Option<i32>,
}

/// A port of a ServiceImport (like a Service port, without target or node port).
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub(crate) struct ImportPort {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// `TCP` (default), `UDP` or `SCTP`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub protocol: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub app_protocol: Option<String>,
    #[schemars(range(min = 1, max = 65535))]
    pub port: i32,
}

/// Status of a ServiceImport.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
pub(crate) struct ServiceImportStatus {
    /// The clusters that export the service.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(extend("x-kubernetes-list-type" = "map", "x-kubernetes-list-map-keys" = ["cluster"]))]
    pub clusters: Vec<ClusterStatus>,
    /// `Ready`: `True`/`Ready` once the derived Service holds the ClusterSetIP (or the import is
    /// headless), `False`/`Pending` while it waits for one, `False`/`ClusterSetIPUnavailable` when
    /// the cluster refused it (another Service holds that IP).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(extend("x-kubernetes-list-type" = "map", "x-kubernetes-list-map-keys" = ["type"]))]
    pub conditions: Vec<Condition>,
}

#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq, JsonSchema)]
pub(crate) struct ClusterStatus {
    /// The cluster's ID.
    pub cluster: String,
}

/// A property of this cluster (KEP-2149, the About API). `cluster.clusterset.k8s.io` holds the
/// cluster's ID in its clusterset, which the federator reads at start.
#[derive(CustomResource, Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[kube(
    group = "about.k8s.io",
    version = "v1alpha1",
    kind = "ClusterProperty",
    doc = "ClusterProperty is a name/value pair about this cluster (KEP-2149); cluster.clusterset.k8s.io is the cluster's ID.",
    plural = "clusterproperties",
    printcolumn = r#"{"name":"Value","type":"string","jsonPath":".spec.value"}"#,
    printcolumn = r#"{"name":"Age","type":"date","jsonPath":".metadata.creationTimestamp"}"#
)]
pub(crate) struct ClusterPropertySpec {
    /// The property's value.
    #[schemars(length(min = 1, max = 128000))]
    pub value: String,
}

/// A failover drill as a Kubernetes resource, `causeway.io/v1alpha1` (docs/drills.md): drain
/// `service` (of the Drill's namespace) in `cluster` for `duration`, while the federators of
/// `observeFrom` call it as a client in their cluster would and report what moved.
#[derive(CustomResource, Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[kube(
    group = "causeway.io",
    version = "v1alpha1",
    kind = "Drill",
    doc = "Drill drains an exported service in one cluster for a while and measures how the clusterset fails over and back.",
    plural = "drills",
    shortname = "drill",
    namespaced,
    status = "DrillStatus",
    printcolumn = r#"{"name":"Service","type":"string","jsonPath":".spec.service"}"#,
    printcolumn = r#"{"name":"Cluster","type":"string","jsonPath":".spec.cluster"}"#,
    printcolumn = r#"{"name":"Phase","type":"string","jsonPath":".status.phase"}"#,
    printcolumn = r#"{"name":"Reason","type":"string","jsonPath":".status.conditions[?(@.type==\"Accepted\")].reason"}"#,
    printcolumn = r#"{"name":"Age","type":"date","jsonPath":".metadata.creationTimestamp"}"#
)]
#[serde(rename_all = "camelCase")]
pub(crate) struct DrillSpec {
    /// The exported Service to drain, in the Drill's namespace.
    #[schemars(length(min = 1, max = 63))]
    pub service: String,
    /// The cluster to drain it in.
    #[schemars(length(min = 1, max = 63))]
    pub cluster: String,
    /// How long the drain lasts, e.g. `30s` (2 s to the federator's `drills.max_duration`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub duration: Option<String>,
    /// The clusters whose federators call the service during the drill (default: the drained
    /// cluster and the one the Drill is created in).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 16))]
    pub observe_from: Vec<String>,
    /// The service port to call (default: the import's first port).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub port: Option<u16>,
    /// The path to GET (default `/`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 256))]
    pub path: Option<String>,
    /// The pause between requests, e.g. `50ms` (default; at least 10 ms).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub interval: Option<String>,
}

/// What the federator that runs a Drill reports.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub(crate) struct DrillStatus {
    /// `Rejected`, `Baseline` (the observers take a baseline), `Running` (draining),
    /// `FailingBack`, `Succeeded`, `Failed`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub phase: Option<String>,
    /// `Accepted` (the spec checked against the clusterset) and `Passed` (traffic moved away
    /// and came back, seen from every observer).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(extend("x-kubernetes-list-type" = "map", "x-kubernetes-list-map-keys" = ["type"]))]
    pub conditions: Vec<Condition>,
    /// The etcd key of the drain, `clusters/<c>/drills/<id>`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub drill_id: Option<String>,
    /// When the drain began and ended (RFC 3339).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub start_time: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub end_time: Option<String>,
    /// What each observer measured.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(extend("x-kubernetes-list-type" = "map", "x-kubernetes-list-map-keys" = ["cluster"]))]
    pub observers: Vec<DrillObserverStatus>,
    /// The report as `causeway drill` prints it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub report: Option<String>,
}

/// One observer's measurements (the fields of `causeway drill --json`).
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub(crate) struct DrillObserverStatus {
    pub cluster: String,
    /// `Waiting` (no report yet), `Probing`, `Done`.
    pub phase: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    #[serde(default)]
    pub passed: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub verdict: Option<String>,
    #[serde(default)]
    pub dns_expected_to_move: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dns_moved_ms: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub traffic_moved_ms: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dns_back_ms: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub traffic_back_ms: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub baseline: Option<DrillPhaseStatus>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub failover: Option<DrillPhaseStatus>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub failback: Option<DrillPhaseStatus>,
    /// What changed, in order (ms after the drain began).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 64))]
    pub timeline: Vec<DrillEventStatus>,
}

/// The requests of one phase.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub(crate) struct DrillPhaseStatus {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dns: Option<String>,
    #[serde(default, skip_serializing_if = "std::collections::BTreeMap::is_empty")]
    pub clusters: std::collections::BTreeMap<String, u64>,
    pub requests: u64,
    pub failed: u64,
}

#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub(crate) struct DrillEventStatus {
    pub at_ms: i64,
    pub event: String,
}

/// Name of the ClusterProperty that holds the cluster's ID (KEP-2149).
pub(crate) const CLUSTER_ID_PROPERTY: &str = "cluster.clusterset.k8s.io";

/// The CRDs the chart installs: ServiceExport, ServiceImport, ClusterProperty, Drill.
pub(crate) fn definitions() -> Vec<CustomResourceDefinition> {
    let mut about = ClusterProperty::crd();
    // `*.k8s.io` groups are protected: a real API server refuses a CRD of one without this
    // annotation (found against kube-apiserver v1.36; the test server does not check it).
    about.metadata.annotations = Some(std::collections::BTreeMap::from([(
        "api-approved.kubernetes.io".to_string(),
        "https://github.com/kubernetes/enhancements/tree/master/keps/sig-multicluster/2149-clusterid"
            .to_string(),
    )]));
    let mut crds = vec![
        with_v1beta1(ServiceExport::crd()),
        with_v1beta1(ServiceImport::crd()),
        about,
        Drill::crd(),
    ];
    for crd in &mut crds {
        for v in &mut crd.spec.versions {
            if let Some(schema) = v
                .schema
                .as_mut()
                .and_then(|s| s.open_api_v3_schema.as_mut())
            {
                kubernetes_formats(schema);
            }
        }
    }
    crds
}

/// schemars names Rust's unsigned integers `uint16`, `uint64`...; an API server knows only
/// `int32` and `int64` for integers and warns about the rest ("unrecognized format", seen on
/// kube-apiserver v1.36 with the Drill CRD). Each becomes the signed format that holds it, with
/// the bounds that keep it unsigned.
fn kubernetes_formats(schema: &mut JSONSchemaProps) {
    let Ok(mut v) = serde_json::to_value(&*schema) else {
        return;
    };
    fn walk(v: &mut serde_json::Value) {
        match v {
            serde_json::Value::Object(m) => {
                let bounds = match m.get("format").and_then(|f| f.as_str()) {
                    Some("uint8") => Some(("int32", Some(u8::MAX as u64))),
                    Some("uint16") => Some(("int32", Some(u16::MAX as u64))),
                    Some("uint32") => Some(("int64", Some(u32::MAX as u64))),
                    Some("uint64" | "uint") => Some(("int64", None)),
                    _ => None,
                };
                if let Some((format, max)) = bounds {
                    m.insert("format".into(), format.into());
                    m.insert("minimum".into(), 0.0.into());
                    if let Some(max) = max {
                        m.entry("maximum").or_insert((max as f64).into());
                    }
                }
                m.values_mut().for_each(walk);
            }
            serde_json::Value::Array(a) => a.iter_mut().for_each(walk),
            _ => {}
        }
    }
    walk(&mut v);
    if let Ok(fixed) = serde_json::from_value(v) {
        *schema = fixed;
    }
}

/// The MCS API v0.5.0 serves `v1beta1` beside `v1alpha1` with the same schema, and stores
/// `v1beta1`; with one schema no conversion webhook is needed (`strategy: None`). The federator
/// itself reads and writes `v1alpha1` ([`VERSION`]), which clusters with older MCS CRDs serve too.
fn with_v1beta1(mut crd: CustomResourceDefinition) -> CustomResourceDefinition {
    if let Some(alpha) = crd.spec.versions.first().cloned() {
        let mut beta = alpha.clone();
        beta.name = STORAGE_VERSION.to_string();
        beta.storage = true;
        beta.served = true;
        let mut alpha = alpha;
        alpha.storage = false;
        crd.spec.versions = vec![beta, alpha];
    }
    crd
}

/// The version the MCS CRDs store (mcs-api v0.5.0).
pub(crate) const STORAGE_VERSION: &str = "v1beta1";

/// Both CRDs as one YAML stream, as committed in `helm/causeway/crds/`.
pub(crate) fn yaml() -> Result<String, serde_saphyr::ser::Error> {
    let mut out = String::from(
        "# Generated by `causeway crds` from federator/src/crds.rs; do not edit by hand.\n",
    );
    for crd in definitions() {
        out.push_str("---\n");
        out.push_str(&serde_saphyr::to_string(&crd)?);
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mcs_crds_serve_both_versions_and_store_v1beta1() {
        for crd in &definitions()[..2] {
            let v: Vec<(&str, bool, bool)> = crd
                .spec
                .versions
                .iter()
                .map(|v| (v.name.as_str(), v.served, v.storage))
                .collect();
            assert_eq!(v, [("v1beta1", true, true), ("v1alpha1", true, false)]);
            assert_eq!(crd.spec.versions[0].schema, crd.spec.versions[1].schema);
        }
    }

    /// The formats kube-apiserver v1.36 recognises (apiextensions-apiserver's
    /// `GetUnrecognizedFormats`): it warns on a CRD with any other, and ignores it.
    #[test]
    fn every_schema_format_is_one_an_api_server_recognises() {
        const STRING: &[&str] = &[
            "bsonobjectid",
            "uri",
            "email",
            "hostname",
            "ipv4",
            "ipv6",
            "cidr",
            "mac",
            "uuid",
            "uuid3",
            "uuid4",
            "uuid5",
            "isbn",
            "isbn10",
            "isbn13",
            "creditcard",
            "ssn",
            "hexcolor",
            "rgbcolor",
            "byte",
            "password",
            "date",
            "duration",
            "datetime",
            "k8s-short-name",
            "k8s-long-name",
        ];
        fn walk(v: &serde_json::Value, at: &str, bad: &mut Vec<String>) {
            match v {
                serde_json::Value::Object(m) => {
                    if let Some(f) = m.get("format").and_then(|f| f.as_str()) {
                        let ok = match m.get("type").and_then(|t| t.as_str()) {
                            Some("integer") => matches!(f, "int32" | "int64"),
                            Some("number") => matches!(f, "float" | "double"),
                            None | Some("string") => {
                                STRING.contains(&f.replace('-', "").as_str()) || STRING.contains(&f)
                            }
                            _ => false,
                        };
                        if !ok {
                            bad.push(format!("{at}: {f}"));
                        }
                    }
                    for (k, v) in m {
                        walk(v, &format!("{at}.{k}"), bad);
                    }
                }
                serde_json::Value::Array(a) => a.iter().for_each(|v| walk(v, at, bad)),
                _ => {}
            }
        }
        let mut bad = Vec::new();
        for crd in definitions() {
            let v = serde_json::to_value(&crd.spec.versions).unwrap();
            walk(&v, &crd.spec.names.kind, &mut bad);
        }
        assert!(bad.is_empty(), "unrecognised formats: {bad:#?}");
        // Unsigned stays unsigned: the Drill's port is 0..=65535.
        let drill = definitions().pop().unwrap();
        let port = serde_json::to_value(&drill.spec.versions[0].schema).unwrap()["openAPIV3Schema"]
            ["properties"]["spec"]["properties"]["port"]
            .clone();
        assert_eq!(port["format"], "int32", "{port}");
        assert_eq!(port["minimum"], 0.0, "{port}");
        assert_eq!(port["maximum"], 65535.0, "{port}");
    }

    /// A real API server refuses a CRD of a `*.k8s.io` group without the approval annotation.
    #[test]
    fn crds_of_protected_groups_carry_the_approval_annotation() {
        for crd in definitions() {
            if crd.spec.group.ends_with(".k8s.io") || crd.spec.group == "k8s.io" {
                let a = crd.metadata.annotations.unwrap_or_default();
                assert!(
                    a.get("api-approved.kubernetes.io")
                        .is_some_and(|v| v.starts_with("https://")),
                    "{} lacks api-approved.kubernetes.io",
                    crd.spec.group
                );
            }
        }
    }

    /// The chart ships what the code generates; regenerate with
    /// `cargo run -p causeway-federator --bin causeway -- crds > helm/causeway/crds/crds.yaml`.
    #[test]
    fn committed_crds_equal_the_generated_ones() {
        let committed = include_str!("../../helm/causeway/crds/crds.yaml");
        let generated = yaml().expect("CRDs serialise");
        assert!(
            committed == generated,
            "helm/causeway/crds/crds.yaml is out of date: run `causeway crds > helm/causeway/crds/crds.yaml`"
        );
    }

    #[test]
    fn a_service_export_without_spec_or_status_parses() {
        let se: ServiceExport = serde_json::from_value(serde_json::json!({
            "apiVersion": "multicluster.x-k8s.io/v1alpha1",
            "kind": "ServiceExport",
            "metadata": {"name": "echo", "namespace": "demo"},
        }))
        .expect("parses");
        assert_eq!(se.metadata.name.as_deref(), Some("echo"));
        assert!(se.status.is_none());
        let back = serde_json::to_value(&se).expect("serialises");
        assert!(back.get("spec").is_none(), "v1alpha1 has no spec: {back}");
    }
}
