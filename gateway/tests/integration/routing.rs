//! Routing choices: the local cluster first without a peer hop, header routes pinning a
//! cluster, and weights.

use std::sync::atomic::Ordering;

use causeway_api::proto::{AppProtocol, HeaderRoute};

use crate::support::*;

const HOST: &str = "cart.shop.svc.clusterset.local";

#[tokio::test]
async fn local_cluster_first_then_header_pinned_remote() {
    let pki = Pki::new();
    let east = start_gateway(&pki, "east").await;
    let west = start_gateway(&pki, "west").await;
    let east_backend = HttpBackend::start("cart-east").await;
    let west_backend = HttpBackend::start("cart-west").await;
    let http = || vec![port(80, AppProtocol::Http)];

    let mut out = outbound("cart", http(), vec![cand("east", 0), cand("west", 1)]);
    out.header_routes = vec![HeaderRoute {
        header: "x-cluster".into(),
        value: "west".into(),
        cluster: "west".into(),
        weights: Default::default(),
    }];
    east.apply_config(snapshot(
        1,
        "east",
        vec![peer(&pki, "west", &west)],
        vec![inbound("cart", http(), &[east_backend.addr])],
        vec![out],
    ))
    .unwrap();
    west.apply_config(snapshot(
        1,
        "west",
        vec![peer(&pki, "east", &east)],
        vec![inbound("cart", http(), &[west_backend.addr])],
        vec![],
    ))
    .unwrap();

    let mut client = H1::connect(east.egress_addr).await;
    for _ in 0..5 {
        let a = client.get(HOST, "/").await;
        assert_eq!(a.headers["x-backend"], "cart-east");
        // Straight to the local endpoint: no ingress hop, so no XFCC.
        assert_eq!(a.seen("x-forwarded-client-cert"), None);
        assert_eq!(a.seen("x-causeway-source-cluster").as_deref(), Some("east"));
    }
    for _ in 0..5 {
        let a = client
            .send("GET", HOST, "/", &[("x-cluster", "west")], "")
            .await;
        assert_eq!(a.headers["x-backend"], "cart-west");
    }
    assert_eq!(west_backend.hits.load(Ordering::SeqCst), 5);
    assert_eq!(
        metric_or_zero(
            &west,
            "causeway_gateway_requests_total",
            &[("direction", "ingress"), ("code", "200")]
        ),
        5.0
    );
}

#[tokio::test]
async fn weighted_split_within_a_priority() {
    let pki = Pki::new();
    let east = start_gateway(&pki, "east").await;
    let west = start_gateway(&pki, "west").await;
    let north = start_gateway(&pki, "north").await;
    let west_backend = HttpBackend::start("cart-west").await;
    let north_backend = HttpBackend::start("cart-north").await;
    let http = || vec![port(80, AppProtocol::Http)];
    let mut w = cand("west", 1);
    w.weight = 3;
    let mut n = cand("north", 1);
    n.weight = 1;
    east.apply_config(snapshot(
        1,
        "east",
        vec![peer(&pki, "west", &west), peer(&pki, "north", &north)],
        vec![],
        vec![outbound("cart", http(), vec![w, n])],
    ))
    .unwrap();
    for (gw, backend) in [(&west, &west_backend), (&north, &north_backend)] {
        let cluster = if std::ptr::eq(gw, &west) {
            "west"
        } else {
            "north"
        };
        gw.apply_config(snapshot(
            1,
            cluster,
            vec![peer(&pki, "east", &east)],
            vec![inbound("cart", http(), &[backend.addr])],
            vec![],
        ))
        .unwrap();
    }
    let mut client = H1::connect(east.egress_addr).await;
    for _ in 0..200 {
        assert_eq!(client.get(HOST, "/").await.status, 200);
    }
    let west_hits = west_backend.hits.load(Ordering::SeqCst);
    let north_hits = north_backend.hits.load(Ordering::SeqCst);
    assert_eq!(west_hits + north_hits, 200);
    // 3:1 expected (150:50); wide bounds keep the test from flaking.
    assert!(
        (110..=185).contains(&west_hits),
        "west {west_hits} north {north_hits}"
    );
}

/// The local cluster's endpoints are tried in turn, as the ingress tries its own: with one of
/// two endpoints dead, every request reaches the live one, even a POST, which is never retried on
/// another cluster (a connection refused before the request was written is safe to move).
#[tokio::test]
async fn a_dead_local_endpoint_is_passed_over_for_the_next() {
    let pki = Pki::new();
    let east = start_gateway(&pki, "east").await;
    let live = HttpBackend::start("cart-live").await;
    let dead = dead_addr().await;
    let http = || vec![port(80, AppProtocol::Http)];
    east.apply_config(snapshot(
        1,
        "east",
        vec![],
        vec![inbound("cart", http(), &[dead, live.addr])],
        vec![outbound("cart", http(), vec![cand("east", 0)])],
    ))
    .unwrap();
    let mut client = H1::connect(east.egress_addr).await;
    for i in 0..6 {
        let a = client.send("POST", HOST, "/", &[], "").await;
        assert_eq!(a.status, 200, "request {i}: {}", a.body);
        assert_eq!(a.headers["x-backend"], "cart-live");
    }
    assert_eq!(live.hits.load(Ordering::SeqCst), 6);
}
