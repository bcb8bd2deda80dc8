//! Re-origination with mTLS (`backend_tls_mode: mtls`): the ingress gateway presents its own
//! cluster's gateway identity to the backend and accepts a backend of its own trust domain only.

use std::net::SocketAddr;

use causeway_api::proto::{AppProtocol, BackendTlsMode};
use causeway_api::tls::{self as api_tls, Identity, TrustBundle};
use http::{Request, Response};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;

use crate::support::*;

const HOST: &str = "cart.shop.svc.clusterset.local";

/// An HTTP/1.1 server over TLS that requires a client certificate chaining to the bundle and
/// answers 200 with the client's SPIFFE ID in `x-client-id`.
struct TlsBackend {
    addr: SocketAddr,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for TlsBackend {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl TlsBackend {
    async fn start(files: &IdFiles) -> Self {
        let identity = Identity::load(&files.cert, &files.key).unwrap();
        let bundle = TrustBundle::load(&files.bundle).unwrap();
        let config = api_tls::server_config(&identity, &bundle, &[b"http/1.1"]).unwrap();
        let acceptor = tokio_rustls::TlsAcceptor::from(config);
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let task = tokio::spawn(async move {
            loop {
                let Ok((tcp, _)) = listener.accept().await else {
                    return;
                };
                let acceptor = acceptor.clone();
                tokio::spawn(async move {
                    let Ok(tls) = acceptor.accept(tcp).await else {
                        return;
                    };
                    let client = tls
                        .get_ref()
                        .1
                        .peer_certificates()
                        .and_then(|c| api_tls::peer_spiffe_id(c).ok())
                        .map(|id| id.to_string())
                        .unwrap_or_default();
                    let svc = service_fn(move |_req: Request<Incoming>| {
                        let client = client.clone();
                        async move {
                            Ok::<_, std::convert::Infallible>(
                                Response::builder()
                                    .header("x-client-id", client)
                                    .header("x-backend", "cart-west-tls")
                                    .body(Full::new(bytes::Bytes::from_static(b"ok")))
                                    .unwrap(),
                            )
                        }
                    });
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(tls), svc)
                        .await;
                });
            }
        });
        Self { addr, task }
    }
}

fn mtls(_: &mut causeway_api::proto::OutboundService, i: &mut causeway_api::proto::InboundService) {
    i.backend_tls_mode = BackendTlsMode::Mtls as i32;
}

#[tokio::test]
async fn mtls_backend_of_our_trust_domain_sees_the_gateway_identity() {
    let mesh = Pair::start().await;
    let files = mesh.pki.write_svid(
        "west",
        "cart",
        &format!("spiffe://{}/ns/shop/sa/cart", td("west")),
    );
    let backend = TlsBackend::start(&files).await;
    mesh.configure(
        1,
        &[("cart", 80, AppProtocol::Http, vec![backend.addr])],
        mtls,
    );

    let a = get(mesh.east.egress_addr, HOST, "/").await;
    assert_eq!(a.status, 200, "{}", a.body);
    assert_eq!(a.headers["x-backend"], "cart-west-tls");
    assert_eq!(
        a.headers["x-client-id"].to_str().unwrap(),
        gateway_id("west"),
        "west's gateway re-originates with its own identity"
    );
}

#[tokio::test]
async fn mtls_backend_of_another_trust_domain_is_refused() {
    let mesh = Pair::start().await;
    // Chains to the federation root, but belongs to north's trust domain.
    let files = mesh.pki.write_svid(
        "north",
        "cart",
        &format!("spiffe://{}/ns/shop/sa/cart", td("north")),
    );
    let backend = TlsBackend::start(&files).await;
    mesh.configure(
        1,
        &[("cart", 80, AppProtocol::Http, vec![backend.addr])],
        mtls,
    );

    let a = get(mesh.east.egress_addr, HOST, "/").await;
    assert_eq!(a.status, 502, "{}", a.body);
}
