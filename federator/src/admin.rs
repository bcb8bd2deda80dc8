//! Admin HTTP: `/metrics`, `/ready`, `/live`, `/debug/snapshot`.

use std::sync::Arc;

use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;
use causeway_api::MeshSnapshot;
use tokio::sync::watch;

use crate::metrics::Metrics;
use crate::source::LocalExports;

#[derive(Clone)]
pub struct AdminState {
    pub snapshots: watch::Receiver<Arc<MeshSnapshot>>,
    pub local: watch::Receiver<LocalExports>,
    pub leader: watch::Receiver<bool>,
    pub metrics: Arc<Metrics>,
}

pub fn router(state: AdminState) -> Router {
    Router::new()
        .route("/metrics", get(metrics))
        .route("/ready", get(ready))
        .route("/live", get(|| async { "live\n" }))
        .route("/debug/snapshot", get(snapshot))
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

async fn snapshot(State(s): State<AdminState>) -> Response {
    let snap = s.snapshots.borrow().clone();
    let leader = *s.leader.borrow();
    let body = serde_json::json!({ "leader": leader, "snapshot": &*snap });
    (
        [(header::CONTENT_TYPE, "application/json")],
        serde_json::to_string_pretty(&body).unwrap_or_default(),
    )
        .into_response()
}
