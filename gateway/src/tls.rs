//! The gateway's rustls configurations, rebuilt when the certificate files change or a config
//! snapshot brings new peer trust bundles, and swapped as one [`TlsState`].
//!
//! - peer listener: requires a client certificate chaining to our bundle or any peer's bundle;
//!   the SPIFFE ID (a known peer's gateway) is checked after the handshake ([`authenticate_peer`]);
//! - peer dialing: expects the peer cluster's exact gateway ID, verified against its bundle;
//! - federator: expects `SpiffeId::federator(<own trust domain>)`;
//! - backends (`mtls` mode): any SPIFFE ID of our own trust domain, against our bundle.

use std::collections::HashMap;
use std::io;
use std::path::Path;
use std::sync::Arc;

use causeway_api::spiffe::SpiffeId;
use causeway_api::tls::{self as api_tls, ExpectedPeer, Identity, TlsError, TrustBundle};
use rustls::CertificateError;
use rustls_pki_types::{CertificateDer, ServerName, TrustAnchor, UnixTime};

use crate::table::Tables;

pub(crate) const ALPN_H2: &[u8] = b"h2";
pub(crate) const ALPN_H1: &[u8] = b"http/1.1";

/// The files the identity comes from.
#[derive(Debug, Clone)]
pub(crate) struct TlsFiles {
    pub(crate) cert: std::path::PathBuf,
    pub(crate) key: std::path::PathBuf,
    pub(crate) bundle: std::path::PathBuf,
}

impl TlsFiles {
    pub(crate) fn load(&self) -> Result<(Identity, TrustBundle), TlsError> {
        let identity = Identity::load(&self.cert, &self.key)?;
        let bundle = TrustBundle::load(&self.bundle)?;
        Ok((identity, bundle))
    }

    pub(crate) fn paths(&self) -> [&Path; 3] {
        [&self.cert, &self.key, &self.bundle]
    }
}

/// Everything TLS, for one identity and one set of peers.
pub(crate) struct TlsState {
    pub(crate) identity: Identity,
    /// The validity of `identity`'s leaf, read once per build (expiry metric, `/ready`).
    pub(crate) validity: Option<causeway_api::tls::Validity>,
    pub(crate) own_id: SpiffeId,
    pub(crate) local_bundle: TrustBundle,
    pub(crate) server: Arc<rustls::ServerConfig>,
    /// Local callers that speak TLS to the egress (HTTP ports): a client certificate chaining
    /// to our own bundle is required; its SPIFFE ID goes into XFCC.
    pub(crate) egress: Arc<rustls::ServerConfig>,
    pub(crate) federator: Arc<rustls::ClientConfig>,
    /// What the federator connection presents when it is not `identity`: the file certificate,
    /// once the one the federator issued has expired (so the gateway can ask for a new one,
    /// while its peers refuse the expired one).
    pub(crate) federator_identity: Option<Identity>,
    pub backend_h1: Arc<rustls::ClientConfig>,
    pub backend_h2: Arc<rustls::ClientConfig>,
    /// Per peer cluster: dial config and the anchors its gateway must chain to.
    peers: HashMap<String, PeerTls>,
}

struct PeerTls {
    client: Arc<rustls::ClientConfig>,
    anchors: Vec<TrustAnchor<'static>>,
}

impl std::fmt::Debug for TlsState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TlsState")
            .field("own_id", &self.own_id)
            .field("peers", &self.peers.keys().collect::<Vec<_>>())
            .finish_non_exhaustive()
    }
}

fn anchors(bundle: &TrustBundle) -> Result<Vec<TrustAnchor<'static>>, TlsError> {
    bundle
        .roots
        .iter()
        .enumerate()
        .map(|(index, c)| {
            webpki::anchor_from_trusted_cert(c)
                .map(|a| a.to_owned())
                .map_err(|source| TlsError::InvalidTrustAnchor {
                    origin: "trust bundle".into(),
                    index,
                    source,
                })
        })
        .collect()
}

impl TlsState {
    pub(crate) fn build(
        identity: Identity,
        local_bundle: TrustBundle,
        tables: Option<&Tables>,
        federator_identity: Option<Identity>,
    ) -> Result<Self, TlsError> {
        let own_id = identity.spiffe_id()?;
        let mut roots = local_bundle.roots.clone();
        let mut peers = HashMap::new();
        if let Some(t) = tables {
            for (cluster, p) in &t.peers {
                let bundle = p.bundle.as_ref().unwrap_or(&local_bundle);
                for r in &bundle.roots {
                    if !roots.contains(r) {
                        roots.push(r.clone());
                    }
                }
                let client = api_tls::client_config(
                    &identity,
                    bundle,
                    ExpectedPeer::Exact(p.gateway_id.clone()),
                    &[ALPN_H2],
                )?;
                peers.insert(
                    cluster.clone(),
                    PeerTls {
                        client,
                        anchors: anchors(bundle)?,
                    },
                );
            }
        }
        let server = api_tls::server_config(&identity, &TrustBundle::new(roots), &[ALPN_H2])?;
        let egress = api_tls::server_config(&identity, &local_bundle, &[ALPN_H2, ALPN_H1])?;
        let federator_id = SpiffeId::federator(own_id.trust_domain())?;
        let federator = api_tls::client_config(
            federator_identity.as_ref().unwrap_or(&identity),
            &local_bundle,
            ExpectedPeer::Exact(federator_id),
            &[ALPN_H2],
        )?;
        // A backend may run as any service account of our trust domain: the export does not
        // say which.
        let backend = |alpn: &[u8]| {
            api_tls::client_config(
                &identity,
                &local_bundle,
                ExpectedPeer::InTrustDomain(own_id.trust_domain().to_string()),
                &[alpn],
            )
        };
        Ok(Self {
            backend_h1: backend(ALPN_H1)?,
            backend_h2: backend(ALPN_H2)?,
            validity: identity.validity().ok(),
            identity,
            own_id,
            local_bundle,
            server,
            egress,
            federator,
            federator_identity,
            peers,
        })
    }

    /// The dial config for a peer cluster's gateway.
    pub(crate) fn peer_client(&self, cluster: &str) -> Option<Arc<rustls::ClientConfig>> {
        self.peers.get(cluster).map(|p| p.client.clone())
    }
}

// === peer authentication ===

/// Why a peer connection was refused; the `reason` label of
/// `causeway_gateway_peer_handshake_failures_total` (or `..._client_...` on the egress).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Refusal {
    pub(crate) reason: &'static str,
    pub(crate) detail: String,
}

/// Classifies a failed TLS accept.
pub(crate) fn classify_handshake_error(e: &io::Error) -> Refusal {
    let reason = match e.get_ref().and_then(|e| e.downcast_ref::<rustls::Error>()) {
        Some(rustls::Error::NoCertificatesPresented) => "no_certificate",
        Some(rustls::Error::InvalidCertificate(c)) => match c {
            CertificateError::UnknownIssuer | CertificateError::BadSignature => "unknown_ca",
            CertificateError::Expired | CertificateError::ExpiredContext { .. } => "expired",
            CertificateError::NotValidYet | CertificateError::NotValidYetContext { .. } => {
                "not_yet_valid"
            }
            CertificateError::Other(o)
                if o.0.downcast_ref::<api_tls::TlsError>().is_some_and(|e| {
                    matches!(
                        e,
                        api_tls::TlsError::ForeignIssuer { .. }
                            | api_tls::TlsError::UnboundTrustDomain { .. }
                    )
                }) =>
            {
                "foreign_issuer"
            }
            _ => "bad_certificate",
        },
        Some(rustls::Error::NoApplicationProtocol) => "no_alpn",
        Some(_) => "tls_error",
        None if e.kind() == io::ErrorKind::UnexpectedEof => "eof",
        None if e.kind() == io::ErrorKind::TimedOut => "timeout",
        None => "io",
    };
    Refusal {
        reason,
        detail: e.to_string(),
    }
}

/// After a successful handshake: the peer must present the gateway ID of a known peer
/// cluster, chaining to that cluster's bundle. Returns the peer's cluster and ID.
pub(crate) fn authenticate_peer(
    certs: &[CertificateDer<'_>],
    tables: &Tables,
    tls: &TlsState,
) -> Result<(String, SpiffeId), Refusal> {
    let refuse = |reason, detail: String| Refusal { reason, detail };
    let id = api_tls::peer_spiffe_id(certs).map_err(|e| refuse("no_spiffe_id", e.to_string()))?;
    if !id.is_gateway() {
        return Err(refuse(
            "not_gateway",
            format!("{id} is not a gateway identity"),
        ));
    }
    let cluster = tables.trust_domains.get(id.trust_domain()).ok_or_else(|| {
        refuse(
            "unknown_cluster",
            format!(
                "{id}: trust domain {} is no known peer's",
                id.trust_domain()
            ),
        )
    })?;
    let peer = tls.peers.get(cluster).ok_or_else(|| {
        refuse(
            "unknown_cluster",
            format!("{id}: no TLS state for {cluster}"),
        )
    })?;
    // The listener accepts any federated root; the chain must verify against this peer's own.
    let (leaf, intermediates) = certs
        .split_first()
        .expect("peer_spiffe_id checked non-empty");
    let cert = webpki::EndEntityCert::try_from(leaf)
        .map_err(|e| refuse("bad_certificate", e.to_string()))?;
    let algs = rustls::crypto::ring::default_provider().signature_verification_algorithms;
    cert.verify_for_usage(
        algs.all,
        &peer.anchors,
        intermediates,
        UnixTime::now(),
        webpki::KeyUsage::client_auth(),
        None,
        None,
    )
    .map_err(|e| {
        refuse(
            "wrong_trust_bundle",
            format!("{id} does not chain to cluster {cluster}'s trust bundle: {e}"),
        )
    })?;
    Ok((cluster.clone(), id))
}

/// A server name for `connect`: the host when it is one, else a placeholder (the SPIFFE
/// verifiers ignore it).
pub(crate) fn server_name(host: &str) -> ServerName<'static> {
    ServerName::try_from(
        host.trim_start_matches('[')
            .trim_end_matches(']')
            .to_string(),
    )
    .unwrap_or_else(|_| ServerName::try_from("peer.causeway.invalid").expect("valid name"))
}
/// Seconds since the Unix epoch: the clock certificate validity is read against.
pub(crate) fn unix_now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() as i64)
}
