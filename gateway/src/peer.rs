//! The peer transport: a pool of mTLS HTTP/2 connections per peer cluster's gateway, dialled on
//! demand and re-dialled when they drop, and the active probes that tell whether a peer is up.
//!
//! A stream goes on the pooled connection of its data thread ([`crate::workers`]) with the
//! fewest open streams; when every one carries `peer_streams_per_connection` (100, ztunnel's
//! figure), another is dialled, long before the peer's own stream limit (4,096) would make
//! streams queue on one connection.
//!
//! Probes are `GET /` streams with `:authority` [`PROBE_AUTHORITY`] over the pooled connection
//! (so they test exactly what requests use); a peer is down after `probe_misses` misses in a
//! row and up again on the next success.
//!
//! A single miss makes the peer *suspect*: the planner tries it after the others, and requests
//! waiting on it may be retried elsewhere (see [`PeerConn::check_path`]). A request that waits
//! long for its answer asks for a probe at once instead of waiting for the next one, so a dead
//! path is told apart from a slow backend within a fraction of a second.

use std::collections::HashMap;
use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::{Duration, Instant, SystemTime};

use arc_swap::ArcSwap;
use causeway_api::proto::PeerHealth;
use http::{Request, Version};
use hyper::client::conn::http2::SendRequest;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use serde::Serialize;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use tokio::sync::{mpsc, watch};
use tokio_rustls::TlsConnector;
use tokio_util::sync::{CancellationToken, WaitForCancellationFutureOwned};

use crate::body::{self, Body};
use crate::error::ProxyError;
use crate::metrics::Metrics;
use crate::table::Tables;
use crate::tls::{self, TlsState};

/// `:authority` of probe requests; the ingress answers them itself.
pub const PROBE_AUTHORITY: &str = "probe.causeway.internal";

/// How often (in probes, one a second by default) a peer's state and the traffic to and from
/// it are reported to the federator when the state does not change: its dashboard's rates are
/// this fresh. The federator writes to etcd only when the state changes.
const REPORT_EVERY: u32 = 2;

pub(crate) type Sender = SendRequest<Body>;

/// What the prober knows of a peer.
#[derive(Debug, Clone, Serialize)]
pub(crate) struct PeerStatus {
    pub(crate) cluster: String,
    pub(crate) addresses: Vec<String>,
    pub(crate) up: bool,
    pub(crate) suspect: bool,
    pub(crate) probed: bool,
    pub(crate) connected: bool,
    pub(crate) rtt_micros: Option<u64>,
    pub(crate) consecutive_misses: u32,
    pub(crate) last_error: Option<String>,
    /// When the peer's certificate expires (Unix seconds), as last seen when dialling it.
    pub(crate) certificate_not_after: Option<i64>,
    /// Open connections of the pool, and the streams they carry.
    pub(crate) connections: usize,
    pub(crate) streams: usize,
}

// === impl PeerConn ===

/// Most connections a pool keeps to one peer; past them, streams share the least busy one.
const MAX_CONNECTIONS_PER_PEER: usize = 64;

/// One connection of a peer's pool and the streams open on it.
struct Pooled {
    sender: Sender,
    streams: Arc<AtomicUsize>,
    /// Fails the connection's socket (and so its streams) at once.
    kill: CancellationToken,
    /// The data thread whose event loop runs the connection ([`crate::workers::current`]).
    thread: usize,
}

/// A stream's place on a pooled connection, counted until dropped: a request until its
/// response has ended, a tunnel until it closes.
pub(crate) struct StreamSlot(Arc<AtomicUsize>);

impl Drop for StreamSlot {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
}

/// An I/O stream that holds its [`StreamSlot`] for as long as it lives (a tunnel).
pub(crate) struct Slotted<T> {
    pub(crate) inner: T,
    pub(crate) _slot: StreamSlot,
}

impl<T: AsyncRead + Unpin> AsyncRead for Slotted<T> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for Slotted<T> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

/// The connection pool to one peer cluster's gateway.
pub(crate) struct PeerConn {
    pub(crate) cluster: String,
    addresses: Vec<String>,
    /// The connections in use (retired ones are not here; they finish their streams).
    pool: ArcSwap<Vec<Arc<Pooled>>>,
    connecting: tokio::sync::Mutex<()>,
    next_address: AtomicUsize,
    /// Routable: not marked down by the probes (optimistic until the first misses).
    up: AtomicBool,
    /// The last probe (periodic or asked for by a waiting request) went unanswered.
    suspect: watch::Sender<bool>,
    /// An asked-for probe is running.
    checking: AtomicBool,
    probed: AtomicBool,
    misses: AtomicU64,
    rtt_micros: AtomicU64,
    last_error: Mutex<Option<String>>,
    /// The peer leaf's notAfter from the last handshake (0: not dialled yet).
    cert_not_after: std::sync::atomic::AtomicI64,
    cancel: CancellationToken,
    /// The roots of the peer's bundle its connection was verified with (`None`: ours).
    bundle: Mutex<Option<Vec<rustls_pki_types::CertificateDer<'static>>>>,
}

/// How long a connection verified with a peer's previous trust bundle may finish its streams.
const BUNDLE_CHANGE_GRACE_SECS: i64 = 60;

impl PeerConn {
    fn new(cluster: String, addresses: Vec<String>, cancel: CancellationToken) -> Self {
        Self {
            cluster,
            addresses,
            pool: ArcSwap::from_pointee(Vec::new()),
            connecting: tokio::sync::Mutex::new(()),
            next_address: AtomicUsize::new(0),
            up: AtomicBool::new(true),
            suspect: watch::Sender::new(false),
            checking: AtomicBool::new(false),
            probed: AtomicBool::new(false),
            misses: AtomicU64::new(0),
            rtt_micros: AtomicU64::new(0),
            last_error: Mutex::new(None),
            cert_not_after: std::sync::atomic::AtomicI64::new(0),
            cancel,
            bundle: Mutex::new(None),
        }
    }

    pub(crate) fn is_up(&self) -> bool {
        self.up.load(Ordering::Relaxed)
    }

    pub(crate) fn is_suspect(&self) -> bool {
        *self.suspect.borrow()
    }

    fn set_suspect(&self, suspect: bool) {
        self.suspect
            .send_if_modified(|s| std::mem::replace(s, suspect) != suspect);
    }

    /// Completes once the peer is suspect (at once if it is already).
    pub(crate) async fn suspected(&self) {
        let mut rx = self.suspect.subscribe();
        // The sender lives as long as `self`, so this cannot fail while we borrow it.
        let _ = rx.wait_for(|s| *s).await;
    }

    /// Probes the peer now, unless a probe asked for by another request is already running:
    /// a miss makes the peer suspect (waking [`suspected`](Self::suspected)), an answer clears
    /// it. Requests call this when their answer is late, to tell a dead path from a slow
    /// backend without waiting for the next periodic probe.
    pub(crate) fn check_path(
        self: &Arc<Self>,
        tls: Arc<ArcSwap<TlsState>>,
        metrics: &Metrics,
        connect_timeout: Duration,
        timeout: Duration,
    ) {
        if self.checking.swap(true, Ordering::AcqRel) {
            return;
        }
        let peer = self.clone();
        let metrics = metrics.clone();
        tokio::spawn(async move {
            let result = tokio::select! {
                _ = peer.cancel.cancelled() => return,
                r = peer.probe(&tls, connect_timeout, timeout) => r,
            };
            let outcome = if result.is_ok() { "answered" } else { "missed" };
            metrics
                .path_checks
                .with_label_values(&[&peer.cluster, outcome])
                .inc();
            match result {
                Ok(_) => peer.set_suspect(false),
                Err(e) => {
                    tracing::debug!(peer = %peer.cluster, error = %e, "path check missed; peer suspect");
                    peer.set_suspect(true);
                }
            }
            peer.checking.store(false, Ordering::Release);
        });
    }

    /// Drops the pooled connection. Streams in flight on it fail at once (and idempotent
    /// requests are retried elsewhere) instead of hanging on a dead path until a timeout.
    fn close(&self) {
        for c in self.pool.swap(Arc::new(Vec::new())).iter() {
            c.kill.cancel();
        }
    }

    /// Takes the pooled connection out of use without cutting it: the next request dials a
    /// new one (with the TLS identity of now), streams on the old one finish, and hyper closes
    /// it once its last stream and sender are gone. Its socket is closed at `close_at` (Unix
    /// seconds: when the certificate it was made with expires) at the latest.
    fn retire(&self, close_at: Option<i64>) {
        let retired = self.pool.swap(Arc::new(Vec::new()));
        if retired.is_empty() {
            return;
        }
        let kills: Vec<CancellationToken> = retired.iter().map(|c| c.kill.clone()).collect();
        let left = close_at.map_or(300, |t| (t - crate::tls::unix_now()).max(0));
        tokio::spawn(async move {
            tokio::time::sleep(Duration::from_secs(left as u64)).await;
            for kill in kills {
                kill.cancel();
            }
        });
    }

    pub(crate) fn status(&self) -> PeerStatus {
        let pool = self.pool.load();
        let open: Vec<&Arc<Pooled>> = pool.iter().filter(|c| !c.sender.is_closed()).collect();
        let connected = !open.is_empty();
        let streams = open.iter().map(|c| c.streams.load(Ordering::Relaxed)).sum();
        let connections = open.len();
        let probed = self.probed.load(Ordering::Relaxed);
        PeerStatus {
            cluster: self.cluster.clone(),
            addresses: self.addresses.clone(),
            up: self.is_up(),
            suspect: self.is_suspect(),
            probed,
            connected,
            rtt_micros: probed.then(|| self.rtt_micros.load(Ordering::Relaxed)),
            consecutive_misses: self.misses.load(Ordering::Relaxed) as u32,
            last_error: self
                .last_error
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .clone(),
            certificate_not_after: self.certificate_not_after(),
            connections,
            streams,
        }
    }

    /// When the peer's certificate expires, as last seen in a handshake.
    pub(crate) fn certificate_not_after(&self) -> Option<i64> {
        Some(self.cert_not_after.load(Ordering::Relaxed)).filter(|t| *t != 0)
    }

    /// A sender on the pooled connection with the fewest streams, and the stream's slot on
    /// it; a new connection is dialled first when every one carries `per_connection` streams
    /// (and the pool is not full). Probes pass `usize::MAX`: any open connection will do.
    pub(crate) async fn sender(
        &self,
        tls: &ArcSwap<TlsState>,
        connect_timeout: Duration,
        per_connection: usize,
    ) -> Result<(Sender, StreamSlot), ProxyError> {
        if let Some(s) = self.take_slot(per_connection) {
            return Ok(s);
        }
        // One dial at a time; the others wait for it and take its room.
        let _dialing = self.connecting.lock().await;
        if let Some(s) = self.take_slot(per_connection) {
            return Ok(s);
        }
        match self.dial(tls, connect_timeout).await {
            Ok(conn) => {
                let conn = Arc::new(conn);
                conn.streams.fetch_add(1, Ordering::AcqRel);
                let slot = (conn.sender.clone(), StreamSlot(conn.streams.clone()));
                let old = self.pool.load_full();
                let (open, closed): (Vec<_>, Vec<_>) =
                    old.iter().cloned().partition(|c| !c.sender.is_closed());
                // A closed connection's socket goes too.
                for c in closed {
                    c.kill.cancel();
                }
                let mut pool = open;
                pool.push(conn);
                self.pool.store(Arc::new(pool));
                Ok(slot)
            }
            // Cannot add one: share a busy one rather than fail the stream.
            Err(e) => self.take_slot(usize::MAX).ok_or(e),
        }
    }

    /// A slot on the open connection of the caller's data thread with the fewest streams, if
    /// it has fewer than `limit`; when it has none such, `None` (dial one here) unless the pool
    /// is full or `limit` is `usize::MAX`: then the least busy connection of any thread. Each
    /// data thread keeps its own connections (as Envoy's workers keep their own pools), so a
    /// stream and the connection it rides are served by one event loop.
    fn take_slot(&self, limit: usize) -> Option<(Sender, StreamSlot)> {
        let here = crate::workers::current();
        let pool = self.pool.load();
        let open = pool.iter().filter(|c| !c.sender.is_closed());
        let streams = |c: &&Arc<Pooled>| c.streams.load(Ordering::Relaxed);
        // Off the data threads (probes, path checks) any connection will do.
        let best_here = open
            .clone()
            .filter(|c| here == usize::MAX || c.thread == here)
            .min_by_key(streams);
        let best = match best_here {
            Some(c) if streams(&c) < limit => c,
            _ if limit != usize::MAX && open.clone().count() < MAX_CONNECTIONS_PER_PEER => {
                return None
            }
            _ => open.min_by_key(streams)?,
        };
        best.streams.fetch_add(1, Ordering::AcqRel);
        Some((best.sender.clone(), StreamSlot(best.streams.clone())))
    }

    async fn dial(
        &self,
        tls: &ArcSwap<TlsState>,
        connect_timeout: Duration,
    ) -> Result<Pooled, ProxyError> {
        let err = |target: &str, e: crate::body::BoxError| ProxyError::Connect {
            target: format!("gateway of {} at {target}", self.cluster),
            source: e,
        };
        if self.addresses.is_empty() {
            return Err(err(
                "(no address)",
                "the peer has no gateway address".into(),
            ));
        }
        let config = tls
            .load()
            .peer_client(&self.cluster)
            .ok_or_else(|| err("(no TLS)", "no TLS config for this peer".into()))?;
        let start = self.next_address.fetch_add(1, Ordering::Relaxed);
        let mut last = None;
        for i in 0..self.addresses.len() {
            let addr = &self.addresses[(start + i) % self.addresses.len()];
            let attempt = async {
                let tcp = TcpStream::connect(addr.as_str()).await?;
                let _ = tcp.set_nodelay(true);
                let host = addr.rsplit_once(':').map_or(addr.as_str(), |(h, _)| h);
                let tls = TlsConnector::from(config.clone())
                    .connect(tls::server_name(host), tcp)
                    .await?;
                if tls.get_ref().1.alpn_protocol() != Some(tls::ALPN_H2) {
                    return Err(std::io::Error::other("peer did not negotiate h2"));
                }
                let leaf = tls.get_ref().1.peer_certificates().and_then(|c| c.first());
                if let Some(v) = leaf.and_then(|c| causeway_api::tls::Validity::of(c).ok()) {
                    self.cert_not_after.store(v.not_after, Ordering::Relaxed);
                }
                Ok(tls)
            };
            let stream = match tokio::time::timeout(connect_timeout, attempt).await {
                Ok(Ok(s)) => s,
                Ok(Err(e)) => {
                    last = Some(err(addr, e.into()));
                    continue;
                }
                Err(_) => {
                    last = Some(err(addr, "connect timed out".into()));
                    continue;
                }
            };
            // hyper runs the HTTP/2 connection in a task of its own that outlives its streams;
            // failing the socket is the way to fail them all at once.
            let kill = CancellationToken::new();
            let stream = Killable {
                inner: stream,
                killed: Box::pin(kill.clone().cancelled_owned()),
            };
            let handshake = hyper::client::conn::http2::Builder::new(TokioExecutor::new())
                .timer(TokioTimer::new())
                .initial_stream_window_size(1 << 20)
                .initial_connection_window_size(8 << 20)
                .max_frame_size(64 << 10)
                .max_header_list_size(crate::config::H2_MAX_HEADER_LIST_SIZE)
                .keep_alive_interval(Duration::from_secs(10))
                .keep_alive_timeout(Duration::from_secs(5))
                .handshake(TokioIo::new(stream))
                .await;
            let (sender, conn) = match handshake {
                Ok(pair) => pair,
                Err(e) => {
                    last = Some(err(addr, e.into()));
                    continue;
                }
            };
            let cluster = self.cluster.clone();
            tokio::spawn(async move {
                if let Err(e) = conn.await {
                    tracing::debug!(peer = %cluster, error = %e, "peer connection closed");
                }
            });
            tracing::debug!(peer = %self.cluster, %addr, "connected to peer gateway");
            return Ok(Pooled {
                sender,
                streams: Arc::new(AtomicUsize::new(0)),
                kill,
                thread: crate::workers::current(),
            });
        }
        Err(last.expect("at least one address was tried"))
    }

    /// One probe; `Ok(rtt)` when the peer's ingress answered 200.
    async fn probe(
        &self,
        tls: &ArcSwap<TlsState>,
        connect_timeout: Duration,
        timeout: Duration,
    ) -> Result<Duration, String> {
        let start = Instant::now();
        let attempt = async {
            let (mut sender, _slot) = self
                .sender(tls, connect_timeout, usize::MAX)
                .await
                .map_err(|e| e.to_string())?;
            let req = Request::get(format!("https://{PROBE_AUTHORITY}/"))
                .version(Version::HTTP_2)
                .body(body::empty())
                .map_err(|e| e.to_string())?;
            let resp = sender.send_request(req).await.map_err(|e| e.to_string())?;
            if resp.status() != http::StatusCode::OK {
                return Err(format!("probe answered {}", resp.status()));
            }
            Ok(start.elapsed())
        };
        tokio::time::timeout(timeout, attempt)
            .await
            .map_err(|_| format!("no answer within {timeout:?}"))?
    }
}

// === impl Killable ===

/// A stream whose reads and writes fail once `killed` completes.
struct Killable<T> {
    inner: T,
    killed: Pin<Box<WaitForCancellationFutureOwned>>,
}

impl<T> Killable<T> {
    fn check(&mut self, cx: &mut Context<'_>) -> io::Result<()> {
        match self.killed.as_mut().poll(cx) {
            Poll::Ready(()) => Err(io::Error::new(
                io::ErrorKind::ConnectionAborted,
                "peer marked down by the probes",
            )),
            Poll::Pending => Ok(()),
        }
    }
}

impl<T: AsyncRead + Unpin> AsyncRead for Killable<T> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        self.check(cx)?;
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for Killable<T> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        self.check(cx)?;
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        self.check(cx)?;
        Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.check(cx)?;
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

// === impl PeerPool ===

/// All peer connections, replaced as a whole when the config changes the peer set.
pub(crate) struct PeerPool {
    peers: ArcSwap<HashMap<String, Arc<PeerConn>>>,
    /// Serialises updates (config applies).
    update: Mutex<()>,
}

/// What probers need beyond their peer.
#[derive(Clone)]
pub(crate) struct ProbeContext {
    pub(crate) tls: Arc<ArcSwap<TlsState>>,
    pub(crate) metrics: Metrics,
    pub(crate) interval: Duration,
    pub(crate) misses: u32,
    pub(crate) connect_timeout: Duration,
    pub(crate) observer: String,
    pub(crate) reports: mpsc::Sender<PeerHealth>,
    pub(crate) shutdown: CancellationToken,
}

impl Default for PeerPool {
    fn default() -> Self {
        Self {
            peers: ArcSwap::from_pointee(HashMap::new()),
            update: Mutex::new(()),
        }
    }
}

impl PeerPool {
    pub(crate) fn get(&self, cluster: &str) -> Option<Arc<PeerConn>> {
        self.peers.load().get(cluster).cloned()
    }

    pub(crate) fn statuses(&self) -> Vec<PeerStatus> {
        let mut v: Vec<_> = self.peers.load().values().map(|p| p.status()).collect();
        v.sort_by(|a, b| a.cluster.cmp(&b.cluster));
        v
    }

    /// After a certificate renewal: every peer's pooled connection is [retired](PeerConn::retire),
    /// so new requests go over connections made with the new certificate.
    pub(crate) fn retire_connections(&self, close_at: Option<i64>) {
        for p in self.peers.load().values() {
            p.retire(close_at);
        }
    }

    /// Keeps connections to peers whose addresses did not change; dials nothing (connections
    /// are made on demand and by the probers), starts a prober per new peer.
    pub(crate) fn update(&self, tables: &Tables, ctx: &ProbeContext) {
        let _serial = self.update.lock().unwrap_or_else(|e| e.into_inner());
        let old = self.peers.load_full();
        let mut new = HashMap::new();
        for (cluster, info) in &tables.peers {
            match old.get(cluster) {
                Some(p) if p.addresses == info.addresses => {
                    let bundle = info.bundle.as_ref().map(|b| b.roots.clone());
                    let mut known = p.bundle.lock().unwrap_or_else(|e| e.into_inner());
                    if *known != bundle {
                        // The peer's trust changed (a root rotation): its connection was
                        // verified with the old bundle; the next one is verified with the new.
                        if known.is_some() {
                            tracing::info!(peer = %cluster, "peer trust bundle changed; replacing its connection");
                            p.retire(Some(crate::tls::unix_now() + BUNDLE_CHANGE_GRACE_SECS));
                        }
                        *known = bundle;
                    }
                    drop(known);
                    new.insert(cluster.clone(), p.clone());
                }
                _ => {
                    let conn = Arc::new(PeerConn::new(
                        cluster.clone(),
                        info.addresses.clone(),
                        ctx.shutdown.child_token(),
                    ));
                    *conn.bundle.lock().unwrap_or_else(|e| e.into_inner()) =
                        info.bundle.as_ref().map(|b| b.roots.clone());
                    spawn_prober(conn.clone(), ctx.clone());
                    new.insert(cluster.clone(), conn);
                }
            }
        }
        for (cluster, p) in old.iter() {
            if new.get(cluster).is_none_or(|n| !Arc::ptr_eq(n, p)) {
                p.cancel.cancel();
                if !new.contains_key(cluster) {
                    let _ = ctx.metrics.peer_up.remove_label_values(&[cluster]);
                }
            }
        }
        self.peers.store(Arc::new(new));
    }
}

/// Probes every `interval`, each with a timeout of half the interval. After a miss the next
/// probe goes out half an interval after the missed one started, so that `misses` misses in a
/// row take at most about `interval + misses * interval / 2` from the failure (2.5 s with the
/// defaults) rather than `misses + 1` intervals.
fn spawn_prober(peer: Arc<PeerConn>, ctx: ProbeContext) {
    let cancel = peer.cancel.clone();
    tokio::spawn(async move {
        let timeout = ctx.interval / 2;
        let mut since_report = 0u32;
        let mut was_up: Option<bool> = None;
        let mut next = tokio::time::Instant::now();
        loop {
            tokio::select! {
                _ = cancel.cancelled() => break,
                _ = tokio::time::sleep_until(next) => {}
            }
            let started = tokio::time::Instant::now();
            let result = tokio::select! {
                _ = cancel.cancelled() => break,
                r = peer.probe(&ctx.tls, ctx.connect_timeout, timeout) => r,
            };
            peer.probed.store(true, Ordering::Relaxed);
            match result {
                Ok(rtt) => {
                    next = started + ctx.interval;
                    peer.misses.store(0, Ordering::Relaxed);
                    peer.rtt_micros
                        .store(rtt.as_micros() as u64, Ordering::Relaxed);
                    peer.up.store(true, Ordering::Relaxed);
                    peer.set_suspect(false);
                    *peer.last_error.lock().unwrap_or_else(|e| e.into_inner()) = None;
                }
                Err(e) => {
                    next = started + timeout;
                    let misses = peer.misses.fetch_add(1, Ordering::Relaxed) + 1;
                    peer.set_suspect(true);
                    if misses >= u64::from(ctx.misses) && peer.is_up() {
                        peer.up.store(false, Ordering::Relaxed);
                        peer.close();
                    }
                    tracing::debug!(peer = %peer.cluster, misses, error = %e, "probe missed");
                    *peer.last_error.lock().unwrap_or_else(|e| e.into_inner()) = Some(e);
                }
            }
            let up = peer.is_up();
            ctx.metrics
                .peer_up
                .with_label_values(&[&peer.cluster])
                .set(i64::from(up));
            if was_up != Some(up) {
                tracing::info!(peer = %peer.cluster, up, "peer gateway state");
            }
            since_report += 1;
            if was_up != Some(up) || since_report >= REPORT_EVERY {
                since_report = 0;
                let observed_at_unix_ms = SystemTime::now()
                    .duration_since(SystemTime::UNIX_EPOCH)
                    .map_or(0, |d| d.as_millis() as i64);
                // A full queue means the federator is away; the next report carries the state.
                let traffic = ctx.metrics.traffic_with(&peer.cluster);
                let _ = ctx.reports.try_send(PeerHealth {
                    observer: ctx.observer.clone(),
                    cluster: peer.cluster.clone(),
                    up,
                    rtt_micros: peer.rtt_micros.load(Ordering::Relaxed),
                    observed_at_unix_ms,
                    egress_requests: traffic.egress_requests,
                    egress_errors: traffic.egress_errors,
                    ingress_requests: traffic.ingress_requests,
                    ingress_errors: traffic.ingress_errors,
                    suspect: peer.is_suspect(),
                });
            }
            was_up = Some(up);
        }
        tracing::debug!(peer = %peer.cluster, "prober stopped");
    });
}
