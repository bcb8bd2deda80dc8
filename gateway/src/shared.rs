//! The control state of a running gateway, beside the data plane it keeps current
//! ([`Proxy`]): the apply lock, the version channel, the TLS files, the issued certificate,
//! the peers' probe context. Applying snapshots and reloading certificates are app.rs's
//! `impl Shared`; the federator session, renewal, reload and admin tasks take a `Shared`, the
//! listeners only the `Proxy`.

use std::sync::{Arc, Mutex};

use tokio::sync::watch;

use crate::peer::ProbeContext;
use crate::proxy::Proxy;
use crate::tls::TlsFiles;

pub(crate) struct Shared {
    /// What the data plane reads.
    pub proxy: Arc<Proxy>,
    pub tls_files: TlsFiles,
    /// Serialises config applies and certificate reloads (both rebuild TLS state).
    pub apply_lock: Mutex<()>,
    /// Sends the version being served to [`Proxy::versions`].
    pub version_tx: watch::Sender<u64>,
    pub probe_ctx: ProbeContext,
    /// The certificate the federator issued last (renew.rs); preferred over the file one.
    pub issued: Mutex<Option<causeway_api::tls::Identity>>,
    /// The issuer the federator's snapshot names (empty: none; keep the file certificate).
    pub wanted_issuer: watch::Sender<String>,
}
