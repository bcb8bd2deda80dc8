//! Replies the gateway makes itself, as text or, to a gRPC caller, as a gRPC status.

use http::{HeaderValue, Response, StatusCode};

use crate::body::{self, Body};
use crate::xfcc;

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
