//! The data plane: what both directions need to carry a request (settings, tables, TLS,
//! peers, backends, metrics, tracing, the drain), and nothing of the control state that keeps
//! them current (proxy.rs). [`egress`] carries local callers to imported services, [`ingress`]
//! peer gateways to exported ones; both use one accept loop ([`serve`]), one access record
//! ([`Record`]), one retry policy ([`Retries`]), and the same replies ([`reply`]).
//!
//! ztunnel's layout: `proxy.rs` with `proxy/{inbound,outbound}.rs`.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use arc_swap::{ArcSwap, ArcSwapOption};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{watch, Notify};
use tokio_util::sync::CancellationToken;

use crate::backend::Backends;
use crate::config::Config;
use crate::metrics::Metrics;
use crate::peer::PeerPool;
use crate::table::{StatsRegistry, Tables};
use crate::tls::TlsState;

pub(crate) mod egress;
mod head;
pub(crate) mod ingress;
mod record;
mod reply;
mod retry;

pub(crate) use head::{
    clone_head, is_grpc, is_idempotent, malformed_host, oversized_head, request_authority,
};
pub(crate) use record::{path_and_traceparent, Record};
pub(crate) use reply::{grpc_reply, reply};
pub(crate) use retry::Retries;

/// The data path's inputs, proxy by every connection. Hot-path reads are lock-free
/// (`ArcSwap` loads); the control side (app.rs) swaps what they load.
pub(crate) struct Proxy {
    pub config: Config,
    pub tables: ArcSwapOption<Tables>,
    pub tls: Arc<ArcSwap<TlsState>>,
    pub registry: StatsRegistry,
    pub metrics: Metrics,
    pub peers: PeerPool,
    pub backends: Backends,
    /// The version of each applied config, for what must follow changes (service port
    /// listeners, open tunnels' re-authorisation).
    pub versions: watch::Receiver<u64>,
    /// Stop accepting and drain: open connections finish what they carry, then close.
    pub shutdown: CancellationToken,
    /// The drain is over: drop whatever is still open.
    pub hard_stop: CancellationToken,
    pub conns: ConnCounter,
    /// Spans of requests, when a trace collector is set.
    pub tracer: crate::trace::Tracer,
    /// The data threads every accepted connection is handed to.
    pub workers: crate::workers::Workers,
}

impl Proxy {
    /// The Prometheus text of the metrics, with the breaker gauges read just now.
    pub(crate) fn render_metrics(&self) -> String {
        self.registry.observe(&self.metrics);
        self.metrics.render()
    }

    pub(crate) fn connect_timeout(&self) -> Duration {
        Duration::from_millis(self.config.connect_timeout_ms)
    }

    /// How long an accepted TLS handshake may take (one setting for every listener).
    pub(crate) fn tls_handshake_timeout(&self) -> Duration {
        Duration::from_millis(self.config.tls_handshake_timeout_ms)
    }

    /// Streams a pooled peer connection carries before another is dialled.
    pub(crate) fn streams_per_connection(&self) -> usize {
        self.config.peer_streams_per_connection as usize
    }

    /// The version of the tables being served (0 before the first).
    pub(crate) fn version(&self) -> u64 {
        self.tables.load().as_ref().map_or(0, |t| t.version)
    }
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

/// Either end of a tunnel.
pub(crate) trait Io: AsyncRead + AsyncWrite + Unpin + Send {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send> Io for T {}

/// The one accept loop of the gateway's listeners (egress, import ports, peer): accepts until
/// shutdown, counts each open connection for the drain, and drops it at the hard stop. An accept
/// error (out of descriptors, say) is logged under `what` and retried after 50 ms.
pub(crate) async fn serve<F, Fut>(
    proxy: Arc<Proxy>,
    listener: TcpListener,
    what: &'static str,
    handle: F,
) where
    F: Fn(Arc<Proxy>, TcpStream, SocketAddr) -> Fut + Clone + Send + 'static,
    Fut: std::future::Future<Output = ()> + Send + 'static,
{
    let shutdown = proxy.shutdown.clone();
    loop {
        let (stream, remote) = tokio::select! {
            _ = shutdown.cancelled() => return,
            r = listener.accept() => match r {
                Ok(pair) => pair,
                Err(e) => {
                    tracing::warn!(listener = what, error = %e, "accept failed");
                    tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        let _ = stream.set_nodelay(true);
        let (p, handle) = (proxy.clone(), handle.clone());
        proxy
            .workers
            .spawn(stream, remote, move |stream, remote| async move {
                let _open = p.conns.enter();
                let stop = p.hard_stop.clone();
                tokio::select! {
                    _ = stop.cancelled() => {}
                    _ = handle(p.clone(), stream, remote) => {}
                }
            });
    }
}

/// Buffer of each direction of a tunnel: 32 KiB, 64 KiB a tunnel (tokio's default is 8 KiB).
/// Fewer, larger reads and HTTP/2 DATA frames: opaque TCP through two gateways took 0.65x
/// HAProxy's bytes per CPU-second with 8 KiB, 0.86-0.96x with 32 KiB, no better with 64 KiB
/// (gateway/bench/tcp.sh, docs/benchmarks.md); larger would cost memory per idle tunnel.
const PUMP_BUFFER: usize = 32 << 10;

/// Copies both ways until either side closes, then shuts the other down.
pub(crate) async fn pump(mut a: impl Io, mut b: impl Io) {
    let copied =
        tokio::io::copy_bidirectional_with_sizes(&mut a, &mut b, PUMP_BUFFER, PUMP_BUFFER).await;
    if let Err(e) = copied {
        tracing::debug!(error = %e, "tunnel ended");
    }
}
