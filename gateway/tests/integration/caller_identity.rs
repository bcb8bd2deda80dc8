//! A local caller that speaks mTLS to the egress keeps its identity across the hop: the egress
//! gateway puts its SPIFFE ID in XFCC, the ingress gateway authorises it against the export's
//! allowed identities and passes the chain to the backend.

use causeway_api::proto::AppProtocol;

use crate::support::*;

const HOST: &str = "cart.shop.svc.clusterset.local";

fn workload(sa: &str) -> String {
    format!("spiffe://{}/ns/shop/sa/{sa}", td("east"))
}

#[tokio::test]
async fn an_mtls_caller_is_named_in_xfcc_and_authorised_by_identity() {
    let mesh = Pair::start().await;
    let backend = HttpBackend::start("cart-west").await;
    let frontend = workload("frontend");
    let allowed = frontend.clone();
    mesh.configure(
        1,
        &[("cart", 80, AppProtocol::Http, vec![backend.addr])],
        move |_, i| i.allowed_identities = vec![allowed.clone()],
    );

    let files = mesh.pki.write_svid("east", "frontend", &frontend);
    let mut client = H1::connect_tls(mesh.east.egress_addr, &mesh.pki, "east", Some(&files))
        .await
        .expect("mTLS handshake with the egress");
    let forged = "By=spiffe://evil/x;URI=spiffe://evil/ns/a/sa/admin";
    // The forged header is replaced, and naming it in `Connection` does not remove ours.
    let a = client
        .send(
            "GET",
            HOST,
            "/",
            &[
                ("x-forwarded-client-cert", forged),
                (
                    "connection",
                    "x-forwarded-client-cert, x-causeway-source-cluster",
                ),
            ],
            "",
        )
        .await;
    assert_eq!(a.status, 200, "{}", a.body);
    assert_eq!(
        a.seen("x-forwarded-client-cert"),
        Some(format!(
            "By={};URI={frontend},By={};URI={}",
            gateway_id("east"),
            gateway_id("west"),
            gateway_id("east")
        )),
        "the caller first, then the hop; the forged value is gone"
    );
    assert_eq!(a.seen("x-causeway-source-cluster"), Some("east".into()));

    // Another workload of east, and a plaintext caller (known only as east's gateway), are
    // refused by the export's allowed identities.
    let other = mesh.pki.write_svid("east", "other", &workload("other"));
    let mut client = H1::connect_tls(mesh.east.egress_addr, &mesh.pki, "east", Some(&other))
        .await
        .unwrap();
    let a = client.get(HOST, "/").await;
    assert_eq!(a.status, 403, "{}", a.body);
    assert!(a.body.contains(&workload("other")), "{}", a.body);
    let a = get(mesh.east.egress_addr, HOST, "/").await;
    assert_eq!(a.status, 403, "{}", a.body);
}

#[tokio::test]
async fn tls_callers_without_a_certificate_of_our_trust_domain_are_refused() {
    let mesh = Pair::start().await;
    let backend = HttpBackend::start("cart-west").await;
    mesh.configure(
        1,
        &[("cart", 80, AppProtocol::Http, vec![backend.addr])],
        |_, _| {},
    );
    let failures = |reason: &str| {
        metric_or_zero(
            &mesh.east,
            "causeway_gateway_client_handshake_failures_total",
            &[("reason", reason)],
        )
    };

    // No client certificate: the handshake fails (TLS 1.3 reports it after the client's
    // Finished, so the request is what fails on the client's side).
    if let Ok(mut c) = H1::connect_tls(mesh.east.egress_addr, &mesh.pki, "east", None).await {
        let sent = c.try_send("GET", HOST, "/").await;
        assert!(
            sent.is_err(),
            "a request went through without a client certificate"
        );
    }
    wait_for("the refusal counted", 10, || async {
        (failures("no_certificate") == 1.0).then_some(())
    })
    .await;

    // A workload of west's trust domain (chains to the federation root) may not use east's
    // egress.
    let foreign = mesh.pki.write_svid(
        "west",
        "intruder",
        &format!("spiffe://{}/ns/shop/sa/intruder", td("west")),
    );
    if let Ok(mut c) =
        H1::connect_tls(mesh.east.egress_addr, &mesh.pki, "east", Some(&foreign)).await
    {
        assert!(c.try_send("GET", HOST, "/").await.is_err());
    }
    wait_for("the foreign identity counted", 10, || async {
        (failures("foreign_identity") == 1.0).then_some(())
    })
    .await;
    assert_eq!(backend.hits.load(std::sync::atomic::Ordering::SeqCst), 0);
}
