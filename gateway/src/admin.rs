//! Admin HTTP (axum): `/metrics`, `/ready`, `/live`, `/config_dump`, `/peers`.
//!
//! `/config_dump` and `/peers` show every inbound endpoint, policy and peer address: they answer
//! callers on this host only (loopback, or an address of the host itself; `kubectl
//! port-forward` arrives on loopback) and `403` anyone else, counted as
//! `causeway_gateway_refused_total{listener="admin", reason="not_local"}`.

use std::net::SocketAddr;
use std::sync::Arc;

use axum::extract::connect_info::Connected;
use axum::extract::{ConnectInfo, State};
use axum::http::{header, StatusCode};
use axum::response::IntoResponse;
use axum::routing::get;
use axum::serve::IncomingStream;
use axum::{Json, Router};
use tokio::net::TcpListener;

use crate::dump;
use crate::shared::Shared;

pub(crate) async fn serve(shared: Arc<Shared>, listener: TcpListener) {
    let shutdown = shared.proxy.shutdown.clone();
    let app = Router::new()
        .route("/metrics", get(metrics))
        .route("/ready", get(ready))
        .route("/live", get(|| async { "live\n" }))
        .route("/config_dump", get(config_dump))
        .route("/peers", get(peers))
        .with_state(shared);
    let app = app.into_make_service_with_connect_info::<Caller>();
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
        shared.proxy.render_metrics(),
    )
}

async fn ready(State(shared): State<Arc<Shared>>) -> impl IntoResponse {
    // Peers refuse an expired certificate: out of service until it is renewed.
    if let Some(v) = shared.proxy.tls.load().validity {
        if v.left(crate::tls::unix_now()) <= 0 {
            return (
                StatusCode::SERVICE_UNAVAILABLE,
                format!(
                    "certificate expired (not after {} Unix seconds)\n",
                    v.not_after
                ),
            );
        }
    }
    match shared.proxy.version() {
        0 if shared.proxy.tables.load().is_none() => (
            StatusCode::SERVICE_UNAVAILABLE,
            "no config loaded\n".to_string(),
        ),
        v => (StatusCode::OK, format!("ready: config version {v}\n")),
    }
}

/// Both ends of an admin connection.
#[derive(Debug, Clone, Copy)]
struct Caller {
    remote: SocketAddr,
    local: Option<SocketAddr>,
}

impl Connected<IncomingStream<'_, TcpListener>> for Caller {
    fn connect_info(stream: IncomingStream<'_, TcpListener>) -> Self {
        Caller {
            remote: *stream.remote_addr(),
            local: stream.io().local_addr().ok(),
        }
    }
}

/// `Some(403)` unless the caller is on this host.
fn local_only(shared: &Shared, caller: Caller, path: &str) -> Option<axum::response::Response> {
    let local = caller
        .local
        .is_some_and(|l| causeway_api::net::is_local_caller(caller.remote.ip(), l.ip()));
    if local {
        return None;
    }
    shared.proxy.metrics.refuse("admin", "not_local");
    tracing::info!(caller = %caller.remote, path, "admin endpoint refused: answers callers on this host only");
    Some(
        (
            StatusCode::FORBIDDEN,
            format!("{path} answers callers on this host only (e.g. kubectl port-forward)\n"),
        )
            .into_response(),
    )
}

async fn config_dump(
    State(shared): State<Arc<Shared>>,
    ConnectInfo(caller): ConnectInfo<Caller>,
) -> impl IntoResponse {
    if let Some(refused) = local_only(&shared, caller, "/config_dump") {
        return refused;
    }
    match shared.proxy.tables.load_full() {
        Some(t) => {
            let mut dump = dump::snapshot(&t.snapshot);
            dump["certificate"] = shared.certificate_summary();
            Json(dump).into_response()
        }
        None => (StatusCode::SERVICE_UNAVAILABLE, "no config loaded\n").into_response(),
    }
}

async fn peers(
    State(shared): State<Arc<Shared>>,
    ConnectInfo(caller): ConnectInfo<Caller>,
) -> impl IntoResponse {
    if let Some(refused) = local_only(&shared, caller, "/peers") {
        return refused;
    }
    Json(shared.proxy.peers.statuses()).into_response()
}
