//! The config protocol against a fake federator (mTLS, federator identity), ACK/NACK, the
//! last good config on disk, and NACKed snapshots leaving the old config serving.

use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use causeway_api::proto::config_server::{Config as ConfigService, ConfigServer};
use causeway_api::proto::health_server::{Health, HealthServer};
use causeway_api::proto::{
    AckRequest, AckResponse, AppProtocol, ConfigSnapshot, GatewayHello, PeerHealth, ReportResponse,
};
use causeway_api::tls::{Identity, TrustBundle};
use causeway_gateway::Gateway;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tokio_stream::wrappers::{ReceiverStream, UnboundedReceiverStream};
use tonic::transport::server::Connected;
use tonic::{Request, Response, Status, Streaming};

use crate::support::*;

// === fake federator ===

struct Conn(tokio_rustls::server::TlsStream<TcpStream>);

impl Connected for Conn {
    type ConnectInfo = ();
    fn connect_info(&self) -> Self::ConnectInfo {}
}

impl AsyncRead for Conn {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.0).poll_read(cx, buf)
    }
}

impl AsyncWrite for Conn {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.0).poll_write(cx, buf)
    }
    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.0).poll_flush(cx)
    }
    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.0).poll_shutdown(cx)
    }
}

type SnapshotSender = mpsc::Sender<Result<ConfigSnapshot, Status>>;

#[derive(Clone, Default)]
struct FedState {
    current: Arc<Mutex<Option<ConfigSnapshot>>>,
    stream: Arc<Mutex<Option<SnapshotSender>>>,
    hellos: Arc<AtomicUsize>,
    acks: Arc<Mutex<Option<mpsc::UnboundedSender<AckRequest>>>>,
    health: Arc<Mutex<Option<mpsc::UnboundedSender<PeerHealth>>>>,
}

#[tonic::async_trait]
impl ConfigService for FedState {
    type WatchStream = ReceiverStream<Result<ConfigSnapshot, Status>>;

    async fn watch(
        &self,
        _request: Request<GatewayHello>,
    ) -> Result<Response<Self::WatchStream>, Status> {
        self.hellos.fetch_add(1, Ordering::SeqCst);
        let (tx, rx) = mpsc::channel(16);
        if let Some(s) = self.current.lock().unwrap().clone() {
            tx.try_send(Ok(s)).unwrap();
        }
        *self.stream.lock().unwrap() = Some(tx);
        Ok(Response::new(ReceiverStream::new(rx)))
    }

    async fn ack(&self, request: Request<AckRequest>) -> Result<Response<AckResponse>, Status> {
        if let Some(tx) = self.acks.lock().unwrap().as_ref() {
            let _ = tx.send(request.into_inner());
        }
        Ok(Response::new(AckResponse {}))
    }

    async fn certify(
        &self,
        _request: Request<causeway_api::proto::CertifyRequest>,
    ) -> Result<Response<causeway_api::proto::CertifyResponse>, Status> {
        Err(Status::unimplemented("no issuer here"))
    }
}

#[tonic::async_trait]
impl Health for FedState {
    async fn report(
        &self,
        request: Request<Streaming<PeerHealth>>,
    ) -> Result<Response<ReportResponse>, Status> {
        let mut stream = request.into_inner();
        while let Some(h) = stream.message().await? {
            if let Some(tx) = self.health.lock().unwrap().as_ref() {
                let _ = tx.send(h);
            }
        }
        Ok(Response::new(ReportResponse {}))
    }
}

struct FakeFederator {
    addr: std::net::SocketAddr,
    state: FedState,
    acks: mpsc::UnboundedReceiver<AckRequest>,
    health: mpsc::UnboundedReceiver<PeerHealth>,
    handshake_failures: Arc<AtomicUsize>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl Drop for FakeFederator {
    fn drop(&mut self) {
        for t in &self.tasks {
            t.abort();
        }
    }
}

impl FakeFederator {
    /// Serves with the identity in `files` (normally the cluster's federator).
    async fn start(files: &IdFiles) -> Self {
        let identity = Identity::load(&files.cert, &files.key).unwrap();
        let bundle = TrustBundle::load(&files.bundle).unwrap();
        let server_config = causeway_api::tls::server_config(&identity, &bundle, &[b"h2"]).unwrap();
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (conn_tx, conn_rx) = mpsc::unbounded_channel::<io::Result<Conn>>();
        let handshake_failures = Arc::new(AtomicUsize::new(0));
        let failures = handshake_failures.clone();
        let accept = tokio::spawn(async move {
            let acceptor = tokio_rustls::TlsAcceptor::from(server_config);
            loop {
                let Ok((tcp, _)) = listener.accept().await else {
                    return;
                };
                let acceptor = acceptor.clone();
                let conn_tx = conn_tx.clone();
                let failures = failures.clone();
                tokio::spawn(async move {
                    match acceptor.accept(tcp).await {
                        Ok(tls) => {
                            let _ = conn_tx.send(Ok(Conn(tls)));
                        }
                        Err(_) => {
                            failures.fetch_add(1, Ordering::SeqCst);
                        }
                    }
                });
            }
        });
        let state = FedState::default();
        let (ack_tx, acks) = mpsc::unbounded_channel();
        let (health_tx, health) = mpsc::unbounded_channel();
        *state.acks.lock().unwrap() = Some(ack_tx);
        *state.health.lock().unwrap() = Some(health_tx);
        let serve = tokio::spawn({
            let state = state.clone();
            async move {
                let _ = tonic::transport::Server::builder()
                    .add_service(ConfigServer::new(state.clone()))
                    .add_service(HealthServer::new(state))
                    .serve_with_incoming(UnboundedReceiverStream::new(conn_rx))
                    .await;
            }
        });
        Self {
            addr,
            state,
            acks,
            health,
            handshake_failures,
            tasks: vec![accept, serve],
        }
    }

    fn url(&self) -> String {
        format!("https://{}", self.addr)
    }

    /// Makes `s` the current snapshot and sends it on the open stream, if any.
    fn push(&self, s: ConfigSnapshot) {
        *self.state.current.lock().unwrap() = Some(s.clone());
        if let Some(tx) = self.state.stream.lock().unwrap().as_ref() {
            let _ = tx.try_send(Ok(s));
        }
    }

    async fn next_ack(&mut self) -> AckRequest {
        tokio::time::timeout(Duration::from_secs(10), self.acks.recv())
            .await
            .expect("an ack within 10s")
            .expect("ack channel open")
    }
}

fn east_snapshot(pki: &Pki, version: u64, west_addr: &str) -> ConfigSnapshot {
    snapshot(
        version,
        "east",
        vec![peer_at(pki, "west", west_addr)],
        vec![],
        vec![outbound(
            "cart",
            vec![port(80, AppProtocol::Http)],
            vec![cand("west", 1)],
        )],
    )
}

// === tests ===

#[tokio::test]
async fn config_stream_ack_nack_and_last_good_on_disk() {
    let pki = Pki::new();
    let mut fed = FakeFederator::start(&pki.federator_files("east")).await;
    let state_dir = tempfile::tempdir().unwrap();
    // west's gateway is not running: the probes report it down.
    let west_addr = dead_addr().await.to_string();
    fed.push(east_snapshot(&pki, 1, &west_addr));

    let mut cfg = gateway_config(&pki, "east");
    cfg.federator = Some(fed.url());
    cfg.state_dir = Some(state_dir.path().to_path_buf());
    let east = Gateway::start(cfg.clone()).await.unwrap();

    let ack = fed.next_ack().await;
    assert_eq!((ack.version, ack.nack_reason.as_str()), (1, ""));
    assert_eq!(ack.cluster, "east");
    assert_eq!(ack.node, "east-gw-0");
    assert_eq!(east.config_version(), 1);
    assert_eq!(admin_get(&east, "/ready").await.status, 200);
    let saved = causeway_gateway::state::load(&state_dir.path().join("last-good.pb")).unwrap();
    assert_eq!(saved.version, 1);

    // A duplicate service: NACKed with the reason, version 1 still served.
    let mut bad = east_snapshot(&pki, 2, &west_addr);
    bad.outbound.push(bad.outbound[0].clone());
    fed.push(bad);
    let ack = fed.next_ack().await;
    assert_eq!(ack.version, 2);
    assert!(
        ack.nack_reason.contains("listed twice"),
        "{}",
        ack.nack_reason
    );
    assert_eq!(east.config_version(), 1);
    assert_eq!(
        metric_or_zero(&east, "causeway_gateway_config_nacks_total", &[]),
        1.0
    );
    assert_eq!(
        metric_or_zero(&east, "causeway_gateway_config_version", &[]),
        1.0
    );
    let dump = admin_get(&east, "/config_dump").await.json();
    assert_eq!(dump["version"], 1);
    assert_eq!(dump["outbound"][0]["name"], "cart");

    fed.push(east_snapshot(&pki, 3, &west_addr));
    let ack = fed.next_ack().await;
    assert_eq!((ack.version, ack.nack_reason.as_str()), (3, ""));

    // Probes of west go up the Health/Report stream.
    let report = tokio::time::timeout(Duration::from_secs(10), async {
        loop {
            let h = fed.health.recv().await.expect("health channel open");
            if h.cluster == "west" && !h.up {
                return h;
            }
        }
    })
    .await
    .expect("a down report for west");
    assert_eq!(report.observer, "east");
    assert!(report.observed_at_unix_ms > 0);

    // The federator goes away; a restarted gateway serves the last good config at once.
    east.shutdown().await;
    drop(fed);
    let east = Gateway::start(cfg).await.unwrap();
    assert_eq!(east.config_version(), 3);
    assert_eq!(admin_get(&east, "/ready").await.status, 200);
    let a = get(east.egress_addr, "cart.shop.svc.clusterset.local", "/").await;
    // Known service (no 404), its only cluster unreachable.
    assert_eq!(a.status, 502, "{}", a.body);
}

#[tokio::test]
async fn federator_with_the_wrong_identity_is_not_trusted() {
    let pki = Pki::new();
    // Serves with west's federator identity: east expects its own cluster's federator.
    let fed = FakeFederator::start(&pki.federator_files("west")).await;
    fed.push(east_snapshot(&pki, 1, "127.0.0.1:1"));
    let mut cfg = gateway_config(&pki, "east");
    cfg.federator = Some(fed.url());
    let east = Gateway::start(cfg).await.unwrap();
    wait_for("two refused handshakes", 10, || async {
        (fed.handshake_failures.load(Ordering::SeqCst) >= 2).then_some(())
    })
    .await;
    assert_eq!(fed.state.hellos.load(Ordering::SeqCst), 0);
    assert_eq!(east.config_version(), 0);
    assert_eq!(admin_get(&east, "/ready").await.status, 503);
}

#[tokio::test]
async fn nacked_snapshot_leaves_the_old_config_serving() {
    let mesh = Pair::start().await;
    let backend = HttpBackend::start("cart-west").await;
    mesh.configure(
        1,
        &[("cart", 80, AppProtocol::Http, vec![backend.addr])],
        |_, _| {},
    );
    let host = "cart.shop.svc.clusterset.local";
    assert_eq!(get(mesh.east.egress_addr, host, "/").await.status, 200);

    let mut bad = snapshot(
        2,
        "east",
        vec![peer(&mesh.pki, "west", &mesh.west)],
        vec![],
        vec![outbound(
            "cart",
            vec![port(80, AppProtocol::Http)],
            vec![cand("west", 1)],
        )],
    );
    bad.outbound[0].vip = "10.0.0.300".into();
    let err = mesh.east.apply_config(bad.clone()).unwrap_err();
    assert!(err.0.contains("vip"), "{err}");
    bad.outbound[0].vip = String::new();
    bad.outbound.push(bad.outbound[0].clone());
    let err = mesh.east.apply_config(bad).unwrap_err();
    assert!(err.0.contains("listed twice"), "{err}");

    assert_eq!(mesh.east.config_version(), 1);
    assert_eq!(
        metric_or_zero(&mesh.east, "causeway_gateway_config_nacks_total", &[]),
        2.0
    );
    assert_eq!(get(mesh.east.egress_addr, host, "/").await.status, 200);
}

#[tokio::test]
async fn admin_endpoints() {
    let pki = Pki::new();
    let east = start_gateway(&pki, "east").await;
    assert_eq!(admin_get(&east, "/live").await.status, 200);
    assert_eq!(admin_get(&east, "/ready").await.status, 503);
    let west = start_gateway(&pki, "west").await;
    east.apply_config(east_snapshot(&pki, 4, &west.peer_addr.to_string()))
        .unwrap();
    west.apply_config(snapshot(
        4,
        "west",
        vec![peer(&pki, "east", &east)],
        vec![],
        vec![],
    ))
    .unwrap();
    assert_eq!(admin_get(&east, "/ready").await.status, 200);
    let peers = wait_for("west probed up", 10, || async {
        let p = admin_get(&east, "/peers").await.json();
        (p[0]["up"] == true && p[0]["probed"] == true).then_some(p)
    })
    .await;
    assert_eq!(peers[0]["cluster"], "west");
    assert_eq!(peers[0]["connected"], true);
    assert!(peers[0]["rtt_micros"].as_u64().is_some());
    let metrics = admin_get(&east, "/metrics").await;
    assert_eq!(
        metric(
            &metrics.body,
            "causeway_gateway_peer_up",
            &[("cluster", "west")]
        ),
        Some(1.0)
    );
    assert_eq!(
        metric(&metrics.body, "causeway_gateway_config_version", &[]),
        Some(4.0)
    );
}

/// The leaf certificate east's peer listener presents now.
async fn served_leaf(pki: &Pki, addr: std::net::SocketAddr) -> Option<Vec<u8>> {
    let west = pki.gateway_files("west");
    let identity = Identity::load(&west.cert, &west.key).ok()?;
    let bundle = TrustBundle::load(&west.bundle).ok()?;
    let expected = causeway_api::spiffe::SpiffeId::gateway(&td("east")).ok()?;
    let config = causeway_api::tls::client_config(
        &identity,
        &bundle,
        causeway_api::tls::ExpectedPeer::Exact(expected),
        &[b"h2"],
    )
    .ok()?;
    let tcp = TcpStream::connect(addr).await.ok()?;
    let tls = tokio_rustls::TlsConnector::from(config)
        .connect(rustls::pki_types::ServerName::try_from("east").ok()?, tcp)
        .await
        .ok()?;
    Some(tls.get_ref().1.peer_certificates()?.first()?.to_vec())
}

fn leaf_in(files: &IdFiles) -> Vec<u8> {
    causeway_api::pem::load_certs(&files.cert).unwrap()[0].to_vec()
}

#[tokio::test]
async fn certificates_are_reloaded_without_restart() {
    let pki = Pki::new();
    let first = pki.gateway_files("east");
    let mut cfg = gateway_config(&pki, "east");
    cfg.cert = first.cert.clone();
    cfg.key = first.key.clone();
    let east = Gateway::start(cfg).await.unwrap();
    let old = leaf_in(&first);
    assert_eq!(served_leaf(&pki, east.peer_addr).await, Some(old.clone()));

    // A new certificate and key written over the old files: served without a restart.
    let files = pki.gateway_files("east");
    let new = leaf_in(&files);
    assert_ne!(old, new);
    wait_for("the new certificate served", 10, || async {
        (served_leaf(&pki, east.peer_addr).await.as_ref() == Some(&new)).then_some(())
    })
    .await;
    assert!(
        metric_or_zero(
            &east,
            "causeway_gateway_cert_reloads_total",
            &[("result", "ok")]
        ) >= 1.0
    );

    // A broken key is refused and the last good identity kept.
    let before = metric_or_zero(
        &east,
        "causeway_gateway_cert_reloads_total",
        &[("result", "error")],
    );
    std::fs::write(&files.key, "not a key").unwrap();
    wait_for("a failed reload", 10, || async {
        (metric_or_zero(
            &east,
            "causeway_gateway_cert_reloads_total",
            &[("result", "error")],
        ) > before)
            .then_some(())
    })
    .await;
    assert_eq!(served_leaf(&pki, east.peer_addr).await, Some(new));
}
