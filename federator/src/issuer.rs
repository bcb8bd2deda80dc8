//! The federator's TLS material, kept current (docs/certificates.md):
//!
//! - **the cluster's issuer** (`issuer:` in the config, a CA certificate and key: the cluster's
//!   `ca.pem`/`ca.key`, a Kubernetes Secret, or a cert-manager CA): signs certificates for this
//!   cluster's gateways over `Config/Certify`, of `issuer.lifetime` (24 h by default), and the
//!   federator's own serving certificate, renewed at two thirds of its life;
//! - **the trust bundle** (`trust_bundle_file`): what this cluster's certificates chain to,
//!   published in `clusters/<c>/info` for the peers and used to check gateways' client
//!   certificates; during a root rotation it holds both roots;
//! - without an issuer, the federator's certificate is `cert_file`/`key_file`, as before.
//!
//! Every file is polled (modification time and size); a change is loaded and swapped in as one
//! [`FederatorTls`]. A file that does not load keeps the old state (logged, and counted in
//! `causeway_federator_tls_reloads_total{result="error"}`).

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use causeway_api::spiffe::SpiffeId;
use causeway_api::tls::{Identity, TlsError, TrustBundle, Validity};
use causeway_api::ClusterId;
use rcgen::{KeyPair, PublicKeyData};
use serde::{Deserialize, Serialize};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use crate::certs;

/// `issuer:` in the federator config.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct IssuerConfig {
    /// The issuing CA's certificate (PEM; its chain up to the root may follow).
    pub cert_file: PathBuf,
    /// Its private key.
    pub key_file: PathBuf,
    /// Lifetime of each certificate issued (DESIGN: 24 h). Renewal is at two thirds of it.
    #[serde(
        default = "default_lifetime",
        with = "causeway_api::duration::serde_str"
    )]
    pub lifetime: Duration,
}

fn default_lifetime() -> Duration {
    DEFAULT_LIFETIME
}

/// The lifetime of issued certificates unless `issuer.lifetime` says otherwise.
pub(crate) const DEFAULT_LIFETIME: Duration = Duration::from_secs(24 * 3600);
/// Shortest accepted lifetime (tests use 20 s).
pub(crate) const MIN_LIFETIME: Duration = Duration::from_secs(6);
/// Longest accepted lifetime: a short-lived certificate's point is that it is short.
pub(crate) const MAX_LIFETIME: Duration = Duration::from_secs(90 * 24 * 3600);
/// Largest CSR accepted on `Config/Certify`.
pub(crate) const MAX_CSR_BYTES: usize = 16 * 1024;

#[derive(Debug, thiserror::Error)]
pub enum IssuerError {
    #[error("reading {path}: {reason}")]
    Read { path: PathBuf, reason: String },
    #[error("the issuer {path} is trust domain {found}'s CA, not {expected}'s: its certificates would be refused by every peer")]
    ForeignCa {
        path: PathBuf,
        found: String,
        expected: String,
    },
    #[error("the issuer {path} expired")]
    CaExpired { path: PathBuf },
    #[error("CSR: {0}")]
    BadCsr(String),
    #[error("CSR of {0} bytes is larger than {MAX_CSR_BYTES}")]
    CsrTooLarge(usize),
    #[error("signing: {0}")]
    Sign(String),
}

// === impl Issuer ===

/// A loaded CA that signs this cluster's SVIDs.
pub(crate) struct Issuer {
    ca: rcgen::Issuer<'static, KeyPair>,
    /// The CA certificate file's text: appended to each leaf, so a peer can build the chain.
    chain_pem: String,
    /// [`causeway_api::tls::fingerprint`] of the CA certificate.
    pub fingerprint: String,
    ca_validity: Validity,
    cluster: ClusterId,
    pub lifetime: Duration,
}

/// A certificate signed by the [`Issuer`].
#[derive(Debug, Clone)]
pub(crate) struct Issued {
    /// The leaf, then the CA's chain.
    pub chain_pem: String,
    pub validity: Validity,
}

impl Issuer {
    /// Loads the CA and checks that it is `trust_domain`'s (or names none, as a CA under a
    /// shared federation root may not) and still valid.
    pub(crate) fn load(
        cfg: &IssuerConfig,
        cluster: &ClusterId,
        trust_domain: &str,
    ) -> Result<Self, IssuerError> {
        let read = |path: &Path| {
            std::fs::read_to_string(path).map_err(|e| IssuerError::Read {
                path: path.to_path_buf(),
                reason: e.to_string(),
            })
        };
        let chain_pem = read(&cfg.cert_file)?;
        let key = KeyPair::from_pem(&read(&cfg.key_file)?).map_err(|e| IssuerError::Read {
            path: cfg.key_file.clone(),
            reason: e.to_string(),
        })?;
        let bad_cert = |reason: String| IssuerError::Read {
            path: cfg.cert_file.clone(),
            reason,
        };
        let ders = causeway_api::pem::certs_from_pem(chain_pem.as_bytes(), "issuer certificate")
            .map_err(|e| bad_cert(e.to_string()))?;
        let ca_der = ders
            .first()
            .ok_or_else(|| bad_cert("no certificate".into()))?;
        if let Some(found) = causeway_api::tls::ca_trust_domain(ca_der) {
            if found != trust_domain {
                return Err(IssuerError::ForeignCa {
                    path: cfg.cert_file.clone(),
                    found,
                    expected: trust_domain.to_string(),
                });
            }
        }
        // Files replaced one after the other (a rotation) may be read in between.
        if causeway_api::tls::certificate_public_key(ca_der).as_deref()
            != Some(key.public_key_raw())
        {
            return Err(IssuerError::Read {
                path: cfg.key_file.clone(),
                reason: format!("not the key of {}", cfg.cert_file.display()),
            });
        }
        let ca_validity = Validity::of(ca_der).map_err(|e| bad_cert(e.to_string()))?;
        if ca_validity.left(unix_now()) <= 0 {
            return Err(IssuerError::CaExpired {
                path: cfg.cert_file.clone(),
            });
        }
        let fingerprint = causeway_api::tls::fingerprint(ca_der);
        let ca =
            rcgen::Issuer::from_ca_cert_der(ca_der, key).map_err(|e| bad_cert(e.to_string()))?;
        Ok(Self {
            ca,
            chain_pem,
            fingerprint,
            ca_validity,
            cluster: cluster.clone(),
            lifetime: cfg.lifetime,
        })
    }

    /// Signs an SVID for `id` over `public_key`, valid from a little before now (clock skew:
    /// a tenth of the lifetime, at most a minute) for `lifetime`, and never past the CA.
    pub(crate) fn issue(
        &self,
        id: &SpiffeId,
        public_key: &impl PublicKeyData,
    ) -> Result<Issued, IssuerError> {
        let now = time::OffsetDateTime::now_utc();
        let backdate = (self.lifetime / 10).min(Duration::from_secs(60));
        let ca_end =
            time::OffsetDateTime::from_unix_timestamp(self.ca_validity.not_after).unwrap_or(now);
        let validity = certs::Validity {
            not_before: now - backdate,
            not_after: (now + self.lifetime).min(ca_end),
        };
        let params = certs::svid_params(id, &self.cluster, &validity)
            .map_err(|e| IssuerError::Sign(e.to_string()))?;
        let cert = params
            .signed_by(public_key, &self.ca)
            .map_err(|e| IssuerError::Sign(e.to_string()))?;
        let validity = Validity {
            not_before: validity.not_before.unix_timestamp(),
            not_after: validity.not_after.unix_timestamp(),
        };
        let mut chain_pem = cert.pem();
        if !chain_pem.ends_with('\n') {
            chain_pem.push('\n');
        }
        chain_pem.push_str(&self.chain_pem);
        Ok(Issued {
            chain_pem,
            validity,
        })
    }

    /// Signs an SVID for `id` over the public key of `csr_pem` (whose signature must verify;
    /// nothing else of the request is used).
    pub(crate) fn sign_csr(&self, id: &SpiffeId, csr_pem: &str) -> Result<Issued, IssuerError> {
        if csr_pem.len() > MAX_CSR_BYTES {
            return Err(IssuerError::CsrTooLarge(csr_pem.len()));
        }
        let csr = rcgen::CertificateSigningRequestParams::from_pem(csr_pem)
            .map_err(|e| IssuerError::BadCsr(e.to_string()))?;
        self.issue(id, &csr.public_key)
    }

    /// A fresh key and an SVID for it: the federator's own serving certificate.
    pub(crate) fn issue_identity(
        &self,
        id: &SpiffeId,
    ) -> Result<(Identity, Validity), IssuerError> {
        let key = KeyPair::generate().map_err(|e| IssuerError::Sign(e.to_string()))?;
        let issued = self.issue(id, &key)?;
        let identity = Identity::from_pem(
            issued.chain_pem.as_bytes(),
            key.serialize_pem().as_bytes(),
            "self-issued",
        )
        .map_err(|e| IssuerError::Sign(e.to_string()))?;
        Ok((identity, issued.validity))
    }
}

pub(crate) fn unix_now() -> i64 {
    SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() as i64)
}

// === FederatorTls ===

/// Where the TLS material comes from.
#[derive(Debug, Clone)]
pub(crate) struct TlsSources {
    pub cluster: ClusterId,
    pub trust_domain: String,
    pub bundle: Option<PathBuf>,
    /// The federator's certificate and key, when no issuer makes them.
    pub cert: Option<(PathBuf, PathBuf)>,
    pub issuer: Option<IssuerConfig>,
    /// How often the files are looked at.
    pub interval: Duration,
}

/// The TLS state at one moment; swapped whole.
pub(crate) struct FederatorTls {
    /// The config server's TLS (`None`: no certificate or no bundle: plaintext, lab/dev only).
    pub server: Option<Arc<rustls::ServerConfig>>,
    /// What gateways' client certificates must chain to.
    pub trust: Arc<TrustBundle>,
    /// The bundle's PEM text, as published in `clusters/<c>/info`.
    pub bundle_pem: String,
    pub issuer: Option<Arc<Issuer>>,
    /// The federator's own certificate.
    pub own: Option<Validity>,
}

#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    #[error("trust bundle {path}: {source}")]
    Bundle { path: PathBuf, source: TlsError },
    #[error("reading trust bundle {path}: {reason}")]
    BundleRead { path: PathBuf, reason: String },
    #[error("issuer: {0}")]
    Issuer(#[from] IssuerError),
    #[error("the federator's certificate: {0}")]
    Identity(TlsError),
    #[error("the config server's TLS: {0}")]
    Server(TlsError),
}

type Stamp = causeway_api::pem::FileStamp;

/// The federator's own certificate from the issuer, its validity, and the issuer's fingerprint.
type SelfIssued = (Identity, Validity, String);

impl TlsSources {
    fn paths(&self) -> Vec<&Path> {
        let mut out = Vec::new();
        out.extend(self.bundle.as_deref());
        if let Some((c, k)) = &self.cert {
            out.extend([c.as_path(), k.as_path()]);
        }
        if let Some(i) = &self.issuer {
            out.extend([i.cert_file.as_path(), i.key_file.as_path()]);
        }
        out
    }

    fn stamp(&self) -> Stamp {
        causeway_api::pem::file_stamp(&self.paths())
    }

    /// Loads everything; `previous` lends its self-issued identity when neither the issuer nor
    /// the time asks for a new one.
    fn load(
        &self,
        previous: Option<&SelfIssued>,
    ) -> Result<(FederatorTls, Option<SelfIssued>), LoadError> {
        let (trust, bundle_pem) = match &self.bundle {
            Some(p) => {
                let text = std::fs::read_to_string(p).map_err(|e| LoadError::BundleRead {
                    path: p.clone(),
                    reason: e.to_string(),
                })?;
                let bundle = TrustBundle::from_pem(text.as_bytes(), &p.display().to_string())
                    .map_err(|source| LoadError::Bundle {
                        path: p.clone(),
                        source,
                    })?;
                (bundle, text)
            }
            None => (TrustBundle::new(Vec::new()), String::new()),
        };
        let issuer = match &self.issuer {
            Some(cfg) => Some(Arc::new(Issuer::load(
                cfg,
                &self.cluster,
                &self.trust_domain,
            )?)),
            None => None,
        };
        let mut self_issued = None;
        let identity = match &issuer {
            Some(issuer) => {
                let reuse = previous
                    .filter(|(_, v, fp)| *fp == issuer.fingerprint && unix_now() < v.renew_at());
                let (identity, validity) = match reuse {
                    Some((i, v, _)) => (i.clone(), *v),
                    None => {
                        let id = SpiffeId::federator(&self.trust_domain)
                            .map_err(|e| LoadError::Identity(TlsError::InvalidSpiffeId(e)))?;
                        issuer.issue_identity(&id)?
                    }
                };
                self_issued = Some((identity.clone(), validity, issuer.fingerprint.clone()));
                Some(identity)
            }
            None => match &self.cert {
                Some((c, k)) => Some(Identity::load(c, k).map_err(LoadError::Identity)?),
                None => None,
            },
        };
        let own = identity.as_ref().and_then(|i| i.validity().ok());
        let server = match (&identity, self.bundle.is_some()) {
            (Some(identity), true) => Some(
                causeway_api::tls::server_config(identity, &trust, &[b"h2"])
                    .map_err(LoadError::Server)?,
            ),
            _ => None,
        };
        Ok((
            FederatorTls {
                server,
                trust: Arc::new(trust),
                bundle_pem,
                issuer,
                own,
            },
            self_issued,
        ))
    }
}

/// Keeps the TLS state current: reloads on a file change, renews the self-issued certificate
/// at two thirds of its life.
pub(crate) struct TlsWatcher {
    sources: TlsSources,
    stamp: Stamp,
    self_issued: Option<SelfIssued>,
    reloads: prometheus::IntCounterVec,
}

impl TlsWatcher {
    /// The first load; an error here stops the start.
    pub(crate) fn start(
        sources: TlsSources,
        registry: &prometheus::Registry,
    ) -> Result<(Self, FederatorTls), LoadError> {
        let reloads = prometheus::IntCounterVec::new(
            prometheus::Opts::new(
                "causeway_federator_tls_reloads_total",
                "Reloads of the federator's trust bundle, issuer or certificate, by result.",
            ),
            &["result"],
        )
        .expect("valid metric");
        let _ = registry.register(Box::new(reloads.clone()));
        let stamp = sources.stamp();
        let (tls, self_issued) = sources.load(None)?;
        Ok((
            Self {
                sources,
                stamp,
                self_issued,
                reloads,
            },
            tls,
        ))
    }

    /// Until `shutdown`: look at the files every interval; send a new state when they changed
    /// or the self-issued certificate is due.
    pub(crate) async fn run(
        mut self,
        tx: watch::Sender<Arc<FederatorTls>>,
        shutdown: CancellationToken,
    ) {
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = tokio::time::sleep(self.sources.interval) => {}
            }
            let stamp = self.sources.stamp();
            let due = self
                .self_issued
                .as_ref()
                .is_some_and(|(_, v, _)| unix_now() >= v.renew_at());
            if stamp == self.stamp && !due {
                continue;
            }
            match self.sources.load(self.self_issued.as_ref()) {
                Ok((tls, self_issued)) => {
                    self.stamp = stamp;
                    self.self_issued = self_issued;
                    self.reloads.with_label_values(&["ok"]).inc();
                    tracing::info!(
                        issuer = tls.issuer.as_ref().map(|i| i.fingerprint.as_str()),
                        own_not_after = tls.own.map(|v| v.not_after),
                        "federator TLS reloaded"
                    );
                    tx.send_replace(Arc::new(tls));
                }
                Err(e) => {
                    // Retried at the next look (the stamp is not taken).
                    self.reloads.with_label_values(&["error"]).inc();
                    tracing::warn!(error = %e, "federator TLS reload failed; keeping the old state");
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ca(dir: &Path, td: &str) -> IssuerConfig {
        let out = dir.join("ca");
        let args = certs::CertsArgs {
            out: out.clone(),
            clusters: vec![ClusterId::new(td.split('.').next().unwrap()).unwrap()],
            trust_domain_suffix: td.split_once('.').unwrap().1.to_string(),
            validity_days: 1,
            force: false,
            add: false,
            own_roots: false,
            shared_root: false,
        };
        let g = certs::generate(&args).unwrap();
        let c = &g.clusters[0].cluster;
        IssuerConfig {
            cert_file: g.layout.ca_cert(c),
            key_file: g.layout.ca_key(c),
            lifetime: Duration::from_secs(20),
        }
    }

    #[test]
    fn signs_the_callers_id_over_the_csr_key_only() {
        let dir = tempfile::tempdir().unwrap();
        let cfg = ca(dir.path(), "east.causeway.mesh");
        let east = ClusterId::new("east").unwrap();
        let issuer = Issuer::load(&cfg, &east, "east.causeway.mesh").unwrap();
        // The CSR asks for another identity and a CA; only its key is used.
        let key = KeyPair::generate().unwrap();
        let mut asked = rcgen::CertificateParams::new(vec!["evil.example".to_string()]).unwrap();
        asked.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        let csr = asked.serialize_request(&key).unwrap().pem().unwrap();
        let id = SpiffeId::gateway("east.causeway.mesh").unwrap();
        let issued = issuer.sign_csr(&id, &csr).unwrap();
        let identity = Identity::from_pem(
            issued.chain_pem.as_bytes(),
            key.serialize_pem().as_bytes(),
            "t",
        )
        .unwrap();
        assert_eq!(identity.spiffe_id().unwrap(), id);
        assert_eq!(identity.cert_chain.len(), 2, "leaf and CA");
        assert_eq!(
            identity.issuer_fingerprint().as_deref(),
            Some(issuer.fingerprint.as_str())
        );
        let v = identity.validity().unwrap();
        assert!(v.not_after - v.not_before <= 22, "{v:?}");
        let (_, leaf) = x509_parser::parse_x509_certificate(&identity.cert_chain[0]).unwrap();
        assert!(!leaf.is_ca());
        // A bad or huge CSR is refused, naming why.
        assert!(matches!(
            issuer.sign_csr(
                &id,
                "-----BEGIN CERTIFICATE REQUEST-----\nAAAA\n-----END CERTIFICATE REQUEST-----\n"
            ),
            Err(IssuerError::BadCsr(_))
        ));
        assert!(matches!(
            issuer.sign_csr(&id, &"x".repeat(MAX_CSR_BYTES + 1)),
            Err(IssuerError::CsrTooLarge(_))
        ));
    }

    #[test]
    fn a_key_that_is_not_the_cas_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let mut cfg = ca(dir.path(), "east.causeway.mesh");
        cfg.key_file = cfg.key_file.with_file_name("root-ca.key");
        let east = ClusterId::new("east").unwrap();
        let err = Issuer::load(&cfg, &east, "east.causeway.mesh")
            .err()
            .expect("refused");
        assert!(err.to_string().contains("not the key of"), "{err}");
    }

    #[test]
    fn another_trust_domains_ca_is_refused_as_issuer() {
        let dir = tempfile::tempdir().unwrap();
        let cfg = ca(dir.path(), "west.causeway.mesh");
        let east = ClusterId::new("east").unwrap();
        let err = Issuer::load(&cfg, &east, "east.causeway.mesh")
            .err()
            .expect("refused");
        assert!(matches!(err, IssuerError::ForeignCa { .. }), "{err}");
        assert!(err.to_string().contains("west.causeway.mesh"), "{err}");
    }
}
