//! rustls configuration for Causeway's mTLS (DESIGN.md "Gateway transport").
//!
//! Both sides present an X.509-SVID: a certificate chain whose leaf carries exactly one URI SAN,
//! the SPIFFE ID. Such certificates carry no DNS name, so the client does not check the server
//! name it dialled; it verifies the chain against the trust bundle and then checks the server's
//! SPIFFE ID against an [`ExpectedPeer`]. The server requires a client certificate chaining to
//! the bundle and leaves authorisation of the client's SPIFFE ID ([`peer_spiffe_id`]) to the
//! caller, which knows the export's allowed sources.
//!
//! Both directions also bind a trust domain to its issuer (DESIGN.md "Gateway transport"): a
//! leaf whose SPIFFE ID is in trust domain T is accepted only when a CA of its verified chain
//! (an intermediate, or the root itself) names `spiffe://T` in a URI SAN, and no CA of the chain
//! names another trust domain. A federation root without a SPIFFE ID is neutral; so a cluster's
//! CA can mint identities of its own trust domain alone, and a leaf signed straight by the
//! shared root is refused. [`verify_spiffe_chain`] is the one place this is checked.
//!
//! One crypto provider, ring, passed explicitly so that a process-wide default is never needed.
//! TLS 1.3 and 1.2.

use std::fmt;
use std::path::Path;
use std::sync::Arc;

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::{CryptoProvider, WebPkiSupportedAlgorithms};
use rustls::server::VerifierBuilderError;
use rustls::{CertificateError, DigitallySignedStruct, OtherError, SignatureScheme};
use rustls_pki_types::{CertificateDer, PrivateKeyDer, ServerName, TrustAnchor, UnixTime};
use x509_parser::extensions::GeneralName;

use crate::pem::{self, PemError};
use crate::spiffe::{InvalidSpiffeId, SpiffeId, GATEWAY_SERVICE_ACCOUNT, SYSTEM_NAMESPACE};

/// Why a TLS configuration could not be built, or a peer's identity not established.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error(transparent)]
    Pem(#[from] PemError),
    #[error("{origin}: trust bundle has no certificate")]
    EmptyTrustBundle { origin: String },
    #[error("{origin}: certificate #{index} is not usable as a trust anchor: {source}")]
    InvalidTrustAnchor {
        origin: String,
        index: usize,
        #[source]
        source: webpki::Error,
    },
    #[error("identity certificate and key rejected: {0}")]
    Identity(#[source] rustls::Error),
    #[error("cannot configure TLS: {0}")]
    Config(#[source] rustls::Error),
    #[error("cannot build client certificate verifier: {0}")]
    ClientVerifier(#[source] VerifierBuilderError),
    #[error("peer presented no certificate")]
    NoPeerCertificate,
    #[error("cannot parse certificate: {0}")]
    BadCertificate(String),
    #[error("certificate has no SPIFFE ID (no URI subject alternative name)")]
    NoSpiffeId,
    #[error("certificate has {0} URI subject alternative names; an X.509-SVID has exactly one")]
    MultipleUriSans(usize),
    #[error("certificate has an invalid SPIFFE ID: {0}")]
    InvalidSpiffeId(#[from] InvalidSpiffeId),
    #[error("peer {actual} is not {expected}")]
    UnexpectedPeer { actual: SpiffeId, expected: String },
    #[error("certificate chain rejected: {0}")]
    ChainRejected(rustls::Error),
    #[error("{id} is issued by {issuer}, a CA of trust domain {issuer_td}: a trust domain's identities verify only through its own CA")]
    ForeignIssuer {
        id: SpiffeId,
        issuer: String,
        issuer_td: String,
    },
    #[error("{id}: no CA in its chain is trust domain {td}'s own (a CA certificate with URI SAN spiffe://{td}): a trust domain's identities verify only through its own CA")]
    UnboundTrustDomain { id: SpiffeId, td: String },
}

fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

const VERSIONS: &[&rustls::SupportedProtocolVersion] =
    &[&rustls::version::TLS13, &rustls::version::TLS12];

// === impl Identity ===

/// Our certificate chain (leaf first, then intermediates) and the leaf's private key.
pub struct Identity {
    pub cert_chain: Vec<CertificateDer<'static>>,
    pub key: PrivateKeyDer<'static>,
}

impl Identity {
    pub fn new(cert_chain: Vec<CertificateDer<'static>>, key: PrivateKeyDer<'static>) -> Self {
        Self { cert_chain, key }
    }

    /// Loads the chain from `cert_path` (leaf first) and the key from `key_path`.
    pub fn load(cert_path: impl AsRef<Path>, key_path: impl AsRef<Path>) -> Result<Self, TlsError> {
        Ok(Self {
            cert_chain: pem::load_certs(cert_path)?,
            key: pem::load_private_key(key_path)?,
        })
    }

    /// Builds an identity from PEM text; `origin` names it in errors.
    pub fn from_pem(cert_pem: &[u8], key_pem: &[u8], origin: &str) -> Result<Self, TlsError> {
        Ok(Self {
            cert_chain: pem::certs_from_pem(cert_pem, &format!("{origin} certificate"))?,
            key: pem::private_key_from_pem(key_pem, &format!("{origin} key"))?,
        })
    }

    /// The SPIFFE ID of our leaf certificate.
    pub fn spiffe_id(&self) -> Result<SpiffeId, TlsError> {
        peer_spiffe_id(&self.cert_chain)
    }
}

impl Clone for Identity {
    fn clone(&self) -> Self {
        Self {
            cert_chain: self.cert_chain.clone(),
            key: self.key.clone_key(),
        }
    }
}

impl fmt::Debug for Identity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let id = self.spiffe_id().map(|id| id.to_string());
        f.debug_struct("Identity")
            .field("spiffe_id", &id.as_deref().unwrap_or("<none>"))
            .field("chain_len", &self.cert_chain.len())
            .finish_non_exhaustive()
    }
}

// === impl TrustBundle ===

/// The CA certificates we trust to sign peers' chains (the federation's roots).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TrustBundle {
    pub roots: Vec<CertificateDer<'static>>,
}

impl TrustBundle {
    /// A bundle of the given roots; they are checked when a config is built.
    pub fn new(roots: Vec<CertificateDer<'static>>) -> Self {
        Self { roots }
    }

    /// Loads a bundle file (concatenated PEM certificates) and checks each is a usable anchor.
    pub fn load(path: impl AsRef<Path>) -> Result<Self, TlsError> {
        let path = path.as_ref();
        let bundle = Self::new(pem::load_trust_bundle(path)?);
        bundle.trust_anchors(&path.display().to_string())?;
        Ok(bundle)
    }

    /// A bundle from PEM text (e.g. a cluster's bundle read from etcd); `origin` names it.
    pub fn from_pem(pem_text: &[u8], origin: &str) -> Result<Self, TlsError> {
        let bundle = Self::new(pem::trust_bundle_from_pem(pem_text, origin)?);
        bundle.trust_anchors(origin)?;
        Ok(bundle)
    }

    /// The trust domain each root names (`spiffe://T` as a URI SAN), in order; `None` for a
    /// root that names none (a federation root).
    pub fn trust_domains(&self) -> Vec<Option<String>> {
        self.roots.iter().map(|c| ca_trust_domain(c)).collect()
    }

    /// The anchors, with the trust domain each root names (`spiffe://T` in a URI SAN), if any.
    fn anchors(&self, origin: &str) -> Result<Anchors, TlsError> {
        let list = self.trust_anchors(origin)?;
        let domains = self.roots.iter().map(|c| ca_trust_domain(c)).collect();
        Ok(Anchors { list, domains })
    }

    fn trust_anchors(&self, origin: &str) -> Result<Vec<TrustAnchor<'static>>, TlsError> {
        if self.roots.is_empty() {
            return Err(TlsError::EmptyTrustBundle {
                origin: origin.to_string(),
            });
        }
        self.roots
            .iter()
            .enumerate()
            .map(|(index, cert)| {
                webpki::anchor_from_trusted_cert(cert)
                    .map(|a| a.to_owned())
                    .map_err(|source| TlsError::InvalidTrustAnchor {
                        origin: origin.to_string(),
                        index,
                        source,
                    })
            })
            .collect()
    }
}

// === impl ExpectedPeer ===

/// Which server identities a client accepts.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ExpectedPeer {
    /// Exactly this SPIFFE ID.
    Exact(SpiffeId),
    /// Any of these SPIFFE IDs.
    AnyOf(Vec<SpiffeId>),
    /// The gateway identity (`/ns/causeway-system/sa/causeway-gateway`) of any trust domain
    /// whose chain verifies against the bundle.
    AnyGateway,
    /// Any workload of this trust domain (a backend whose service account is not known).
    InTrustDomain(String),
}

impl ExpectedPeer {
    pub fn matches(&self, id: &SpiffeId) -> bool {
        match self {
            Self::Exact(expected) => expected == id,
            Self::AnyOf(ids) => ids.contains(id),
            Self::AnyGateway => id.is_gateway(),
            Self::InTrustDomain(td) => id.trust_domain() == td,
        }
    }
}

impl fmt::Display for ExpectedPeer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Exact(id) => write!(f, "the expected {id}"),
            Self::AnyOf(ids) => {
                f.write_str("any of the expected [")?;
                for (i, id) in ids.iter().enumerate() {
                    if i > 0 {
                        f.write_str(", ")?;
                    }
                    write!(f, "{id}")?;
                }
                f.write_str("]")
            }
            Self::AnyGateway => write!(
                f,
                "a gateway (spiffe://<trust-domain>/ns/{SYSTEM_NAMESPACE}/sa/{GATEWAY_SERVICE_ACCOUNT})"
            ),
            Self::InTrustDomain(td) => write!(f, "a workload of trust domain {td}"),
        }
    }
}

// === config builders ===

/// A server config that requires a client certificate chaining to `trust` (client-auth EKU).
///
/// The client's SPIFFE ID is not checked here; read it with [`peer_spiffe_id`] on
/// `conn.peer_certificates()` and authorise it.
pub fn server_config(
    identity: &Identity,
    trust: &TrustBundle,
    alpn: &[&[u8]],
) -> Result<Arc<rustls::ServerConfig>, TlsError> {
    let provider = provider();
    let anchors = trust.anchors("trust bundle")?;
    let hints = anchors
        .list
        .iter()
        .map(|a| rustls::DistinguishedName::from(a.subject.as_ref().to_vec()))
        .collect();
    let verifier = SpiffeClientVerifier {
        anchors,
        hints,
        algs: provider.signature_verification_algorithms,
    };
    let mut config = rustls::ServerConfig::builder_with_provider(provider)
        .with_protocol_versions(VERSIONS)
        .map_err(TlsError::Config)?
        .with_client_cert_verifier(Arc::new(verifier))
        .with_single_cert(identity.cert_chain.clone(), identity.key.clone_key())
        .map_err(TlsError::Identity)?;
    config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    Ok(Arc::new(config))
}

/// A client config that presents `identity` and accepts a server whose chain verifies against
/// `trust` (server-auth EKU, validity period) and whose SPIFFE ID is `expected`.
///
/// The server name passed to `connect` is not checked (SVIDs have no DNS name); pass anything,
/// e.g. the peer's address.
pub fn client_config(
    identity: &Identity,
    trust: &TrustBundle,
    expected: ExpectedPeer,
    alpn: &[&[u8]],
) -> Result<Arc<rustls::ClientConfig>, TlsError> {
    let provider = provider();
    let verifier = SpiffeServerVerifier {
        anchors: trust.anchors("trust bundle")?,
        expected,
        algs: provider.signature_verification_algorithms,
    };
    let mut config = rustls::ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(VERSIONS)
        .map_err(TlsError::Config)?
        // "dangerous" because it replaces rustls' WebPKI+DNS-name verifier; ours still verifies
        // the chain with webpki and replaces only the name check, by a SPIFFE ID check.
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(verifier))
        .with_client_auth_cert(identity.cert_chain.clone(), identity.key.clone_key())
        .map_err(TlsError::Identity)?;
    config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    Ok(Arc::new(config))
}

// === validity ===

/// A certificate's validity period, in Unix seconds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Validity {
    pub not_before: i64,
    pub not_after: i64,
}

impl Validity {
    /// The validity of `cert` (a leaf, or any certificate).
    pub fn of(cert: &CertificateDer<'_>) -> Result<Validity, TlsError> {
        let (_, c) = x509_parser::parse_x509_certificate(cert)
            .map_err(|e| TlsError::BadCertificate(e.to_string()))?;
        Ok(Validity {
            not_before: c.validity().not_before.timestamp(),
            not_after: c.validity().not_after.timestamp(),
        })
    }

    /// Seconds of life left at `now` (negative once expired).
    pub fn left(&self, now: i64) -> i64 {
        self.not_after - now
    }

    /// Whether less than a third of the lifetime is left at `now`: a renewal at two thirds of
    /// the life (DESIGN.md "Gateway transport") should have happened by then.
    pub fn renewal_overdue(&self, now: i64) -> bool {
        let life = (self.not_after - self.not_before).max(1);
        self.left(now) * 3 < life
    }

    /// When two thirds of the lifetime have passed (Unix seconds): the time to renew.
    pub fn renew_at(&self) -> i64 {
        self.not_before + (self.not_after - self.not_before).max(0) * 2 / 3
    }
}

/// The subject public key of a certificate (the BIT STRING's bytes), to check that a key file
/// belongs to a certificate file.
pub fn certificate_public_key(der: &[u8]) -> Option<Vec<u8>> {
    let (_, c) = x509_parser::parse_x509_certificate(der).ok()?;
    Some(c.public_key().subject_public_key.data.to_vec())
}

/// SHA-256 of a certificate's DER, lowercase hex: how the config protocol names the CA that
/// issues a cluster's gateway certificates.
pub fn fingerprint(der: &[u8]) -> String {
    use std::fmt::Write;
    let digest = ring::digest::digest(&ring::digest::SHA256, der);
    digest.as_ref().iter().fold(String::new(), |mut s, b| {
        let _ = write!(s, "{b:02x}");
        s
    })
}

impl Identity {
    /// The validity of the leaf (first) certificate.
    pub fn validity(&self) -> Result<Validity, TlsError> {
        Validity::of(self.cert_chain.first().ok_or(TlsError::NoPeerCertificate)?)
    }

    /// The [`fingerprint`] of the CA certificate that follows the leaf in the chain (the one
    /// that issued it), when the chain carries it.
    pub fn issuer_fingerprint(&self) -> Option<String> {
        self.cert_chain.get(1).map(|c| fingerprint(c))
    }
}

// === peer identity ===

/// The SPIFFE ID of the end-entity (first) certificate: its one URI SAN.
///
/// Use on `conn.peer_certificates()` on either side of a connection.
pub fn peer_spiffe_id(certs: &[CertificateDer<'_>]) -> Result<SpiffeId, TlsError> {
    let leaf = certs.first().ok_or(TlsError::NoPeerCertificate)?;
    let (_, cert) = x509_parser::parse_x509_certificate(leaf)
        .map_err(|e| TlsError::BadCertificate(e.to_string()))?;
    let san = cert
        .subject_alternative_name()
        .map_err(|e| TlsError::BadCertificate(e.to_string()))?
        .ok_or(TlsError::NoSpiffeId)?;
    let uris: Vec<&str> = san
        .value
        .general_names
        .iter()
        .filter_map(|name| match name {
            GeneralName::URI(uri) => Some(*uri),
            _ => None,
        })
        .collect();
    match uris.as_slice() {
        [] => Err(TlsError::NoSpiffeId),
        [uri] => Ok(uri.parse()?),
        more => Err(TlsError::MultipleUriSans(more.len())),
    }
}

// === chain verification ===

/// Trust anchors, and for each (same index) the trust domain its root certificate names.
#[derive(Debug)]
struct Anchors {
    list: Vec<TrustAnchor<'static>>,
    domains: Vec<Option<String>>,
}

impl Anchors {
    fn domain_of(&self, anchor: &TrustAnchor<'_>) -> Option<&str> {
        self.list
            .iter()
            .position(|a| {
                a.subject.as_ref() == anchor.subject.as_ref()
                    && a.subject_public_key_info.as_ref() == anchor.subject_public_key_info.as_ref()
            })
            .and_then(|i| self.domains[i].as_deref())
    }
}

/// The trust domain a CA certificate names: `T` of its URI SAN `spiffe://T` (the SPIFFE ID of
/// a trust domain itself, path empty). None for a CA without one, or that is not parseable.
pub fn ca_trust_domain(der: &[u8]) -> Option<String> {
    let (_, cert) = x509_parser::parse_x509_certificate(der).ok()?;
    let san = cert.subject_alternative_name().ok()??;
    san.value.general_names.iter().find_map(|name| match name {
        GeneralName::URI(uri) => uri
            .parse::<SpiffeId>()
            .ok()
            .filter(|id| id.path().is_empty())
            .map(|id| id.trust_domain().to_string()),
        _ => None,
    })
}

/// Verifies `end_entity`'s chain with webpki against `anchors` for `usage`, reads its SPIFFE
/// ID, and checks that the chain binds the ID's trust domain: some CA of the verified path
/// names it, and none names another.
/// Why [`verify_spiffe_chain`] refused a chain: webpki's verdict on the chain itself, or ours on
/// the identity it carries.
enum ChainError {
    Pki(webpki::Error),
    Identity(TlsError),
}

impl From<ChainError> for rustls::Error {
    fn from(e: ChainError) -> Self {
        match e {
            ChainError::Pki(e) => pki_error(e),
            ChainError::Identity(e) => other_error(e),
        }
    }
}

fn verify_spiffe_chain(
    anchors: &Anchors,
    algs: &WebPkiSupportedAlgorithms,
    end_entity: &CertificateDer<'_>,
    intermediates: &[CertificateDer<'_>],
    now: UnixTime,
    usage: webpki::KeyUsage,
) -> Result<SpiffeId, ChainError> {
    let cert = webpki::EndEntityCert::try_from(end_entity).map_err(ChainError::Pki)?;
    let path = cert
        .verify_for_usage(
            algs.all,
            &anchors.list,
            intermediates,
            now,
            usage,
            None,
            None,
        )
        .map_err(ChainError::Pki)?;
    let id = peer_spiffe_id(std::slice::from_ref(end_entity)).map_err(ChainError::Identity)?;
    let td = id.trust_domain();
    let mut cas: Vec<(String, Option<String>)> = path
        .intermediate_certificates()
        .map(|c| {
            let der = c.der();
            (describe_ca(&der), ca_trust_domain(&der))
        })
        .collect();
    cas.push((
        "the root".to_string(),
        anchors.domain_of(path.anchor()).map(str::to_string),
    ));
    let mut bound = false;
    for (issuer, ca_td) in cas {
        match ca_td {
            Some(ca_td) if ca_td == td => bound = true,
            Some(issuer_td) => {
                return Err(ChainError::Identity(TlsError::ForeignIssuer {
                    id,
                    issuer,
                    issuer_td,
                }))
            }
            None => {}
        }
    }
    if !bound {
        let td = td.to_string();
        return Err(ChainError::Identity(TlsError::UnboundTrustDomain {
            id,
            td,
        }));
    }
    Ok(id)
}

/// A CA for error messages: its subject's common name, else "an intermediate".
fn describe_ca(der: &[u8]) -> String {
    x509_parser::parse_x509_certificate(der)
        .ok()
        .and_then(|(_, c)| {
            c.subject()
                .iter_common_name()
                .next()
                .and_then(|cn| cn.as_str().ok().map(|s| format!("CA {s:?}")))
        })
        .unwrap_or_else(|| "an intermediate".to_string())
}

/// Verifies a client's chain as presented (leaf first, as `peer_certificates()` returns it)
/// against `trust`, the way [`server_config`]'s verifier does, trust-domain binding included.
/// For servers whose TLS stack verifies with plain webpki (tonic's): call it on every
/// connection's certificates before trusting the SPIFFE ID.
pub fn verify_client_chain(
    trust: &TrustBundle,
    chain: &[CertificateDer<'_>],
) -> Result<SpiffeId, TlsError> {
    let (leaf, intermediates) = chain.split_first().ok_or(TlsError::NoPeerCertificate)?;
    let anchors = trust.anchors("trust bundle")?;
    let algs = provider().signature_verification_algorithms;
    verify_spiffe_chain(
        &anchors,
        &algs,
        leaf,
        intermediates,
        UnixTime::now(),
        webpki::KeyUsage::client_auth(),
    )
    .map_err(|e| match e {
        ChainError::Pki(e) => TlsError::ChainRejected(pki_error(e)),
        ChainError::Identity(e) => e,
    })
}

// === impl SpiffeServerVerifier ===

/// Verifies a server's chain with webpki against our anchors, then its SPIFFE ID.
#[derive(Debug)]
struct SpiffeServerVerifier {
    anchors: Anchors,
    expected: ExpectedPeer,
    algs: WebPkiSupportedAlgorithms,
}

impl ServerCertVerifier for SpiffeServerVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let id = verify_spiffe_chain(
            &self.anchors,
            &self.algs,
            end_entity,
            intermediates,
            now,
            webpki::KeyUsage::server_auth(),
        )?;
        if !self.expected.matches(&id) {
            return Err(other_error(TlsError::UnexpectedPeer {
                actual: id,
                expected: self.expected.to_string(),
            }));
        }
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(message, cert, dss, &self.algs)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, &self.algs)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.algs.supported_schemes()
    }
}

// === impl SpiffeClientVerifier ===

/// Requires a client certificate whose chain verifies against our anchors (client-auth EKU)
/// and binds its trust domain; which SPIFFE IDs may do what is the caller's to decide.
#[derive(Debug)]
struct SpiffeClientVerifier {
    anchors: Anchors,
    hints: Vec<rustls::DistinguishedName>,
    algs: WebPkiSupportedAlgorithms,
}

impl rustls::server::danger::ClientCertVerifier for SpiffeClientVerifier {
    fn root_hint_subjects(&self) -> &[rustls::DistinguishedName] {
        &self.hints
    }

    fn verify_client_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        now: UnixTime,
    ) -> Result<rustls::server::danger::ClientCertVerified, rustls::Error> {
        verify_spiffe_chain(
            &self.anchors,
            &self.algs,
            end_entity,
            intermediates,
            now,
            webpki::KeyUsage::client_auth(),
        )?;
        Ok(rustls::server::danger::ClientCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(message, cert, dss, &self.algs)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, &self.algs)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.algs.supported_schemes()
    }
}

fn other_error(e: TlsError) -> rustls::Error {
    rustls::Error::InvalidCertificate(CertificateError::Other(OtherError(Arc::new(e))))
}

/// Maps webpki's errors to rustls' as rustls' own verifier does, so that alerts and logs read
/// the same; what has no rustls counterpart is kept whole as `Other`.
fn pki_error(e: webpki::Error) -> rustls::Error {
    use webpki::Error::*;
    let cert_error = match e {
        BadDer | BadDerTime | TrailingData(_) => CertificateError::BadEncoding,
        CertNotValidYet { time, not_before } => {
            CertificateError::NotValidYetContext { time, not_before }
        }
        CertExpired { time, not_after } => CertificateError::ExpiredContext { time, not_after },
        InvalidCertValidity => CertificateError::Expired,
        UnknownIssuer => CertificateError::UnknownIssuer,
        CertRevoked => CertificateError::Revoked,
        InvalidSignatureForPublicKey => CertificateError::BadSignature,
        #[allow(deprecated)]
        RequiredEkuNotFound | RequiredEkuNotFoundContext(_) => CertificateError::InvalidPurpose,
        e => CertificateError::Other(OtherError(Arc::new(e))),
    };
    rustls::Error::InvalidCertificate(cert_error)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::{Ca, Leaf};
    use rcgen::{
        BasicConstraints, CertificateParams, CertifiedIssuer, DnType, ExtendedKeyUsagePurpose,
        IsCa, KeyPair, KeyUsagePurpose, SanType,
    };
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio_rustls::{TlsAcceptor, TlsConnector};

    const H2: &[u8] = b"h2";

    // === test PKI (crate::testing) ===

    fn gateway(td: &str) -> SpiffeId {
        SpiffeId::gateway(td).unwrap()
    }

    /// A root, an intermediate per cluster, and leaves issued by the intermediates: the layout
    /// `causeway certs` writes.
    struct Pki {
        root: Ca,
        east: Ca,
        west: Ca,
    }

    impl Pki {
        fn new() -> Self {
            let root = Ca::root("federation root");
            let east = root.intermediate_of("east", Some("east.causeway.mesh"));
            let west = root.intermediate_of("west", Some("west.causeway.mesh"));
            Self { root, east, west }
        }

        fn gateway_east(&self) -> Identity {
            Leaf {
                chain: Some(&self.east),
                ..Leaf::spiffe(gateway("east.causeway.mesh"))
            }
            .issue(&self.east)
        }

        fn gateway_west(&self) -> Identity {
            Leaf {
                chain: Some(&self.west),
                ..Leaf::spiffe(gateway("west.causeway.mesh"))
            }
            .issue(&self.west)
        }
    }

    // === handshake harness ===

    struct Outcome {
        server: Result<Option<SpiffeId>, String>,
        client: Result<(Option<SpiffeId>, Option<Vec<u8>>), String>,
    }

    /// Runs a handshake over an in-memory pipe and exchanges one byte each way, so that a
    /// rejection by either side shows on both.
    async fn handshake(
        server: Arc<rustls::ServerConfig>,
        client: Arc<rustls::ClientConfig>,
    ) -> Outcome {
        let (c, s) = tokio::io::duplex(64 * 1024);
        let server = async move {
            let mut tls = TlsAcceptor::from(server)
                .accept(s)
                .await
                .map_err(|e| e.to_string())?;
            let id = tls
                .get_ref()
                .1
                .peer_certificates()
                .map(|certs| peer_spiffe_id(certs).unwrap());
            let mut b = [0u8; 1];
            tls.read_exact(&mut b).await.map_err(|e| e.to_string())?;
            tls.write_all(b"s").await.map_err(|e| e.to_string())?;
            tls.flush().await.map_err(|e| e.to_string())?;
            Ok::<_, String>(id)
        };
        let client = async move {
            // Not a name in any certificate: the client must not check it.
            let name = ServerName::try_from("not-checked.invalid").unwrap();
            let mut tls = TlsConnector::from(client)
                .connect(name, c)
                .await
                .map_err(|e| e.to_string())?;
            let (id, alpn) = {
                let conn = tls.get_ref().1;
                let id = conn
                    .peer_certificates()
                    .map(|certs| peer_spiffe_id(certs).unwrap());
                (id, conn.alpn_protocol().map(|p| p.to_vec()))
            };
            tls.write_all(b"c").await.map_err(|e| e.to_string())?;
            tls.flush().await.map_err(|e| e.to_string())?;
            let mut b = [0u8; 1];
            tls.read_exact(&mut b).await.map_err(|e| e.to_string())?;
            Ok::<_, String>((id, alpn))
        };
        let (server, client) = tokio::join!(server, client);
        Outcome { server, client }
    }

    // === tests ===

    #[tokio::test]
    async fn mutual_handshake_both_sides_see_spiffe_ids() {
        let pki = Pki::new();
        let bundle = pki.root.bundle();
        let server = server_config(&pki.gateway_east(), &bundle, &[H2]).unwrap();
        let client = client_config(
            &pki.gateway_west(),
            &bundle,
            ExpectedPeer::Exact(gateway("east.causeway.mesh")),
            &[H2],
        )
        .unwrap();
        let out = handshake(server, client).await;
        assert_eq!(out.server.unwrap(), Some(gateway("west.causeway.mesh")));
        let (id, alpn) = out.client.unwrap();
        assert_eq!(id, Some(gateway("east.causeway.mesh")));
        assert_eq!(alpn.as_deref(), Some(H2));
    }

    #[tokio::test]
    async fn any_gateway_and_any_of_accept_matching_server() {
        let pki = Pki::new();
        let bundle = pki.root.bundle();
        for expected in [
            ExpectedPeer::AnyGateway,
            ExpectedPeer::AnyOf(vec![
                gateway("west.causeway.mesh"),
                gateway("east.causeway.mesh"),
            ]),
            ExpectedPeer::InTrustDomain("east.causeway.mesh".into()),
        ] {
            let server = server_config(&pki.gateway_east(), &bundle, &[H2]).unwrap();
            let client = client_config(&pki.gateway_west(), &bundle, expected, &[H2]).unwrap();
            let out = handshake(server, client).await;
            out.server.unwrap();
            out.client.unwrap();
        }
    }

    #[tokio::test]
    async fn tls12_works_too() {
        let pki = Pki::new();
        let bundle = pki.root.bundle();
        let server = server_config(&pki.gateway_east(), &bundle, &[H2]).unwrap();
        // Built by hand to offer only TLS 1.2, with our verifier and identity.
        let id = pki.gateway_west();
        let verifier = SpiffeServerVerifier {
            anchors: bundle.anchors("test").unwrap(),
            expected: ExpectedPeer::AnyGateway,
            algs: provider().signature_verification_algorithms,
        };
        let client = rustls::ClientConfig::builder_with_provider(provider())
            .with_protocol_versions(&[&rustls::version::TLS12])
            .unwrap()
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(verifier))
            .with_client_auth_cert(id.cert_chain, id.key)
            .unwrap();
        let out = handshake(server, Arc::new(client)).await;
        assert_eq!(out.server.unwrap(), Some(gateway("west.causeway.mesh")));
        out.client.unwrap();
    }

    #[tokio::test]
    async fn a_trust_domain_verifies_only_through_its_own_ca() {
        let pki = Pki::new();
        let bundle = pki.root.bundle();
        // west's gateway ID, issued by east's CA (chained), and by the root itself.
        let by_east = Leaf {
            chain: Some(&pki.east),
            ..Leaf::spiffe(gateway("west.causeway.mesh"))
        }
        .issue(&pki.east);
        let by_root = Leaf::spiffe(gateway("west.causeway.mesh")).issue(&pki.root);
        for (forged, want) in [
            (&by_east, "ForeignIssuer"),
            (&by_root, "UnboundTrustDomain"),
        ] {
            // As a client: east's server refuses it.
            let server = server_config(&pki.gateway_east(), &bundle, &[H2]).unwrap();
            let client = client_config(forged, &bundle, ExpectedPeer::AnyGateway, &[H2]).unwrap();
            let err = handshake(server, client).await.server.unwrap_err();
            assert!(err.contains(want), "{err}");
            // As a server: a client expecting west refuses it.
            let server = server_config(forged, &bundle, &[H2]).unwrap();
            let client = client_config(
                &pki.gateway_east(),
                &bundle,
                ExpectedPeer::Exact(gateway("west.causeway.mesh")),
                &[H2],
            )
            .unwrap();
            let err = handshake(server, client).await.client.unwrap_err();
            assert!(err.contains(want), "{err}");
        }
        // A root that is a trust domain's own binds it: west's leaf straight under west's root.
        let mut with_td = CertificateParams::default();
        with_td
            .distinguished_name
            .push(DnType::CommonName, "west root");
        with_td.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        with_td.key_usages = vec![KeyUsagePurpose::KeyCertSign];
        with_td.subject_alt_names = vec![SanType::URI(
            "spiffe://west.causeway.mesh"
                .to_string()
                .try_into()
                .unwrap(),
        )];
        let west_root = Ca {
            issuer: CertifiedIssuer::self_signed(with_td, KeyPair::generate().unwrap()).unwrap(),
        };
        let own = Leaf::spiffe(gateway("west.causeway.mesh")).issue(&west_root);
        let both = TrustBundle::new(vec![
            pki.root.issuer.der().clone(),
            west_root.issuer.der().clone(),
        ]);
        let server = server_config(&pki.gateway_east(), &both, &[H2]).unwrap();
        let client = client_config(&own, &both, ExpectedPeer::AnyGateway, &[H2]).unwrap();
        let out = handshake(server, client).await;
        assert_eq!(out.server.unwrap(), Some(gateway("west.causeway.mesh")));
        // ... and it cannot mint east's.
        let east_by_west = Leaf::spiffe(gateway("east.causeway.mesh")).issue(&west_root);
        let server = server_config(&pki.gateway_west(), &both, &[H2]).unwrap();
        let client = client_config(&east_by_west, &both, ExpectedPeer::AnyGateway, &[H2]).unwrap();
        let err = handshake(server, client).await.server.unwrap_err();
        assert!(err.contains("ForeignIssuer"), "{err}");
    }

    #[test]
    fn verify_client_chain_binds_the_trust_domain_like_the_handshake() {
        let pki = Pki::new();
        let bundle = pki.root.bundle();
        let ok = pki.gateway_east();
        assert_eq!(
            verify_client_chain(&bundle, &ok.cert_chain).unwrap(),
            gateway("east.causeway.mesh")
        );
        // west's CA minting east's gateway ID (what the config stream of east must refuse).
        let forged = Leaf {
            chain: Some(&pki.west),
            ..Leaf::spiffe(gateway("east.causeway.mesh"))
        }
        .issue(&pki.west);
        let err = verify_client_chain(&bundle, &forged.cert_chain).unwrap_err();
        assert!(matches!(err, TlsError::ForeignIssuer { .. }), "{err}");
        assert!(err.to_string().contains("west.causeway.mesh"), "{err}");
        let rogue = Leaf::spiffe(gateway("east.causeway.mesh")).issue(&Ca::root("rogue"));
        let err = verify_client_chain(&bundle, &rogue.cert_chain).unwrap_err();
        assert!(matches!(err, TlsError::ChainRejected(_)), "{err}");
        assert!(matches!(
            verify_client_chain(&bundle, &[]),
            Err(TlsError::NoPeerCertificate)
        ));
    }

    #[tokio::test]
    async fn server_refuses_client_from_another_ca() {
        let pki = Pki::new();
        let bundle = pki.root.bundle();
        let rogue_root = Ca::root("rogue root");
        let rogue = Leaf::spiffe(gateway("west.causeway.mesh")).issue(&rogue_root);
        let server = server_config(&pki.gateway_east(), &bundle, &[H2]).unwrap();
        // The rogue client trusts the real bundle, so only the server can refuse.
        let client = client_config(&rogue, &bundle, ExpectedPeer::AnyGateway, &[H2]).unwrap();
        let out = handshake(server, client).await;
        let err = out.server.unwrap_err();
        assert!(err.contains("UnknownIssuer"), "{err}");
        assert!(out.client.is_err());
    }

    #[tokio::test]
    async fn client_refuses_unexpected_server_identity() {
        let pki = Pki::new();
        let bundle = pki.root.bundle();
        let federator = Leaf {
            chain: Some(&pki.east),
            ..Leaf::spiffe(SpiffeId::federator("east.causeway.mesh").unwrap())
        }
        .issue(&pki.east);
        let server = server_config(&federator, &bundle, &[H2]).unwrap();
        for expected in [
            ExpectedPeer::AnyGateway,
            ExpectedPeer::Exact(gateway("east.causeway.mesh")),
            ExpectedPeer::AnyOf(vec![gateway("east.causeway.mesh")]),
        ] {
            let client = client_config(&pki.gateway_west(), &bundle, expected, &[H2]).unwrap();
            let out = handshake(server.clone(), client).await;
            let err = out.client.unwrap_err();
            // rustls shows our error by its Debug form inside its own.
            assert!(err.contains("UnexpectedPeer"), "{err}");
            assert!(
                err.contains(
                    "spiffe://east.causeway.mesh/ns/causeway-system/sa/causeway-federator"
                ),
                "{err}"
            );
            assert!(out.server.is_err());
        }
        // A gateway of the wrong cluster is refused as well.
        let server = server_config(&pki.gateway_west(), &bundle, &[H2]).unwrap();
        let client = client_config(
            &pki.gateway_east(),
            &bundle,
            ExpectedPeer::Exact(gateway("east.causeway.mesh")),
            &[H2],
        )
        .unwrap();
        let err = handshake(server, client).await.client.unwrap_err();
        assert!(err.contains("west.causeway.mesh"), "{err}");
    }

    #[tokio::test]
    async fn client_refuses_server_from_another_ca() {
        let pki = Pki::new();
        let bundle = pki.root.bundle();
        let rogue_root = Ca::root("rogue root");
        let rogue = Leaf::spiffe(gateway("east.causeway.mesh")).issue(&rogue_root);
        let server = server_config(&rogue, &bundle, &[H2]).unwrap();
        let client = client_config(
            &pki.gateway_west(),
            &bundle,
            ExpectedPeer::AnyGateway,
            &[H2],
        )
        .unwrap();
        let err = handshake(server, client).await.client.unwrap_err();
        assert!(err.contains("UnknownIssuer"), "{err}");
    }

    #[tokio::test]
    async fn expired_certificates_are_refused_by_both_sides() {
        let pki = Pki::new();
        let bundle = pki.root.bundle();
        let expired = |td: &str, ca: &Ca| {
            Leaf {
                expired: true,
                chain: Some(ca),
                ..Leaf::spiffe(gateway(td))
            }
            .issue(ca)
        };

        // Expired server: the client refuses.
        let server =
            server_config(&expired("east.causeway.mesh", &pki.east), &bundle, &[H2]).unwrap();
        let client = client_config(
            &pki.gateway_west(),
            &bundle,
            ExpectedPeer::AnyGateway,
            &[H2],
        )
        .unwrap();
        let err = handshake(server, client).await.client.unwrap_err();
        assert!(err.contains("expired"), "{err}");

        // Expired client: the server refuses.
        let server = server_config(&pki.gateway_east(), &bundle, &[H2]).unwrap();
        let client = client_config(
            &expired("west.causeway.mesh", &pki.west),
            &bundle,
            ExpectedPeer::AnyGateway,
            &[H2],
        )
        .unwrap();
        let err = handshake(server, client).await.server.unwrap_err();
        assert!(err.contains("expired"), "{err}");
    }

    #[tokio::test]
    async fn server_refuses_client_without_certificate() {
        let pki = Pki::new();
        let bundle = pki.root.bundle();
        let server = server_config(&pki.gateway_east(), &bundle, &[H2]).unwrap();
        let verifier = SpiffeServerVerifier {
            anchors: bundle.anchors("test").unwrap(),
            expected: ExpectedPeer::AnyGateway,
            algs: provider().signature_verification_algorithms,
        };
        let client = rustls::ClientConfig::builder_with_provider(provider())
            .with_protocol_versions(VERSIONS)
            .unwrap()
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(verifier))
            .with_no_client_auth();
        let out = handshake(server, Arc::new(client)).await;
        let err = out.server.unwrap_err();
        assert!(
            err.contains("NoCertificatesPresented") || err.contains("certificate"),
            "{err}"
        );
        assert!(out.client.is_err());
    }

    #[tokio::test]
    async fn client_refuses_server_certificate_without_server_auth_eku() {
        let pki = Pki::new();
        let bundle = pki.root.bundle();
        let client_only = Leaf {
            ekus: vec![ExtendedKeyUsagePurpose::ClientAuth],
            chain: Some(&pki.east),
            ..Leaf::spiffe(gateway("east.causeway.mesh"))
        }
        .issue(&pki.east);
        let server = server_config(&client_only, &bundle, &[H2]).unwrap();
        let client = client_config(
            &pki.gateway_west(),
            &bundle,
            ExpectedPeer::AnyGateway,
            &[H2],
        )
        .unwrap();
        let err = handshake(server, client).await.client.unwrap_err();
        assert!(err.contains("InvalidPurpose"), "{err}");
    }

    #[test]
    fn peer_spiffe_id_requires_exactly_one_uri_san() {
        let pki = Pki::new();
        assert_eq!(
            pki.gateway_east().spiffe_id().unwrap(),
            gateway("east.causeway.mesh")
        );
        assert!(matches!(
            peer_spiffe_id(&[]),
            Err(TlsError::NoPeerCertificate)
        ));

        let none = Leaf {
            uris: vec![],
            ..Leaf::spiffe(gateway("x"))
        }
        .issue(&pki.east);
        assert!(matches!(none.spiffe_id(), Err(TlsError::NoSpiffeId)));

        let two = Leaf {
            uris: vec!["spiffe://a/x".into(), "spiffe://b/y".into()],
            ..Leaf::spiffe(gateway("x"))
        }
        .issue(&pki.east);
        assert!(matches!(two.spiffe_id(), Err(TlsError::MultipleUriSans(2))));

        let bad = Leaf {
            uris: vec!["https://example.org/x".into()],
            ..Leaf::spiffe(gateway("x"))
        }
        .issue(&pki.east);
        let err = bad.spiffe_id().unwrap_err();
        assert!(err.to_string().contains("https://example.org/x"), "{err}");

        assert!(matches!(
            peer_spiffe_id(&[CertificateDer::from(vec![1, 2, 3])]),
            Err(TlsError::BadCertificate(_))
        ));
    }

    #[test]
    fn identity_and_bundle_load_from_files() {
        let pki = Pki::new();
        let dir = tempfile::tempdir().unwrap();
        let key = KeyPair::generate().unwrap();
        let mut params = CertificateParams::default();
        params.subject_alt_names = vec![SanType::URI(
            "spiffe://east.causeway.mesh/ns/causeway-system/sa/causeway-gateway"
                .try_into()
                .unwrap(),
        )];
        let cert = params.signed_by(&key, &pki.east.issuer).unwrap();
        let chain = format!("{}{}", cert.pem(), pki.east.issuer.pem());
        std::fs::write(dir.path().join("gw.pem"), chain).unwrap();
        std::fs::write(dir.path().join("gw.key"), key.serialize_pem()).unwrap();
        std::fs::write(dir.path().join("bundle.pem"), pki.root.issuer.pem()).unwrap();

        let id = Identity::load(dir.path().join("gw.pem"), dir.path().join("gw.key")).unwrap();
        assert_eq!(id.cert_chain.len(), 2);
        assert_eq!(id.spiffe_id().unwrap(), gateway("east.causeway.mesh"));
        assert!(format!("{id:?}").contains("causeway-gateway"));
        let bundle = TrustBundle::load(dir.path().join("bundle.pem")).unwrap();
        assert_eq!(bundle, pki.root.bundle());
        server_config(&id, &bundle, &[]).unwrap();

        let err = TrustBundle::load(dir.path().join("missing.pem")).unwrap_err();
        assert!(err.to_string().contains("missing.pem"), "{err}");

        // Certificate and key that do not belong together.
        let other = pki.gateway_west();
        let mismatched = Identity::new(id.cert_chain.clone(), other.key);
        let err = server_config(&mismatched, &bundle, &[]).unwrap_err();
        assert!(matches!(err, TlsError::Identity(_)), "{err:?}");
    }

    #[test]
    fn bundle_is_checked() {
        let err = TrustBundle::from_pem(b"", "bundle of west").unwrap_err();
        assert!(err.to_string().starts_with("bundle of west: "), "{err}");

        let err =
            server_config(&Pki::new().gateway_east(), &TrustBundle::new(vec![]), &[]).unwrap_err();
        assert!(matches!(err, TlsError::EmptyTrustBundle { .. }), "{err:?}");

        let junk = TrustBundle::new(vec![CertificateDer::from(vec![0x30, 0x00])]);
        let err = junk.trust_anchors("junk.pem").unwrap_err();
        assert!(
            matches!(err, TlsError::InvalidTrustAnchor { index: 0, .. }),
            "{err:?}"
        );
    }

    #[test]
    fn expected_peer_display() {
        let e = ExpectedPeer::AnyOf(vec![gateway("a"), gateway("b")]);
        assert_eq!(
            e.to_string(),
            "any of the expected [spiffe://a/ns/causeway-system/sa/causeway-gateway, \
             spiffe://b/ns/causeway-system/sa/causeway-gateway]"
        );
        assert!(ExpectedPeer::AnyGateway.matches(&gateway("zz")));
        assert!(!ExpectedPeer::AnyOf(vec![]).matches(&gateway("zz")));
        let td = ExpectedPeer::InTrustDomain("east.causeway.mesh".into());
        assert!(td.matches(&gateway("east.causeway.mesh")));
        assert!(td.matches(
            &"spiffe://east.causeway.mesh/ns/shop/sa/cart"
                .parse()
                .unwrap()
        ));
        assert!(!td.matches(&gateway("west.causeway.mesh")));
        assert_eq!(
            td.to_string(),
            "a workload of trust domain east.causeway.mesh"
        );
    }
}
