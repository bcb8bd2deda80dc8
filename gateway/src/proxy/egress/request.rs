//! Egress HTTP requests: the attempt loop over the planned clusters, with the retry policy,
//! the breaker's permits, the deadline and the lost-path check; one attempt's send.

use std::sync::Arc;

use http::header::{self, HeaderValue};
use http::{Request, Response, StatusCode, Uri, Version};
use hyper::body::Incoming;

use crate::body::{self, Body, Guard, Guarded, ReplayBody};
use crate::error::ProxyError;
use crate::proxy::{Proxy, Record, Retries};
use crate::route::{self};
use crate::table::{Candidate, Outbound, PortSpec, Tables};
use crate::xfcc;

use super::plan::{outlier_failure, vouch_for_caller, World};

const TRACEPARENT: http::HeaderName = http::HeaderName::from_static("traceparent");

/// Carries one request (its head already checked) to the first cluster of the plan that
/// answers, retrying as [`Retries`] allows.
pub(super) async fn forward(
    proxy: &Proxy,
    tables: &Tables,
    svc: &Outbound,
    port: PortSpec,
    req: Request<Incoming>,
    caller: Option<Arc<str>>,
    mut record: Record<'_>,
) -> Response<Body> {
    let (mut parts, incoming) = req.into_parts();
    // Hop-by-hop first: a `Connection` header naming ours must not take them away.
    xfcc::strip_hop_by_hop(&mut parts.headers);
    vouch_for_caller(proxy, &mut parts.headers, caller.as_deref());
    parts.headers.remove(header::HOST);
    if let Some(span) = &record.span {
        parts.headers.insert(TRACEPARENT, span.traceparent());
    }

    let world = World {
        proxy,
        tables,
        svc: &svc.name,
    };
    let plan = route::plan(svc, &parts.headers, &world);
    if plan.is_empty() {
        return record.refuse(
            StatusCode::SERVICE_UNAVAILABLE,
            "no_route",
            format!("no cluster can serve {}", svc.name),
        );
    }
    let idempotent = crate::proxy::is_idempotent(&parts.method);
    let (client_body, fault) = body::from_client(incoming);
    let mut body = match ReplayBody::new(client_body, idempotent).await {
        Ok(b) => b,
        Err(e) => {
            return record.refuse(
                StatusCode::BAD_REQUEST,
                "request_body",
                format!("cannot read the request body: {e}"),
            );
        }
    };

    let policy = &svc.policy;
    let deadline = policy
        .timeout
        .map(|t| tokio::time::Instant::from_std(record.start + t));
    let active = svc.budget.start_request();
    let mut retries = Retries::new(
        policy,
        &svc.budget,
        proxy.config.min_retry_concurrency,
        idempotent,
    );
    let max_attempts = retries.max_attempts();
    let mut last: Option<(Response<Body>, Arc<str>)> = None;
    let mut last_err: Option<(ProxyError, Arc<str>)> = None;
    for n in 0..max_attempts {
        let cand = &plan[n as usize % plan.len()];
        if !retries.begin(n) {
            break;
        }
        if n > 0 {
            proxy.metrics.retries.inc();
            tracing::debug!(service = %svc.name, cluster = %cand.cluster, attempt = n + 1, "retrying");
        }
        record.attempts = n + 1;
        // An idempotent request to a peer, with another cluster to go to next, is retried
        // there when the path to the peer turns out dead while it waits.
        let watched_peer = (retries.may_resend(n, &body)
            && plan[(n as usize + 1) % plan.len()].cluster != cand.cluster)
            .then(|| proxy.peers.get(&cand.cluster))
            .flatten()
            .filter(|_| !cand.local);
        let attempt = async {
            let Some(permit) = cand
                .stats
                .acquire(policy.max_concurrent, policy.max_pending)
                .await
            else {
                return Attempt::Overloaded;
            };
            let send = send(proxy, tables, svc, port, cand, &parts, &mut body);
            let result = match &watched_peer {
                Some(peer) => tokio::select! {
                    biased;
                    r = send => r,
                    g = path_lost(proxy, peer, &retries) => return Attempt::PathLost(g),
                },
                None => send.await,
            };
            Attempt::Done(result, permit)
        };
        let outcome = match deadline {
            Some(d) => match tokio::time::timeout_at(d, attempt).await {
                Ok(o) => o,
                Err(_) => Attempt::TimedOut,
            },
            None => attempt.await,
        };
        match outcome {
            Attempt::Overloaded => {
                proxy.metrics.circuit_open.inc();
                let mut resp = crate::proxy::reply(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "overloaded",
                    format!(
                        "{} in {} is at its concurrency limit",
                        svc.name, cand.cluster
                    ),
                );
                resp.headers_mut()
                    .insert(xfcc::OVERLOADED, HeaderValue::from_static("true"));
                record.destination_cluster = cand.cluster.clone();
                record.finish("503", 503, Some("overloaded"));
                return resp;
            }
            Attempt::TimedOut => {
                outlier_failure(proxy, svc, cand);
                record.destination_cluster = cand.cluster.clone();
                return record.refuse(
                    StatusCode::GATEWAY_TIMEOUT,
                    "timeout",
                    format!("{} did not answer in time", svc.name),
                );
            }
            Attempt::PathLost(guard) => {
                // The budget allowed the retry before the attempt was given up.
                retries.grant(guard);
                proxy.metrics.path_lost.inc();
                tracing::debug!(service = %svc.name, cluster = %cand.cluster, "path to the peer lost; retrying elsewhere");
                last_err = Some((
                    ProxyError::Request {
                        target: format!("{} via cluster {}", svc.name, cand.cluster),
                        source: "the peer stopped answering probes".into(),
                    },
                    cand.cluster.clone(),
                ));
                continue;
            }
            Attempt::Done(Ok(resp), permit) => {
                let status = resp.status();
                if status.is_server_error() && !fault.failed() {
                    outlier_failure(proxy, svc, cand);
                    if retries.may_resend(n, &body) {
                        // Keep the failed response: it is the answer if no retry does better.
                        let mut resp = resp;
                        name_the_cluster(resp.headers_mut(), cand);
                        last = Some((resp, cand.cluster.clone()));
                        continue;
                    }
                } else if !fault.failed() {
                    // (A response to a broken body says nothing about the cluster either way.)
                    cand.stats.record_success();
                }
                let (mut head, incoming) = resp.into_parts();
                xfcc::strip_hop_by_hop(&mut head.headers);
                name_the_cluster(&mut head.headers, cand);
                let mut guards: Vec<Guard> = vec![Box::new(permit), Box::new(active)];
                if let Some(g) = retries.into_guard() {
                    guards.push(Box::new(g));
                }
                let body = Guarded::wrap(incoming, guards);
                record.destination_cluster = cand.cluster.clone();
                record.finish(status.as_str(), status.as_u16(), None);
                return Response::from_parts(head, body);
            }
            Attempt::Done(Err(e), _permit) if fault.failed() || e.caused_by_client() => {
                // The caller's body broke the attempt: its error, not the cluster's.
                tracing::debug!(service = %svc.name, cluster = %cand.cluster, error = %e, "the caller's request body failed");
                proxy.metrics.refuse("egress", "request_body");
                record.destination_cluster = cand.cluster.clone();
                return record.refuse(
                    StatusCode::BAD_REQUEST,
                    "request_body",
                    "the request body is malformed or ended early".to_string(),
                );
            }
            Attempt::Done(Err(e), _permit) => {
                outlier_failure(proxy, svc, cand);
                tracing::debug!(service = %svc.name, cluster = %cand.cluster, error = %e, "attempt failed");
                let retry = retries.after_error(n, &e, &body);
                last_err = Some((e, cand.cluster.clone()));
                if !retry {
                    break;
                }
            }
        }
    }
    if let Some((resp, cluster)) = last {
        let status = resp.status();
        record.destination_cluster = cluster.clone();
        record.finish(status.as_str(), status.as_u16(), None);
        return resp;
    }
    let (status, message, cluster) = match &last_err {
        Some((e, c)) => {
            // The detail (addresses included) is logged; the caller is told the kind.
            tracing::info!(service = %svc.name, cluster = %c, error = %e, "request failed");
            (
                e.status(),
                format!("{}: {} (cluster {c})", svc.name, e.summary()),
                c.clone(),
            )
        }
        None => (
            StatusCode::BAD_GATEWAY,
            "no attempt could be made".to_string(),
            Arc::from(""),
        ),
    };
    record.destination_cluster = cluster.clone();
    record.finish(status.as_str(), status.as_u16(), Some("upstream"));
    crate::proxy::reply(status, "upstream", message)
}

/// Tells the caller which cluster answered ([`causeway_api::CLUSTER_HEADER`]): drills count
/// by it. The gateway's word replaces a backend's.
fn name_the_cluster(headers: &mut http::HeaderMap, cand: &Candidate) {
    if let Some(v) = &cand.header {
        headers.insert(causeway_api::CLUSTER_HEADER, v.clone());
    }
}

enum Attempt {
    Overloaded,
    TimedOut,
    /// The peer missed a probe while the attempt waited; a retry was allowed.
    PathLost(crate::resilience::ActiveGuard),
    Done(
        Result<Response<Body>, ProxyError>,
        crate::resilience::BreakerPermit,
    ),
}

/// Completes (with a retry allowed by the budget) when the path to `peer` is found dead
/// while a request waits on it: after `path_check_after_ms` without an answer, a probe is sent
/// at once; when it misses (or any probe has), the peer is suspect. Never completes when
/// the check is off or the budget allows no retry, so the attempt goes on waiting.
async fn path_lost(
    proxy: &Proxy,
    peer: &Arc<crate::peer::PeerConn>,
    retries: &Retries,
) -> crate::resilience::ActiveGuard {
    let config = &proxy.config;
    if config.path_check_after_ms == 0 {
        return std::future::pending().await;
    }
    tokio::time::sleep(std::time::Duration::from_millis(config.path_check_after_ms)).await;
    peer.check_path(
        proxy.tls.clone(),
        &proxy.metrics,
        proxy.connect_timeout(),
        std::time::Duration::from_millis(config.path_check_timeout_ms),
    );
    peer.suspected().await;
    match retries.try_budget() {
        Some(g) => g,
        None => std::future::pending().await,
    }
}

/// One attempt at one cluster. The body goes back into `body` when nothing was sent.
async fn send(
    proxy: &Proxy,
    tables: &Tables,
    svc: &Outbound,
    port: PortSpec,
    cand: &Candidate,
    parts: &http::request::Parts,
    body: &mut ReplayBody,
) -> Result<Response<Body>, ProxyError> {
    let path = parts.uri.path_and_query().map_or("/", |p| p.as_str());
    let authority = svc.peer_authority(port.port);
    if cand.local {
        let inbound = tables
            .inbound
            .get(&svc.name)
            .ok_or_else(|| ProxyError::NoEndpoint(svc.name.to_string()))?;
        let in_port = inbound.port(Some(port.port)).unwrap_or(port);
        let h2 = in_port.is_h2() || crate::proxy::is_grpc(&parts.headers);
        return proxy
            .backends
            .send_to_first(
                inbound,
                inbound.endpoints_from_next(),
                in_port,
                h2,
                body,
                |b| {
                    let mut req = crate::proxy::clone_head(parts)
                        .uri(path)
                        .body(b)
                        .map_err(|e| request_error(&authority, e))?;
                    if let Ok(v) = HeaderValue::from_str(&authority) {
                        req.headers_mut().insert(header::HOST, v);
                    }
                    Ok(req)
                },
            )
            .await
            .map(|r| r.map(body::incoming));
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
    let b = body
        .take()
        .ok_or_else(|| ProxyError::NoEndpoint("request body already sent".into()))?;
    let uri: Uri = format!("http://{authority}{path}")
        .parse()
        .map_err(|e: http::uri::InvalidUri| request_error(&authority, e))?;
    let req = crate::proxy::clone_head(parts)
        .uri(uri)
        .version(Version::HTTP_2)
        .body(b)
        .map_err(|e| request_error(&authority, e))?;
    match sender.try_send_request(req).await {
        // The stream keeps its place on the connection until its response has ended.
        Ok(resp) => Ok(resp.map(|b| Guarded::wrap(body::incoming(b), vec![Box::new(slot)]))),
        Err(mut e) => {
            let target = format!("{authority} via cluster {}", cand.cluster);
            match e.take_message() {
                Some(req) => {
                    body.put_back(req.into_body());
                    Err(ProxyError::Connect {
                        target,
                        source: e.into_error().into(),
                    })
                }
                None => Err(ProxyError::Request {
                    target,
                    source: e.into_error().into(),
                }),
            }
        }
    }
}

pub(super) fn request_error(target: &str, e: impl Into<crate::body::BoxError>) -> ProxyError {
    ProxyError::Request {
        target: target.to_string(),
        source: e.into(),
    }
}
