//! `x-forwarded-client-cert` in Envoy's format (`By=<proxy>;URI=<client>`, elements joined
//! by `,`, the oldest hop first) and the hop-by-hop header hygiene of the proxy paths.

use http::header::{self, HeaderMap, HeaderName, HeaderValue};

pub const XFCC: HeaderName = HeaderName::from_static("x-forwarded-client-cert");
/// The cluster a request entered the mesh from, set by the egress gateway and overwritten
/// at ingress from the authenticated peer.
pub const SOURCE_CLUSTER: HeaderName = HeaderName::from_static("x-causeway-source-cluster");
/// Set on 503s of the circuit breaker.
pub const OVERLOADED: HeaderName = HeaderName::from_static("x-causeway-overloaded");
/// Names what refused a request the gateway answered itself.
pub const GATEWAY_ERROR: HeaderName = HeaderName::from_static("x-causeway-error");

/// One XFCC element: the proxy that authenticated the client, and the client's SPIFFE ID.
pub(crate) fn element(by: &str, uri: &str) -> String {
    format!("By={by};URI={uri}")
}

/// Appends `element` to an existing XFCC value (a forwarded chain), or starts one.
pub(crate) fn append(headers: &mut HeaderMap, element: &str) {
    let value = match headers.get(&XFCC).and_then(|v| v.to_str().ok()) {
        Some(existing) if !existing.is_empty() => format!("{existing},{element}"),
        _ => element.to_string(),
    };
    headers.remove(&XFCC);
    if let Ok(v) = HeaderValue::from_str(&value) {
        headers.insert(XFCC, v);
    }
}

/// The `URI` of the first (original caller's) element.
pub(crate) fn first_uri(headers: &HeaderMap) -> Option<String> {
    let value = headers.get(&XFCC)?.to_str().ok()?;
    let first = value.split(',').next()?;
    first.split(';').find_map(|kv| {
        let (k, v) = kv.split_once('=')?;
        k.trim()
            .eq_ignore_ascii_case("URI")
            .then(|| v.trim().trim_matches('"').to_string())
    })
}

/// Removes the headers that only a gateway may set.
pub(crate) fn strip_gateway_headers(headers: &mut HeaderMap) {
    headers.remove(&XFCC);
    headers.remove(&SOURCE_CLUSTER);
}

/// Removes connection-specific headers (RFC 9110 7.6.1; forbidden in HTTP/2).
pub(crate) fn strip_hop_by_hop(headers: &mut HeaderMap) {
    if let Some(conn) = headers.get(header::CONNECTION).cloned() {
        if let Ok(conn) = conn.to_str() {
            for name in conn.split(',') {
                if let Ok(name) = HeaderName::from_bytes(name.trim().as_bytes()) {
                    headers.remove(name);
                }
            }
        }
    }
    for h in [
        header::CONNECTION,
        header::TRANSFER_ENCODING,
        header::UPGRADE,
        header::PROXY_AUTHORIZATION,
        HeaderName::from_static("keep-alive"),
        HeaderName::from_static("proxy-connection"),
    ] {
        headers.remove(h);
    }
    // `te: trailers` is the one TE value HTTP/2 allows, and gRPC needs it.
    if headers
        .get(header::TE)
        .is_some_and(|v| !v.as_bytes().eq_ignore_ascii_case(b"trailers"))
    {
        headers.remove(header::TE);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn append_and_first_uri() {
        let mut h = HeaderMap::new();
        append(
            &mut h,
            &element("spiffe://a/gw", "spiffe://a/ns/x/sa/client"),
        );
        append(&mut h, &element("spiffe://b/gw", "spiffe://a/gw"));
        assert_eq!(
            h[&XFCC],
            "By=spiffe://a/gw;URI=spiffe://a/ns/x/sa/client,By=spiffe://b/gw;URI=spiffe://a/gw"
        );
        assert_eq!(first_uri(&h).as_deref(), Some("spiffe://a/ns/x/sa/client"));
        strip_gateway_headers(&mut h);
        assert!(first_uri(&h).is_none());
    }

    #[test]
    fn hop_by_hop() {
        let mut h = HeaderMap::new();
        h.insert("connection", "keep-alive, x-foo".parse().unwrap());
        h.insert("x-foo", "1".parse().unwrap());
        h.insert("te", "trailers".parse().unwrap());
        h.insert("traceparent", "00-abc-def-01".parse().unwrap());
        strip_hop_by_hop(&mut h);
        assert!(h.get("x-foo").is_none());
        assert!(h.get("connection").is_none());
        assert_eq!(h["te"], "trailers");
        assert_eq!(h["traceparent"], "00-abc-def-01");
    }
}
