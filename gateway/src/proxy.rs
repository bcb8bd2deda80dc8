//! Helpers both directions share: replies the gateway makes itself, request accounting
//! (metrics and the JSON access log), and byte pumping for tunnels.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Instant;

use http::{HeaderValue, Method, Response, StatusCode};
use serde::Serialize;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::{TcpListener, TcpStream};

use crate::body::{self, Body};
use crate::shared::Shared;
use crate::xfcc;

/// Either end of a tunnel.
pub(crate) trait Io: AsyncRead + AsyncWrite + Unpin + Send {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send> Io for T {}

/// Methods whose requests may be sent twice (RFC 9110 9.2.2).
pub(crate) fn is_idempotent(m: &Method) -> bool {
    matches!(
        *m,
        Method::GET | Method::HEAD | Method::OPTIONS | Method::PUT | Method::DELETE | Method::TRACE
    )
}

/// Why a request head is over the limits (`max_bytes` as HTTP/2 counts a header list: name,
/// value and 32 per header; `max_count` headers), or `None`.
pub(crate) fn oversized_head(
    headers: &http::HeaderMap,
    max_bytes: u32,
    max_count: u32,
) -> Option<String> {
    let count = headers.len();
    if count > max_count as usize {
        return Some(format!(
            "the request has {count} headers; at most {max_count} are allowed"
        ));
    }
    let size: usize = headers
        .iter()
        .map(|(k, v)| k.as_str().len() + v.len() + 32)
        .sum();
    (size > max_bytes as usize)
        .then(|| format!("the request headers are {size} bytes; at most {max_bytes} are allowed"))
}

/// Why a request's Host is malformed (RFC 9112 3.2: an HTTP/1.1 request has exactly one Host;
/// RFC 9113 8.3.1: a Host beside `:authority` must agree with it), or `None`.
pub(crate) fn malformed_host<B>(req: &http::Request<B>) -> Option<&'static str> {
    let hosts = req.headers().get_all(http::header::HOST).iter().count();
    if hosts > 1 {
        return Some("the request has more than one Host header");
    }
    let host = req.headers().get(http::header::HOST);
    match req.version() {
        http::Version::HTTP_11 if hosts == 0 => Some("an HTTP/1.1 request needs a Host header"),
        http::Version::HTTP_2 => match (host, req.uri().authority()) {
            (Some(h), Some(a)) if !h.as_bytes().eq_ignore_ascii_case(a.as_str().as_bytes()) => {
                Some("the Host header and :authority differ")
            }
            _ => None,
        },
        _ => None,
    }
}

/// A response the gateway makes itself; `error` goes in `x-causeway-error`.
pub(crate) fn reply(status: StatusCode, error: &'static str, message: String) -> Response<Body> {
    let mut resp = Response::new(body::full(format!("{message}\n")));
    *resp.status_mut() = status;
    resp.headers_mut().insert(
        http::header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    resp.headers_mut()
        .insert(xfcc::GATEWAY_ERROR, HeaderValue::from_static(error));
    resp.extensions_mut().insert(ReplyMessage(message));
    resp
}

/// The text of a [`reply`], for [`grpc_reply`] (the body is already a stream).
#[derive(Clone)]
struct ReplyMessage(String);

/// The gRPC status a gateway error of HTTP `status` stands for. By meaning, not by the HTTP
/// mapping of the gRPC spec (which makes every 5xx UNAVAILABLE): a timeout is
/// DEADLINE_EXCEEDED, no such service NOT_FOUND, a refusal PERMISSION_DENIED, a limit
/// RESOURCE_EXHAUSTED; what a client may retry elsewhere (502, 503) is UNAVAILABLE.
pub(crate) fn grpc_status_of(status: StatusCode) -> u8 {
    match status.as_u16() {
        400 | 421 => 3,  // INVALID_ARGUMENT
        403 => 7,        // PERMISSION_DENIED
        404 => 5,        // NOT_FOUND
        429 | 431 => 8,  // RESOURCE_EXHAUSTED
        502 | 503 => 14, // UNAVAILABLE
        504 => 4,        // DEADLINE_EXCEEDED
        _ => 13,         // INTERNAL
    }
}

/// A gateway error as a gRPC caller understands it: HTTP 200, `content-type: application/grpc`,
/// no body and `grpc-status` / `grpc-message` in the headers (a trailers-only response). Only
/// the gateway's own replies (with `x-causeway-error`) are changed; a backend's answer passes
/// as it came.
pub(crate) fn grpc_reply(resp: Response<Body>) -> Response<Body> {
    if resp.status() == StatusCode::OK || !resp.headers().contains_key(xfcc::GATEWAY_ERROR) {
        return resp;
    }
    let status = resp.status();
    let message = match resp.extensions().get::<ReplyMessage>() {
        Some(m) => m.0.clone(),
        // A peer's ingress reply: its text is in the body, which we do not wait for.
        None => format!(
            "{} ({})",
            status.canonical_reason().unwrap_or("gateway error"),
            resp.headers()
                .get(xfcc::GATEWAY_ERROR)
                .and_then(|v| v.to_str().ok())
                .unwrap_or("gateway")
        ),
    };
    let mut out = Response::new(body::full(""));
    let h = out.headers_mut();
    h.insert(
        http::header::CONTENT_TYPE,
        HeaderValue::from_static("application/grpc"),
    );
    h.insert(
        "grpc-status",
        HeaderValue::from(u16::from(grpc_status_of(status))),
    );
    if let Ok(v) = HeaderValue::from_str(&percent_encode(&message)) {
        h.insert("grpc-message", v);
    }
    for name in [
        xfcc::GATEWAY_ERROR,
        xfcc::OVERLOADED,
        http::header::RETRY_AFTER,
    ] {
        if let Some(v) = resp.headers().get(&name) {
            h.insert(name, v.clone());
        }
    }
    out
}

/// `grpc-message` is percent-encoded: bytes outside printable ASCII and `%` itself.
fn percent_encode(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.trim_end().bytes() {
        if (0x20..=0x7e).contains(&b) && b != b'%' {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

#[cfg(test)]
mod grpc_tests {
    use super::*;

    #[test]
    fn gateway_errors_become_grpc_statuses_and_backend_answers_pass() {
        let r = grpc_reply(reply(
            StatusCode::SERVICE_UNAVAILABLE,
            "no_endpoints",
            "no ready endpoint for cart — 100%".into(),
        ));
        assert_eq!(r.status(), StatusCode::OK);
        assert_eq!(r.headers()["content-type"], "application/grpc");
        assert_eq!(r.headers()["grpc-status"], "14");
        assert_eq!(
            r.headers()["grpc-message"],
            "no ready endpoint for cart %E2%80%94 100%25"
        );
        assert_eq!(r.headers()[xfcc::GATEWAY_ERROR], "no_endpoints");
        for (http, grpc) in [(504, 4), (404, 5), (403, 7), (429, 8), (400, 3), (500, 13)] {
            assert_eq!(
                grpc_status_of(StatusCode::from_u16(http).unwrap()),
                grpc,
                "{http}"
            );
        }
        // A backend's own 503 is not ours to rewrite.
        let mut backend = Response::new(body::full("busy"));
        *backend.status_mut() = StatusCode::SERVICE_UNAVAILABLE;
        assert_eq!(
            grpc_reply(backend).status(),
            StatusCode::SERVICE_UNAVAILABLE
        );
    }
}

#[cfg(test)]
mod head_tests {
    use super::*;

    #[test]
    fn hosts_missing_twice_or_disagreeing_are_named() {
        let req = |v: http::Version, uri: &str, hosts: &[&str]| {
            let mut b = http::Request::builder().version(v).uri(uri);
            for h in hosts {
                b = b.header(http::header::HOST, *h);
            }
            b.body(()).unwrap()
        };
        use http::Version as V;
        assert_eq!(malformed_host(&req(V::HTTP_11, "/", &["a"])), None);
        assert!(malformed_host(&req(V::HTTP_11, "/", &[])).is_some());
        assert!(malformed_host(&req(V::HTTP_11, "/", &["a", "b"])).is_some());
        assert_eq!(malformed_host(&req(V::HTTP_10, "/", &[])), None);
        assert_eq!(malformed_host(&req(V::HTTP_2, "http://a:80/", &[])), None);
        assert_eq!(
            malformed_host(&req(V::HTTP_2, "http://a:80/", &["A:80"])),
            None
        );
        assert!(malformed_host(&req(V::HTTP_2, "http://a:80/", &["b:80"])).is_some());
    }

    #[test]
    fn heads_over_either_limit_are_named() {
        let mut h = http::HeaderMap::new();
        h.insert("x-a", HeaderValue::from_static("1"));
        assert_eq!(oversized_head(&h, 100, 10), None);
        h.insert("x-big", HeaderValue::from_str(&"a".repeat(200)).unwrap());
        assert!(oversized_head(&h, 100, 10).unwrap().contains("at most 100"));
        let mut many = http::HeaderMap::new();
        for i in 0..11 {
            many.append(
                http::HeaderName::from_bytes(format!("x-{i}").as_bytes()).unwrap(),
                HeaderValue::from_static("v"),
            );
        }
        assert!(oversized_head(&many, 10_000, 10)
            .unwrap()
            .contains("11 headers"));
    }
}

#[derive(Serialize)]
struct AccessLog<'a> {
    direction: &'a str,
    method: &'a str,
    authority: &'a str,
    path: &'a str,
    status: u16,
    duration_ms: f64,
    service: &'a str,
    source_cluster: &'a str,
    destination_cluster: &'a str,
    attempts: u32,
    #[serde(skip_serializing_if = "Option::is_none")]
    traceparent: Option<&'a str>,
    /// With tracing on: this request's trace and the gateway's span in it.
    #[serde(skip_serializing_if = "Option::is_none")]
    trace_id: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    span_id: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    error: Option<&'a str>,
}

/// The path and `traceparent` of a request, as the access log records them.
pub(crate) fn path_and_traceparent<B>(req: &http::Request<B>) -> (String, Option<String>) {
    let path = req
        .uri()
        .path_and_query()
        .map_or("/", |p| p.as_str())
        .to_string();
    let traceparent = req
        .headers()
        .get("traceparent")
        .and_then(|v| v.to_str().ok())
        .map(str::to_string);
    (path, traceparent)
}

/// What one request did, for metrics and the access log.
pub(crate) struct Record<'a> {
    pub(crate) direction: &'static str,
    pub(crate) method: &'a Method,
    pub(crate) authority: &'a str,
    pub(crate) path: &'a str,
    pub(crate) service: &'a str,
    pub(crate) source_cluster: &'a str,
    pub(crate) destination_cluster: &'a str,
    pub(crate) attempts: u32,
    pub(crate) traceparent: Option<&'a str>,
    pub(crate) start: Instant,
    /// This request's span, when tracing is on.
    pub(crate) span: Option<crate::trace::SpanContext>,
}

impl Record<'_> {
    /// Counts the request under its outcome: an HTTP status, or `tcp` / `tcp_error` for tunnels.
    pub(crate) fn finish(&self, shared: &Shared, code: &str, status: u16, error: Option<&str>) {
        let elapsed = self.start.elapsed();
        shared
            .metrics
            .requests
            .with_label_values(&[
                self.direction,
                self.service,
                self.source_cluster,
                self.destination_cluster,
                code,
            ])
            .inc();
        shared
            .metrics
            .request_duration
            .observe(elapsed.as_secs_f64());
        if let Some(ctx) = self.span {
            use crate::trace::{int, string};
            let end = crate::trace::now_unix_ns();
            let mut attributes = vec![
                ("http.request.method", string(self.method.as_str())),
                ("url.path", string(self.path)),
                ("server.address", string(self.authority)),
                ("causeway.service", string(self.service)),
                ("causeway.source_cluster", string(self.source_cluster)),
                (
                    "causeway.destination_cluster",
                    string(self.destination_cluster),
                ),
                ("causeway.attempts", int(i64::from(self.attempts))),
            ];
            if code.starts_with("tcp") {
                attributes.push(("causeway.outcome", string(code)));
            } else {
                attributes.push(("http.response.status_code", int(i64::from(status))));
            }
            if let Some(e) = error {
                attributes.push(("error.type", string(e)));
            }
            shared.tracer.finish(crate::trace::Span {
                ctx,
                name: format!("{} {}", self.direction, self.service),
                kind: if self.direction == "ingress" { 2 } else { 3 },
                start_unix_ns: end.saturating_sub(elapsed.as_nanos()),
                end_unix_ns: end,
                attributes,
                error: status >= 500 || error.is_some(),
            });
        }
        if shared.config.access_log {
            let line = AccessLog {
                direction: self.direction,
                method: self.method.as_str(),
                authority: self.authority,
                path: self.path,
                status,
                duration_ms: elapsed.as_secs_f64() * 1000.0,
                service: self.service,
                source_cluster: self.source_cluster,
                destination_cluster: self.destination_cluster,
                attempts: self.attempts,
                traceparent: self.traceparent,
                trace_id: self.span.map(|s| s.trace_id_hex()),
                span_id: self.span.map(|s| s.span_id_hex()),
                error,
            };
            if let Ok(json) = serde_json::to_string(&line) {
                println!("{json}");
            }
        }
    }
}

/// The one accept loop of the gateway's listeners (egress, import ports, peer): accepts until
/// shutdown, counts each open connection for the drain, and drops it at the hard stop. An accept
/// error (out of descriptors, say) is logged under `what` and retried after 50 ms.
pub(crate) async fn serve<F, Fut>(
    shared: Arc<Shared>,
    listener: TcpListener,
    what: &'static str,
    handle: F,
) where
    F: Fn(Arc<Shared>, TcpStream, SocketAddr) -> Fut + Clone + Send + 'static,
    Fut: std::future::Future<Output = ()> + Send + 'static,
{
    let shutdown = shared.shutdown.clone();
    loop {
        let (stream, remote) = tokio::select! {
            _ = shutdown.cancelled() => return,
            r = listener.accept() => match r {
                Ok(pair) => pair,
                Err(e) => {
                    tracing::warn!(listener = what, error = %e, "accept failed");
                    tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        let _ = stream.set_nodelay(true);
        let (shared, handle) = (shared.clone(), handle.clone());
        tokio::spawn(async move {
            let _open = shared.conns.enter();
            let stop = shared.hard_stop.clone();
            tokio::select! {
                _ = stop.cancelled() => {}
                _ = handle(shared.clone(), stream, remote) => {}
            }
        });
    }
}

/// Copies both ways until either side closes, then shuts the other down.
pub(crate) async fn pump(mut a: impl Io, mut b: impl Io) {
    if let Err(e) = tokio::io::copy_bidirectional(&mut a, &mut b).await {
        tracing::debug!(error = %e, "tunnel ended");
    }
}
