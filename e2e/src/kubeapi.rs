//! A Kubernetes-API-compatible **test fixture**: an HTTP server on a free loopback port that speaks
//! enough of the Kubernetes API for the real `kube` client, kube-runtime watchers and controllers,
//! and the real `kubectl --validate=false` to work against it. It is *not* an API server: no
//! authentication or authorisation, no admission, no OpenAPI schemas or validation beyond the
//! few defaults below, no protobuf, no tables, objects kept in memory as `serde_json::Value`.
//!
//! What it serves (see `docs/testing.md`):
//!
//! - discovery: `/version`, `/api`, `/api/v1`, `/apis`, `/apis/<group>[/<version>]` for core
//!   `namespaces`, `services`, `endpoints`; `discovery.k8s.io/v1` `endpointslices`;
//!   `multicluster.x-k8s.io/v1alpha1` `serviceexports`, `serviceimports`; `apiextensions.k8s.io/v1`
//!   `customresourcedefinitions` (so `kubectl apply -f` of the chart's CRDs works);
//! - get, list (label and field selectors, `limit`/`continue`), create (also `generateName`),
//!   update (with resourceVersion preconditions: 409 Conflict), delete (finalizers honoured;
//!   dependents by `ownerReferences` and a namespace's objects deleted at once, as the garbage
//!   collector would), and the `status` subresource (writes to the object leave its status alone
//!   and the other way round);
//! - PATCH as `application/merge-patch+json`, `application/strategic-merge-patch+json` (applied as
//!   a merge patch) and `application/apply-patch+yaml` (server-side apply simplified: merge
//!   semantics, creates missing objects, the field manager recorded in `managedFields`);
//! - watch (`?watch=true`) from a resourceVersion, as newline-delimited JSON events, with bookmarks
//!   when `allowWatchBookmarks=true`, `sendInitialEvents`, `timeoutSeconds`, and an `ERROR` event
//!   with a 410 `Expired` Status when the resourceVersion is older than the kept history (see
//!   [`KubeApiServer::compact`]);
//! - JSON (and YAML for apply patches) only: a protobuf body gets 415, so kubectl's typed
//!   generators (`kubectl create namespace ...`) do not work; `kubectl apply -f` does;
//! - EndpointSlices and Endpoints with a loopback address get 422, as from a real API server
//!   (unless [`KubeApiServerBuilder::loopback_endpoints`]);
//! - Services get a ClusterIP from 10.96.0.0/16 unless `None` or `ExternalName`; namespaces
//!   `default` and `kube-system` exist from the start; objects in a missing namespace are refused.
//!
//! ```no_run
//! # async fn demo() -> anyhow::Result<()> {
//! use causeway_e2e::kubeapi::KubeApiServer;
//! let api = KubeApiServer::start().await?;
//! // KUBECONFIG for the kube client and for kubectl:
//! let status = api.kubectl().args(["apply", "--validate=false", "-f", "namespace.yaml"]).status().await?;
//! assert!(status.success());
//! assert!(api.get("v1", "namespaces", "", "demo").is_some());
//! # Ok(()) }
//! ```

mod patch;
mod resources;
mod store;

use std::convert::Infallible;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use axum::body::{Body, Bytes};
use axum::extract::{Query, State};
use axum::http::{header, HeaderMap, Method, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use axum::Router;
use serde_json::{json, Value};
use tokio::sync::{broadcast, mpsc};
use tokio_util::sync::CancellationToken;

pub use patch::{merge_patch, Selector};
pub use resources::{ResourceType, RESOURCES};
pub use store::{ApiError, EventType, PatchKind, ENDPOINTSLICE_CONTROLLER};
use store::{Event, Store};

/// How often watches that asked for bookmarks get one (a real API server: about a minute).
const DEFAULT_BOOKMARK_INTERVAL: Duration = Duration::from_secs(1);

struct Shared {
    store: Mutex<Store>,
    addr: SocketAddr,
    bookmark_interval: Duration,
    shutdown: CancellationToken,
    /// Cancelled when the server "restarts": every open watch and connection ends.
    connections: Mutex<CancellationToken>,
    requests: Mutex<Vec<String>>,
    /// Before RBAC is ready a real API server answers 403 to every request it authorises.
    forbidden: std::sync::atomic::AtomicBool,
    /// Resources (plurals) whose storage is initialising: 429, as for a new CRD.
    initializing: Mutex<std::collections::BTreeSet<String>>,
}

impl Shared {
    fn connections(&self) -> CancellationToken {
        self.connections
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }
}

fn serve(listener: tokio::net::TcpListener, shared: Arc<Shared>) -> tokio::task::JoinHandle<()> {
    let app = Router::new().fallback(handle).with_state(shared.clone());
    let stop = shared.connections();
    tokio::spawn(async move {
        let res = axum::serve(listener, app)
            .with_graceful_shutdown(async move { stop.cancelled().await })
            .await;
        if let Err(e) = res {
            tracing::error!(error = %e, "kube API test server died");
        }
    })
}

impl Shared {
    fn store(&self) -> MutexGuard<'_, Store> {
        // A panic while holding the lock would be a bug in the fixture; keep serving anyway.
        self.store.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// The running test server; stopped on drop.
pub struct KubeApiServer {
    shared: Arc<Shared>,
    kubeconfig: PathBuf,
    _dir: tempfile::TempDir,
    task: tokio::task::JoinHandle<()>,
}

/// Options of [`KubeApiServer`].
#[derive(Debug, Clone)]
pub struct KubeApiServerBuilder {
    bookmark_interval: Duration,
    forbidden: bool,
    loopback_endpoints: bool,
}

impl Default for KubeApiServerBuilder {
    fn default() -> Self {
        Self {
            bookmark_interval: DEFAULT_BOOKMARK_INTERVAL,
            forbidden: false,
            loopback_endpoints: false,
        }
    }
}

impl KubeApiServerBuilder {
    /// How often watches with `allowWatchBookmarks=true` get a BOOKMARK event (default 1 s).
    pub fn bookmark_interval(mut self, d: Duration) -> Self {
        self.bookmark_interval = d;
        self
    }

    /// Takes endpoint addresses on loopback (127.0.0.0/8, ::1), which a real API server refuses
    /// with 422: for tests whose backends can only listen there. Off by default.
    pub fn loopback_endpoints(mut self) -> Self {
        self.loopback_endpoints = true;
        self
    }

    /// Starts as a real API server does before its RBAC is ready: every request but health and
    /// version gets 403 Forbidden until [`KubeApiServer::set_forbidden`]`(false)`.
    pub fn forbidden_until_ready(mut self) -> Self {
        self.forbidden = true;
        self
    }

    pub async fn start(self) -> anyhow::Result<KubeApiServer> {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        let shutdown = CancellationToken::new();
        let mut store = Store::new();
        store.loopback_endpoints = self.loopback_endpoints;
        let shared = Arc::new(Shared {
            store: Mutex::new(store),
            addr,
            bookmark_interval: self.bookmark_interval,
            connections: Mutex::new(shutdown.child_token()),
            shutdown,
            requests: Mutex::new(Vec::new()),
            forbidden: std::sync::atomic::AtomicBool::new(self.forbidden),
            initializing: Mutex::new(Default::default()),
        });
        let task = serve(listener, shared.clone());
        let dir = tempfile::tempdir()?;
        let kubeconfig = dir.path().join("kubeconfig");
        std::fs::write(&kubeconfig, kubeconfig_yaml(addr))?;
        Ok(KubeApiServer {
            shared,
            kubeconfig,
            _dir: dir,
            task,
        })
    }
}

fn kubeconfig_yaml(addr: SocketAddr) -> String {
    format!(
        "apiVersion: v1\nkind: Config\nclusters:\n- name: test\n  cluster:\n    server: http://{addr}\ncontexts:\n- name: test\n  context:\n    cluster: test\n    user: test\n    namespace: default\ncurrent-context: test\nusers:\n- name: test\n  user: {{}}\n"
    )
}

impl KubeApiServer {
    pub async fn start() -> anyhow::Result<Self> {
        Self::builder().start().await
    }

    pub fn builder() -> KubeApiServerBuilder {
        KubeApiServerBuilder::default()
    }

    pub fn addr(&self) -> SocketAddr {
        self.shared.addr
    }

    /// `http://127.0.0.1:<port>`
    pub fn url(&self) -> String {
        format!("http://{}", self.shared.addr)
    }

    /// A kubeconfig file for this server (context `test`, namespace `default`, no credentials).
    pub fn kubeconfig(&self) -> &Path {
        &self.kubeconfig
    }

    pub fn kubeconfig_yaml(&self) -> String {
        kubeconfig_yaml(self.shared.addr)
    }

    /// `kubectl` with `KUBECONFIG` pointing here (see [`kubectl_path`]).
    pub fn kubectl(&self) -> tokio::process::Command {
        let mut cmd = tokio::process::Command::new(kubectl_path());
        cmd.env("KUBECONFIG", &self.kubeconfig)
            .arg("--request-timeout=10s")
            .kill_on_drop(true);
        cmd
    }

    /// Runs the real kubectl against this server with `stdin` as its input, within 30 s: its
    /// stdout, or an error with what it printed.
    pub async fn run_kubectl(&self, args: &[&str], stdin: &str) -> anyhow::Result<String> {
        use anyhow::Context as _;
        use tokio::io::AsyncWriteExt as _;
        let mut child = self
            .kubectl()
            .args(args)
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .context("running kubectl (scripts/setup.sh installs it)")?;
        let mut input = child.stdin.take().context("kubectl's stdin")?;
        let text = stdin.to_string();
        tokio::spawn(async move {
            let _ = input.write_all(text.as_bytes()).await;
        });
        let out = tokio::time::timeout(Duration::from_secs(30), child.wait_with_output()).await??;
        anyhow::ensure!(
            out.status.success(),
            "kubectl {args:?} failed: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }

    /// `kubectl apply --validate=false -f -` of `yaml`.
    pub async fn apply(&self, yaml: &str) -> anyhow::Result<()> {
        self.run_kubectl(&["apply", "--validate=false", "-f", "-"], yaml)
            .await
            .map(|_| ())
    }

    /// The current resourceVersion (one counter for all objects, as etcd's revision).
    pub fn resource_version(&self) -> u64 {
        self.shared.store().resource_version()
    }

    /// Forgets the history of changes: watches from any earlier resourceVersion get 410 Gone and
    /// must relist, as after an etcd compaction.
    pub fn compact(&self) {
        self.shared.store().compact();
    }

    /// An object, read directly (`api_version` `v1` or `group/version`, `ns` `""` for
    /// cluster-scoped types).
    pub fn get(&self, api_version: &str, plural: &str, ns: &str, name: &str) -> Option<Value> {
        let rt = resource(api_version, plural)?;
        self.shared.store().get(rt, ns, name).ok()
    }

    /// The objects of a type in a namespace (`""`: all namespaces).
    pub fn list(&self, api_version: &str, plural: &str, ns: &str) -> Vec<Value> {
        let Some(rt) = resource(api_version, plural) else {
            return Vec::new();
        };
        self.shared
            .store()
            .list(rt, ns, &Selector::default(), &Selector::default())
    }

    /// Creates an object directly (its type from `apiVersion` and `kind`).
    pub fn create(&self, obj: Value) -> Result<Value, ApiError> {
        let rt = type_of(&obj)?;
        let ns = obj
            .pointer("/metadata/namespace")
            .and_then(Value::as_str)
            .unwrap_or("default")
            .to_string();
        let mut store = self.shared.store();
        let out = store.create(rt, &ns, obj);
        store.run_endpointslice_controller();
        out
    }

    /// Replaces an object's status directly, as a controller would.
    pub fn set_status(
        &self,
        api_version: &str,
        plural: &str,
        ns: &str,
        name: &str,
        status: Value,
    ) -> Result<Value, ApiError> {
        let rt = resource(api_version, plural)
            .ok_or_else(|| ApiError::new(404, "NotFound", format!("no resource {plural}")))?;
        let mut store = self.shared.store();
        let out = store.patch(
            rt,
            ns,
            name,
            json!({ "status": status }),
            &PatchKind::Merge,
            true,
        );
        store.run_endpointslice_controller();
        out
    }

    /// Deletes an object directly.
    pub fn delete(
        &self,
        api_version: &str,
        plural: &str,
        ns: &str,
        name: &str,
    ) -> Result<Value, ApiError> {
        let rt = resource(api_version, plural)
            .ok_or_else(|| ApiError::new(404, "NotFound", format!("no resource {plural}")))?;
        let mut store = self.shared.store();
        let out = store.delete(rt, ns, name, false);
        store.run_endpointslice_controller();
        out
    }

    /// 403 Forbidden for every request but health and version (RBAC not ready yet), or not.
    pub fn set_forbidden(&self, forbidden: bool) {
        self.shared
            .forbidden
            .store(forbidden, std::sync::atomic::Ordering::SeqCst);
    }

    /// 429 "storage is (re)initializing" with `Retry-After: 1` for every request to `plural`
    /// (as for a CRD just created), or not.
    pub fn set_initializing(&self, plural: &str, initializing: bool) {
        let mut set = self
            .shared
            .initializing
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        if initializing {
            set.insert(plural.to_string());
        } else {
            set.remove(plural);
        }
    }

    /// Restarts the server as a real one restarts: every open watch and connection ends, the port
    /// refuses connections for `down`, and then it serves again on the same port with its objects
    /// kept but its watch history gone, so a watch resumed from an earlier resourceVersion gets
    /// 410 Expired (a real server's new watch cache starts at the current revision).
    pub async fn restart(&mut self, down: Duration) -> anyhow::Result<()> {
        let old = std::mem::replace(
            &mut *self
                .shared
                .connections
                .lock()
                .unwrap_or_else(|e| e.into_inner()),
            self.shared.shutdown.child_token(),
        );
        old.cancel();
        if tokio::time::timeout(Duration::from_secs(5), &mut self.task)
            .await
            .is_err()
        {
            self.task.abort();
        }
        // The outage itself: nothing listens on the port for this long.
        tokio::time::sleep(down).await;
        self.shared.store().compact();
        let listener = tokio::net::TcpListener::bind(self.shared.addr).await?;
        self.task = serve(listener, self.shared.clone());
        Ok(())
    }

    /// The requests served so far, as `METHOD /path?query`.
    pub fn requests(&self) -> Vec<String> {
        self.shared
            .requests
            .lock()
            .map(|r| r.clone())
            .unwrap_or_default()
    }
}

impl Drop for KubeApiServer {
    fn drop(&mut self) {
        self.shared.shutdown.cancel();
        self.task.abort();
    }
}

/// The `kubectl` the tests run: `$CAUSEWAY_KUBECTL`, else the one `scripts/setup.sh` unpacked
/// (`$CAUSEWAY_TOOLS_DIR/bin/kubectl`, default `~/.cache/causeway/bin/kubectl`), else `kubectl`
/// on `PATH`.
pub fn kubectl_path() -> PathBuf {
    if let Some(p) = std::env::var_os("CAUSEWAY_KUBECTL") {
        return PathBuf::from(p);
    }
    let tools = std::env::var_os("CAUSEWAY_TOOLS_DIR")
        .map(PathBuf::from)
        .or_else(|| {
            std::env::var_os("XDG_CACHE_HOME")
                .map(|c| PathBuf::from(c).join("causeway"))
                .or_else(|| {
                    std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache/causeway"))
                })
        });
    if let Some(p) = tools.map(|t| t.join("bin/kubectl")) {
        if p.is_file() {
            return p;
        }
    }
    PathBuf::from("kubectl")
}

fn resource(api_version: &str, plural: &str) -> Option<&'static ResourceType> {
    let (group, version) = api_version.split_once('/').unwrap_or(("", api_version));
    resources::find(group, version, plural)
}

fn type_of(obj: &Value) -> Result<&'static ResourceType, ApiError> {
    let av = obj["apiVersion"].as_str().unwrap_or_default();
    let kind = obj["kind"].as_str().unwrap_or_default();
    resources::by_kind(av, kind)
        .ok_or_else(|| ApiError::new(404, "NotFound", format!("no resource for {av} {kind}")))
}

// === HTTP ===

fn json_response(code: StatusCode, v: &Value) -> Response {
    (
        code,
        [(header::CONTENT_TYPE, "application/json")],
        v.to_string(),
    )
        .into_response()
}

fn error(e: ApiError) -> Response {
    json_response(
        StatusCode::from_u16(e.code).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR),
        &e.status(),
    )
}

fn not_found(path: &str) -> Response {
    error(ApiError::new(
        404,
        "NotFound",
        format!("the server could not find the requested resource ({path})"),
    ))
}

/// What a resource path names.
struct Target {
    rt: &'static ResourceType,
    namespace: String,
    name: Option<String>,
    status: bool,
}

fn parse_target(segs: &[&str]) -> Option<Target> {
    let (group, version, rest) = match segs {
        ["api", v, rest @ ..] => ("", *v, rest),
        ["apis", g, v, rest @ ..] => (*g, *v, rest),
        _ => return None,
    };
    let (namespace, rest) = match rest {
        ["namespaces", ns, plural, tail @ ..] if *plural != "status" => {
            (ns.to_string(), [&[*plural][..], tail].concat())
        }
        _ => (String::new(), rest.to_vec()),
    };
    let (plural, name, status) = match rest.as_slice() {
        [plural] => (*plural, None, false),
        [plural, name] => (*plural, Some(name.to_string()), false),
        [plural, name, "status"] => (*plural, Some(name.to_string()), true),
        _ => return None,
    };
    let rt = resources::find(group, version, plural)?;
    if !rt.namespaced && !namespace.is_empty() {
        return None;
    }
    if rt.namespaced && namespace.is_empty() && name.is_some() {
        return None;
    }
    if status && !rt.status {
        return None;
    }
    Some(Target {
        rt,
        namespace,
        name,
        status,
    })
}

fn parse_body(body: &Bytes) -> Result<Value, ApiError> {
    if let Ok(v) = serde_json::from_slice::<Value>(body) {
        return Ok(v);
    }
    let text = std::str::from_utf8(body)
        .map_err(|_| ApiError::new(400, "BadRequest", "the body is not UTF-8"))?;
    serde_saphyr::from_str::<Value>(text).map_err(|e| {
        ApiError::new(
            400,
            "BadRequest",
            format!("the body is neither JSON nor YAML: {e}"),
        )
    })
}

async fn handle(
    State(shared): State<Arc<Shared>>,
    method: Method,
    uri: Uri,
    Query(query): Query<Vec<(String, String)>>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let path = uri.path().to_string();
    if let Ok(mut log) = shared.requests.lock() {
        log.push(format!("{method} {uri}"));
    }
    let q = |k: &str| {
        query
            .iter()
            .find(|(qk, _)| qk == k)
            .map(|(_, v)| v.as_str())
    };
    let segs: Vec<&str> = path
        .trim_matches('/')
        .split('/')
        .filter(|s| !s.is_empty())
        .collect();
    match (method.clone(), segs.as_slice()) {
        (Method::GET, ["version"]) => return json_response(StatusCode::OK, &resources::version()),
        (Method::GET, ["healthz" | "livez" | "readyz"]) => return "ok".into_response(),
        (Method::GET, ["api"]) => {
            return json_response(
                StatusCode::OK,
                &resources::core_versions(&shared.addr.to_string()),
            )
        }
        (Method::GET, ["apis"]) => return json_response(StatusCode::OK, &resources::group_list()),
        (Method::GET, ["apis", g]) => {
            return match resources::group(g) {
                Some(v) => json_response(StatusCode::OK, &v),
                None => not_found(&path),
            }
        }
        (Method::GET, ["api", v]) => {
            return match resources::resource_list("", v) {
                Some(v) => json_response(StatusCode::OK, &v),
                None => not_found(&path),
            }
        }
        (Method::GET, ["apis", g, v]) => {
            return match resources::resource_list(g, v) {
                Some(v) => json_response(StatusCode::OK, &v),
                None => not_found(&path),
            }
        }
        _ => {}
    }
    if shared.forbidden.load(std::sync::atomic::Ordering::SeqCst) {
        return error(ApiError::new(
            403,
            "Forbidden",
            format!("forbidden: User \"system:serviceaccount\" cannot {method} path \"{path}\": RBAC: the authorizer is not ready yet"),
        ));
    }
    let Some(t) = parse_target(&segs) else {
        return not_found(&path);
    };
    if shared
        .initializing
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .contains(t.rt.plural)
    {
        let mut r = error(ApiError::new(
            429,
            "TooManyRequests",
            "storage is (re)initializing",
        ));
        r.headers_mut()
            .insert(header::RETRY_AFTER, header::HeaderValue::from_static("1"));
        return r;
    }
    let writes = method != Method::GET;
    // kubectl's typed generators (`kubectl create namespace`, `create secret`, ...) send protobuf,
    // which this fixture does not decode; `kubectl apply -f` and the kube crate send JSON.
    let content_type = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    if content_type.starts_with("application/vnd.kubernetes.protobuf") {
        return error(ApiError::new(
            415,
            "UnsupportedMediaType",
            "the Kubernetes API test server speaks JSON only: use `kubectl apply -f` instead of `kubectl create <type>`",
        ));
    }
    let result = match (method, &t.name) {
        (Method::GET, None) if matches!(q("watch"), Some("true" | "1")) => {
            return watch(&shared, &t, &q);
        }
        (Method::GET, None) => list(&shared, &t, &q),
        (Method::GET, Some(name)) => shared
            .store()
            .get(t.rt, &t.namespace, name)
            .map(|v| (200, v)),
        (Method::POST, None) => parse_body(&body)
            .and_then(|obj| shared.store().create(t.rt, &t.namespace, obj))
            .map(|v| (201, v)),
        (Method::PUT, Some(name)) => parse_body(&body)
            .and_then(|obj| {
                shared
                    .store()
                    .update(t.rt, &t.namespace, name, obj, t.status)
            })
            .map(|v| (200, v)),
        (Method::PATCH, Some(name)) => {
            let ct = headers
                .get(header::CONTENT_TYPE)
                .and_then(|v| v.to_str().ok())
                .unwrap_or("")
                .split(';')
                .next()
                .unwrap_or("")
                .trim()
                .to_string();
            let kind = match ct.as_str() {
                "application/merge-patch+json" => Ok(PatchKind::Merge),
                "application/strategic-merge-patch+json" => Ok(PatchKind::Strategic),
                "application/apply-patch+yaml" | "application/apply-patch+json" => {
                    match q("fieldManager") {
                        Some(m) if !m.is_empty() => Ok(PatchKind::Apply {
                            manager: m.to_string(),
                        }),
                        _ => Err(ApiError::new(
                            400,
                            "BadRequest",
                            "PATCH with Content-Type application/apply-patch+yaml requires a fieldManager",
                        )),
                    }
                }
                other => Err(ApiError::new(
                    415,
                    "UnsupportedMediaType",
                    format!("the test server does not support patches of Content-Type {other:?}"),
                )),
            };
            kind.and_then(|kind| {
                let patch = parse_body(&body)?;
                let created = matches!(kind, PatchKind::Apply { .. })
                    && shared.store().get(t.rt, &t.namespace, name).is_err();
                shared
                    .store()
                    .patch(t.rt, &t.namespace, name, patch, &kind, t.status)
                    .map(|v| (if created { 201 } else { 200 }, v))
            })
        }
        (Method::DELETE, Some(name)) => {
            let opts = if body.is_empty() {
                Value::Null
            } else {
                parse_body(&body).unwrap_or(Value::Null)
            };
            let orphan = q("propagationPolicy") == Some("Orphan")
                || opts["propagationPolicy"] == json!("Orphan")
                || opts["orphanDependents"] == json!(true);
            shared
                .store()
                .delete(t.rt, &t.namespace, name, orphan)
                .map(|v| (200, v))
        }
        _ => Err(ApiError::new(
            405,
            "MethodNotAllowed",
            format!("the test server does not allow this method on {path}"),
        )),
    };
    if writes && result.is_ok() {
        shared.store().run_endpointslice_controller();
    }
    match result {
        Ok((code, v)) => json_response(StatusCode::from_u16(code).unwrap_or(StatusCode::OK), &v),
        Err(e) => error(e),
    }
}

fn selectors<'a>(q: &impl Fn(&str) -> Option<&'a str>) -> Result<(Selector, Selector), ApiError> {
    let parse = |k: &str| {
        Selector::parse(q(k).unwrap_or(""))
            .map_err(|e| ApiError::new(400, "BadRequest", format!("{k}: {e}")))
    };
    Ok((parse("labelSelector")?, parse("fieldSelector")?))
}

fn list<'a>(
    shared: &Shared,
    t: &Target,
    q: &impl Fn(&str) -> Option<&'a str>,
) -> Result<(u16, Value), ApiError> {
    let (labels, fields) = selectors(q)?;
    let (items, rv) = {
        let store = shared.store();
        (
            store.list(t.rt, &t.namespace, &labels, &fields),
            store.resource_version(),
        )
    };
    // Pages: `continue` is the offset of the next item (the list is ordered by namespace, name).
    let offset: usize = q("continue").and_then(|c| c.parse().ok()).unwrap_or(0);
    let limit: usize = q("limit")
        .and_then(|l| l.parse().ok())
        .filter(|l| *l > 0)
        .unwrap_or(usize::MAX);
    let total = items.len();
    let page: Vec<Value> = items.into_iter().skip(offset).take(limit).collect();
    let mut metadata = json!({"resourceVersion": rv.to_string()});
    if offset + page.len() < total {
        metadata["continue"] = json!((offset + page.len()).to_string());
        metadata["remainingItemCount"] = json!(total - offset - page.len());
    }
    Ok((
        200,
        json!({
            "kind": format!("{}List", t.rt.kind),
            "apiVersion": t.rt.api_version(),
            "metadata": metadata,
            "items": page,
        }),
    ))
}

fn event_line(kind: &str, object: &Value) -> Bytes {
    let mut line = json!({"type": kind, "object": object}).to_string();
    line.push('\n');
    Bytes::from(line)
}

fn bookmark(rt: &ResourceType, rv: u64, initial_events_end: bool) -> Bytes {
    let mut meta = json!({"resourceVersion": rv.to_string()});
    if initial_events_end {
        meta["annotations"] = json!({"k8s.io/initial-events-end": "true"});
    }
    event_line(
        "BOOKMARK",
        &json!({"kind": rt.kind, "apiVersion": rt.api_version(), "metadata": meta}),
    )
}

fn watch<'a>(shared: &Arc<Shared>, t: &Target, q: &impl Fn(&str) -> Option<&'a str>) -> Response {
    let (labels, fields) = match selectors(q) {
        Ok(s) => s,
        Err(e) => return error(e),
    };
    let bookmarks = matches!(q("allowWatchBookmarks"), Some("true" | "1"));
    let initial_events = matches!(q("sendInitialEvents"), Some("true" | "1"));
    let timeout = q("timeoutSeconds")
        .and_then(|s| s.parse::<u64>().ok())
        .map(Duration::from_secs)
        .unwrap_or(Duration::from_secs(1800));
    let from = q("resourceVersion").filter(|s| !s.is_empty() && *s != "0");
    let rt = t.rt;
    let ns = t.namespace.clone();

    // Under one lock: what to send first, and the receiver of everything after it.
    let mut first: Vec<Bytes> = Vec::new();
    let (start_rv, rx): (u64, Option<broadcast::Receiver<Arc<Event>>>) = {
        let store = shared.store();
        let now = store.resource_version();
        match from.map(str::parse::<u64>) {
            Some(Err(_)) => {
                return error(ApiError::new(
                    400,
                    "BadRequest",
                    "resourceVersion is not a number",
                ))
            }
            Some(Ok(rv)) if !initial_events => match store.watch(rt, &ns, rv) {
                Ok((backlog, rx)) => {
                    for e in backlog {
                        let matches =
                            |o: &Value| labels.matches_labels(o) && fields.matches_fields(o);
                        if let Some(kind) = store::seen_as(&e, matches) {
                            first.push(event_line(kind, &store::in_version(rt, e.object.clone())));
                        }
                    }
                    (now, Some(rx))
                }
                Err(gone) => {
                    // The real server answers 200 and then an ERROR event with the 410 Status.
                    first.push(event_line("ERROR", &gone.status()));
                    (now, None)
                }
            },
            _ => {
                // No resourceVersion (or sendInitialEvents): the current state as ADDED events.
                for obj in store.list(rt, &ns, &labels, &fields) {
                    first.push(event_line("ADDED", &store::in_version(rt, obj.clone())));
                }
                if initial_events {
                    first.push(bookmark(rt, now, true));
                }
                match store.watch(rt, &ns, now) {
                    Ok((_, rx)) => (now, Some(rx)),
                    Err(gone) => {
                        first.push(event_line("ERROR", &gone.status()));
                        (now, None)
                    }
                }
            }
        }
    };

    let (tx, body_rx) = mpsc::channel::<Result<Bytes, Infallible>>(256);
    let interval = shared.bookmark_interval;
    let shutdown = shared.connections();
    tokio::spawn(async move {
        for line in first {
            if tx.send(Ok(line)).await.is_err() {
                return;
            }
        }
        let Some(mut rx) = rx else {
            return;
        };
        let mut last_rv = start_rv;
        let deadline = tokio::time::sleep(timeout);
        tokio::pin!(deadline);
        let mut tick = tokio::time::interval_at(tokio::time::Instant::now() + interval, interval);
        loop {
            tokio::select! {
                ev = rx.recv() => match ev {
                    Ok(e) => {
                        last_rv = last_rv.max(e.rv);
                        if !store::matches(&e, rt, &ns) {
                            continue;
                        }
                        let matches = |o: &Value| labels.matches_labels(o) && fields.matches_fields(o);
                        if let Some(kind) = store::seen_as(&e, matches) {
                            if tx.send(Ok(event_line(kind, &store::in_version(rt, e.object.clone())))).await.is_err() {
                                return;
                            }
                        }
                    }
                    Err(broadcast::error::RecvError::Lagged(_)) => {
                        let gone = ApiError::gone("the watch fell behind; relist");
                        let _ = tx.send(Ok(event_line("ERROR", &gone.status()))).await;
                        return;
                    }
                    Err(broadcast::error::RecvError::Closed) => return,
                },
                _ = tick.tick(), if bookmarks => {
                    if tx.send(Ok(bookmark(rt, last_rv, false))).await.is_err() {
                        return;
                    }
                }
                _ = &mut deadline => return,
                _ = tx.closed() => return,
                _ = shutdown.cancelled() => return,
            }
        }
    });
    Response::builder()
        .status(StatusCode::OK)
        .header(header::CONTENT_TYPE, "application/json")
        .header(header::TRANSFER_ENCODING, "chunked")
        .body(Body::from_stream(
            tokio_stream::wrappers::ReceiverStream::new(body_rx),
        ))
        .unwrap_or_else(|_| StatusCode::INTERNAL_SERVER_ERROR.into_response())
}
