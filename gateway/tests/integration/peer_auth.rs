//! The peer listener refuses a peer without a certificate, with a certificate of another CA,
//! of an unknown cluster, or expired; each refusal is counted by reason.

use std::sync::Arc;

use bytes::Bytes;
use causeway_api::proto::AppProtocol;
use causeway_api::tls::Identity;
use http_body_util::Empty;
use hyper_util::rt::{TokioExecutor, TokioIo};
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{DigitallySignedStruct, SignatureScheme};
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;

use crate::support::*;

/// A client that accepts any server (we test the server's checks, not the client's).
#[derive(Debug)]
struct AnyServer;

impl ServerCertVerifier for AnyServer {
    fn verify_server_cert(
        &self,
        _: &CertificateDer<'_>,
        _: &[CertificateDer<'_>],
        _: &ServerName<'_>,
        _: &[u8],
        _: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }
    fn verify_tls12_signature(
        &self,
        _: &[u8],
        _: &CertificateDer<'_>,
        _: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        Ok(HandshakeSignatureValid::assertion())
    }
    fn verify_tls13_signature(
        &self,
        _: &[u8],
        _: &CertificateDer<'_>,
        _: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        Ok(HandshakeSignatureValid::assertion())
    }
    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        rustls::crypto::ring::default_provider()
            .signature_verification_algorithms
            .supported_schemes()
    }
}

pub(crate) fn client_config(identity: Option<(String, String)>) -> Arc<rustls::ClientConfig> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(AnyServer));
    let mut c = match identity {
        None => builder.with_no_client_auth(),
        Some((cert, key)) => {
            let id = Identity::from_pem(cert.as_bytes(), key.as_bytes(), "test").unwrap();
            builder
                .with_client_auth_cert(id.cert_chain, id.key)
                .unwrap()
        }
    };
    c.alpn_protocols = vec![b"h2".to_vec()];
    Arc::new(c)
}

/// Connects to the peer listener and tries a request to a served service; `true` when it
/// was answered (the peer was accepted).
async fn try_peer(addr: std::net::SocketAddr, config: Arc<rustls::ClientConfig>) -> bool {
    let attempt = async {
        let tcp = TcpStream::connect(addr).await.ok()?;
        let tls = TlsConnector::from(config)
            .connect(ServerName::try_from("peer").unwrap(), tcp)
            .await
            .ok()?;
        let (mut sender, conn) =
            hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(tls))
                .await
                .ok()?;
        tokio::spawn(conn);
        let req = http::Request::get("http://cart.shop.svc.clusterset.local:80/")
            .body(Empty::<Bytes>::new())
            .unwrap();
        let resp = sender.send_request(req).await.ok()?;
        Some(resp.status())
    };
    tokio::time::timeout(std::time::Duration::from_secs(10), attempt)
        .await
        .ok()
        .flatten()
        .is_some()
}

async fn refused_with(west: &causeway_gateway::RunningGateway, reason: &str, before: f64) {
    wait_for(
        &format!("handshake failure {reason} counted"),
        10,
        || async {
            let n = metric_or_zero(
                west,
                "causeway_gateway_peer_handshake_failures_total",
                &[("reason", reason)],
            );
            (n > before).then_some(())
        },
    )
    .await;
}

#[tokio::test]
async fn bad_peers_are_refused_and_counted() {
    let mesh = Pair::start().await;
    let backend = HttpBackend::start("cart-west").await;
    mesh.configure(
        1,
        &[("cart", 80, AppProtocol::Http, vec![backend.addr])],
        |_, _| {},
    );
    let west = &mesh.west;
    let count = |reason: &str| {
        metric_or_zero(
            west,
            "causeway_gateway_peer_handshake_failures_total",
            &[("reason", reason)],
        )
    };

    // The real east gateway identity is accepted (the control).
    let east_files = mesh.pki.gateway_files("east");
    let good = (
        std::fs::read_to_string(&east_files.cert).unwrap(),
        std::fs::read_to_string(&east_files.key).unwrap(),
    );
    assert!(try_peer(west.peer_addr, client_config(Some(good.clone()))).await);

    // The right identity, offering no ALPN at all (rustls would let it through).
    let before = count("no_alpn");
    let mut no_alpn = (*client_config(Some(good))).clone();
    no_alpn.alpn_protocols.clear();
    assert!(!try_peer(west.peer_addr, Arc::new(no_alpn)).await);
    refused_with(west, "no_alpn", before).await;

    // No client certificate.
    let before = count("no_certificate");
    assert!(!try_peer(west.peer_addr, client_config(None)).await);
    refused_with(west, "no_certificate", before).await;

    // east's gateway ID, but issued by another federation's CA.
    let other = Ca::root("another federation").intermediate("east CA");
    let before = count("unknown_ca");
    let wrong_ca = other.svid(&gateway_id("east"), false, true);
    assert!(!try_peer(west.peer_addr, client_config(Some(wrong_ca))).await);
    refused_with(west, "unknown_ca", before).await;

    // east's gateway ID, issued by north's CA (of the same federation root), and straight by
    // the root: no cluster's CA may mint another's identity.
    for forged in [
        mesh.pki.ca("north").svid(&gateway_id("east"), false, true),
        mesh.pki.root.svid(&gateway_id("east"), false, false),
    ] {
        let before = count("foreign_issuer");
        assert!(!try_peer(west.peer_addr, client_config(Some(forged))).await);
        refused_with(west, "foreign_issuer", before).await;
    }

    // A valid gateway certificate of a cluster west does not know.
    let before = count("unknown_cluster");
    let north = mesh.pki.ca("north").svid(&gateway_id("north"), false, true);
    assert!(!try_peer(west.peer_addr, client_config(Some(north))).await);
    refused_with(west, "unknown_cluster", before).await;

    // east's own CA and ID, but expired.
    let before = count("expired");
    let expired = mesh.pki.ca("east").svid(&gateway_id("east"), true, true);
    assert!(!try_peer(west.peer_addr, client_config(Some(expired))).await);
    refused_with(west, "expired", before).await;

    // A workload (not gateway) identity of a known cluster.
    let before = count("not_gateway");
    let workload =
        mesh.pki
            .ca("east")
            .svid("spiffe://east.causeway.mesh/ns/shop/sa/cart", false, true);
    assert!(!try_peer(west.peer_addr, client_config(Some(workload))).await);
    refused_with(west, "not_gateway", before).await;

    // Beside all of it, east's gateway still serves its callers through the pooled connection.
    let a = get(
        mesh.east.egress_addr,
        "cart.shop.svc.clusterset.local",
        "/after",
    )
    .await;
    assert_eq!(a.status, 200, "{}", a.body);
    assert_eq!(backend.hits.load(std::sync::atomic::Ordering::SeqCst), 2);
}

#[tokio::test]
async fn gateway_dials_only_the_expected_peer_identity() {
    // east believes west's gateway is at an address where north's gateway listens: the
    // connection is refused by east's client (north is not west) and requests fail over
    // to nothing rather than reaching the wrong cluster.
    let pki = Pki::new();
    let east = start_gateway(&pki, "east").await;
    let north = start_gateway(&pki, "north").await;
    let backend = HttpBackend::start("cart-north").await;
    east.apply_config(snapshot(
        1,
        "east",
        vec![peer_at(&pki, "west", &north.peer_addr.to_string())],
        vec![],
        vec![outbound(
            "cart",
            vec![port(80, AppProtocol::Http)],
            vec![cand("west", 1)],
        )],
    ))
    .unwrap();
    north
        .apply_config(snapshot(
            1,
            "north",
            vec![peer(&pki, "east", &east)],
            vec![inbound(
                "cart",
                vec![port(80, AppProtocol::Http)],
                &[backend.addr],
            )],
            vec![],
        ))
        .unwrap();
    let a = get(east.egress_addr, "cart.shop.svc.clusterset.local", "/").await;
    assert_eq!(a.status, 502, "{}", a.body);
    assert_eq!(backend.hits.load(std::sync::atomic::Ordering::SeqCst), 0);
}
