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
    let first = split_outside_quotes(value, ',').next()?;
    field(first, "URI")
}

/// The value of `key` in one element (`Key=value;Key="quoted, value"`), unquoted.
fn field(element: &str, key: &str) -> Option<String> {
    split_outside_quotes(element, ';').find_map(|kv| {
        let (k, v) = kv.split_once('=')?;
        k.trim()
            .eq_ignore_ascii_case(key)
            .then(|| v.trim().trim_matches('"').to_string())
    })
}

/// Splits at `sep` except inside double quotes (Envoy quotes values holding `,`, `;`, `=`).
fn split_outside_quotes(s: &str, sep: char) -> impl Iterator<Item = &str> {
    let mut quoted = false;
    let mut escaped = false;
    let mut start = 0;
    let mut cuts = Vec::new();
    for (i, c) in s.char_indices() {
        match c {
            _ if escaped => escaped = false,
            '\\' if quoted => escaped = true,
            '"' => quoted = !quoted,
            c if c == sep && !quoted => {
                cuts.push(&s[start..i]);
                start = i + c.len_utf8();
            }
            _ => {}
        }
    }
    cuts.push(&s[start..]);
    cuts.into_iter()
}

/// What [`keep_trust_domain`] removed.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Stripped {
    /// Elements whose `URI` or `By` is a SPIFFE ID of another trust domain.
    pub foreign: usize,
    /// Elements without a `URI` that is a SPIFFE ID, or not valid UTF-8 at all.
    pub malformed: usize,
}

/// Most elements kept from one peer; a real chain has one per gateway hop.
const MAX_ELEMENTS: usize = 8;

/// Keeps, of the XFCC a peer gateway of trust domain `td` sent, only the elements in which
/// that peer vouches for identities of its own trust domain (DESIGN.md "Gateway transport"):
/// `URI` (and `By`, when present) must be SPIFFE IDs of `td`. Everything else is removed.
pub(crate) fn keep_trust_domain(headers: &mut HeaderMap, td: &str) -> Stripped {
    let mut stripped = Stripped::default();
    let values: Vec<HeaderValue> = headers.get_all(&XFCC).iter().cloned().collect();
    if values.is_empty() {
        return stripped;
    }
    headers.remove(&XFCC);
    let of_td = |v: &str| {
        v.parse::<causeway_api::spiffe::SpiffeId>()
            .is_ok_and(|id| id.trust_domain() == td)
    };
    let mut kept: Vec<&str> = Vec::new();
    let texts: Vec<Option<&str>> = values.iter().map(|v| v.to_str().ok()).collect();
    for text in texts {
        let Some(text) = text else {
            stripped.malformed += 1;
            continue;
        };
        for element in split_outside_quotes(text, ',').map(str::trim) {
            if element.is_empty() {
                continue;
            }
            let uri = field(element, "URI");
            let by = field(element, "By");
            let spiffe = |v: &Option<String>| {
                v.as_deref()
                    .is_some_and(|v| v.parse::<causeway_api::spiffe::SpiffeId>().is_ok())
            };
            if !spiffe(&uri) || (by.is_some() && !spiffe(&by)) {
                stripped.malformed += 1;
            } else if !uri.as_deref().is_some_and(of_td) || !by.as_deref().is_none_or(of_td) {
                stripped.foreign += 1;
            } else if kept.len() >= MAX_ELEMENTS {
                stripped.malformed += 1;
            } else {
                kept.push(element);
            }
        }
    }
    if !kept.is_empty() {
        if let Ok(v) = HeaderValue::from_str(&kept.join(",")) {
            headers.insert(XFCC, v);
        }
    }
    stripped
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

    #[test]
    fn from_a_peer_only_its_own_trust_domain_survives() {
        let mut h = HeaderMap::new();
        let own = "By=spiffe://west.mesh/ns/causeway-system/sa/causeway-gateway;URI=spiffe://west.mesh/ns/shop/sa/cart";
        let forged = "By=spiffe://west.mesh/ns/causeway-system/sa/causeway-gateway;URI=spiffe://east.mesh/ns/shop/sa/admin";
        let forged_by = "By=spiffe://east.mesh/gw;URI=spiffe://west.mesh/ns/a/sa/b";
        let quoted = r#"Subject="CN=x,O=y";URI=spiffe://west.mesh/ns/q/sa/q"#;
        h.append(XFCC, format!("{forged},{own}").parse().unwrap());
        h.append(
            XFCC,
            format!("{forged_by}, URI=not-a-spiffe-id ,{quoted}")
                .parse()
                .unwrap(),
        );
        let s = keep_trust_domain(&mut h, "west.mesh");
        assert_eq!(
            s,
            Stripped {
                foreign: 2,
                malformed: 1
            }
        );
        assert_eq!(h.get_all(&XFCC).iter().count(), 1);
        assert_eq!(h[&XFCC], format!("{own},{quoted}").as_str());
        // The caller is now the first element the peer may vouch for.
        assert_eq!(
            first_uri(&h).as_deref(),
            Some("spiffe://west.mesh/ns/shop/sa/cart")
        );

        let mut only_forged = HeaderMap::new();
        only_forged.insert(XFCC, forged.parse().unwrap());
        assert_eq!(keep_trust_domain(&mut only_forged, "west.mesh").foreign, 1);
        assert!(only_forged.get(&XFCC).is_none());
        assert_eq!(
            keep_trust_domain(&mut HeaderMap::new(), "west.mesh"),
            Stripped::default()
        );
    }

    #[test]
    fn a_long_chain_keeps_at_most_eight() {
        let e = "URI=spiffe://west.mesh/ns/a/sa/b";
        let mut h = HeaderMap::new();
        h.insert(XFCC, vec![e; 20].join(",").parse().unwrap());
        let s = keep_trust_domain(&mut h, "west.mesh");
        assert_eq!(s.malformed, 12);
        assert_eq!(h[&XFCC].to_str().unwrap().split(',').count(), MAX_ELEMENTS);
    }
}
