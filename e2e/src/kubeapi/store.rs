//! The in-memory object store: objects as `serde_json::Value`, one resourceVersion counter for
//! everything, and the history of changes that watches replay from.

use std::collections::{BTreeMap, VecDeque};
use std::sync::Arc;

use serde_json::{json, Map, Value};
use tokio::sync::broadcast;

use super::patch::{merge_patch, Selector};
use super::resources::{ResourceType, RESOURCES};

/// An API error, answered as a `Status` object.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApiError {
    pub code: u16,
    pub reason: &'static str,
    pub message: String,
}

impl ApiError {
    pub fn new(code: u16, reason: &'static str, message: impl Into<String>) -> Self {
        Self {
            code,
            reason,
            message: message.into(),
        }
    }

    pub fn not_found(rt: &ResourceType, name: &str) -> Self {
        Self::new(
            404,
            "NotFound",
            format!("{} \"{name}\" not found", rt.name()),
        )
    }

    pub fn gone(message: impl Into<String>) -> Self {
        Self::new(410, "Expired", message)
    }

    /// The `Status` object of this error.
    pub fn status(&self) -> Value {
        json!({
            "kind": "Status",
            "apiVersion": "v1",
            "metadata": {},
            "status": "Failure",
            "message": self.message,
            "reason": self.reason,
            "code": self.code,
        })
    }
}

impl std::fmt::Display for ApiError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} {}: {}", self.code, self.reason, self.message)
    }
}

impl std::error::Error for ApiError {}

pub(super) type Result<T> = std::result::Result<T, ApiError>;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EventType {
    Added,
    Modified,
    Deleted,
}

impl EventType {
    pub fn as_str(self) -> &'static str {
        match self {
            EventType::Added => "ADDED",
            EventType::Modified => "MODIFIED",
            EventType::Deleted => "DELETED",
        }
    }
}

/// One change, as watches deliver it.
#[derive(Debug)]
pub(super) struct Event {
    pub(super) rv: u64,
    pub(super) resource: &'static ResourceType,
    pub(super) namespace: String,
    pub(super) kind: EventType,
    pub(super) object: Value,
    /// For MODIFIED: the object before, so that a selector watch can tell an object that starts
    /// or stops matching (ADDED / DELETED for it, as the real server sends).
    pub(super) old: Option<Value>,
}

/// A watch's start: the kept changes after its resourceVersion, and the receiver of what follows.
pub(super) type Subscription = (Vec<Arc<Event>>, broadcast::Receiver<Arc<Event>>);

/// How a PATCH body is applied.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PatchKind {
    /// `application/merge-patch+json` (RFC 7386).
    Merge,
    /// `application/strategic-merge-patch+json`, applied as a merge patch (lists are replaced, not
    /// merged by key; patch directives are ignored).
    Strategic,
    /// `application/apply-patch+yaml`: server-side apply, simplified to a merge patch that may
    /// create the object, with the field manager recorded in `metadata.managedFields`.
    Apply { manager: String },
}

/// The `endpointslice.kubernetes.io/managed-by` value of kube-controller-manager's slices.
pub const ENDPOINTSLICE_CONTROLLER: &str = "endpointslice-controller.k8s.io";

fn fnv(s: &str) -> u64 {
    s.bytes().fold(0xcbf29ce484222325, |h, b| {
        (h ^ u64::from(b)).wrapping_mul(0x100000001b3)
    })
}

/// Key of a stored object: resource, namespace (`""` when cluster-scoped), name.
type Key = (&'static str, String, String);

/// How many changes watches can replay before a resourceVersion counts as too old (410 Gone),
/// unless [`Store::compact`] drops them sooner.
const HISTORY: usize = 10_000;

pub(super) struct Store {
    rv: u64,
    objects: BTreeMap<Key, Value>,
    history: VecDeque<Arc<Event>>,
    /// Changes after this resourceVersion are in `history`.
    compacted: u64,
    tx: broadcast::Sender<Arc<Event>>,
    next_uid: u64,
    next_cluster_ip: u32,
    /// Take EndpointSlices and Endpoints with loopback addresses, which a real API server
    /// refuses (see [`Store::defaults`]).
    pub(super) loopback_endpoints: bool,
}

impl Default for Store {
    fn default() -> Self {
        Self::new()
    }
}

impl Store {
    pub(super) fn new() -> Self {
        let (tx, _) = broadcast::channel(4096);
        let mut store = Self {
            rv: 0,
            objects: BTreeMap::new(),
            history: VecDeque::new(),
            compacted: 0,
            tx,
            next_uid: 1,
            // 10.96.0.1 is the API server's own Service in a real cluster; start after it.
            next_cluster_ip: u32::from(std::net::Ipv4Addr::new(10, 96, 0, 10)),
            loopback_endpoints: false,
        };
        for ns in ["default", "kube-system"] {
            let ns_rt = &RESOURCES[0];
            store
                .create(ns_rt, "", json!({"metadata": {"name": ns}}))
                .expect("a fresh store takes the default namespaces");
        }
        store
    }

    pub(super) fn resource_version(&self) -> u64 {
        self.rv
    }

    /// Forgets the change history: a watch from any earlier resourceVersion gets 410 Gone.
    pub(super) fn compact(&mut self) {
        self.history.clear();
        self.compacted = self.rv;
    }

    pub(super) fn get(&self, rt: &'static ResourceType, ns: &str, name: &str) -> Result<Value> {
        self.objects
            .get(&(rt.plural, scope(rt, ns), name.to_string()))
            .map(|v| in_version(rt, v.clone()))
            .ok_or_else(|| ApiError::not_found(rt, name))
    }

    /// The objects of a type, in one namespace or all (`ns == ""`), that match the selectors.
    pub(super) fn list(
        &self,
        rt: &'static ResourceType,
        ns: &str,
        labels: &Selector,
        fields: &Selector,
    ) -> Vec<Value> {
        self.objects
            .iter()
            .filter(|((plural, ons, _), _)| {
                *plural == rt.plural && (ns.is_empty() || !rt.namespaced || ons == ns)
            })
            .map(|(_, v)| v)
            .filter(|v| labels.matches_labels(v) && fields.matches_fields(v))
            .map(|v| in_version(rt, v.clone()))
            .collect()
    }

    /// Changes after `from` (of the type, in `ns` or all namespaces), and a receiver of the ones to
    /// come. 410 Gone when `from` is older than the history.
    pub(super) fn watch(
        &self,
        rt: &'static ResourceType,
        ns: &str,
        from: u64,
    ) -> Result<Subscription> {
        if from < self.compacted {
            return Err(ApiError::gone(format!(
                "too old resource version: {from} ({})",
                self.compacted
            )));
        }
        let backlog = self
            .history
            .iter()
            .filter(|e| e.rv > from && event_matches(e, rt, ns))
            .cloned()
            .collect();
        Ok((backlog, self.tx.subscribe()))
    }

    pub(super) fn create(
        &mut self,
        rt: &'static ResourceType,
        ns: &str,
        mut obj: Value,
    ) -> Result<Value> {
        let ns = scope(rt, ns);
        let Some(map) = obj.as_object_mut() else {
            return Err(ApiError::new(
                400,
                "BadRequest",
                "the body is not an object",
            ));
        };
        check_type(rt, map)?;
        let meta = map
            .entry("metadata")
            .or_insert_with(|| Value::Object(Map::new()));
        let Some(meta) = meta.as_object_mut() else {
            return Err(ApiError::new(
                400,
                "BadRequest",
                "metadata is not an object",
            ));
        };
        if let Some(body_ns) = meta.get("namespace").and_then(Value::as_str) {
            if rt.namespaced && !ns.is_empty() && body_ns != ns {
                return Err(ApiError::new(
                    400,
                    "BadRequest",
                    format!("the namespace of the object ({body_ns}) does not match the namespace of the request ({ns})"),
                ));
            }
        }
        let mut name = meta
            .get("name")
            .and_then(Value::as_str)
            .unwrap_or("")
            .to_string();
        if name.is_empty() {
            if let Some(prefix) = meta.get("generateName").and_then(Value::as_str) {
                name = format!("{prefix}{:05x}", self.next_uid);
            }
        }
        if name.is_empty() {
            return Err(ApiError::new(
                422,
                "Invalid",
                format!("{} is invalid: metadata.name: Required value", rt.kind),
            ));
        }
        if rt.namespaced {
            if ns.is_empty() {
                return Err(ApiError::new(
                    400,
                    "BadRequest",
                    "the namespace is required",
                ));
            }
            if !self
                .objects
                .contains_key(&("namespaces", String::new(), ns.clone()))
            {
                return Err(ApiError::new(
                    404,
                    "NotFound",
                    format!("namespaces \"{ns}\" not found"),
                ));
            }
        }
        let key = (rt.plural, ns.clone(), name.clone());
        if self.objects.contains_key(&key) {
            return Err(ApiError::new(
                409,
                "AlreadyExists",
                format!("{} \"{name}\" already exists", rt.name()),
            ));
        }
        self.rv += 1;
        let uid = format!("00000000-0000-4000-8000-{:012x}", self.next_uid);
        self.next_uid += 1;
        meta.insert("name".into(), json!(name));
        if rt.namespaced {
            meta.insert("namespace".into(), json!(ns));
        } else {
            meta.remove("namespace");
        }
        meta.insert("uid".into(), json!(uid));
        meta.insert("creationTimestamp".into(), json!(now_rfc3339()));
        meta.insert("resourceVersion".into(), json!(self.rv.to_string()));
        meta.insert("generation".into(), json!(1));
        meta.remove("deletionTimestamp");
        map.insert("apiVersion".into(), json!(rt.api_version()));
        map.insert("kind".into(), json!(rt.kind));
        if rt.status {
            map.remove("status");
        }
        self.defaults(rt, &mut obj)?;
        self.objects.insert(key, obj.clone());
        self.emit(rt, &ns, EventType::Added, obj.clone(), None);
        Ok(obj)
    }

    /// PUT: replaces the object (or only its status). `metadata.resourceVersion`, when given, must
    /// be the current one.
    pub(super) fn update(
        &mut self,
        rt: &'static ResourceType,
        ns: &str,
        name: &str,
        mut obj: Value,
        status: bool,
    ) -> Result<Value> {
        let ns = scope(rt, ns);
        let current = self.get(rt, &ns, name)?;
        let Some(map) = obj.as_object_mut() else {
            return Err(ApiError::new(
                400,
                "BadRequest",
                "the body is not an object",
            ));
        };
        check_type(rt, map)?;
        if let Some(rv) = map
            .get("metadata")
            .and_then(|m| m.get("resourceVersion"))
            .and_then(Value::as_str)
        {
            if !rv.is_empty() && Some(rv) != rv_of(&current) {
                return Err(ApiError::new(
                    409,
                    "Conflict",
                    format!(
                        "Operation cannot be fulfilled on {} \"{name}\": the object has been modified; please apply your changes to the latest version and try again",
                        rt.name()
                    ),
                ));
            }
        }
        self.replace(rt, &ns, name, current, obj, status)
    }

    /// PATCH: merges `patch` into the object (or its status); server-side apply creates it when
    /// it is missing.
    pub(super) fn patch(
        &mut self,
        rt: &'static ResourceType,
        ns: &str,
        name: &str,
        patch: Value,
        kind: &PatchKind,
        status: bool,
    ) -> Result<Value> {
        let ns = scope(rt, ns);
        if !patch.is_object() {
            return Err(ApiError::new(
                400,
                "BadRequest",
                "the patch is not an object",
            ));
        }
        let current = match self.get(rt, &ns, name) {
            Ok(c) => c,
            Err(e) if e.code == 404 => {
                let PatchKind::Apply { manager } = kind else {
                    return Err(e);
                };
                if status {
                    return Err(e);
                }
                let mut obj = patch;
                let meta = obj
                    .as_object_mut()
                    .expect("checked above")
                    .entry("metadata")
                    .or_insert_with(|| json!({}));
                if let Some(meta) = meta.as_object_mut() {
                    meta.insert("name".into(), json!(name));
                    meta.insert("managedFields".into(), managed_fields(manager, rt, None));
                }
                return self.create(rt, &ns, obj);
            }
            Err(e) => return Err(e),
        };
        if let Some(rv) = patch
            .get("metadata")
            .and_then(|m| m.get("resourceVersion"))
            .and_then(Value::as_str)
        {
            if Some(rv) != rv_of(&current) {
                return Err(ApiError::new(
                    409,
                    "Conflict",
                    format!("Operation cannot be fulfilled on {} \"{name}\": the object has been modified", rt.name()),
                ));
            }
        }
        let mut next = current.clone();
        merge_patch(&mut next, &patch);
        if let PatchKind::Apply { manager } = kind {
            let fields = managed_fields(manager, rt, current.pointer("/metadata/managedFields"));
            if let Some(meta) = next.get_mut("metadata").and_then(Value::as_object_mut) {
                meta.insert("managedFields".into(), fields);
            }
        }
        // The resourceVersion in the patch was a precondition, not a change.
        if let Some(meta) = next.get_mut("metadata").and_then(Value::as_object_mut) {
            meta.remove("resourceVersion");
        }
        self.replace(rt, &ns, name, current, next, status)
    }

    /// DELETE. Objects with finalizers only get a `deletionTimestamp`; dependents (by
    /// `ownerReferences`) are deleted too unless `orphan`.
    pub(super) fn delete(
        &mut self,
        rt: &'static ResourceType,
        ns: &str,
        name: &str,
        orphan: bool,
    ) -> Result<Value> {
        let ns = scope(rt, ns);
        let mut current = self.get(rt, &ns, name)?;
        let has_finalizers = current
            .pointer("/metadata/finalizers")
            .and_then(Value::as_array)
            .is_some_and(|f| !f.is_empty());
        if has_finalizers {
            if current.pointer("/metadata/deletionTimestamp").is_none() {
                let old = current.clone();
                self.rv += 1;
                let meta = current["metadata"]
                    .as_object_mut()
                    .expect("stored objects have metadata");
                meta.insert("deletionTimestamp".into(), json!(now_rfc3339()));
                meta.insert("resourceVersion".into(), json!(self.rv.to_string()));
                self.objects
                    .insert((rt.plural, ns.clone(), name.to_string()), current.clone());
                self.emit(rt, &ns, EventType::Modified, current.clone(), Some(old));
            }
            return Ok(current);
        }
        Ok(self.remove(rt, &ns, name, orphan))
    }

    /// What kube-controller-manager's EndpointSlice controller does, run after every write: for
    /// every Service with a selector, one EndpointSlice (label
    /// `endpointslice.kubernetes.io/managed-by: endpointslice-controller.k8s.io`) of the pods **in
    /// the Service's own namespace** that match it (ready by their `Ready` condition; an empty slice
    /// when none match), carrying the Service's labels as the real controller copies them; a slice
    /// of its own that someone deleted comes back, and its slices of Services without a selector go.
    /// Slices without its label are left alone.
    pub(super) fn run_endpointslice_controller(&mut self) {
        let Some(slice_rt) = RESOURCES.iter().find(|r| r.plural == "endpointslices") else {
            return;
        };
        let services: Vec<(String, Value)> = self
            .objects
            .iter()
            .filter(|((p, _, _), _)| *p == "services")
            .map(|((_, ns, _), v)| (ns.clone(), v.clone()))
            .collect();
        let mut wanted = std::collections::BTreeSet::new();
        for (ns, svc) in services {
            let Some(selector) = svc
                .pointer("/spec/selector")
                .and_then(Value::as_object)
                .filter(|m| !m.is_empty())
            else {
                continue;
            };
            let name = svc["metadata"]["name"]
                .as_str()
                .unwrap_or_default()
                .to_string();
            let endpoints: Vec<Value> = self
                .objects
                .iter()
                .filter(|((p, pns, _), pod)| {
                    *p == "pods"
                        && *pns == ns
                        && pod.pointer("/metadata/deletionTimestamp").is_none()
                        && selector.iter().all(|(k, v)| pod["metadata"]["labels"].get(k) == Some(v))
                })
                .filter_map(|(_, pod)| {
                    let ip = pod.pointer("/status/podIP")?.as_str()?;
                    let ready = pod
                        .pointer("/status/conditions")
                        .and_then(Value::as_array)
                        .is_some_and(|c| {
                            c.iter().any(|c| c["type"] == "Ready" && c["status"] == "True")
                        });
                    Some(json!({
                        "addresses": [ip],
                        "conditions": {"ready": ready, "serving": ready, "terminating": false},
                        "targetRef": {"kind": "Pod", "namespace": ns, "name": pod["metadata"]["name"]},
                    }))
                })
                .collect();
            let ports: Vec<Value> = svc
                .pointer("/spec/ports")
                .and_then(Value::as_array)
                .into_iter()
                .flatten()
                .map(|p| {
                    let port = p["targetPort"].as_u64().or_else(|| p["port"].as_u64());
                    json!({
                        "name": p["name"].as_str().unwrap_or(""),
                        "port": port,
                        "protocol": p["protocol"].as_str().unwrap_or("TCP"),
                    })
                })
                .collect();
            let mut labels = svc["metadata"]["labels"]
                .as_object()
                .cloned()
                .unwrap_or_default();
            labels.insert("kubernetes.io/service-name".into(), json!(name));
            labels.insert(
                "endpointslice.kubernetes.io/managed-by".into(),
                json!(ENDPOINTSLICE_CONTROLLER),
            );
            let slice_name = format!("{name}-{:05x}", fnv(&name) & 0xfffff);
            wanted.insert((ns.clone(), slice_name.clone()));
            let desired = json!({
                "apiVersion": "discovery.k8s.io/v1",
                "kind": "EndpointSlice",
                "metadata": {
                    "name": slice_name,
                    "namespace": ns,
                    "labels": labels,
                    "ownerReferences": [{
                        "apiVersion": "v1", "kind": "Service", "name": name,
                        "uid": svc["metadata"]["uid"], "controller": true, "blockOwnerDeletion": true,
                    }],
                },
                "addressType": "IPv4",
                "endpoints": endpoints,
                "ports": ports,
            });
            match self
                .objects
                .get(&("endpointslices", ns.clone(), slice_name.clone()))
            {
                None => {
                    let _ = self.create(slice_rt, &ns, desired);
                }
                Some(current) => {
                    let same = ["endpoints", "ports"]
                        .iter()
                        .all(|k| current[*k] == desired[*k])
                        && current["metadata"]["labels"] == desired["metadata"]["labels"];
                    if !same {
                        let current = current.clone();
                        let mut next = current.clone();
                        next["metadata"]["labels"] = desired["metadata"]["labels"].clone();
                        next["endpoints"] = desired["endpoints"].clone();
                        next["ports"] = desired["ports"].clone();
                        let _ = self.replace(slice_rt, &ns, &slice_name, current, next, false);
                    }
                }
            }
        }
        let stale: Vec<(String, String)> = self
            .objects
            .iter()
            .filter(|((p, ns, n), v)| {
                *p == "endpointslices"
                    && v.pointer("/metadata/labels/endpointslice.kubernetes.io~1managed-by")
                        == Some(&json!(ENDPOINTSLICE_CONTROLLER))
                    && !wanted.contains(&(ns.clone(), n.clone()))
            })
            .map(|((_, ns, n), _)| (ns.clone(), n.clone()))
            .collect();
        for (ns, n) in stale {
            self.remove(slice_rt, &ns, &n, false);
        }
    }

    // === internals ===

    fn replace(
        &mut self,
        rt: &'static ResourceType,
        ns: &str,
        name: &str,
        current: Value,
        mut next: Value,
        status: bool,
    ) -> Result<Value> {
        let map = next.as_object_mut().expect("callers pass objects");
        let mut result = current.clone();
        if status {
            // Only the status changes.
            match map.remove("status") {
                Some(s) => {
                    result["status"] = s;
                }
                None => {
                    if let Some(r) = result.as_object_mut() {
                        r.remove("status");
                    }
                }
            }
        } else {
            let old_meta = current["metadata"].clone();
            if rt.status {
                match current.get("status") {
                    Some(s) => {
                        map.insert("status".into(), s.clone());
                    }
                    None => {
                        map.remove("status");
                    }
                }
            }
            let meta = map
                .entry("metadata")
                .or_insert_with(|| json!({}))
                .as_object_mut()
                .ok_or_else(|| ApiError::new(400, "BadRequest", "metadata is not an object"))?;
            // What the server owns.
            for k in [
                "name",
                "namespace",
                "uid",
                "creationTimestamp",
                "generation",
                "deletionTimestamp",
            ] {
                match old_meta.get(k) {
                    Some(v) => {
                        meta.insert(k.into(), v.clone());
                    }
                    None => {
                        meta.remove(k);
                    }
                }
            }
            if !meta.contains_key("managedFields") {
                if let Some(mf) = old_meta.get("managedFields") {
                    meta.insert("managedFields".into(), mf.clone());
                }
            }
            map.insert("apiVersion".into(), json!(rt.api_version()));
            map.insert("kind".into(), json!(rt.kind));
            if rt.kind == "Service" {
                carry_cluster_ip(&current, &mut next);
            }
            self.defaults(rt, &mut next)?;
            if spec_of(&next) != spec_of(&current) {
                let generation = current
                    .pointer("/metadata/generation")
                    .and_then(Value::as_i64)
                    .unwrap_or(1);
                next["metadata"]["generation"] = json!(generation + 1);
            }
            result = next;
        }
        if strip_rv(&result) == strip_rv(&current) {
            // No change: no new resourceVersion, no event (as the real server does).
            return Ok(current);
        }
        // Finalizers gone from an object being deleted: now it goes.
        let deleting = result.pointer("/metadata/deletionTimestamp").is_some();
        let no_finalizers = result
            .pointer("/metadata/finalizers")
            .and_then(Value::as_array)
            .is_none_or(|f| f.is_empty());
        self.rv += 1;
        result["metadata"]["resourceVersion"] = json!(self.rv.to_string());
        self.objects.insert(
            (rt.plural, ns.to_string(), name.to_string()),
            result.clone(),
        );
        self.emit(rt, ns, EventType::Modified, result.clone(), Some(current));
        if deleting && no_finalizers {
            return Ok(self.remove(rt, ns, name, false));
        }
        Ok(result)
    }

    fn remove(&mut self, rt: &'static ResourceType, ns: &str, name: &str, orphan: bool) -> Value {
        let Some(mut obj) = self
            .objects
            .remove(&(rt.plural, ns.to_string(), name.to_string()))
        else {
            return Value::Null;
        };
        self.rv += 1;
        obj["metadata"]["resourceVersion"] = json!(self.rv.to_string());
        self.emit(rt, ns, EventType::Deleted, obj.clone(), None);
        if orphan {
            return obj;
        }
        // Garbage collection, at once: dependents by owner uid, and a namespace's contents.
        let uid = obj
            .pointer("/metadata/uid")
            .and_then(Value::as_str)
            .unwrap_or_default()
            .to_string();
        let dependents: Vec<Key> = self
            .objects
            .iter()
            .filter(|((_, ons, _), v)| {
                (rt.plural == "namespaces" && ons == name)
                    || v.pointer("/metadata/ownerReferences")
                        .and_then(Value::as_array)
                        .is_some_and(|refs| refs.iter().any(|r| r["uid"] == json!(uid)))
            })
            .map(|(k, _)| k.clone())
            .collect();
        for (plural, ons, oname) in dependents {
            if let Some(drt) = RESOURCES.iter().find(|r| r.plural == plural) {
                self.remove(drt, &ons, &oname, false);
            }
        }
        obj
    }

    fn emit(
        &mut self,
        rt: &'static ResourceType,
        ns: &str,
        kind: EventType,
        object: Value,
        old: Option<Value>,
    ) {
        let event = Arc::new(Event {
            rv: self.rv,
            resource: rt,
            namespace: ns.to_string(),
            kind,
            object,
            old,
        });
        self.history.push_back(event.clone());
        while self.history.len() > HISTORY {
            if let Some(old) = self.history.pop_front() {
                self.compacted = old.rv;
            }
        }
        // No receivers is fine: nobody watches.
        let _ = self.tx.send(event);
    }

    /// What the real API server defaults and allocates (only what our users look at).
    fn defaults(&mut self, rt: &'static ResourceType, obj: &mut Value) -> Result<()> {
        match rt.kind {
            "Namespace" => {
                obj["status"] = json!({"phase": "Active"});
            }
            "CustomResourceDefinition" => {
                // Groups under k8s.io and kubernetes.io are protected (KEP-1111): a CRD of one
                // needs the approval annotation, as a real API server insists.
                let group = obj
                    .pointer("/spec/group")
                    .and_then(Value::as_str)
                    .unwrap_or("");
                let protected = ["k8s.io", "kubernetes.io"]
                    .iter()
                    .any(|d| group == *d || group.ends_with(&format!(".{d}")));
                let approved = obj
                    .pointer("/metadata/annotations/api-approved.kubernetes.io")
                    .and_then(Value::as_str)
                    .is_some_and(|v| !v.is_empty());
                if protected && !approved {
                    return Err(ApiError::new(
                        422,
                        "Invalid",
                        format!("CustomResourceDefinition.apiextensions.k8s.io \"{}\" is invalid: metadata.annotations[api-approved.kubernetes.io]: Required value: protected groups must have approval annotation \"api-approved.kubernetes.io\"", obj.pointer("/metadata/name").and_then(Value::as_str).unwrap_or("")),
                    ));
                }
            }
            "EndpointSlice" | "Endpoints" if !self.loopback_endpoints => {
                // kube-apiserver v1.36 refuses endpoint addresses in the loopback range (seen
                // there); with the same message.
                let name = obj
                    .pointer("/metadata/name")
                    .and_then(Value::as_str)
                    .unwrap_or("");
                // A slice lists addresses as strings, Endpoints as objects with `ip`.
                let slice = rt.kind == "EndpointSlice";
                let (what, groups, field) = if slice {
                    ("EndpointSlice.discovery.k8s.io", "endpoints", "")
                } else {
                    ("Endpoints", "subsets", ".ip")
                };
                for (i, g) in obj[groups].as_array().into_iter().flatten().enumerate() {
                    for (j, a) in g["addresses"].as_array().into_iter().flatten().enumerate() {
                        let text = if slice { a.as_str() } else { a["ip"].as_str() };
                        let loopback = text
                            .and_then(|t| t.parse::<std::net::IpAddr>().ok())
                            .is_some_and(|ip| ip.is_loopback());
                        if loopback {
                            return Err(ApiError::new(
                                422,
                                "Invalid",
                                format!(
                                    "{what} \"{name}\" is invalid: {groups}[{i}].addresses[{j}]{field}: Invalid value: \"{}\": may not be in the loopback range (127.0.0.0/8, ::1/128)",
                                    text.unwrap_or_default()
                                ),
                            ));
                        }
                    }
                }
            }
            "Service" => {
                // ClusterIPs of the other Services: an IP is given out once.
                let me = (
                    obj.pointer("/metadata/namespace").cloned(),
                    obj.pointer("/metadata/name").cloned(),
                );
                let used: std::collections::HashSet<String> = self
                    .objects
                    .iter()
                    .filter(|((plural, ns, name), _)| {
                        *plural == "services"
                            && (Some(json!(ns)), Some(json!(name))) != (me.0.clone(), me.1.clone())
                    })
                    .filter_map(|(_, v)| v.pointer("/spec/clusterIP")?.as_str().map(str::to_string))
                    .filter(|ip| ip != "None")
                    .collect();
                let spec = obj
                    .as_object_mut()
                    .expect("objects")
                    .entry("spec")
                    .or_insert_with(|| json!({}));
                let Some(spec) = spec.as_object_mut() else {
                    return Err(ApiError::new(422, "Invalid", "spec is not an object"));
                };
                let ty = spec
                    .entry("type")
                    .or_insert_with(|| json!("ClusterIP"))
                    .as_str()
                    .unwrap_or("ClusterIP")
                    .to_string();
                spec.entry("sessionAffinity")
                    .or_insert_with(|| json!("None"));
                // As the real server: every Service gets the default internal traffic policy.
                spec.entry("internalTrafficPolicy")
                    .or_insert_with(|| json!("Cluster"));
                if let Some(ports) = spec.get_mut("ports").and_then(Value::as_array_mut) {
                    for p in ports {
                        if let Some(p) = p.as_object_mut() {
                            p.entry("protocol").or_insert_with(|| json!("TCP"));
                            if let Some(port) = p.get("port").cloned() {
                                if ty != "ExternalName" {
                                    p.entry("targetPort").or_insert(port);
                                }
                            }
                        }
                    }
                }
                if ty == "ExternalName" {
                    spec.remove("clusterIP");
                    spec.remove("clusterIPs");
                } else if !spec.contains_key("clusterIP")
                    || spec["clusterIP"] == json!("")
                    || spec["clusterIP"].is_null()
                {
                    let mut ip = std::net::Ipv4Addr::from(self.next_cluster_ip).to_string();
                    while used.contains(&ip) {
                        self.next_cluster_ip += 1;
                        ip = std::net::Ipv4Addr::from(self.next_cluster_ip).to_string();
                    }
                    self.next_cluster_ip += 1;
                    spec.insert("clusterIP".into(), json!(ip));
                    spec.insert("clusterIPs".into(), json!([ip]));
                } else if let Some(ip) = spec["clusterIP"].as_str().filter(|ip| used.contains(*ip))
                {
                    return Err(ApiError::new(
                        422,
                        "Invalid",
                        format!("Service is invalid: spec.clusterIPs: Invalid value: [\"{ip}\"]: failed to allocate IP {ip}: provided IP is already allocated"),
                    ));
                } else if !spec.contains_key("clusterIPs") {
                    let ip = spec["clusterIP"].clone();
                    spec.insert("clusterIPs".into(), json!([ip]));
                }
                if obj.get("status").is_none() {
                    obj["status"] = json!({"loadBalancer": {}});
                }
            }
            _ => {}
        }
        Ok(())
    }
}

fn scope(rt: &ResourceType, ns: &str) -> String {
    if rt.namespaced {
        ns.to_string()
    } else {
        String::new()
    }
}

/// An object as a version of its type serves it. Versions of one type share their storage (one
/// schema, no conversion, as the MCS CRDs' `v1alpha1` and `v1beta1`): only `apiVersion` differs.
pub(super) fn in_version(rt: &ResourceType, mut v: Value) -> Value {
    if v.get("kind").and_then(Value::as_str) == Some(rt.kind) {
        v["apiVersion"] = json!(rt.api_version());
    }
    v
}

fn event_matches(e: &Event, rt: &ResourceType, ns: &str) -> bool {
    e.resource.plural == rt.plural
        && e.resource.group == rt.group
        && (ns.is_empty() || !rt.namespaced || e.namespace == ns)
}

/// What a watch with selectors sees of an event: its type (MODIFIED becomes ADDED or DELETED for an
/// object that starts or stops matching), or nothing.
pub(super) fn seen_as(e: &Event, matches: impl Fn(&Value) -> bool) -> Option<&'static str> {
    let now = matches(&e.object);
    match (e.kind, &e.old) {
        (EventType::Modified, Some(old)) => match (matches(old), now) {
            (true, true) => Some("MODIFIED"),
            (false, true) => Some("ADDED"),
            (true, false) => Some("DELETED"),
            (false, false) => None,
        },
        (kind, _) => now.then_some(kind.as_str()),
    }
}

/// Whether an event belongs to a watch of `rt` in `ns` (`""`: all namespaces).
pub(super) fn matches(e: &Event, rt: &ResourceType, ns: &str) -> bool {
    event_matches(e, rt, ns)
}

fn check_type(rt: &ResourceType, map: &Map<String, Value>) -> Result<()> {
    if let Some(kind) = map.get("kind").and_then(Value::as_str) {
        if kind != rt.kind {
            return Err(ApiError::new(
                400,
                "BadRequest",
                format!(
                    "the kind of the object ({kind}) does not match the resource ({})",
                    rt.kind
                ),
            ));
        }
    }
    if let Some(av) = map.get("apiVersion").and_then(Value::as_str) {
        if av != rt.api_version() {
            return Err(ApiError::new(
                400,
                "BadRequest",
                format!(
                    "the apiVersion of the object ({av}) does not match the resource ({})",
                    rt.api_version()
                ),
            ));
        }
    }
    Ok(())
}

fn rv_of(v: &Value) -> Option<&str> {
    v.pointer("/metadata/resourceVersion")
        .and_then(Value::as_str)
}

fn strip_rv(v: &Value) -> Value {
    let mut v = v.clone();
    if let Some(meta) = v.get_mut("metadata").and_then(Value::as_object_mut) {
        meta.remove("resourceVersion");
        meta.remove("managedFields");
    }
    v
}

/// Everything but metadata and status: what bumps `metadata.generation`.
fn spec_of(v: &Value) -> Value {
    let mut v = v.clone();
    if let Some(map) = v.as_object_mut() {
        map.remove("metadata");
        map.remove("status");
    }
    v
}

/// A Service update that leaves out the ClusterIP keeps it (the real server does the same).
fn carry_cluster_ip(current: &Value, next: &mut Value) {
    let Some(ip) = current.pointer("/spec/clusterIP").cloned() else {
        return;
    };
    if let Some(spec) = next.get_mut("spec").and_then(Value::as_object_mut) {
        let missing = spec
            .get("clusterIP")
            .is_none_or(|v| v.is_null() || *v == json!(""));
        if missing && spec.get("type").and_then(Value::as_str) != Some("ExternalName") {
            spec.insert("clusterIP".into(), ip);
            if let Some(ips) = current.pointer("/spec/clusterIPs") {
                spec.insert("clusterIPs".into(), ips.clone());
            }
        }
    }
}

fn managed_fields(manager: &str, rt: &ResourceType, existing: Option<&Value>) -> Value {
    let mut entries: Vec<Value> = existing
        .and_then(Value::as_array)
        .cloned()
        .unwrap_or_default()
        .into_iter()
        .filter(|e| !(e["manager"] == json!(manager) && e["operation"] == json!("Apply")))
        .collect();
    entries.push(json!({
        "manager": manager,
        "operation": "Apply",
        "apiVersion": rt.api_version(),
        "time": now_rfc3339(),
        "fieldsType": "FieldsV1",
        "fieldsV1": {},
    }));
    Value::Array(entries)
}

/// Now, as RFC 3339 in UTC with second precision (as Kubernetes writes timestamps).
pub(super) fn now_rfc3339() -> String {
    let secs = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0);
    rfc3339(secs)
}

/// `secs` since the Unix epoch as `YYYY-MM-DDTHH:MM:SSZ`.
pub(super) fn rfc3339(secs: i64) -> String {
    let days = secs.div_euclid(86_400);
    let rem = secs.rem_euclid(86_400);
    // Howard Hinnant's civil_from_days.
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kubeapi::resources::find;

    fn svc(name: &str) -> Value {
        json!({"metadata": {"name": name}, "spec": {"ports": [{"port": 80}]}})
    }

    /// As kube-apiserver v1.36 answers: 422 for a loopback endpoint, in creates and updates.
    #[test]
    fn loopback_endpoint_addresses_are_refused_like_a_real_api_server() {
        let mut s = Store::new();
        let rt = find("discovery.k8s.io", "v1", "endpointslices").unwrap();
        let slice = |ip: &str| {
            json!({"metadata": {"name": "x-1"}, "addressType": "IPv4",
                   "endpoints": [{"addresses": ["10.1.0.1"]}, {"addresses": [ip]}]})
        };
        let e = s.create(rt, "default", slice("127.0.0.1")).unwrap_err();
        assert_eq!(e.code, 422);
        assert!(
            e.message.contains("endpoints[1].addresses[0]: Invalid value: \"127.0.0.1\": may not be in the loopback range"),
            "{}",
            e.message
        );
        s.create(rt, "default", slice("10.1.0.2")).unwrap();
        let e = s
            .patch(
                rt,
                "default",
                "x-1",
                slice("127.0.0.5"),
                &PatchKind::Merge,
                false,
            )
            .unwrap_err();
        assert_eq!(e.code, 422);
        let ep = find("", "v1", "endpoints").unwrap();
        let e = s
            .create(
                ep,
                "default",
                json!({"metadata": {"name": "y"}, "subsets": [{"addresses": [{"ip": "::1"}]}]}),
            )
            .unwrap_err();
        assert!(
            e.message.contains("subsets[0].addresses[0].ip"),
            "{}",
            e.message
        );
        let mut allowed = Store {
            loopback_endpoints: true,
            ..Store::new()
        };
        allowed.create(rt, "default", slice("127.0.0.1")).unwrap();
    }

    #[test]
    fn finalizers_hold_a_delete_until_they_are_removed() {
        let mut s = Store::new();
        let rt = find("", "v1", "services").unwrap();
        let mut obj = svc("a");
        obj["metadata"]["finalizers"] = json!(["example.org/hold"]);
        s.create(rt, "default", obj).unwrap();
        let held = s.delete(rt, "default", "a", false).unwrap();
        assert!(held.pointer("/metadata/deletionTimestamp").is_some());
        assert!(s.get(rt, "default", "a").is_ok(), "still there");
        s.patch(
            rt,
            "default",
            "a",
            json!({"metadata": {"finalizers": null}}),
            &PatchKind::Merge,
            false,
        )
        .unwrap();
        assert_eq!(s.get(rt, "default", "a").unwrap_err().code, 404);
    }

    #[test]
    fn generation_follows_the_spec_and_no_op_writes_keep_the_version() {
        let mut s = Store::new();
        let rt = find("multicluster.x-k8s.io", "v1alpha1", "serviceimports").unwrap();
        let obj = json!({"metadata": {"name": "x"}, "spec": {"type": "ClusterSetIP", "ports": []}});
        let created = s.create(rt, "default", obj).unwrap();
        let rv = s.resource_version();
        let same = s
            .patch(
                rt,
                "default",
                "x",
                json!({"spec": {"type": "ClusterSetIP"}}),
                &PatchKind::Merge,
                false,
            )
            .unwrap();
        assert_eq!(same, created);
        assert_eq!(s.resource_version(), rv, "no change, no new version");
        let status = s
            .patch(
                rt,
                "default",
                "x",
                json!({"status": {"clusters": [{"cluster": "a"}]}}),
                &PatchKind::Merge,
                true,
            )
            .unwrap();
        assert_eq!(
            status["metadata"]["generation"], 1,
            "status writes keep the generation"
        );
        let changed = s
            .patch(
                rt,
                "default",
                "x",
                json!({"spec": {"type": "Headless"}}),
                &PatchKind::Merge,
                false,
            )
            .unwrap();
        assert_eq!(changed["metadata"]["generation"], 2);
        assert_eq!(
            changed["status"]["clusters"][0]["cluster"], "a",
            "spec writes keep the status"
        );
    }

    #[test]
    fn a_cluster_ip_is_given_out_once() {
        let mut s = Store::new();
        let rt = find("", "v1", "services").unwrap();
        let a = s.create(rt, "default", svc("a")).unwrap();
        let ip = a["spec"]["clusterIP"].as_str().unwrap().to_string();
        let mut b = svc("b");
        b["spec"]["clusterIP"] = json!(ip);
        let err = s.create(rt, "default", b).unwrap_err();
        assert_eq!(err.code, 422);
        assert!(err.message.contains("already allocated"), "{err:?}");
        let mut c = svc("c");
        c["spec"]["clusterIP"] = json!("10.96.0.11");
        s.create(rt, "default", c).unwrap();
        let d = s.create(rt, "default", svc("d")).unwrap();
        assert_eq!(d["spec"]["clusterIP"], "10.96.0.12", "skips the taken one");
        // An update of the owner keeps its own IP.
        s.patch(
            rt,
            "default",
            "a",
            json!({"metadata": {"labels": {"x": "y"}}}),
            &PatchKind::Merge,
            false,
        )
        .unwrap();
    }

    #[test]
    fn timestamps_are_rfc3339() {
        assert_eq!(rfc3339(0), "1970-01-01T00:00:00Z");
        assert_eq!(rfc3339(1_767_225_600), "2026-01-01T00:00:00Z");
        assert_eq!(rfc3339(951_782_400 + 86_399), "2000-02-29T23:59:59Z");
    }
}
