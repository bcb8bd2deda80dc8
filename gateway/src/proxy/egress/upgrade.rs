//! HTTP/1.1 upgrades (WebSocket) on the egress, carried as tunnels.

use std::sync::Arc;

use http::header::{self, HeaderValue};
use http::{Request, Response, StatusCode, Version};
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;

use crate::body::{self, Body};
use crate::proxy::{Proxy, Record};
use crate::table::{Outbound, PortSpec, Tables};

use super::plan::vouch_for_caller;
use super::tunnel::open_planned_tunnel;

/// An HTTP/1.1 request that asks to switch protocols (`Connection: upgrade` + `Upgrade`).
pub(super) fn is_upgrade(req: &Request<Incoming>) -> bool {
    req.version() == Version::HTTP_11
        && req.headers().contains_key(header::UPGRADE)
        && req
            .headers()
            .get_all(header::CONNECTION)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(','))
            .any(|t| t.trim().eq_ignore_ascii_case("upgrade"))
}

/// Carries an upgrade (a WebSocket) as a TCP tunnel to the service port, the way `CONNECT`
/// does: the request head is sent to the backend over the tunnel, and after its `101` both
/// sides are joined byte for byte. The backend sees the request as the client sent it, without
/// the headers a client may not set, with `x-causeway-source-cluster` and, for an mTLS caller,
/// its XFCC element.
pub(super) async fn upgrade(
    proxy: &Arc<Proxy>,
    tables: &Tables,
    svc: &Outbound,
    port: PortSpec,
    mut req: Request<Incoming>,
    caller: Option<Arc<str>>,
    mut record: Record<'_>,
) -> Response<Body> {
    let client_upgrade = hyper::upgrade::on(&mut req);
    let (upstream, cluster) =
        match open_planned_tunnel(proxy, tables, svc, port, req.headers()).await {
            Ok(pair) => pair,
            Err((e, cluster)) => {
                record.destination_cluster = cluster.clone();
                record.finish("502", e.status().as_u16(), Some("upstream"));
                tracing::info!(service = %svc.name, %cluster, error = %e, "upgrade tunnel failed");
                let message = format!("{}: {} (cluster {cluster})", svc.name, e.summary());
                return crate::proxy::reply(e.status(), "upstream", message);
            }
        };
    record.destination_cluster = cluster.clone();
    let failed = |record: Record<'_>, e: &dyn std::fmt::Display| {
        let message = format!("{} in {cluster}: upgrade failed: {e}", svc.name);
        record.refuse(StatusCode::BAD_GATEWAY, "upstream", message)
    };
    let (mut sender, conn) =
        match hyper::client::conn::http1::handshake(TokioIo::new(upstream)).await {
            Ok(pair) => pair,
            Err(e) => return failed(record, &e),
        };
    tokio::spawn(async move {
        if let Err(e) = conn.with_upgrades().await {
            tracing::debug!(error = %e, "upgraded backend connection ended");
        }
    });
    let (mut parts, _) = req.into_parts();
    vouch_for_caller(proxy, &mut parts.headers, caller.as_deref());
    if let Ok(v) = HeaderValue::from_str(&svc.peer_authority(port.port)) {
        parts.headers.insert(header::HOST, v);
    }
    let path = parts.uri.path_and_query().map_or("/", |p| p.as_str());
    let mut builder = Request::builder().method(parts.method.clone()).uri(path);
    if let Some(h) = builder.headers_mut() {
        *h = parts.headers;
    }
    let backend_req = match builder.body(body::empty()) {
        Ok(r) => r,
        Err(e) => return failed(record, &e),
    };
    let mut resp = match sender.send_request(backend_req).await {
        Ok(r) => r,
        Err(e) => return failed(record, &e),
    };
    let status = resp.status();
    record.finish(status.as_str(), status.as_u16(), None);
    if status != StatusCode::SWITCHING_PROTOCOLS {
        return resp.map(body::incoming);
    }
    let backend_upgrade = hyper::upgrade::on(&mut resp);
    tokio::spawn(async move {
        match tokio::try_join!(client_upgrade, backend_upgrade) {
            Ok((client, backend)) => {
                crate::proxy::pump(TokioIo::new(client), TokioIo::new(backend)).await
            }
            Err(e) => tracing::debug!(error = %e, "upgrade not completed"),
        }
    });
    let (head, _) = resp.into_parts();
    Response::from_parts(head, body::empty())
}
