//! The resource types the test server knows, and the discovery documents built from them.

use serde_json::{json, Value};

/// One resource type (a `plural` of a `group/version`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ResourceType {
    /// `""` for the core group.
    pub group: &'static str,
    pub version: &'static str,
    pub plural: &'static str,
    pub singular: &'static str,
    pub kind: &'static str,
    pub namespaced: bool,
    /// Has a `status` subresource: writes to the main resource leave `status` alone and writes to
    /// `/status` change only `status`.
    pub status: bool,
    pub short_names: &'static [&'static str],
}

impl ResourceType {
    /// `v1` or `group/version`.
    pub fn api_version(&self) -> String {
        if self.group.is_empty() {
            self.version.to_string()
        } else {
            format!("{}/{}", self.group, self.version)
        }
    }

    /// `plural` or `plural.group`, as RBAC and `kubectl get` name it.
    pub fn name(&self) -> String {
        if self.group.is_empty() {
            self.plural.to_string()
        } else {
            format!("{}.{}", self.plural, self.group)
        }
    }
}

const ALL_VERBS: &[&str] = &[
    "create", "delete", "get", "list", "patch", "update", "watch",
];

/// Every resource type served.
pub const RESOURCES: &[ResourceType] = &[
    ResourceType {
        group: "",
        version: "v1",
        plural: "namespaces",
        singular: "namespace",
        kind: "Namespace",
        namespaced: false,
        status: true,
        short_names: &["ns"],
    },
    ResourceType {
        group: "",
        version: "v1",
        plural: "services",
        singular: "service",
        kind: "Service",
        namespaced: true,
        status: true,
        short_names: &["svc"],
    },
    ResourceType {
        group: "",
        version: "v1",
        plural: "endpoints",
        singular: "endpoints",
        kind: "Endpoints",
        namespaced: true,
        status: false,
        short_names: &["ep"],
    },
    ResourceType {
        group: "",
        version: "v1",
        plural: "pods",
        singular: "pod",
        kind: "Pod",
        namespaced: true,
        status: true,
        short_names: &["po"],
    },
    ResourceType {
        group: "",
        version: "v1",
        plural: "events",
        singular: "event",
        kind: "Event",
        namespaced: true,
        status: false,
        short_names: &["ev"],
    },
    ResourceType {
        group: "discovery.k8s.io",
        version: "v1",
        plural: "endpointslices",
        singular: "endpointslice",
        kind: "EndpointSlice",
        namespaced: true,
        status: false,
        short_names: &[],
    },
    // The MCS API v0.5.0: v1beta1 (stored) and v1alpha1, one schema, one storage.
    ResourceType {
        group: "multicluster.x-k8s.io",
        version: "v1beta1",
        plural: "serviceexports",
        singular: "serviceexport",
        kind: "ServiceExport",
        namespaced: true,
        status: true,
        short_names: &["svcex"],
    },
    ResourceType {
        group: "causeway.io",
        version: "v1alpha1",
        plural: "drills",
        singular: "drill",
        kind: "Drill",
        namespaced: true,
        status: true,
        short_names: &["drill"],
    },
    ResourceType {
        group: "multicluster.x-k8s.io",
        version: "v1beta1",
        plural: "serviceimports",
        singular: "serviceimport",
        kind: "ServiceImport",
        namespaced: true,
        status: true,
        short_names: &["svcim"],
    },
    ResourceType {
        group: "multicluster.x-k8s.io",
        version: "v1alpha1",
        plural: "serviceexports",
        singular: "serviceexport",
        kind: "ServiceExport",
        namespaced: true,
        status: true,
        short_names: &["svcex"],
    },
    ResourceType {
        group: "multicluster.x-k8s.io",
        version: "v1alpha1",
        plural: "serviceimports",
        singular: "serviceimport",
        kind: "ServiceImport",
        namespaced: true,
        status: true,
        short_names: &["svcim"],
    },
    ResourceType {
        group: "about.k8s.io",
        version: "v1alpha1",
        plural: "clusterproperties",
        singular: "clusterproperty",
        kind: "ClusterProperty",
        namespaced: false,
        status: false,
        short_names: &[],
    },
    ResourceType {
        group: "apiextensions.k8s.io",
        version: "v1",
        plural: "customresourcedefinitions",
        singular: "customresourcedefinition",
        kind: "CustomResourceDefinition",
        namespaced: false,
        status: true,
        short_names: &["crd", "crds"],
    },
];

/// The resource type served at `group/version/plural`.
pub(super) fn find(group: &str, version: &str, plural: &str) -> Option<&'static ResourceType> {
    RESOURCES
        .iter()
        .find(|r| r.group == group && r.version == version && r.plural == plural)
}

/// The resource type of an object, by its `apiVersion` and `kind`.
pub(super) fn by_kind(api_version: &str, kind: &str) -> Option<&'static ResourceType> {
    RESOURCES
        .iter()
        .find(|r| r.api_version() == api_version && r.kind == kind)
}

/// `GET /api`
pub(super) fn core_versions(server_address: &str) -> Value {
    json!({
        "kind": "APIVersions",
        "versions": ["v1"],
        "serverAddressByClientCIDRs": [{"clientCIDR": "0.0.0.0/0", "serverAddress": server_address}],
    })
}

fn groups() -> Vec<(&'static str, &'static str)> {
    let mut out: Vec<(&str, &str)> = Vec::new();
    for r in RESOURCES {
        if !r.group.is_empty() && !out.contains(&(r.group, r.version)) {
            out.push((r.group, r.version));
        }
    }
    out
}

/// One group's discovery entry: every version it serves, the first listed preferred (the MCS
/// group lists `v1beta1` first, as the upstream CRDs prefer it).
fn group_entry(group: &str) -> Option<Value> {
    let versions: Vec<Value> = groups()
        .into_iter()
        .filter(|(g, _)| *g == group)
        .map(|(g, v)| json!({"groupVersion": format!("{g}/{v}"), "version": v}))
        .collect();
    let preferred = versions.first()?.clone();
    Some(json!({"name": group, "versions": versions, "preferredVersion": preferred}))
}

/// `GET /apis`
pub(super) fn group_list() -> Value {
    let mut names: Vec<&str> = Vec::new();
    for (g, _) in groups() {
        if !names.contains(&g) {
            names.push(g);
        }
    }
    let groups: Vec<Value> = names.into_iter().filter_map(group_entry).collect();
    json!({"kind": "APIGroupList", "apiVersion": "v1", "groups": groups})
}

/// `GET /apis/<group>`
pub(super) fn group(group: &str) -> Option<Value> {
    let mut g = group_entry(group)?;
    g["kind"] = json!("APIGroup");
    g["apiVersion"] = json!("v1");
    Some(g)
}

/// `GET /api/v1` or `GET /apis/<group>/<version>`
pub(super) fn resource_list(group: &str, version: &str) -> Option<Value> {
    let mut resources = Vec::new();
    for r in RESOURCES
        .iter()
        .filter(|r| r.group == group && r.version == version)
    {
        resources.push(json!({
            "name": r.plural,
            "singularName": r.singular,
            "namespaced": r.namespaced,
            "kind": r.kind,
            "verbs": ALL_VERBS,
            "shortNames": r.short_names,
        }));
        if r.status {
            resources.push(json!({
                "name": format!("{}/status", r.plural),
                "singularName": "",
                "namespaced": r.namespaced,
                "kind": r.kind,
                "verbs": ["get", "patch", "update"],
            }));
        }
    }
    if resources.is_empty() {
        return None;
    }
    let gv = if group.is_empty() {
        version.to_string()
    } else {
        format!("{group}/{version}")
    };
    Some(json!({
        "kind": "APIResourceList",
        "apiVersion": "v1",
        "groupVersion": gv,
        "resources": resources,
    }))
}

/// `GET /version`
pub(super) fn version() -> Value {
    json!({
        "major": "1",
        "minor": "33",
        "gitVersion": "v1.33.0-causeway-test",
        "gitCommit": "0000000000000000000000000000000000000000",
        "gitTreeState": "clean",
        "buildDate": "2026-01-01T00:00:00Z",
        "goVersion": "go1.24",
        "compiler": "gc",
        "platform": "linux/amd64",
    })
}
