//! The config protocol, gateway side (DESIGN.md "Config protocol").
//!
//! Dials the federator with mTLS (our gateway identity; the server must be
//! `SpiffeId::federator(<own trust domain>)`), sends `GatewayHello`, applies each
//! `ConfigSnapshot` and answers `Ack` (empty reason) or NACK (the reason) by version. Peer
//! health observed by the probes goes up the `Health/Report` stream while connected.
//! On any failure it reconnects with jittered exponential backoff; meanwhile the gateway
//! serves its last good config.

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use arc_swap::ArcSwap;
use causeway_api::backoff::Backoff;
use causeway_api::proto::config_client::ConfigClient;
use causeway_api::proto::health_client::HealthClient;
use causeway_api::proto::{AckRequest, GatewayHello, PeerHealth};
use causeway_api::task::AbortOnDrop;
use http::Uri;
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;
use tokio::sync::{mpsc, Mutex};
use tokio_rustls::TlsConnector;
use tonic::transport::{Channel, Endpoint};

use crate::config::FederatorUrl;
use crate::shared::Shared;
use crate::tls::{self, TlsState};

// === impl FederatorConnector ===

/// Dials the federator and does the mTLS handshake; tonic sees a plain `http://` channel.
#[derive(Clone)]
struct FederatorConnector {
    url: FederatorUrl,
    tls: Arc<ArcSwap<TlsState>>,
}

impl tower_service::Service<Uri> for FederatorConnector {
    type Response = TokioIo<tokio_rustls::client::TlsStream<TcpStream>>;
    type Error = io::Error;
    type Future = Pin<Box<dyn Future<Output = io::Result<Self::Response>> + Send>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, _uri: Uri) -> Self::Future {
        let this = self.clone();
        Box::pin(async move {
            let tcp = TcpStream::connect((this.url.host.as_str(), this.url.port)).await?;
            let _ = tcp.set_nodelay(true);
            let config = this.tls.load().federator.clone();
            let s = TlsConnector::from(config)
                .connect(tls::server_name(&this.url.host), tcp)
                .await?;
            Ok(TokioIo::new(s))
        })
    }
}

pub(crate) async fn run(shared: Arc<Shared>, url: String, reports: mpsc::Receiver<PeerHealth>) {
    let url = match FederatorUrl::parse(&url) {
        Ok(u) => u,
        Err(e) => {
            // validate() already checked it; this is a bug if it happens.
            tracing::error!(error = %e, "bad federator URL; not connecting");
            return;
        }
    };
    let reports = Arc::new(Mutex::new(reports));
    let mut backoff = Backoff::new(
        Duration::from_millis(shared.proxy.config.federator_backoff_base_ms),
        Duration::from_millis(shared.proxy.config.federator_backoff_max_ms),
    );
    loop {
        let session = session(&shared, &url, &reports, &mut backoff);
        let result = tokio::select! {
            _ = shared.proxy.shutdown.cancelled() => return,
            r = session => r,
        };
        let delay = backoff.next_wait();
        match result {
            Ok(()) => {
                tracing::info!(federator = %url.authority(), ?delay, "config stream ended; reconnecting")
            }
            Err(e) => {
                tracing::warn!(federator = %url.authority(), error = %e, ?delay, "config stream failed; reconnecting")
            }
        }
        tokio::select! {
            _ = shared.proxy.shutdown.cancelled() => return,
            _ = tokio::time::sleep(delay) => {}
        }
    }
}

/// A channel to the federator, with the TLS identity of this moment.
pub(crate) async fn channel(shared: &Shared, url: &FederatorUrl) -> Result<Channel, String> {
    let endpoint = Endpoint::from_shared(format!("http://{}", url.authority()))
        .map_err(|e| e.to_string())?
        .connect_timeout(Duration::from_millis(
            shared.proxy.config.connect_timeout_ms,
        ))
        .http2_keep_alive_interval(Duration::from_secs(15))
        .keep_alive_timeout(Duration::from_secs(10));
    endpoint
        .connect_with_connector(FederatorConnector {
            url: url.clone(),
            tls: shared.proxy.tls.clone(),
        })
        .await
        .map_err(|e| format!("connect: {e}: {}", source_chain(&e)))
}

/// One connection: watch, apply, ack, until the stream ends or fails.
async fn session(
    shared: &Arc<Shared>,
    url: &FederatorUrl,
    reports: &Arc<Mutex<mpsc::Receiver<PeerHealth>>>,
    backoff: &mut Backoff,
) -> Result<(), String> {
    let channel = channel(shared, url).await?;
    let mut client = ConfigClient::new(channel.clone());
    let hello = GatewayHello {
        cluster: shared.proxy.config.cluster.clone(),
        node: shared.proxy.config.node.clone(),
        last_applied_version: shared.proxy.version(),
    };
    let mut stream = client
        .watch(hello)
        .await
        .map_err(|s| format!("watch: {s}"))?
        .into_inner();
    tracing::info!(federator = %url.authority(), "config stream open");

    let reporter = tokio::spawn(report_health(channel, reports.clone()));
    let _stop_reporter = AbortOnDrop(reporter);

    loop {
        let snapshot = match stream.message().await {
            Ok(Some(s)) => s,
            Ok(None) => return Ok(()),
            Err(s) => return Err(format!("stream: {s}")),
        };
        backoff.reset();
        let version = snapshot.version;
        let nack_reason = match shared.apply(snapshot) {
            Ok(()) => String::new(),
            Err(reason) => reason.0,
        };
        let ack = AckRequest {
            cluster: shared.proxy.config.cluster.clone(),
            node: shared.proxy.config.node.clone(),
            version,
            nack_reason,
        };
        if let Err(s) = client.ack(ack).await {
            tracing::warn!(version, error = %s, "cannot send ack");
        }
    }
}

/// Forwards probe results to `Health/Report` for as long as the channel lives.
async fn report_health(channel: Channel, reports: Arc<Mutex<mpsc::Receiver<PeerHealth>>>) {
    let (tx, rx) = mpsc::channel::<PeerHealth>(64);
    let forward = async move {
        let mut reports = reports.lock().await;
        while let Some(r) = reports.recv().await {
            if tx.send(r).await.is_err() {
                return;
            }
        }
    };
    let mut client = HealthClient::new(channel);
    let call = client.report(tokio_stream::wrappers::ReceiverStream::new(rx));
    tokio::select! {
        _ = forward => {}
        r = call => if let Err(s) = r {
            tracing::debug!(error = %s, "health report stream ended");
        },
    }
}

fn source_chain(e: &dyn std::error::Error) -> String {
    let mut out = Vec::new();
    let mut cur = e.source();
    while let Some(s) = cur {
        out.push(s.to_string());
        cur = s.source();
    }
    out.join(": ")
}
