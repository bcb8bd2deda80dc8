//! SPIFFE identities (DESIGN.md "Names").
//!
//! A SPIFFE ID is `spiffe://<trust-domain><path>`. Causeway gives every cluster its own trust
//! domain, `<cluster>.<suffix>` (default suffix [`DEFAULT_TRUST_DOMAIN_SUFFIX`]), and every
//! workload a Kubernetes-style path `/ns/<namespace>/sa/<serviceaccount>`. The gateway of a
//! cluster is `spiffe://<cluster-trust-domain>/ns/causeway-system/sa/causeway-gateway`.
//!
//! Parsing follows the SPIFFE ID standard: lowercase `spiffe` scheme, a trust domain of
//! `[a-z0-9.-_]`, path segments of `[a-zA-Z0-9.-_]` that are neither empty nor `.`/`..`, and no
//! query, fragment, port, userinfo or percent-encoding.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

use crate::model::ClusterId;

/// The suffix appended to a cluster ID to form its trust domain: `east.causeway.mesh`.
pub const DEFAULT_TRUST_DOMAIN_SUFFIX: &str = "causeway.mesh";

/// Namespace of Causeway's own workloads.
pub const SYSTEM_NAMESPACE: &str = "causeway-system";
/// Service account of the east-west gateway.
pub const GATEWAY_SERVICE_ACCOUNT: &str = "causeway-gateway";
/// Service account of the federator.
pub const FEDERATOR_SERVICE_ACCOUNT: &str = "causeway-federator";

const SCHEME: &str = "spiffe://";
/// The SPIFFE standard caps a trust domain name at 255 bytes and a whole ID at 2048 bytes.
const MAX_TRUST_DOMAIN_LEN: usize = 255;
const MAX_ID_LEN: usize = 2048;

/// The trust domain of a cluster: `<cluster>.<suffix>`.
pub fn cluster_trust_domain(cluster: &ClusterId, suffix: &str) -> String {
    format!("{cluster}.{suffix}")
}

/// A string that is not a valid SPIFFE ID, with the reason.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid SPIFFE ID {input:?}: {reason}")]
pub struct InvalidSpiffeId {
    pub input: String,
    pub reason: &'static str,
}

// === impl SpiffeId ===

/// A parsed, valid SPIFFE ID.
///
/// The fields are private so that every value is valid; build one with [`FromStr`],
/// [`SpiffeId::new`], [`SpiffeId::gateway`] or [`SpiffeId::federator`].
#[derive(Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct SpiffeId {
    trust_domain: String,
    /// Empty (the trust domain's own ID) or `/seg/seg...`.
    path: String,
}

impl SpiffeId {
    /// Builds `spiffe://<trust_domain><path>`; `path` is empty or starts with `/`.
    pub fn new(trust_domain: &str, path: &str) -> Result<Self, InvalidSpiffeId> {
        format!("{SCHEME}{trust_domain}{path}").parse()
    }

    /// `spiffe://<trust_domain>/ns/<ns>/sa/<sa>`.
    pub fn workload(trust_domain: &str, ns: &str, sa: &str) -> Result<Self, InvalidSpiffeId> {
        Self::new(trust_domain, &format!("/ns/{ns}/sa/{sa}"))
    }

    /// The gateway of a trust domain:
    /// `spiffe://<trust_domain>/ns/causeway-system/sa/causeway-gateway`.
    pub fn gateway(trust_domain: &str) -> Result<Self, InvalidSpiffeId> {
        Self::workload(trust_domain, SYSTEM_NAMESPACE, GATEWAY_SERVICE_ACCOUNT)
    }

    /// The federator of a trust domain:
    /// `spiffe://<trust_domain>/ns/causeway-system/sa/causeway-federator`.
    pub fn federator(trust_domain: &str) -> Result<Self, InvalidSpiffeId> {
        Self::workload(trust_domain, SYSTEM_NAMESPACE, FEDERATOR_SERVICE_ACCOUNT)
    }

    pub fn trust_domain(&self) -> &str {
        &self.trust_domain
    }

    /// The path, empty or starting with `/`.
    pub fn path(&self) -> &str {
        &self.path
    }

    /// The namespace of a `/ns/<ns>/sa/<sa>` path.
    pub fn ns(&self) -> Option<&str> {
        self.ns_sa().map(|(ns, _)| ns)
    }

    /// The service account of a `/ns/<ns>/sa/<sa>` path.
    pub fn sa(&self) -> Option<&str> {
        self.ns_sa().map(|(_, sa)| sa)
    }

    /// Whether this is the gateway identity of its trust domain (any trust domain).
    pub fn is_gateway(&self) -> bool {
        self.ns_sa() == Some((SYSTEM_NAMESPACE, GATEWAY_SERVICE_ACCOUNT))
    }

    fn ns_sa(&self) -> Option<(&str, &str)> {
        let mut segs = self.path.strip_prefix('/')?.split('/');
        match (
            segs.next(),
            segs.next(),
            segs.next(),
            segs.next(),
            segs.next(),
        ) {
            (Some("ns"), Some(ns), Some("sa"), Some(sa), None) => Some((ns, sa)),
            _ => None,
        }
    }
}

fn is_trust_domain_char(b: u8) -> bool {
    b.is_ascii_lowercase() || b.is_ascii_digit() || matches!(b, b'.' | b'-' | b'_')
}

fn is_path_char(b: u8) -> bool {
    b.is_ascii_alphanumeric() || matches!(b, b'.' | b'-' | b'_')
}

impl FromStr for SpiffeId {
    type Err = InvalidSpiffeId;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let err = |reason| InvalidSpiffeId {
            input: s.to_string(),
            reason,
        };
        if s.is_empty() {
            return Err(err("must not be empty"));
        }
        if s.len() > MAX_ID_LEN {
            return Err(err("must be at most 2048 bytes"));
        }
        let Some(rest) = s.strip_prefix(SCHEME) else {
            return Err(err("scheme must be \"spiffe://\" (lowercase)"));
        };
        if s.contains('?') {
            return Err(err("must not have a query"));
        }
        if s.contains('#') {
            return Err(err("must not have a fragment"));
        }
        if s.contains('%') {
            return Err(err("must not contain percent-encoded characters"));
        }
        let (trust_domain, path) = match rest.find('/') {
            Some(i) => rest.split_at(i),
            None => (rest, ""),
        };
        if trust_domain.is_empty() {
            return Err(err("trust domain must not be empty"));
        }
        if trust_domain.contains('@') {
            return Err(err("must not have userinfo"));
        }
        if trust_domain.contains(':') {
            return Err(err("must not have a port"));
        }
        if trust_domain.len() > MAX_TRUST_DOMAIN_LEN {
            return Err(err("trust domain must be at most 255 bytes"));
        }
        if !trust_domain.bytes().all(is_trust_domain_char) {
            return Err(err(
                "trust domain must consist of lowercase letters, digits, '.', '-' or '_'",
            ));
        }
        if !path.is_empty() {
            // `path` starts with '/', so the first split item is the empty string before it.
            for seg in path.split('/').skip(1) {
                if seg.is_empty() {
                    return Err(err(
                        "path segments must not be empty (no '//' or trailing '/')",
                    ));
                }
                if seg == "." || seg == ".." {
                    return Err(err("path segments must not be '.' or '..'"));
                }
                if !seg.bytes().all(is_path_char) {
                    return Err(err(
                        "path segments must consist of letters, digits, '.', '-' or '_'",
                    ));
                }
            }
        }
        Ok(Self {
            trust_domain: trust_domain.to_string(),
            path: path.to_string(),
        })
    }
}

impl TryFrom<String> for SpiffeId {
    type Error = InvalidSpiffeId;
    fn try_from(s: String) -> Result<Self, Self::Error> {
        s.parse()
    }
}

impl From<SpiffeId> for String {
    fn from(id: SpiffeId) -> String {
        id.to_string()
    }
}

impl fmt::Display for SpiffeId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{SCHEME}{}{}", self.trust_domain, self.path)
    }
}

impl fmt::Debug for SpiffeId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "\"{self}\"")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_workload_id() {
        let id: SpiffeId = "spiffe://east.causeway.mesh/ns/shop/sa/cart"
            .parse()
            .unwrap();
        assert_eq!(id.trust_domain(), "east.causeway.mesh");
        assert_eq!(id.path(), "/ns/shop/sa/cart");
        assert_eq!(id.ns(), Some("shop"));
        assert_eq!(id.sa(), Some("cart"));
        assert!(!id.is_gateway());
        assert_eq!(
            id.to_string(),
            "spiffe://east.causeway.mesh/ns/shop/sa/cart"
        );
    }

    #[test]
    fn parses_other_paths_without_ns_sa() {
        let id: SpiffeId = "spiffe://example.org".parse().unwrap();
        assert_eq!(id.path(), "");
        assert_eq!(id.ns(), None);
        assert_eq!(id.to_string(), "spiffe://example.org");

        let id: SpiffeId = "spiffe://example.org/Payments/v1.2_x-y".parse().unwrap();
        assert_eq!(id.ns(), None);
        assert_eq!(id.sa(), None);

        let id: SpiffeId = "spiffe://example.org/ns/a/sa/b/extra".parse().unwrap();
        assert_eq!(id.ns(), None);
    }

    #[test]
    fn gateway_and_federator_ids() {
        let td = cluster_trust_domain(
            &ClusterId::new("east").unwrap(),
            DEFAULT_TRUST_DOMAIN_SUFFIX,
        );
        assert_eq!(td, "east.causeway.mesh");
        let gw = SpiffeId::gateway(&td).unwrap();
        assert_eq!(
            gw.to_string(),
            "spiffe://east.causeway.mesh/ns/causeway-system/sa/causeway-gateway"
        );
        assert!(gw.is_gateway());
        let fed = SpiffeId::federator(&td).unwrap();
        assert_eq!(
            fed.to_string(),
            "spiffe://east.causeway.mesh/ns/causeway-system/sa/causeway-federator"
        );
        assert!(!fed.is_gateway());
        assert_eq!(fed.ns(), Some("causeway-system"));
        assert_eq!(fed.sa(), Some("causeway-federator"));

        let err = SpiffeId::gateway("East").unwrap_err();
        assert!(err.reason.contains("trust domain"), "{err}");
    }

    #[test]
    fn rejects_invalid_ids_with_reason() {
        let cases = [
            ("", "empty"),
            ("http://example.org/a", "scheme"),
            ("SPIFFE://example.org/a", "scheme"),
            ("spiffe:/example.org/a", "scheme"),
            ("spiffe:///a", "trust domain must not be empty"),
            ("spiffe://", "trust domain must not be empty"),
            ("spiffe://Example.org/a", "trust domain"),
            ("spiffe://exa mple.org/a", "trust domain"),
            ("spiffe://example.org:8443/a", "port"),
            ("spiffe://user@example.org/a", "userinfo"),
            ("spiffe://example.org/a?x=1", "query"),
            ("spiffe://example.org/a#frag", "fragment"),
            ("spiffe://example.org/a%20b", "percent"),
            ("spiffe://example.org/", "empty"),
            ("spiffe://example.org/a//b", "empty"),
            ("spiffe://example.org/a/", "empty"),
            ("spiffe://example.org/a/../b", "'..'"),
            ("spiffe://example.org/./b", "'.'"),
            ("spiffe://example.org/a/b c", "letters"),
        ];
        for (input, reason) in cases {
            let err = input.parse::<SpiffeId>().unwrap_err();
            assert_eq!(err.input, input);
            assert!(
                err.reason.contains(reason),
                "{input:?}: expected reason containing {reason:?}, got {:?}",
                err.reason
            );
            let shown = err.to_string();
            assert!(shown.contains(&format!("{input:?}")), "{shown}");
        }
    }

    #[test]
    fn length_limits() {
        let td = "a".repeat(256);
        let err = format!("spiffe://{td}/x").parse::<SpiffeId>().unwrap_err();
        assert!(err.reason.contains("255"));
        let path = "/a".repeat(1100);
        let err = format!("spiffe://td{path}")
            .parse::<SpiffeId>()
            .unwrap_err();
        assert!(err.reason.contains("2048"));
    }

    #[test]
    fn serde_as_string() {
        let id = SpiffeId::gateway("west.causeway.mesh").unwrap();
        let json = serde_json::to_string(&id).unwrap();
        assert_eq!(
            json,
            "\"spiffe://west.causeway.mesh/ns/causeway-system/sa/causeway-gateway\""
        );
        let back: SpiffeId = serde_json::from_str(&json).unwrap();
        assert_eq!(back, id);
        assert!(serde_json::from_str::<SpiffeId>("\"spiffe://x/a?b\"").is_err());
    }
}
