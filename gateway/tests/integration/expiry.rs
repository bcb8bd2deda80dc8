//! Certificate expiry in view: `causeway_certificate_expiry_timestamp_seconds` for the gateway's
//! own certificate and each peer's (as seen in a handshake), and `/ready` failing with the reason
//! once the own certificate has expired.

use causeway_api::proto::AppProtocol;

use crate::support::*;

fn now() -> f64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs_f64()
}

#[tokio::test]
async fn own_and_peer_certificate_expiry_are_metrics() {
    let mesh = Pair::start().await;
    let backend = HttpBackend::start("cart-west").await;
    mesh.configure(
        1,
        &[("cart", 80, AppProtocol::Http, vec![backend.addr])],
        |_, _| {},
    );
    let a = get(mesh.east.egress_addr, "cart.shop.svc.clusterset.local", "/").await;
    assert_eq!(a.status, 200, "{}", a.body);
    let expiry = |component: &str, cluster: &str| {
        metric_or_zero(
            &mesh.east,
            "causeway_certificate_expiry_timestamp_seconds",
            &[("component", component), ("cluster", cluster)],
        )
    };
    // The test PKI's leaves live one day.
    let day = 86_400.0;
    let (own, peer) = wait_for("both expiries in the metrics", 10, || async {
        let (own, peer) = (expiry("gateway", "east"), expiry("peer_gateway", "west"));
        (own > 0.0 && peer > 0.0).then_some((own, peer))
    })
    .await;
    for t in [own, peer] {
        assert!((t - now() - day).abs() < 600.0, "{t} is not a day from now");
    }
    let ready = admin_get(&mesh.east, "/ready").await;
    assert_eq!(ready.status, 200, "{}", ready.body);
}

#[tokio::test]
async fn an_expired_certificate_makes_the_gateway_unready_and_says_why() {
    let pki = Pki::new();
    let (cert, key) = pki.ca("east").svid(&gateway_id("east"), true, true);
    let dir = tempfile::tempdir().unwrap();
    let (cert_path, key_path) = (dir.path().join("gw.pem"), dir.path().join("gw.key"));
    std::fs::write(&cert_path, cert).unwrap();
    std::fs::write(&key_path, key).unwrap();
    let mut config = gateway_config(&pki, "east");
    config.cert = cert_path;
    config.key = key_path;
    let gw = causeway_gateway::Gateway::start(config).await.unwrap();
    gw.apply_config(snapshot(1, "east", vec![], vec![], vec![]))
        .unwrap();
    let ready = admin_get(&gw, "/ready").await;
    assert_eq!(ready.status, 503, "{}", ready.body);
    assert!(ready.body.contains("certificate expired"), "{}", ready.body);
    let own = wait_for("the own expiry in the metrics", 10, || async {
        let t = metric_or_zero(
            &gw,
            "causeway_certificate_expiry_timestamp_seconds",
            &[("component", "gateway"), ("cluster", "east")],
        );
        (t > 0.0).then_some(t)
    })
    .await;
    assert!(own < now(), "{own} is not in the past");
}

#[tokio::test]
async fn an_expired_gateway_is_refused_by_its_peers_and_recovers_when_renewed() {
    let pki = Pki::new();
    // east starts with an expired certificate, in files of its own.
    let dir = tempfile::tempdir().unwrap();
    let (cert_path, key_path) = (dir.path().join("gw.pem"), dir.path().join("gw.key"));
    let east_ca = pki.ca("east");
    let write = |expired: bool| {
        let (cert, key) = east_ca.svid(&gateway_id("east"), expired, true);
        // The key first: a reload between the two writes sees a mismatch and keeps the old.
        std::fs::write(&key_path, key).unwrap();
        std::fs::write(&cert_path, cert).unwrap();
    };
    write(true);
    let mut config = gateway_config(&pki, "east");
    config.cert = cert_path.clone();
    config.key = key_path.clone();
    let east = causeway_gateway::Gateway::start(config).await.unwrap();
    let west = start_gateway(&pki, "west").await;
    let mesh = Pair { pki, east, west };
    let backend = HttpBackend::start("cart-west").await;
    mesh.configure(
        1,
        &[("cart", 80, AppProtocol::Http, vec![backend.addr])],
        |_, _| {},
    );
    let host = "cart.shop.svc.clusterset.local";
    let a = get(mesh.east.egress_addr, host, "/").await;
    assert!(a.status.is_server_error(), "{} {}", a.status, a.body);
    wait_for("west to count the expired peer", 10, || async {
        let n = metric_or_zero(
            &mesh.west,
            "causeway_gateway_peer_handshake_failures_total",
            &[("reason", "expired")],
        );
        (n >= 1.0).then_some(())
    })
    .await;
    let ready = admin_get(&mesh.east, "/ready").await;
    assert_eq!(ready.status, 503, "{}", ready.body);
    assert_eq!(backend.hits.load(std::sync::atomic::Ordering::SeqCst), 0);

    // Renewed (new files, no restart): east is ready again and its calls go through.
    write(false);
    wait_for("east to serve again", 20, || async {
        (get(mesh.east.egress_addr, host, "/").await.status == 200).then_some(())
    })
    .await;
    assert_eq!(admin_get(&mesh.east, "/ready").await.status, 200);
}
