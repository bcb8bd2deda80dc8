//! Clusterset names as callers and peer gateways write them in `:authority` / `Host`:
//! `<svc>.<ns>.svc.clusterset.local[:port]` for a service, and
//! `<name>.<cluster>.<svc>.<ns>.svc.clusterset.local[:port]` for one endpoint of a headless
//! service. Case-insensitive, a trailing dot allowed; every label must be a valid name.

pub use crate::model::CLUSTERSET_SUFFIX;
use crate::model::{validate_dns_label, ServiceKey};

/// One endpoint of a headless service, as a peer's egress asks for it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PinnedAuthority {
    pub service: ServiceKey,
    pub cluster: String,
    /// The endpoint's DNS label: its hostname or dashed address.
    pub endpoint: String,
    pub port: Option<u16>,
}

/// The labels of `<labels>.svc.clusterset.local[:port]` left of the suffix, lowercased and
/// without a trailing dot, and the port: what both authority forms share.
fn clusterset_labels(authority: &str) -> Option<(String, Option<u16>)> {
    let (host, port) = match authority.rsplit_once(':') {
        Some((h, p)) if !h.ends_with(']') && !h.contains(':') => (h, Some(p.parse().ok()?)),
        Some(_) => return None,
        None => (authority, None),
    };
    let host = host.trim_end_matches('.').to_ascii_lowercase();
    let rest = host.strip_suffix(CLUSTERSET_SUFFIX)?.to_string();
    Some((rest, port))
}

/// Parses `<svc>.<ns>.svc.clusterset.local[:port]`.
pub fn parse_authority(authority: &str) -> Option<(ServiceKey, Option<u16>)> {
    let (rest, port) = clusterset_labels(authority)?;
    let (name, namespace) = rest.split_once('.')?;
    if namespace.contains('.') {
        return None;
    }
    Some((ServiceKey::new(namespace, name).ok()?, port))
}

/// Parses `<name>.<cluster>.<svc>.<ns>.svc.clusterset.local[:port]`.
pub fn parse_pinned_authority(authority: &str) -> Option<PinnedAuthority> {
    let (rest, port) = clusterset_labels(authority)?;
    let labels: Vec<&str> = rest.split('.').collect();
    let [endpoint, cluster, name, namespace] = labels[..] else {
        return None;
    };
    validate_dns_label("endpoint", endpoint).ok()?;
    validate_dns_label("cluster", cluster).ok()?;
    Some(PinnedAuthority {
        service: ServiceKey::new(namespace, name).ok()?,
        cluster: cluster.to_string(),
        endpoint: endpoint.to_string(),
        port,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn authority_parsing() {
        let (svc, port) = parse_authority("cart.shop.svc.clusterset.local:8080").unwrap();
        assert_eq!(svc.to_string(), "shop/cart");
        assert_eq!(port, Some(8080));
        let (svc, port) = parse_authority("Cart.Shop.svc.clusterset.local.").unwrap();
        assert_eq!(svc.name, "cart");
        assert_eq!(port, None);
        assert!(parse_authority("cart.shop.svc.cluster.local").is_none());
        assert!(parse_authority("a.b.c.svc.clusterset.local").is_none());
        assert!(parse_authority("cart.shop.svc.clusterset.local:x").is_none());
        assert!(parse_authority("[::1]:80").is_none());
        assert!(parse_authority(".shop.svc.clusterset.local").is_none());
        assert!(
            parse_authority("ca_rt.shop.svc.clusterset.local").is_none(),
            "not a label"
        );
        assert!(parse_authority("cart.shop.svc.clusterset.local:70000").is_none());
    }

    #[test]
    fn pinned_authority_parsing() {
        let p = parse_pinned_authority("DB-0.West.db.prod.svc.clusterset.local:5432").unwrap();
        assert_eq!(p.service.to_string(), "prod/db");
        assert_eq!((p.cluster.as_str(), p.endpoint.as_str()), ("west", "db-0"));
        assert_eq!(p.port, Some(5432));
        let p = parse_pinned_authority("10-1-7-1.west.db.prod.svc.clusterset.local").unwrap();
        assert_eq!((p.endpoint.as_str(), p.port), ("10-1-7-1", None));
        assert!(parse_pinned_authority("db.prod.svc.clusterset.local").is_none());
        assert!(parse_pinned_authority("x.db-0.west.db.prod.svc.clusterset.local").is_none());
        assert!(parse_pinned_authority("db-0..db.prod.svc.clusterset.local").is_none());
        assert!(parse_pinned_authority("db_0.west.db.prod.svc.clusterset.local").is_none());
    }
}
