//! Admin HTTP: `/metrics`, `/ready`, `/live`, `/debug/snapshot`, `/dashboard`.
//!
//! `/debug/snapshot` holds every import, endpoint and gateway address of the mesh: it answers
//! callers on this host only (loopback or the host's own address; `kubectl port-forward` arrives
//! on loopback) and `403` anyone else, counted in `causeway_federator_admin_refused_total`.
//! `/dashboard` is a read-only page built into the binary (no assets fetched from anywhere)
//! that polls `/debug/snapshot` every second: clusters, who sees whom, the traffic of this
//! cluster's gateways to and from each peer (`traffic`, from their health reports), imports
//! with their clusters, drains and conflicts, drills and the last hour's drill reports; the
//! same callers only.

use std::net::SocketAddr;
use std::sync::Arc;

use axum::extract::connect_info::Connected;
use axum::extract::{ConnectInfo, State};
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::serve::IncomingStream;
use axum::Router;
use causeway_api::MeshSnapshot;
use tokio::sync::watch;

use crate::metrics::Metrics;
use crate::source::LocalExports;
use crate::traffic::TrafficBook;

#[derive(Clone)]
pub(crate) struct AdminState {
    pub snapshots: watch::Receiver<Arc<MeshSnapshot>>,
    pub local: watch::Receiver<LocalExports>,
    pub leader: watch::Receiver<bool>,
    pub metrics: Arc<Metrics>,
    /// What this cluster's gateways carry to and from each peer.
    pub traffic: Arc<TrafficBook>,
    /// What they last reported of each peer (fresh RTTs; etcd gets only state changes).
    pub health: watch::Receiver<crate::config_server::PeerHealthMap>,
}

/// Both ends of an admin connection; serve the router with
/// `into_make_service_with_connect_info::<Caller>()`.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Caller {
    remote: SocketAddr,
    local: Option<SocketAddr>,
}

impl Connected<IncomingStream<'_, tokio::net::TcpListener>> for Caller {
    fn connect_info(stream: IncomingStream<'_, tokio::net::TcpListener>) -> Self {
        Caller {
            remote: *stream.remote_addr(),
            local: stream.io().local_addr().ok(),
        }
    }
}

pub(crate) fn router(state: AdminState) -> Router {
    Router::new()
        .route("/metrics", get(metrics))
        .route("/ready", get(ready))
        .route("/live", get(|| async { "live\n" }))
        .route("/debug/snapshot", get(snapshot))
        .route("/dashboard", get(dashboard))
        .with_state(state)
}

async fn metrics(State(s): State<AdminState>) -> Response {
    (
        [(header::CONTENT_TYPE, "text/plain; version=0.0.4")],
        s.metrics.encode(),
    )
        .into_response()
}

/// Ready once the initial sync is done: the mesh listed from etcd and the local source read.
/// Never "every peer reachable": one dead cluster must not take every federator out of service.
async fn ready(State(s): State<AdminState>) -> Response {
    let synced = s.snapshots.borrow().synced;
    let loaded = s.local.borrow().loaded;
    if synced && loaded {
        (StatusCode::OK, "ready\n").into_response()
    } else {
        let why = if synced {
            "local exports not read yet\n"
        } else {
            "initial sync with etcd not done\n"
        };
        (StatusCode::SERVICE_UNAVAILABLE, why).into_response()
    }
}

/// `403` (counted, logged) unless `caller` is on this host.
fn local_only(s: &AdminState, caller: Caller, path: &str) -> Option<Response> {
    let local = caller
        .local
        .is_some_and(|l| causeway_api::net::is_local_caller(caller.remote.ip(), l.ip()));
    if local {
        return None;
    }
    s.metrics.admin_refused.inc();
    tracing::info!(caller = %caller.remote, path, "admin request refused: answers callers on this host only");
    Some(
        (
            StatusCode::FORBIDDEN,
            format!("{path} answers callers on this host only (e.g. kubectl port-forward)\n"),
        )
            .into_response(),
    )
}

/// The dashboard page: HTML, CSS and script in one file, built in.
const DASHBOARD: &str = include_str!("admin/dashboard.html");

async fn dashboard(
    State(s): State<AdminState>,
    ConnectInfo(caller): ConnectInfo<Caller>,
) -> Response {
    if let Some(refused) = local_only(&s, caller, "/dashboard") {
        return refused;
    }
    (
        [
            (header::CONTENT_TYPE, "text/html; charset=utf-8"),
            // Nothing but its own inline script and style, and fetches back to this port.
            (
                header::CONTENT_SECURITY_POLICY,
                "default-src 'none'; script-src 'unsafe-inline'; style-src 'unsafe-inline'; connect-src 'self'",
            ),
            (header::X_CONTENT_TYPE_OPTIONS, "nosniff"),
        ],
        DASHBOARD,
    )
        .into_response()
}

async fn snapshot(
    State(s): State<AdminState>,
    ConnectInfo(caller): ConnectInfo<Caller>,
) -> Response {
    if let Some(refused) = local_only(&s, caller, "/debug/snapshot") {
        return refused;
    }
    let snap = s.snapshots.borrow().clone();
    let leader = *s.leader.borrow();
    let traffic = s.traffic.rates(std::time::Instant::now());
    let local_health = s.health.borrow().clone();
    let body = serde_json::json!({
        "leader": leader,
        "snapshot": &*snap,
        "traffic": traffic,
        "local_health": local_health,
    });
    (
        [(header::CONTENT_TYPE, "application/json")],
        serde_json::to_string_pretty(&body).unwrap_or_default(),
    )
        .into_response()
}
