//! The data plane's threads: each accepted connection lives, for its whole life, on one
//! single-threaded runtime of its own thread (HAProxy's and Envoy's model: one event loop per
//! thread, no work stealing), so that a request is never handed between threads on its way
//! through the gateway. The control side (federator stream, admin, probes, renewals) stays on
//! the main runtime.
//!
//! Measured (docs/benchmarks.md, 2026-12-04): 22–40 % more requests per CPU-second than
//! with every connection on one multi-thread runtime, from fewer cross-thread wake-ups and
//! less idle searching for work.

use std::cell::Cell;
use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};

use tokio::net::TcpStream;
use tokio::runtime::Handle;
use tokio_util::sync::CancellationToken;

thread_local! {
    /// Which data thread this is; `usize::MAX` on any other thread.
    static THREAD: Cell<usize> = const { Cell::new(usize::MAX) };
}

/// The data thread the caller runs on (`usize::MAX` off them). What a connection reuses
/// (pooled peer connections, backend clients) is kept per data thread, so that a request and
/// the connections it rides are served by one event loop.
pub(crate) fn current() -> usize {
    THREAD.with(Cell::get)
}

/// Handles of the data threads' runtimes; connections go round-robin.
pub(crate) struct Workers {
    handles: Vec<Handle>,
    next: AtomicUsize,
    /// Ends the threads: cancelled with the gateway's hard stop, or when this is dropped.
    stop: CancellationToken,
}

impl Workers {
    /// Starts `n` threads (`0`: one per CPU this process may use), each running its runtime
    /// until `stop` is cancelled or this is dropped; then the tasks still on it are dropped.
    pub(crate) fn start(n: usize, stop: &CancellationToken) -> io::Result<Self> {
        let stop = stop.child_token();
        let n = if n == 0 {
            std::thread::available_parallelism().map_or(1, usize::from)
        } else {
            n
        };
        let mut handles = Vec::with_capacity(n);
        // Threads already started end if a later one cannot start.
        let started = stop.clone().drop_guard();
        for i in 0..n {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()?;
            handles.push(runtime.handle().clone());
            let ended = stop.clone();
            std::thread::Builder::new()
                .name(format!("causeway-data-{i}"))
                .spawn(move || {
                    THREAD.with(|t| t.set(i));
                    runtime.block_on(ended.cancelled_owned())
                })?;
        }
        started.disarm();
        Ok(Self {
            handles,
            next: AtomicUsize::new(0),
            stop,
        })
    }

    /// How many data threads there are.
    pub(crate) fn threads(&self) -> usize {
        self.handles.len()
    }

    /// Runs `handle` for an accepted connection on the next data thread: the socket leaves
    /// the accepting runtime's reactor and joins that thread's.
    pub(crate) fn spawn<F, Fut>(&self, stream: TcpStream, remote: SocketAddr, handle: F)
    where
        F: FnOnce(TcpStream, SocketAddr) -> Fut + Send + 'static,
        Fut: Future<Output = ()> + Send + 'static,
    {
        let std = match stream.into_std() {
            Ok(s) => s,
            Err(e) => {
                tracing::debug!(%remote, error = %e, "cannot move an accepted connection to a data thread");
                return;
            }
        };
        let i = self.next.fetch_add(1, Ordering::Relaxed) % self.handles.len();
        self.handles[i].spawn(async move {
            match TcpStream::from_std(std) {
                Ok(stream) => handle(stream, remote).await,
                Err(e) => {
                    tracing::debug!(%remote, error = %e, "cannot register a connection on a data thread")
                }
            }
        });
    }
}

impl Drop for Workers {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}
