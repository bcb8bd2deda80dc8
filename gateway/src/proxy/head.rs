//! Checks and reads of a request head that both directions make.

use http::{header, Method};

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

/// The request's authority: `:authority` (HTTP/2, absolute form) or else `Host`.
pub(crate) fn request_authority<B>(req: &http::Request<B>) -> Option<String> {
    if let Some(a) = req.uri().authority() {
        return Some(a.as_str().to_string());
    }
    req.headers()
        .get(header::HOST)
        .and_then(|h| h.to_str().ok())
        .map(str::to_string)
}

/// A request builder with `parts`' method and headers (for each attempt of a retried request).
pub(crate) fn clone_head(parts: &http::request::Parts) -> http::request::Builder {
    let mut b = http::Request::builder().method(parts.method.clone());
    if let Some(h) = b.headers_mut() {
        *h = parts.headers.clone();
    }
    b
}

/// Whether the request is gRPC (`content-type: application/grpc[+proto|...]`).
pub(crate) fn is_grpc(headers: &http::HeaderMap) -> bool {
    headers
        .get(header::CONTENT_TYPE)
        .is_some_and(|v| v.as_bytes().starts_with(b"application/grpc"))
}

#[cfg(test)]
mod head_tests {
    use super::*;
    use http::HeaderValue;

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
