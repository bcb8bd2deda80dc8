//! `Config/Certify` as an attacker sees it: a real federator process holding east's issuer, called
//! over mTLS with east's gateway certificate, west's, east's federator's, a CSR asking for more
//! than it gets, a broken one and a huge one. Only east's gateway gets a certificate, only for its
//! own ID; every refusal is counted, and the legitimate caller is served before and after.

use std::future::Future;
use std::path::Path;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use causeway_api::proto::config_client::ConfigClient;
use causeway_api::proto::CertifyRequest;
use causeway_api::spiffe::SpiffeId;
use causeway_api::tls::{ExpectedPeer, Identity, TrustBundle};
use causeway_e2e::EtcdServer;
use hyper_util::rt::TokioIo;
use tonic::transport::Endpoint;

use crate::harness::{Fed, CLI};

#[derive(Clone)]
struct Connector {
    addr: String,
    tls: Arc<rustls::ClientConfig>,
}

impl tower_service::Service<http::Uri> for Connector {
    type Response = TokioIo<tokio_rustls::client::TlsStream<tokio::net::TcpStream>>;
    type Error = std::io::Error;
    type Future = Pin<Box<dyn Future<Output = std::io::Result<Self::Response>> + Send>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, _: http::Uri) -> Self::Future {
        let this = self.clone();
        Box::pin(async move {
            let tcp = tokio::net::TcpStream::connect(&this.addr).await?;
            let name = rustls_pki_types::ServerName::try_from("federator.invalid").unwrap();
            let s = tokio_rustls::TlsConnector::from(this.tls)
                .connect(name, tcp)
                .await?;
            Ok(TokioIo::new(s))
        })
    }
}

/// `Config/Certify` on `fed` as the holder of `cert`/`key`, trusting east's bundle.
async fn certify(
    fed: &Fed,
    pki: &Path,
    who: &str,
    csr_pem: String,
) -> Result<causeway_api::proto::CertifyResponse, tonic::Status> {
    let identity = Identity::load(
        pki.join(format!("{who}.pem")),
        pki.join(format!("{who}.key")),
    )
    .expect("identity");
    let bundle = TrustBundle::load(pki.join("east/bundle.pem")).unwrap();
    let tls = causeway_api::tls::client_config(
        &identity,
        &bundle,
        ExpectedPeer::Exact(SpiffeId::federator("east.causeway.mesh").unwrap()),
        &[b"h2"],
    )
    .unwrap();
    let channel = Endpoint::from_static("http://federator.invalid")
        .connect_with_connector(Connector {
            addr: fed.config.clone(),
            tls,
        })
        .await
        .map_err(|e| tonic::Status::unavailable(format!("connect: {e}")))?;
    ConfigClient::new(channel)
        .certify(CertifyRequest {
            cluster: "east".into(),
            node: "test".into(),
            csr_pem,
        })
        .await
        .map(|r| r.into_inner())
}

/// A CSR of a fresh key asking for a CA and a DNS name; returns (CSR, key PEM).
fn greedy_csr() -> (String, String) {
    let key = rcgen::KeyPair::generate().unwrap();
    let mut p = rcgen::CertificateParams::new(vec!["evil.example".to_string()]).unwrap();
    p.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    (
        p.serialize_request(&key).unwrap().pem().unwrap(),
        key.serialize_pem(),
    )
}

fn counted(metrics: &str, name: &str, label: &str) -> f64 {
    causeway_api::prom::series(metrics, &format!("{name}{{{label}}}")).unwrap_or(0.0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn only_this_clusters_gateway_gets_a_certificate_and_only_its_own() -> anyhow::Result<()> {
    let etcd = EtcdServer::start().await?;
    let dir = tempfile::tempdir()?;
    let pki = dir.path().join("pki");
    let out = std::process::Command::new(CLI)
        .args(["certs", "--out"])
        .arg(&pki)
        .args(["--clusters", "east,west"])
        .output()?;
    anyhow::ensure!(out.status.success(), "causeway certs: {out:?}");
    // Paths relative to the PKI for `certify`: `east/gateway` is east's gateway.
    let p = |f: &str| pki.join(f).display().to_string();
    let exports = tempfile::tempdir()?;
    let fed = Fed::start(
        "east",
        &etcd.endpoint(),
        exports.path(),
        &[
            "--trust-bundle",
            &p("east/bundle.pem"),
            "--issuer-cert",
            &p("east/ca.pem"),
            "--issuer-key",
            &p("east/ca.key"),
            "--certificate-lifetime",
            "1h",
        ],
    )
    .await?;

    // East's gateway asks for a CA with a DNS name; it gets a leaf for its own SPIFFE ID, 1 h.
    let (csr, key) = greedy_csr();
    let issued = certify(&fed, &pki, "east/gateway", csr)
        .await
        .expect("east's gateway is served");
    let identity = Identity::from_pem(
        issued.certificate_chain_pem.as_bytes(),
        key.as_bytes(),
        "issued",
    )?;
    let east_bundle = TrustBundle::load(pki.join("east/bundle.pem"))?;
    let id = causeway_api::tls::verify_client_chain(&east_bundle, &identity.cert_chain)?;
    assert_eq!(id, SpiffeId::gateway("east.causeway.mesh")?);
    let life = issued.not_after_unix - issued.not_before_unix;
    assert!((3600..=3600 + 60).contains(&life), "lifetime {life} s");
    let (_, leaf) = x509_parser::parse_x509_certificate(&identity.cert_chain[0])?;
    assert!(!leaf.is_ca(), "a CSR asking for a CA gets a leaf");
    assert!(
        leaf.subject_alternative_name()?
            .map(|s| s.value.general_names.len())
            == Some(1),
        "one SAN, the SPIFFE ID"
    );

    // West's gateway: east's federator does not know its CA; the handshake fails.
    let west = certify(&fed, &pki, "west/gateway", greedy_csr().0).await;
    assert!(west.is_err(), "west's gateway was served: {west:?}");
    // East's federator identity is no gateway.
    let not_gw = certify(&fed, &pki, "east/federator", greedy_csr().0).await;
    assert_eq!(
        not_gw.as_ref().map_err(|s| s.code()).err(),
        Some(tonic::Code::PermissionDenied),
        "{not_gw:?}"
    );
    // A broken CSR and a huge one are refused, naming why.
    let broken = certify(
        &fed,
        &pki,
        "east/gateway",
        "-----BEGIN CERTIFICATE REQUEST-----\nAAAA\n-----END CERTIFICATE REQUEST-----\n".into(),
    )
    .await;
    let status = broken.expect_err("a broken CSR is refused");
    assert_eq!(status.code(), tonic::Code::InvalidArgument);
    assert!(status.message().contains("CSR"), "{status:?}");
    let huge = certify(&fed, &pki, "east/gateway", "A".repeat(200 * 1024)).await;
    assert!(huge.is_err(), "a 200 KiB CSR was accepted");

    // Nothing changed for the legitimate caller.
    certify(&fed, &pki, "east/gateway", greedy_csr().0)
        .await
        .expect("east's gateway is still served");
    let m = fed.metrics().await?;
    assert_eq!(
        counted(
            &m,
            "causeway_federator_certificates_issued_total",
            "result=\"ok\""
        ),
        2.0,
        "{m}"
    );
    assert!(
        counted(
            &m,
            "causeway_federator_certificates_issued_total",
            "result=\"refused\""
        ) >= 1.0
    );
    assert!(
        counted(
            &m,
            "causeway_federator_config_handshake_failures_total",
            "reason=\"unknown_ca\""
        ) >= 1.0,
        "west's handshake is counted: {m}"
    );
    Ok(())
}
