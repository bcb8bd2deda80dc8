//! Shared fixtures: a test PKI, backends (HTTP echo, TCP echo, gRPC), gateways on 127.0.0.1:0,
//! config snapshot builders, clients, and `wait_for`.

use std::collections::BTreeMap;
use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use causeway_api::proto::{self, ConfigSnapshot};
use causeway_api::spiffe::SpiffeId;
use causeway_gateway::{Config, Gateway, RunningGateway};
use http::{Request, Response, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Notify;

pub const TD_SUFFIX: &str = "causeway.mesh";

pub fn td(cluster: &str) -> String {
    format!("{cluster}.{TD_SUFFIX}")
}

pub fn gateway_id(cluster: &str) -> String {
    SpiffeId::gateway(&td(cluster)).unwrap().to_string()
}

// === wait_for ===

/// Polls `check` until it returns `Some`, or panics after `secs` naming `what`.
pub async fn wait_for<T, F, Fut>(what: &str, secs: u64, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let deadline = tokio::time::Instant::now() + Duration::from_secs(secs);
    loop {
        if let Some(v) = check().await {
            return v;
        }
        if tokio::time::Instant::now() > deadline {
            panic!("timed out after {secs}s waiting for {what}");
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// The sum of the samples of `name` that have every `labels` pair.
pub fn metric(text: &str, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
    causeway_api::prom::sum(text, name, labels)
}

pub fn metric_or_zero(gw: &RunningGateway, name: &str, labels: &[(&str, &str)]) -> f64 {
    metric(&gw.metrics_text(), name, labels).unwrap_or(0.0)
}

// === PKI ===

/// The test PKI is the one of causeway-api (`testing`).
pub use causeway_api::testing::Ca;

/// The federation PKI: one root, a CA per cluster, files in a temporary directory.
pub struct Pki {
    pub root: Ca,
    pub dir: tempfile::TempDir,
    cas: std::sync::Mutex<BTreeMap<String, Arc<Ca>>>,
}

/// Paths of one identity's files.
#[derive(Clone, Debug)]
pub struct IdFiles {
    pub cert: PathBuf,
    pub key: PathBuf,
    pub bundle: PathBuf,
}

impl Pki {
    pub fn new() -> Self {
        let root = Ca::root("test federation root");
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("bundle.pem"), root.pem()).unwrap();
        Self {
            root,
            dir,
            cas: Default::default(),
        }
    }

    pub fn bundle_pem(&self) -> String {
        self.root.pem()
    }

    pub fn ca(&self, cluster: &str) -> Arc<Ca> {
        self.cas
            .lock()
            .unwrap()
            .entry(cluster.to_string())
            .or_insert_with(|| {
                let cn = format!("{cluster} CA");
                Arc::new(self.root.intermediate_of(&cn, Some(&td(cluster))))
            })
            .clone()
    }

    /// Writes `<dir>/<cluster>/<name>.pem|.key` for `spiffe` and returns the paths.
    pub fn write_svid(&self, cluster: &str, name: &str, spiffe: &str) -> IdFiles {
        let (cert, key) = self.ca(cluster).svid(spiffe, false, true);
        let dir = self.dir.path().join(cluster);
        std::fs::create_dir_all(&dir).unwrap();
        let files = IdFiles {
            cert: dir.join(format!("{name}.pem")),
            key: dir.join(format!("{name}.key")),
            bundle: self.dir.path().join("bundle.pem"),
        };
        std::fs::write(&files.cert, cert).unwrap();
        std::fs::write(&files.key, key).unwrap();
        files
    }

    pub fn gateway_files(&self, cluster: &str) -> IdFiles {
        self.write_svid(cluster, "gateway", &gateway_id(cluster))
    }

    pub fn federator_files(&self, cluster: &str) -> IdFiles {
        let id = SpiffeId::federator(&td(cluster)).unwrap().to_string();
        self.write_svid(cluster, "federator", &id)
    }
}

// === gateways ===

pub fn gateway_config(pki: &Pki, cluster: &str) -> Config {
    let files = pki.gateway_files(cluster);
    Config {
        cluster: cluster.to_string(),
        node: format!("{cluster}-gw-0"),
        cert: files.cert,
        key: files.key,
        trust_bundle: files.bundle,
        egress_listen: "127.0.0.1:0".parse().unwrap(),
        peer_listen: "127.0.0.1:0".parse().unwrap(),
        admin_listen: "127.0.0.1:0".parse().unwrap(),
        probe_interval_ms: 200,
        reload_interval_ms: 100,
        connect_timeout_ms: 1000,
        federator_backoff_base_ms: 50,
        federator_backoff_max_ms: 500,
        ..Config::default()
    }
}

pub async fn start_gateway(pki: &Pki, cluster: &str) -> RunningGateway {
    Gateway::start(gateway_config(pki, cluster)).await.unwrap()
}

// === snapshot builders ===

pub fn peer(pki: &Pki, cluster: &str, gw: &RunningGateway) -> proto::Peer {
    peer_at(pki, cluster, &gw.peer_addr.to_string())
}

pub fn peer_at(pki: &Pki, cluster: &str, addr: &str) -> proto::Peer {
    proto::Peer {
        cluster: cluster.to_string(),
        gateway_addresses: vec![addr.to_string()],
        trust_domain: td(cluster),
        trust_bundle_pem: pki.bundle_pem(),
        locality: Default::default(),
    }
}

pub fn port(port: u16, app: proto::AppProtocol) -> proto::Port {
    proto::Port {
        name: String::new(),
        protocol: proto::Protocol::Tcp as i32,
        port: u32::from(port),
        app_protocol: app as i32,
        gateway_port: 0,
    }
}

pub fn inbound(
    name: &str,
    ports: Vec<proto::Port>,
    endpoints: &[SocketAddr],
) -> proto::InboundService {
    proto::InboundService {
        namespace: "shop".into(),
        name: name.into(),
        ports,
        endpoints: endpoints
            .iter()
            .map(|a| proto::Endpoint {
                address: a.to_string(),
                ready: true,
                hostname: String::new(),
            })
            .collect(),
        backend_tls_mode: proto::BackendTlsMode::Plaintext as i32,
        ..Default::default()
    }
}

pub fn cand(cluster: &str, priority: u32) -> proto::Candidate {
    proto::Candidate {
        cluster: cluster.into(),
        priority,
        weight: 1,
        healthy: true,
        drained: false,
        ready_endpoints: 1,
    }
}

pub fn outbound(
    name: &str,
    ports: Vec<proto::Port>,
    candidates: Vec<proto::Candidate>,
) -> proto::OutboundService {
    proto::OutboundService {
        namespace: "shop".into(),
        name: name.into(),
        vip: String::new(),
        ports,
        candidates,
        policy: None,
        header_routes: vec![],
        endpoints: vec![],
    }
}

pub fn snapshot(
    version: u64,
    cluster: &str,
    peers: Vec<proto::Peer>,
    inbound: Vec<proto::InboundService>,
    outbound: Vec<proto::OutboundService>,
) -> ConfigSnapshot {
    ConfigSnapshot {
        version,
        cluster: cluster.into(),
        peers,
        inbound,
        outbound,
        ..Default::default()
    }
}

/// east egress -> west ingress -> backend, for one HTTP service `cart` on port 80.
pub struct Pair {
    pub pki: Pki,
    pub east: RunningGateway,
    pub west: RunningGateway,
}

impl Pair {
    pub async fn start() -> Self {
        let pki = Pki::new();
        let east = start_gateway(&pki, "east").await;
        let west = start_gateway(&pki, "west").await;
        Self { pki, east, west }
    }

    /// Configures `services` (name, port, app protocol, west endpoints) and waits until east
    /// routes them.
    pub fn configure(
        &self,
        version: u64,
        services: &[(&str, u16, proto::AppProtocol, Vec<SocketAddr>)],
        tweak: impl Fn(&mut proto::OutboundService, &mut proto::InboundService),
    ) {
        let mut ins = vec![];
        let mut outs = vec![];
        for (name, p, app, endpoints) in services {
            let mut o = outbound(name, vec![port(*p, *app)], vec![cand("west", 1)]);
            let mut i = inbound(name, vec![port(*p, *app)], endpoints);
            tweak(&mut o, &mut i);
            outs.push(o);
            ins.push(i);
        }
        self.east
            .apply_config(snapshot(
                version,
                "east",
                vec![peer(&self.pki, "west", &self.west)],
                vec![],
                outs,
            ))
            .unwrap();
        self.west
            .apply_config(snapshot(
                version,
                "west",
                vec![peer(&self.pki, "east", &self.east)],
                ins,
                vec![],
            ))
            .unwrap();
    }
}

// === backends ===

/// An HTTP/1.1 + h2c server that answers with what it received, as JSON.
///
/// Paths: `/status/<code>` answers that code; `/hold` waits until [`HttpBackend::release`];
/// anything else answers 200. Every answer carries `x-backend: <name>`.
pub struct HttpBackend {
    pub addr: SocketAddr,
    pub hits: Arc<AtomicUsize>,
    pub held: Arc<AtomicUsize>,
    release: Arc<Notify>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for HttpBackend {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl HttpBackend {
    pub async fn start(name: &str) -> Self {
        Self::start_with(name, None).await
    }

    /// `fail_with`: answer every request with this status.
    pub async fn start_with(name: &str, fail_with: Option<u16>) -> Self {
        Self::start_full(name, fail_with, false).await
    }

    /// Every request waits for [`HttpBackend::release`], whatever its path.
    pub async fn start_holding(name: &str) -> Self {
        Self::start_full(name, None, true).await
    }

    async fn start_full(name: &str, fail_with: Option<u16>, hold_all: bool) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let hits = Arc::new(AtomicUsize::new(0));
        let held = Arc::new(AtomicUsize::new(0));
        let release = Arc::new(Notify::new());
        let name = name.to_string();
        let (h, hd, r) = (hits.clone(), held.clone(), release.clone());
        let task = tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    return;
                };
                let (name, hits, held, release) = (name.clone(), h.clone(), hd.clone(), r.clone());
                tokio::spawn(async move {
                    let svc = service_fn(move |req: Request<Incoming>| {
                        let (name, hits, held, release) =
                            (name.clone(), hits.clone(), held.clone(), release.clone());
                        async move {
                            hits.fetch_add(1, Ordering::SeqCst);
                            Ok::<_, Infallible>(
                                answer(&name, req, fail_with, hold_all, &held, &release).await,
                            )
                        }
                    });
                    let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                        .serve_connection(TokioIo::new(stream), svc)
                        .await;
                });
            }
        });
        Self {
            addr,
            hits,
            held,
            release,
            task,
        }
    }

    pub fn release(&self) {
        self.release.notify_waiters();
    }
}

async fn answer(
    name: &str,
    req: Request<Incoming>,
    fail_with: Option<u16>,
    hold_all: bool,
    held: &AtomicUsize,
    release: &Notify,
) -> Response<Full<Bytes>> {
    let path = req.uri().path().to_string();
    let mut status = fail_with.unwrap_or(200);
    if let Some(code) = path.strip_prefix("/status/") {
        status = code.parse().unwrap_or(400);
    }
    if path == "/hold" || hold_all {
        let released = release.notified();
        held.fetch_add(1, Ordering::SeqCst);
        released.await;
    }
    let headers: BTreeMap<String, String> = req
        .headers()
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_str().unwrap_or("").to_string()))
        .collect();
    let method = req.method().to_string();
    let version = format!("{:?}", req.version());
    let authority = req.uri().authority().map(|a| a.to_string());
    let body = req
        .into_body()
        .collect()
        .await
        .map(|b| b.to_bytes())
        .unwrap_or_default();
    let json = serde_json::json!({
        "backend": name,
        "method": method,
        "path": path,
        "version": version,
        "authority": authority,
        "headers": headers,
        "body": String::from_utf8_lossy(&body),
    });
    Response::builder()
        .status(StatusCode::from_u16(status).unwrap())
        .header("x-backend", name)
        .header("content-type", "application/json")
        .body(Full::new(Bytes::from(json.to_string())))
        .unwrap()
}

/// A TCP server that echoes, prefixed by its name once per connection.
pub struct TcpEcho {
    pub addr: SocketAddr,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for TcpEcho {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl TcpEcho {
    pub async fn start(name: &str) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let name = name.to_string();
        let task = tokio::spawn(async move {
            loop {
                let Ok((mut s, _)) = listener.accept().await else {
                    return;
                };
                let name = name.clone();
                tokio::spawn(async move {
                    let _ = s.write_all(format!("{name}:").as_bytes()).await;
                    let mut buf = [0u8; 4096];
                    loop {
                        match s.read(&mut buf).await {
                            Ok(0) | Err(_) => return,
                            Ok(n) => {
                                if s.write_all(&buf[..n]).await.is_err() {
                                    return;
                                }
                            }
                        }
                    }
                });
            }
        });
        Self { addr, task }
    }
}

/// An address nothing listens on (bound, then closed).
/// Reads `s` until the other side closes it (end of stream or an error); whether that
/// happened within `secs` seconds.
pub async fn closed_within(s: &mut tokio::net::TcpStream, secs: u64) -> bool {
    use tokio::io::AsyncReadExt as _;
    let mut buf = [0u8; 64];
    tokio::time::timeout(Duration::from_secs(secs), async {
        loop {
            match s.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(_) => continue,
            }
        }
    })
    .await
    .is_ok()
}

pub async fn dead_addr() -> SocketAddr {
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    l.local_addr().unwrap()
}

// === clients ===

pub struct Answer {
    pub status: StatusCode,
    pub headers: http::HeaderMap,
    pub body: String,
}

impl Answer {
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_str(&self.body)
            .unwrap_or_else(|e| panic!("not JSON ({e}): {:?}", self.body))
    }

    /// A header the backend received.
    pub fn seen(&self, header: &str) -> Option<String> {
        self.json()["headers"][header].as_str().map(str::to_string)
    }
}

async fn collect(resp: Response<Incoming>) -> Answer {
    let status = resp.status();
    let headers = resp.headers().clone();
    let body = resp.into_body().collect().await.unwrap().to_bytes();
    Answer {
        status,
        headers,
        body: String::from_utf8_lossy(&body).into_owned(),
    }
}

/// One HTTP/1.1 connection to a gateway's egress, for sequential requests.
pub struct H1 {
    sender: hyper::client::conn::http1::SendRequest<Full<Bytes>>,
}

impl H1 {
    pub async fn connect(addr: SocketAddr) -> Self {
        let stream = TcpStream::connect(addr).await.unwrap();
        let (sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
            .await
            .unwrap();
        tokio::spawn(conn);
        Self { sender }
    }

    /// An mTLS connection as a local caller with `client` (None: no client certificate),
    /// expecting the gateway of `cluster`. Err: the handshake failed.
    pub async fn connect_tls(
        addr: SocketAddr,
        pki: &Pki,
        cluster: &str,
        client: Option<&IdFiles>,
    ) -> Result<Self, std::io::Error> {
        use causeway_api::tls::{ExpectedPeer, Identity, TrustBundle};
        let bundle = TrustBundle::load(pki.dir.path().join("bundle.pem")).unwrap();
        let expected = ExpectedPeer::Exact(gateway_id(cluster).parse().unwrap());
        let config = match client {
            Some(files) => {
                let identity = Identity::load(&files.cert, &files.key).unwrap();
                causeway_api::tls::client_config(&identity, &bundle, expected, &[b"http/1.1"])
                    .unwrap()
            }
            None => {
                // The same verifier, but no client certificate is offered.
                let any = pki.gateway_files(cluster);
                let identity = Identity::load(&any.cert, &any.key).unwrap();
                let with =
                    causeway_api::tls::client_config(&identity, &bundle, expected, &[b"http/1.1"])
                        .unwrap();
                let mut c = (*with).clone();
                c.client_auth_cert_resolver = Arc::new(NoClientCert);
                Arc::new(c)
            }
        };
        let tcp = TcpStream::connect(addr).await?;
        let tls = tokio_rustls::TlsConnector::from(config)
            .connect(
                rustls_pki_types::ServerName::try_from("gateway").unwrap(),
                tcp,
            )
            .await?;
        let (sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tls))
            .await
            .map_err(std::io::Error::other)?;
        tokio::spawn(conn);
        Ok(Self { sender })
    }

    pub async fn send(
        &mut self,
        method: &str,
        host: &str,
        path: &str,
        headers: &[(&str, &str)],
        body: &str,
    ) -> Answer {
        let mut b = Request::builder()
            .method(method)
            .uri(path)
            .header("host", host);
        for (k, v) in headers {
            b = b.header(*k, *v);
        }
        let req = b.body(Full::new(Bytes::from(body.to_string()))).unwrap();
        self.sender.ready().await.unwrap();
        collect(self.sender.send_request(req).await.unwrap()).await
    }

    pub async fn get(&mut self, host: &str, path: &str) -> Answer {
        self.send("GET", host, path, &[], "").await
    }

    /// Like [`H1::get`], but a connection-level failure is returned, not a panic.
    pub async fn try_send(
        &mut self,
        method: &str,
        host: &str,
        path: &str,
    ) -> Result<Answer, hyper::Error> {
        let req = Request::builder()
            .method(method)
            .uri(path)
            .header("host", host)
            .body(Full::new(Bytes::new()))
            .unwrap();
        self.sender.ready().await?;
        Ok(collect(self.sender.send_request(req).await?).await)
    }
}

#[derive(Debug)]
struct NoClientCert;

impl rustls::client::ResolvesClientCert for NoClientCert {
    fn resolve(
        &self,
        _root_hint_subjects: &[&[u8]],
        _sigschemes: &[rustls::SignatureScheme],
    ) -> Option<Arc<rustls::sign::CertifiedKey>> {
        None
    }

    fn has_certs(&self) -> bool {
        false
    }
}

/// One h2c (prior knowledge) connection to a gateway's egress.
pub struct H2 {
    sender: hyper::client::conn::http2::SendRequest<Full<Bytes>>,
}

impl H2 {
    pub async fn connect(addr: SocketAddr) -> Self {
        let stream = TcpStream::connect(addr).await.unwrap();
        let (sender, conn) =
            hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(stream))
                .await
                .unwrap();
        tokio::spawn(conn);
        Self { sender }
    }

    /// Another handle on the same connection (concurrent streams).
    pub fn clone_sender(&self) -> H2 {
        H2 {
            sender: self.sender.clone(),
        }
    }

    pub async fn send(&mut self, method: &str, authority: &str, path: &str, body: &str) -> Answer {
        let req = Request::builder()
            .method(method)
            .uri(format!("http://{authority}{path}"))
            .version(http::Version::HTTP_2)
            .body(Full::new(Bytes::from(body.to_string())))
            .unwrap();
        collect(self.sender.send_request(req).await.unwrap()).await
    }

    /// A request with one extra header.
    pub async fn send_with_header(
        &mut self,
        method: &str,
        authority: &str,
        path: &str,
        header: (&str, &str),
    ) -> Answer {
        let req = Request::builder()
            .method(method)
            .uri(format!("http://{authority}{path}"))
            .version(http::Version::HTTP_2)
            .header(header.0, header.1)
            .body(Full::new(Bytes::new()))
            .unwrap();
        collect(self.sender.send_request(req).await.unwrap()).await
    }
}

/// GET over a fresh HTTP/1.1 connection.
pub async fn get(addr: SocketAddr, host: &str, path: &str) -> Answer {
    H1::connect(addr).await.get(host, path).await
}

/// GET on a gateway's admin listener.
pub async fn admin_get(gw: &RunningGateway, path: &str) -> Answer {
    get(gw.admin_addr, "admin", path).await
}

/// A TCP relay standing for a network path; `cut()` makes it a black hole: bytes stop flowing
/// both ways and new connections hang, but nothing is closed (as when a WAN link drops packets).
pub struct Path {
    pub addr: SocketAddr,
    cut: Arc<std::sync::atomic::AtomicBool>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for Path {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl Path {
    pub async fn start(to: SocketAddr) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let cut = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let c = cut.clone();
        let task = tokio::spawn(async move {
            let mut held = Vec::new();
            loop {
                let Ok((inbound, _)) = listener.accept().await else {
                    return;
                };
                if c.load(Ordering::SeqCst) {
                    held.push(inbound);
                    continue;
                }
                let Ok(outbound) = TcpStream::connect(to).await else {
                    continue;
                };
                let (ri, wi) = inbound.into_split();
                let (ro, wo) = outbound.into_split();
                tokio::spawn(relay(ri, wo, c.clone()));
                tokio::spawn(relay(ro, wi, c.clone()));
            }
        });
        Self { addr, cut, task }
    }

    pub fn cut(&self) {
        self.cut.store(true, Ordering::SeqCst);
    }
}

async fn relay(
    mut from: tokio::net::tcp::OwnedReadHalf,
    mut to: tokio::net::tcp::OwnedWriteHalf,
    cut: Arc<std::sync::atomic::AtomicBool>,
) {
    let mut buf = vec![0u8; 16 * 1024];
    loop {
        let n = match from.read(&mut buf).await {
            Ok(0) | Err(_) => return,
            Ok(n) => n,
        };
        if cut.load(Ordering::SeqCst) {
            // Swallow everything from now on, keeping both sockets open.
            loop {
                if matches!(from.read(&mut buf).await, Ok(0) | Err(_)) {
                    std::future::pending::<()>().await;
                }
            }
        }
        if to.write_all(&buf[..n]).await.is_err() {
            return;
        }
    }
}
