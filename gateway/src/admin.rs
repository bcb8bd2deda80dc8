//! Admin HTTP (axum): `/metrics`, `/ready`, `/live`, `/config_dump`, `/peers`.

use std::sync::Arc;

use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::response::IntoResponse;
use axum::routing::get;
use axum::{Json, Router};
use tokio::net::TcpListener;

use crate::app::Shared;
use crate::dump;

pub(crate) async fn serve(shared: Arc<Shared>, listener: TcpListener) {
    let shutdown = shared.shutdown.clone();
    let app = Router::new()
        .route("/metrics", get(metrics))
        .route("/ready", get(ready))
        .route("/live", get(|| async { "live\n" }))
        .route("/config_dump", get(config_dump))
        .route("/peers", get(peers))
        .with_state(shared);
    let result = axum::serve(listener, app)
        .with_graceful_shutdown(async move { shutdown.cancelled().await })
        .await;
    if let Err(e) = result {
        tracing::error!(error = %e, "admin server stopped");
    }
}

async fn metrics(State(shared): State<Arc<Shared>>) -> impl IntoResponse {
    (
        [(header::CONTENT_TYPE, "text/plain; version=0.0.4")],
        shared.metrics.render(),
    )
}

async fn ready(State(shared): State<Arc<Shared>>) -> impl IntoResponse {
    match shared.version() {
        0 if shared.tables.load().is_none() => (
            StatusCode::SERVICE_UNAVAILABLE,
            "no config loaded\n".to_string(),
        ),
        v => (StatusCode::OK, format!("ready: config version {v}\n")),
    }
}

async fn config_dump(State(shared): State<Arc<Shared>>) -> impl IntoResponse {
    match shared.tables.load_full() {
        Some(t) => Json(dump::snapshot(&t.snapshot)).into_response(),
        None => (StatusCode::SERVICE_UNAVAILABLE, "no config loaded\n").into_response(),
    }
}

async fn peers(State(shared): State<Arc<Shared>>) -> impl IntoResponse {
    Json(shared.peers.statuses())
}
