//! What every task of a running gateway shares: the data path's inputs (settings, tables, TLS,
//! peers, backends, metrics, tracing), the connection count and stop tokens, and the control
//! state app.rs keeps (apply lock, version channel, TLS files, issued certificate). Defined here,
//! apart from app.rs, so that the listeners and sessions app.rs starts do not import it back;
//! applying snapshots and reloading certificates are app.rs's `impl Shared`.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Mutex;
use std::time::Duration;

use arc_swap::{ArcSwap, ArcSwapOption};
use std::sync::Arc;
use tokio::sync::{watch, Notify};
use tokio_util::sync::CancellationToken;

use crate::backend::Backends;
use crate::config::Config;
use crate::metrics::Metrics;
use crate::peer::{PeerPool, ProbeContext};
use crate::table::{StatsRegistry, Tables};
use crate::tls::{TlsFiles, TlsState};

/// State every task shares. Hot-path reads are lock-free (`ArcSwap` loads).
pub(crate) struct Shared {
    pub config: Config,
    pub tables: ArcSwapOption<Tables>,
    pub tls: Arc<ArcSwap<TlsState>>,
    pub tls_files: TlsFiles,
    pub registry: StatsRegistry,
    pub metrics: Metrics,
    pub peers: PeerPool,
    pub backends: Backends,
    /// Serialises config applies and certificate reloads (both rebuild TLS state).
    pub apply_lock: Mutex<()>,
    /// The version being served, for tasks that follow config changes (VIP listeners).
    pub version_tx: watch::Sender<u64>,
    pub probe_ctx: ProbeContext,
    /// Stop accepting and drain: open connections finish what they carry, then close.
    pub shutdown: CancellationToken,
    /// The drain is over: drop whatever is still open.
    pub hard_stop: CancellationToken,
    pub conns: ConnCounter,
    /// Spans of requests, when a trace collector is set.
    pub tracer: crate::trace::Tracer,
    /// The certificate the federator issued last (renew.rs); preferred over the file one.
    pub issued: Mutex<Option<causeway_api::tls::Identity>>,
    /// The issuer the federator's snapshot names (empty: none; keep the file certificate).
    pub wanted_issuer: watch::Sender<String>,
}

/// Open client and peer connections, so that shutdown can wait for them to drain.
#[derive(Default)]
pub(crate) struct ConnCounter {
    active: AtomicUsize,
    idle: Notify,
}

/// One open connection; counted until dropped.
pub(crate) struct ConnGuard<'a>(&'a ConnCounter);

impl ConnCounter {
    pub(crate) fn enter(&self) -> ConnGuard<'_> {
        self.active.fetch_add(1, Ordering::AcqRel);
        ConnGuard(self)
    }

    pub(crate) async fn wait_idle(&self) {
        loop {
            let idle = self.idle.notified();
            if self.active.load(Ordering::Acquire) == 0 {
                return;
            }
            idle.await;
        }
    }
}

impl Drop for ConnGuard<'_> {
    fn drop(&mut self) {
        if self.0.active.fetch_sub(1, Ordering::AcqRel) == 1 {
            self.0.idle.notify_waiters();
        }
    }
}

impl Shared {
    pub(crate) fn connect_timeout(&self) -> Duration {
        Duration::from_millis(self.config.connect_timeout_ms)
    }

    /// How long an accepted TLS handshake may take (one setting for every listener).
    pub(crate) fn tls_handshake_timeout(&self) -> Duration {
        Duration::from_millis(self.config.tls_handshake_timeout_ms)
    }

    /// The version of the tables being served (0 before the first).
    pub(crate) fn version(&self) -> u64 {
        self.tables.load().as_ref().map_or(0, |t| t.version)
    }
}
