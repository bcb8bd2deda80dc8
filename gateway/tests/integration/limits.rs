//! Circuit breaking (503 + x-causeway-overloaded), local rate limit (429), timeout (504),
//! drained exports (503, failing over) and authorisation (403).

use std::sync::atomic::Ordering;

use causeway_api::proto::{AppProtocol, RateLimit, TrafficPolicy};

use crate::support::*;

const HOST: &str = "cart.shop.svc.clusterset.local";

#[tokio::test]
async fn circuit_breaker_answers_503_overloaded() {
    let mesh = Pair::start().await;
    let backend = HttpBackend::start("cart-west").await;
    mesh.configure(
        1,
        &[("cart", 80, AppProtocol::Http, vec![backend.addr])],
        |o, _| {
            o.policy = Some(TrafficPolicy {
                max_concurrent: 1,
                max_pending: 0,
                ..Default::default()
            });
        },
    );
    let egress = mesh.east.egress_addr;
    let held = tokio::spawn(async move { get(egress, HOST, "/hold").await });
    wait_for("the first request to reach the backend", 10, || async {
        (backend.held.load(Ordering::SeqCst) == 1).then_some(())
    })
    .await;

    let a = get(egress, HOST, "/second").await;
    assert_eq!(a.status, 503, "{}", a.body);
    assert_eq!(a.headers["x-causeway-overloaded"], "true");
    assert_eq!(
        metric_or_zero(&mesh.east, "causeway_gateway_circuit_open_total", &[]),
        1.0
    );

    backend.release();
    assert_eq!(held.await.unwrap().status, 200);
    // Capacity is back once the first response is done.
    wait_for("the breaker to close", 10, || async {
        (get(egress, HOST, "/third").await.status == 200).then_some(())
    })
    .await;
}

#[tokio::test]
async fn pending_requests_wait_for_a_slot() {
    let mesh = Pair::start().await;
    let backend = HttpBackend::start("cart-west").await;
    mesh.configure(
        1,
        &[("cart", 80, AppProtocol::Http, vec![backend.addr])],
        |o, _| {
            o.policy = Some(TrafficPolicy {
                max_concurrent: 1,
                max_pending: 1,
                ..Default::default()
            });
        },
    );
    let egress = mesh.east.egress_addr;
    let first = tokio::spawn(async move { get(egress, HOST, "/hold").await });
    wait_for("the first request held", 10, || async {
        (backend.held.load(Ordering::SeqCst) == 1).then_some(())
    })
    .await;
    let second = tokio::spawn(async move { get(egress, HOST, "/queued").await });
    // The second waits (sent before it waits, a third would take the one pending slot and
    // wait for ever behind the held first).
    let labels = [("service", "shop/cart"), ("destination_cluster", "west")];
    wait_for("the second request pending", 10, || async {
        let pending = metric_or_zero(&mesh.east, "causeway_gateway_pending_requests", &labels);
        (pending == 1.0).then_some(())
    })
    .await;
    assert_eq!(
        metric_or_zero(&mesh.east, "causeway_gateway_active_requests", &labels),
        1.0
    );
    // The third finds the one pending slot taken.
    let third = wait_for("a request refused while one waits", 10, || async {
        let a = get(egress, HOST, "/third").await;
        (a.status == 503).then_some(a)
    })
    .await;
    assert_eq!(third.headers["x-causeway-overloaded"], "true");
    backend.release();
    assert_eq!(first.await.unwrap().status, 200);
    assert_eq!(second.await.unwrap().status, 200);
    assert_eq!(
        metric_or_zero(&mesh.east, "causeway_gateway_pending_requests", &labels),
        0.0
    );
}

#[tokio::test]
async fn rate_limit_per_source_cluster_answers_429() {
    let mesh = Pair::start().await;
    let backend = HttpBackend::start("cart-west").await;
    mesh.configure(
        1,
        &[("cart", 80, AppProtocol::Http, vec![backend.addr])],
        |_, i| {
            i.rate_limit = Some(RateLimit {
                requests_per_second: 1,
                burst: 2,
            });
        },
    );
    let mut client = H1::connect(mesh.east.egress_addr).await;
    let mut codes = Vec::new();
    for _ in 0..6 {
        codes.push(client.get(HOST, "/").await.status.as_u16());
    }
    assert_eq!(&codes[..2], &[200, 200], "{codes:?}");
    assert!(codes.contains(&429), "{codes:?}");
    let limited = codes.iter().filter(|c| **c == 429).count() as f64;
    assert_eq!(
        metric_or_zero(&mesh.west, "causeway_gateway_rate_limited_total", &[]),
        limited
    );
    // 429 is not a server error: east neither retried nor ejected.
    assert_eq!(
        metric_or_zero(&mesh.east, "causeway_gateway_retries_total", &[]),
        0.0
    );
}

#[tokio::test]
async fn service_timeout_answers_504() {
    let mesh = Pair::start().await;
    let backend = HttpBackend::start("cart-west").await;
    mesh.configure(
        1,
        &[("cart", 80, AppProtocol::Http, vec![backend.addr])],
        |o, _| {
            o.policy = Some(TrafficPolicy {
                timeout_ms: 300,
                ..Default::default()
            });
        },
    );
    let a = get(mesh.east.egress_addr, HOST, "/hold").await;
    assert_eq!(a.status, 504, "{}", a.body);
    assert_eq!(a.headers["x-causeway-error"], "timeout");
    backend.release();
}

#[tokio::test]
async fn a_request_whose_caller_leaves_is_counted_as_cancelled_on_both_sides() {
    let mesh = Pair::start().await;
    let backend = HttpBackend::start("cart-west").await;
    mesh.configure(
        1,
        &[("cart", 80, AppProtocol::Http, vec![backend.addr])],
        |_, _| {},
    );
    let egress = mesh.east.egress_addr;
    let caller = tokio::spawn(async move { get(egress, HOST, "/hold").await });
    wait_for("the request to reach the backend", 10, || async {
        (backend.held.load(Ordering::SeqCst) == 1).then_some(())
    })
    .await;
    // The caller goes away while the backend holds its answer.
    caller.abort();
    for (gw, direction) in [(&mesh.east, "egress"), (&mesh.west, "ingress")] {
        wait_for(
            &format!("the {direction} to count the request"),
            10,
            || async {
                let labels = [("direction", direction), ("code", "cancelled")];
                (metric_or_zero(gw, "causeway_gateway_requests_total", &labels) == 1.0)
                    .then_some(())
            },
        )
        .await;
    }
    backend.release();
}

#[tokio::test]
async fn drained_and_unauthorised_exports_are_refused() {
    let mesh = Pair::start().await;
    let backend = HttpBackend::start("cart-west").await;
    mesh.configure(
        1,
        &[("cart", 80, AppProtocol::Http, vec![backend.addr])],
        |_, i| {
            i.drained = true;
        },
    );
    let a = get(mesh.east.egress_addr, HOST, "/").await;
    assert_eq!(a.status, 503, "{}", a.body);
    assert_eq!(a.headers["x-causeway-error"], "drained");

    mesh.configure(
        2,
        &[("cart", 80, AppProtocol::Http, vec![backend.addr])],
        |_, i| {
            i.allowed_source_clusters = vec!["north".into()];
        },
    );
    let a = get(mesh.east.egress_addr, HOST, "/").await;
    assert_eq!(a.status, 403, "{}", a.body);
    assert_eq!(a.headers["x-causeway-error"], "forbidden_cluster");

    mesh.configure(
        3,
        &[("cart", 80, AppProtocol::Http, vec![backend.addr])],
        |_, i| {
            i.allowed_source_clusters = vec!["east".into()];
            i.allowed_identities = vec![gateway_id("east")];
        },
    );
    let a = get(mesh.east.egress_addr, HOST, "/").await;
    assert_eq!(a.status, 200, "{}", a.body);
    assert_eq!(backend.hits.load(Ordering::SeqCst), 1);
}

#[tokio::test]
async fn egress_rate_limit_of_the_traffic_policy_answers_429() {
    let mesh = Pair::start().await;
    let backend = HttpBackend::start("cart-west").await;
    mesh.configure(
        1,
        &[("cart", 80, AppProtocol::Http, vec![backend.addr])],
        |o, _| {
            o.policy = Some(TrafficPolicy {
                rate_limit: Some(RateLimit {
                    requests_per_second: 1,
                    burst: 2,
                }),
                ..Default::default()
            });
        },
    );
    let mut client = H1::connect(mesh.east.egress_addr).await;
    let mut codes = Vec::new();
    for _ in 0..6 {
        codes.push(client.get(HOST, "/").await.status.as_u16());
    }
    assert_eq!(&codes[..2], &[200, 200], "{codes:?}");
    let limited = codes.iter().filter(|c| **c == 429).count();
    assert!(limited >= 1, "{codes:?}");
    // Refused at egress: west never saw them.
    assert_eq!(backend.hits.load(Ordering::SeqCst), 6 - limited);
    assert_eq!(
        metric_or_zero(&mesh.east, "causeway_gateway_rate_limited_total", &[]),
        limited as f64
    );
}
