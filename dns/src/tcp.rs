//! DNS over TCP (RFC 7766): two-byte length, message, repeated; queries on one connection are
//! answered in order.
//!
//! Our own loop rather than hickory's `Server`, which spawns a task for every connection it
//! accepts, without bound: a client opening connections and saying nothing held one each for
//! the idle timeout, as many as the file descriptor limit allows. Here at most
//! `max_tcp_connections` are served at once; one more is closed at accept and counted in
//! `causeway_dns_tcp_refused_total`. A connection idle for `tcp_timeout` (no complete query,
//! or a response the client does not read) is closed.

use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Semaphore;
use tokio::task::JoinSet;
use tracing::debug;

use crate::DnsHandler;

pub(crate) async fn serve(
    listener: TcpListener,
    handler: Arc<DnsHandler>,
    idle: Duration,
    max_connections: usize,
) -> io::Result<()> {
    let slots = Arc::new(Semaphore::new(max_connections));
    let mut conns = JoinSet::new();
    loop {
        let (stream, src) = match listener.accept().await {
            Ok(pair) => pair,
            Err(e) if is_per_connection(&e) => {
                debug!(error = %e, "DNS TCP accept");
                continue;
            }
            Err(e) => {
                // Out of descriptors or memory: wait a little instead of spinning.
                debug!(error = %e, "DNS TCP accept failed; pausing");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        while conns.try_join_next().is_some() {}
        let Ok(slot) = Arc::clone(&slots).try_acquire_owned() else {
            handler.tcp_refused();
            debug!(%src, max_connections, "DNS TCP connection refused: at the connection limit");
            drop(stream);
            continue;
        };
        let handler = Arc::clone(&handler);
        conns.spawn(async move {
            let _slot = slot;
            if let Err(e) = connection(stream, src, &handler, idle).await {
                debug!(%src, error = %e, "DNS TCP connection ended");
            }
        });
    }
}

async fn connection(
    mut stream: TcpStream,
    src: SocketAddr,
    handler: &DnsHandler,
    idle: Duration,
) -> io::Result<()> {
    let _ = stream.set_nodelay(true);
    let mut buf = Vec::with_capacity(512);
    loop {
        let mut len = [0u8; 2];
        match tokio::time::timeout(idle, stream.read_exact(&mut len)).await {
            Err(_) => return Ok(()),
            Ok(Err(e)) if e.kind() == io::ErrorKind::UnexpectedEof => return Ok(()),
            Ok(r) => r?,
        };
        let len = usize::from(u16::from_be_bytes(len));
        buf.resize(len, 0);
        tokio::time::timeout(idle, stream.read_exact(&mut buf))
            .await
            .map_err(|_| io::Error::new(io::ErrorKind::TimedOut, "query not complete in time"))??;
        let Some(response) = handler.handle_bytes(&buf, src, true) else {
            continue;
        };
        let Ok(n) = u16::try_from(response.len()) else {
            continue;
        };
        let mut out = Vec::with_capacity(2 + response.len());
        out.extend_from_slice(&n.to_be_bytes());
        out.extend_from_slice(&response);
        tokio::time::timeout(idle, stream.write_all(&out))
            .await
            .map_err(|_| io::Error::new(io::ErrorKind::TimedOut, "response not read in time"))??;
    }
}

/// Accept errors that concern one connection only (it was reset before we took it).
fn is_per_connection(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::ConnectionAborted
            | io::ErrorKind::ConnectionReset
            | io::ErrorKind::Interrupted
    )
}
