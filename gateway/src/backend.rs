//! Re-origination to local endpoints: pooled HTTP/1.1 and HTTP/2 (h2c or mTLS) clients and
//! TCP dials, plaintext or mTLS with the gateway's identity (the export's backend TLS mode).

use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use arc_swap::ArcSwap;
use http::{Request, Response, Uri, Version};
use hyper::body::Incoming;
use hyper_util::client::legacy::connect::{Connected, Connection};
use hyper_util::client::legacy::Client;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;

use crate::body::{Body, ReplayBody};
use crate::error::ProxyError;
use crate::table::{EndpointAddr, Inbound, PortSpec};
use crate::tls::{self, TlsState};

// === impl BackendStream ===

/// A connection to a local endpoint.
pub(crate) enum BackendStream {
    Plain(TcpStream),
    Tls(Box<tokio_rustls::client::TlsStream<TcpStream>>),
}

impl AsyncRead for BackendStream {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Self::Plain(s) => Pin::new(s).poll_read(cx, buf),
            Self::Tls(s) => Pin::new(s).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for BackendStream {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            Self::Plain(s) => Pin::new(s).poll_write(cx, buf),
            Self::Tls(s) => Pin::new(s).poll_write(cx, buf),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Self::Plain(s) => Pin::new(s).poll_flush(cx),
            Self::Tls(s) => Pin::new(s).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Self::Plain(s) => Pin::new(s).poll_shutdown(cx),
            Self::Tls(s) => Pin::new(s).poll_shutdown(cx),
        }
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            Self::Plain(s) => Pin::new(s).poll_write_vectored(cx, bufs),
            Self::Tls(s) => Pin::new(s).poll_write_vectored(cx, bufs),
        }
    }

    fn is_write_vectored(&self) -> bool {
        match self {
            Self::Plain(s) => s.is_write_vectored(),
            Self::Tls(s) => s.is_write_vectored(),
        }
    }
}

impl Connection for BackendStream {
    fn connected(&self) -> Connected {
        let h2 = match self {
            Self::Plain(_) => false,
            Self::Tls(s) => s.get_ref().1.alpn_protocol() == Some(tls::ALPN_H2),
        };
        let c = Connected::new();
        if h2 {
            c.negotiated_h2()
        } else {
            c
        }
    }
}

/// Dials `addr`, then does the mTLS handshake when `tls` is given.
pub(crate) async fn dial(
    addr: SocketAddr,
    tls: Option<Arc<rustls::ClientConfig>>,
    timeout: Duration,
) -> io::Result<BackendStream> {
    let connect = async {
        let tcp = TcpStream::connect(addr).await?;
        let _ = tcp.set_nodelay(true);
        match tls {
            None => Ok(BackendStream::Plain(tcp)),
            Some(config) => {
                let name = tls::server_name(&addr.ip().to_string());
                let s = TlsConnector::from(config).connect(name, tcp).await?;
                Ok(BackendStream::Tls(Box::new(s)))
            }
        }
    };
    tokio::time::timeout(timeout, connect).await.map_err(|_| {
        io::Error::new(
            io::ErrorKind::TimedOut,
            format!("connect to {addr} timed out"),
        )
    })?
}

// === impl Connector ===

/// The legacy client's connector: `http://ip:port` plaintext, `https://ip:port` mTLS.
#[derive(Clone)]
pub(crate) struct Connector {
    tls: Arc<ArcSwap<TlsState>>,
    h2: bool,
    timeout: Duration,
}

impl tower_service::Service<Uri> for Connector {
    type Response = TokioIo<BackendStream>;
    type Error = io::Error;
    type Future = Pin<Box<dyn Future<Output = io::Result<Self::Response>> + Send>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, uri: Uri) -> Self::Future {
        let this = self.clone();
        Box::pin(async move {
            let authority = uri
                .authority()
                .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, "no authority"))?;
            let addr: SocketAddr = authority
                .as_str()
                .parse()
                .map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, format!("{e}")))?;
            let tls = (uri.scheme_str() == Some("https")).then(|| {
                let state = this.tls.load();
                if this.h2 {
                    state.backend_h2.clone()
                } else {
                    state.backend_h1.clone()
                }
            });
            dial(addr, tls, this.timeout).await.map(TokioIo::new)
        })
    }
}

// === impl Backends ===

/// Pooled clients to local endpoints: one pair per data thread (and one for any other), so
/// that a pooled connection is always run by the event loop of the request that uses it.
pub(crate) struct Backends {
    clients: Vec<Clients>,
    tls: Arc<ArcSwap<TlsState>>,
    timeout: Duration,
}

struct Clients {
    h1: Client<Connector, Body>,
    h2: Client<Connector, Body>,
}

impl Clients {
    fn new(tls: &Arc<ArcSwap<TlsState>>, connect_timeout: Duration) -> Self {
        let connector = |h2| Connector {
            tls: tls.clone(),
            h2,
            timeout: connect_timeout,
        };
        let h1 = Client::builder(TokioExecutor::new())
            .pool_idle_timeout(Duration::from_secs(60))
            .pool_max_idle_per_host(256)
            .pool_timer(TokioTimer::new())
            .set_host(false)
            .build(connector(false));
        let h2 = Client::builder(TokioExecutor::new())
            .http2_only(true)
            .timer(TokioTimer::new())
            .pool_timer(TokioTimer::new())
            .pool_idle_timeout(Duration::from_secs(60))
            .http2_initial_stream_window_size(1 << 20)
            .http2_initial_connection_window_size(4 << 20)
            .set_host(false)
            .build(connector(true));
        Self { h1, h2 }
    }
}

impl Backends {
    /// Clients for `threads` data threads.
    pub(crate) fn new(
        tls: Arc<ArcSwap<TlsState>>,
        connect_timeout: Duration,
        threads: usize,
    ) -> Self {
        Self {
            clients: (0..=threads)
                .map(|_| Clients::new(&tls, connect_timeout))
                .collect(),
            tls,
            timeout: connect_timeout,
        }
    }

    /// The clients of the caller's data thread (the last pair off them).
    fn clients(&self) -> &Clients {
        let i = crate::workers::current().min(self.clients.len() - 1);
        &self.clients[i]
    }

    /// Sends `req` (origin-form URI, headers prepared) to one ready endpoint of `svc`.
    ///
    /// `h2` is decided by the caller (port app protocol or gRPC content type).
    pub(crate) async fn send(
        &self,
        svc: &Inbound,
        endpoint: EndpointAddr,
        port: PortSpec,
        h2: bool,
        mut req: Request<Body>,
    ) -> Result<Response<Incoming>, ProxyError> {
        let addr = endpoint.socket_addr(port.port);
        let scheme = if svc.backend_mtls { "https" } else { "http" };
        let path = req
            .uri()
            .path_and_query()
            .map_or("/", |p| p.as_str())
            .to_string();
        let uri: Uri =
            format!("{scheme}://{addr}{path}")
                .parse()
                .map_err(|e: http::uri::InvalidUri| ProxyError::Request {
                    target: addr.to_string(),
                    source: e.into(),
                })?;
        *req.uri_mut() = uri;
        let client = if h2 {
            *req.version_mut() = Version::HTTP_2;
            // :authority comes from the URI; a Host header beside it would contradict it.
            req.headers_mut().remove(http::header::HOST);
            &self.clients().h2
        } else {
            *req.version_mut() = Version::HTTP_11;
            &self.clients().h1
        };
        client.request(req).await.map_err(|e| {
            let target = format!("{} endpoint {addr}", svc.name);
            if e.is_connect() {
                ProxyError::Connect {
                    target,
                    source: e.into(),
                }
            } else {
                ProxyError::Request {
                    target,
                    source: e.into(),
                }
            }
        })
    }

    /// A TCP (or mTLS) connection to one endpoint, for opaque TCP.
    /// The one local origination (egress to a local candidate, ingress to its cluster's
    /// endpoints): sends the request built by `request` to the first of `endpoints` that takes
    /// it. A connection refused before the request was written moves on to the next endpoint
    /// while `body` can be sent again; any other outcome is the answer. Without an endpoint
    /// tried, [`ProxyError::NoEndpoint`].
    pub(crate) async fn send_to_first(
        &self,
        svc: &Inbound,
        endpoints: impl IntoIterator<Item = EndpointAddr>,
        port: PortSpec,
        h2: bool,
        body: &mut ReplayBody,
        request: impl Fn(Body) -> Result<Request<Body>, ProxyError>,
    ) -> Result<Response<Incoming>, ProxyError> {
        let mut last = ProxyError::NoEndpoint(svc.name.to_string());
        for endpoint in endpoints {
            let Some(b) = body.take() else { break };
            match self.send(svc, endpoint, port, h2, request(b)?).await {
                Ok(resp) => return Ok(resp),
                Err(e) => {
                    tracing::info!(service = %svc.name, error = %e, "endpoint failed");
                    let again = e.is_connect() && body.replayable() && !e.caused_by_client();
                    last = e;
                    if !again {
                        break;
                    }
                }
            }
        }
        Err(last)
    }

    pub(crate) async fn connect(
        &self,
        svc: &Inbound,
        endpoint: EndpointAddr,
        port: PortSpec,
    ) -> Result<BackendStream, ProxyError> {
        let addr = endpoint.socket_addr(port.port);
        let tls = svc.backend_mtls.then(|| self.tls.load().backend_h1.clone());
        dial(addr, tls, self.timeout)
            .await
            .map_err(|e| ProxyError::Connect {
                target: format!("{} endpoint {addr}", svc.name),
                source: e.into(),
            })
    }
}
