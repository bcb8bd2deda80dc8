//! Egress tunnels: `CONNECT <service>:<port>` on the egress listener, and the byte streams
//! of opaque TCP ports; each opened to the first planned cluster that accepts it.

use std::sync::Arc;

use http::header::HeaderValue;
use http::{Method, Request, Response, StatusCode, Version};
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;

use crate::body::{self, Body};
use crate::error::ProxyError;
use crate::proxy::{retry, Io, Proxy, Record};
use crate::route::{self};
use crate::table::{Candidate, Outbound, PortSpec, Tables};
use crate::xfcc;

use super::plan::{outlier_failure, World};
use super::request::request_error;

/// Opens a byte stream to the service in one cluster: a direct connection to a local
/// endpoint, or an HTTP/2 CONNECT stream over the peer connection.
async fn open_tunnel(
    proxy: &Proxy,
    tables: &Tables,
    svc: &Outbound,
    port: PortSpec,
    cand: &Candidate,
) -> Result<Box<dyn Io>, ProxyError> {
    if cand.local {
        let inbound = tables
            .inbound
            .get(&svc.name)
            .ok_or_else(|| ProxyError::NoEndpoint(svc.name.to_string()))?;
        let in_port = inbound.port(Some(port.port)).unwrap_or(port);
        let mut last = ProxyError::NoEndpoint(svc.name.to_string());
        for endpoint in inbound.endpoints_from_next() {
            match proxy.backends.connect(inbound, endpoint, in_port).await {
                Ok(s) => return Ok(Box::new(s)),
                Err(e) => last = e,
            }
        }
        return Err(last);
    }
    let peer = proxy
        .peers
        .get(&cand.cluster)
        .ok_or_else(|| ProxyError::Connect {
            target: format!("cluster {}", cand.cluster),
            source: "not a configured peer".into(),
        })?;
    let (mut sender, slot) = peer
        .sender(
            &proxy.tls,
            proxy.connect_timeout(),
            proxy.streams_per_connection(),
        )
        .await?;
    let authority = svc.peer_authority(port.port);
    let mut req = Request::builder()
        .method(Method::CONNECT)
        .uri(authority.as_str())
        .version(Version::HTTP_2)
        .body(body::empty())
        .map_err(|e| request_error(&authority, e))?;
    if let Ok(v) = HeaderValue::from_str(&proxy.config.cluster) {
        req.headers_mut().insert(xfcc::SOURCE_CLUSTER, v);
    }
    let target = format!("{authority} via cluster {}", cand.cluster);
    let resp = sender
        .send_request(req)
        .await
        .map_err(|e| ProxyError::Connect {
            target: target.clone(),
            source: e.into(),
        })?;
    if resp.status() != StatusCode::OK {
        return Err(ProxyError::TunnelRefused {
            target,
            status: resp.status().as_u16(),
        });
    }
    let upgraded = hyper::upgrade::on(resp)
        .await
        .map_err(|e| ProxyError::Connect {
            target,
            source: e.into(),
        })?;
    Ok(Box::new(crate::peer::Slotted {
        inner: TokioIo::new(upgraded),
        _slot: slot,
    }))
}

/// Tries the planned clusters until one accepts the tunnel.
pub(super) async fn open_planned_tunnel(
    proxy: &Proxy,
    tables: &Tables,
    svc: &Outbound,
    port: PortSpec,
    headers: &http::HeaderMap,
) -> Result<(Box<dyn Io>, Arc<str>), (ProxyError, Arc<str>)> {
    let world = World {
        proxy,
        tables,
        svc: &svc.name,
    };
    let plan = route::plan(svc, headers, &world);
    let mut last = (
        ProxyError::NoEndpoint(format!("no cluster can serve {}", svc.name)),
        Arc::from(""),
    );
    for cand in plan.iter().take(retry::max_attempts(&svc.policy) as usize) {
        match open_tunnel(proxy, tables, svc, port, cand).await {
            Ok(io) => {
                cand.stats.record_success();
                return Ok((io, cand.cluster.clone()));
            }
            Err(e) => {
                outlier_failure(proxy, svc, cand);
                tracing::debug!(service = %svc.name, cluster = %cand.cluster, error = %e, "tunnel attempt failed");
                last = (e, cand.cluster.clone());
            }
        }
    }
    Err(last)
}

/// `CONNECT svc.ns.svc.clusterset.local:port` on the egress listener.
pub(super) async fn connect_tunnel(
    proxy: &Arc<Proxy>,
    tables: &Tables,
    svc: &Outbound,
    port: PortSpec,
    mut req: Request<Incoming>,
    mut record: Record<'_>,
) -> Response<Body> {
    let on_upgrade = hyper::upgrade::on(&mut req);
    match open_planned_tunnel(proxy, tables, svc, port, req.headers()).await {
        Ok((upstream, cluster)) => {
            record.destination_cluster = cluster.clone();
            record.finish("tcp", 200, None);
            tokio::spawn(async move {
                match on_upgrade.await {
                    Ok(client) => crate::proxy::pump(TokioIo::new(client), upstream).await,
                    Err(e) => tracing::debug!(error = %e, "client CONNECT upgrade failed"),
                }
            });
            Response::new(body::empty())
        }
        Err((e, cluster)) => {
            record.destination_cluster = cluster.clone();
            record.finish("tcp_error", e.status().as_u16(), Some("upstream"));
            tracing::info!(service = %svc.name, %cluster, error = %e, "tunnel failed");
            let message = format!("{}: {} (cluster {cluster})", svc.name, e.summary());
            crate::proxy::reply(e.status(), "upstream", message)
        }
    }
}
