//! Short-lived certificates from the federator (docs/certificates.md "Renewal").
//!
//! When the config snapshot names an issuer (`certificate_issuer`), the gateway asks its
//! federator for a certificate over `Config/Certify`: a fresh P-256 key that never leaves this
//! process, a CSR of it, and back the leaf and chain the federator signed for this gateway's
//! SPIFFE ID. It asks
//! - at once when it has none from this issuer (first start, or the issuer changed: a rotation),
//! - at two thirds of the current certificate's life,
//! - after a failure, with backoff from 1 s to 30 s, logging the time the current one has left.
//!
//! A new certificate must carry our SPIFFE ID and chain to our own trust bundle, else it is
//! refused and the current one kept. Installing it rebuilds the TLS state (new handshakes use
//! it), and the pooled peer connections made with the old one are retired: new requests open a
//! connection with the new certificate while streams on the old one finish; an old connection
//! is closed at the latest when the certificate it was made with expires. The certificate is
//! kept in the state directory, so a restarted gateway starts from it while it is valid.
//!
//! Without the federator the gateway goes on with the certificate it has, and says how long
//! that is: `causeway_certificate_expiry_timestamp_seconds`, the warning at the last third
//! (reload.rs) and `/ready` answering 503 once it has expired.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use causeway_api::proto::config_client::ConfigClient;
use causeway_api::proto::CertifyRequest;
use causeway_api::tls::{Identity, TrustBundle, Validity};
use rcgen::{CertificateParams, KeyPair};

use crate::config::FederatorUrl;
use crate::shared::Shared;
use crate::tls::unix_now;

const CERT_FILE: &str = "identity.pem";
const KEY_FILE: &str = "identity.key";
/// How long one `Certify` call may take.
const CALL_TIMEOUT: Duration = Duration::from_secs(10);
const RETRY_MIN: Duration = Duration::from_millis(1000);
const RETRY_MAX: Duration = Duration::from_secs(30);

/// Why a renewal did not happen; the `result` label of
/// `causeway_gateway_certificate_renewals_total` is [`RenewError::label`].
#[derive(Debug, thiserror::Error)]
pub(crate) enum RenewError {
    #[error("federator unreachable: {0}")]
    Unreachable(String),
    #[error("federator refused: {0}")]
    Refused(tonic::Status),
    #[error("the federator's certificate is unusable: {0}")]
    Unusable(String),
    #[error("generating a key: {0}")]
    Key(String),
}

impl RenewError {
    fn label(&self) -> &'static str {
        match self {
            Self::Unreachable(_) => "unreachable",
            Self::Refused(_) => "refused",
            Self::Unusable(_) => "unusable",
            Self::Key(_) => "error",
        }
    }
}

/// Until shutdown: keeps the gateway's certificate renewed from the federator at `url`.
pub(crate) async fn run(shared: Arc<Shared>, url: FederatorUrl) {
    let mut wanted = shared.wanted_issuer.subscribe();
    let mut retry = RETRY_MIN;
    loop {
        let issuer = wanted.borrow_and_update().clone();
        let due = if issuer.is_empty() {
            None
        } else {
            let tls = shared.proxy.tls.load();
            let from_issuer = tls.identity.issuer_fingerprint().as_deref() == Some(&issuer)
                && shared.has_issued_identity();
            match tls.validity {
                Some(v) if from_issuer => Some(v.renew_at()),
                _ => Some(0),
            }
        };
        let wait = due.map(|at| Duration::from_secs((at - unix_now()).max(0) as u64));
        tokio::select! {
            _ = shared.proxy.shutdown.cancelled() => return,
            r = wanted.changed() => {
                if r.is_err() { return; }
                continue;
            }
            _ = sleep_or_forever(wait) => {}
        }
        match renew(&shared, &url).await {
            Ok(v) => {
                shared
                    .proxy
                    .metrics
                    .cert_renewals
                    .with_label_values(&["ok"])
                    .inc();
                retry = RETRY_MIN;
                tracing::info!(
                    not_after = v.not_after,
                    renew_in = ?Duration::from_secs((v.renew_at() - unix_now()).max(0) as u64),
                    "gateway certificate renewed from the federator"
                );
            }
            Err(e) => {
                shared
                    .proxy
                    .metrics
                    .cert_renewals
                    .with_label_values(&[e.label()])
                    .inc();
                let left = shared
                    .proxy
                    .tls
                    .load()
                    .validity
                    .map(|v| Duration::from_secs(v.left(unix_now()).max(0) as u64));
                tracing::warn!(error = %e, ?left, retry_in = ?retry, "gateway certificate renewal failed; the current certificate stays in use");
                tokio::select! {
                    _ = shared.proxy.shutdown.cancelled() => return,
                    _ = tokio::time::sleep(retry) => {}
                }
                retry = (retry * 2).min(RETRY_MAX);
            }
        }
    }
}

async fn sleep_or_forever(d: Option<Duration>) {
    match d {
        Some(d) => tokio::time::sleep(d).await,
        None => std::future::pending().await,
    }
}

/// One renewal: key, CSR, `Certify`, checks, install, persist.
async fn renew(shared: &Arc<Shared>, url: &FederatorUrl) -> Result<Validity, RenewError> {
    let key = KeyPair::generate().map_err(|e| RenewError::Key(e.to_string()))?;
    let csr = CertificateParams::default()
        .serialize_request(&key)
        .and_then(|r| r.pem())
        .map_err(|e| RenewError::Key(e.to_string()))?;
    let call = async {
        let channel = crate::federator::channel(shared, url)
            .await
            .map_err(RenewError::Unreachable)?;
        ConfigClient::new(channel)
            .certify(CertifyRequest {
                cluster: shared.proxy.config.cluster.clone(),
                node: shared.proxy.config.node.clone(),
                csr_pem: csr,
            })
            .await
            .map_err(RenewError::Refused)
    };
    let resp = tokio::time::timeout(CALL_TIMEOUT, call)
        .await
        .map_err(|_| RenewError::Unreachable(format!("no answer in {CALL_TIMEOUT:?}")))??
        .into_inner();
    let key_pem = key.serialize_pem();
    let identity = Identity::from_pem(
        resp.certificate_chain_pem.as_bytes(),
        key_pem.as_bytes(),
        "issued",
    )
    .map_err(|e| RenewError::Unusable(e.to_string()))?;
    let current = shared.proxy.tls.load();
    check(&identity, &current.own_id, &current.local_bundle)?;
    let validity = identity
        .validity()
        .map_err(|e| RenewError::Unusable(e.to_string()))?;
    shared
        .install_identity(identity)
        .map_err(|e| RenewError::Unusable(e.to_string()))?;
    if let Some(dir) = &shared.proxy.config.state_dir {
        if let Err(e) = persist(dir, &resp.certificate_chain_pem, &key_pem) {
            tracing::warn!(dir = %dir.display(), error = %e, "cannot keep the renewed certificate in the state directory");
        }
    }
    Ok(validity)
}

/// A certificate we may use: our SPIFFE ID, chaining to our own bundle, valid now.
fn check(
    identity: &Identity,
    own: &causeway_api::spiffe::SpiffeId,
    bundle: &TrustBundle,
) -> Result<(), RenewError> {
    let id = causeway_api::tls::verify_client_chain(bundle, &identity.cert_chain)
        .map_err(|e| RenewError::Unusable(format!("it does not verify against our bundle: {e}")))?;
    if &id != own {
        return Err(RenewError::Unusable(format!("it names {id}, we are {own}")));
    }
    Ok(())
}

fn paths(dir: &Path) -> (PathBuf, PathBuf) {
    (dir.join(CERT_FILE), dir.join(KEY_FILE))
}

/// Writes chain and key through temporary files (the key readable by us only).
fn persist(dir: &Path, chain_pem: &str, key_pem: &str) -> std::io::Result<()> {
    use std::io::Write;
    std::fs::create_dir_all(dir)?;
    let (cert, key) = paths(dir);
    for (path, text, mode) in [(&key, key_pem, 0o600), (&cert, chain_pem, 0o644)] {
        let tmp = path.with_extension("tmp");
        let mut opts = std::fs::OpenOptions::new();
        opts.write(true).create(true).truncate(true);
        #[cfg(unix)]
        {
            use std::os::unix::fs::OpenOptionsExt;
            opts.mode(mode);
        }
        #[cfg(not(unix))]
        let _ = mode;
        let mut f = opts.open(&tmp)?;
        f.write_all(text.as_bytes())?;
        f.sync_all()?;
        std::fs::rename(&tmp, path)?;
    }
    Ok(())
}

/// The certificate a previous run kept in `dir`, when it is still valid, names the same SPIFFE
/// ID as the file certificate and chains to our bundle; otherwise `None` (and why, logged).
pub(crate) fn load_persisted(
    dir: &Path,
    files: &Identity,
    bundle: &TrustBundle,
) -> Option<Identity> {
    let (cert, key) = paths(dir);
    if !cert.exists() {
        return None;
    }
    let result = (|| {
        let identity = Identity::load(&cert, &key).map_err(|e| e.to_string())?;
        let own = files.spiffe_id().map_err(|e| e.to_string())?;
        check(&identity, &own, bundle).map_err(|e| e.to_string())?;
        Ok::<_, String>(identity)
    })();
    match result {
        Ok(i) => {
            tracing::info!(file = %cert.display(), "starting with the certificate the federator issued last");
            Some(i)
        }
        Err(reason) => {
            tracing::info!(file = %cert.display(), %reason, "not using the kept certificate; starting with the file certificate");
            None
        }
    }
}
