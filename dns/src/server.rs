//! Sockets: UDP and TCP on one port.
//!
//! Both through [`DnsHandler::handle_bytes`]: UDP in a batching loop (`udp.rs` says why), TCP
//! in a loop with a bound on connections (`tcp.rs`).

use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::sync::Arc;

use causeway_api::MeshSnapshot;
use tokio::net::{TcpListener, UdpSocket};
use tokio::sync::watch;
use tracing::info;

use crate::{DnsConfig, DnsError, DnsHandler};

/// Attempts at finding a port free for both TCP and UDP when asked for port 0.
const PORT_ZERO_ATTEMPTS: usize = 32;

/// The `clusterset.local` server with its sockets bound; [`DnsServer::run`] serves them.
pub struct DnsServer {
    config: DnsConfig,
    handler: DnsHandler,
    udp: UdpSocket,
    tcp: TcpListener,
    local_addr: SocketAddr,
}

impl DnsServer {
    /// Binds UDP and TCP on `config.listen` (the same port for both; port 0 finds a free one)
    /// and registers the DNS metrics into `registry`.
    pub async fn bind(
        config: DnsConfig,
        snapshots: watch::Receiver<Arc<MeshSnapshot>>,
        registry: &prometheus::Registry,
    ) -> Result<DnsServer, DnsError> {
        config.validate()?;
        let (tcp, udp) = bind_pair(config.listen).await?;
        let local_addr = tcp.local_addr().map_err(|source| DnsError::Bind {
            proto: "TCP",
            addr: config.listen,
            source,
        })?;
        let handler = DnsHandler::new(&config, snapshots, registry)?;
        Ok(DnsServer {
            config,
            handler,
            udp,
            tcp,
            local_addr,
        })
    }

    /// The bound address (UDP and TCP share the port).
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// Serves until `shutdown` completes (then stops accepting and returns `Ok`), or until a
    /// socket fails (`Err`).
    pub async fn run(self, shutdown: impl Future<Output = ()>) -> Result<(), DnsError> {
        let addr = self.local_addr;
        let handler = Arc::new(self.handler);
        let mut tcp = tokio::spawn(crate::tcp::serve(
            self.tcp,
            Arc::clone(&handler),
            self.config.tcp_timeout,
            self.config.max_tcp_connections,
        ));
        let mut udp = tokio::spawn(crate::udp::serve(self.udp, handler));
        info!(%addr, zone = crate::ZONE, "DNS server listening (UDP, TCP)");

        tokio::pin!(shutdown);
        let ended: Option<String> = tokio::select! {
            () = &mut shutdown => None,
            ended = &mut tcp => Some(match ended {
                Ok(Ok(())) => "TCP listener ended".to_string(),
                Ok(Err(e)) => format!("TCP: {e}"),
                Err(e) => format!("TCP task: {e}"),
            }),
            ended = &mut udp => Some(match ended {
                Ok(Ok(())) => "UDP loop ended".to_string(),
                Ok(Err(e)) => format!("UDP: {e}"),
                Err(e) => format!("UDP task: {e}"),
            }),
        };
        // Neither loop holds state worth finishing: stop them where they are (open TCP
        // connections end with the runtime's tasks).
        udp.abort();
        tcp.abort();
        info!(%addr, "DNS server stopped");
        match ended {
            None => Ok(()),
            Some(reason) => Err(DnsError::Serve { addr, reason }),
        }
    }
}

/// TCP first (so port 0 gets a port from the kernel), then UDP on the same port; if that UDP
/// port is taken, try another kernel-chosen port.
async fn bind_pair(listen: SocketAddr) -> Result<(TcpListener, UdpSocket), DnsError> {
    let bind_err = |proto, addr, source| DnsError::Bind {
        proto,
        addr,
        source,
    };
    let attempts = if listen.port() == 0 {
        PORT_ZERO_ATTEMPTS
    } else {
        1
    };
    let mut last: Option<io::Error> = None;
    for _ in 0..attempts {
        let tcp = TcpListener::bind(listen)
            .await
            .map_err(|e| bind_err("TCP", listen, e))?;
        let addr = tcp.local_addr().map_err(|e| bind_err("TCP", listen, e))?;
        match UdpSocket::bind(addr).await {
            Ok(udp) => return Ok((tcp, udp)),
            Err(e) if e.kind() == io::ErrorKind::AddrInUse && listen.port() == 0 => {
                last = Some(e);
            }
            Err(e) => return Err(bind_err("UDP", addr, e)),
        }
    }
    Err(bind_err(
        "UDP",
        listen,
        last.unwrap_or_else(|| io::Error::from(io::ErrorKind::AddrInUse)),
    ))
}
