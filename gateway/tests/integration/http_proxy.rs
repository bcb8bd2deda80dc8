//! HTTP/1.1 and HTTP/2 through two gateways; caller identity headers; 404 for unknown names.

use causeway_api::proto::AppProtocol;

use crate::support::*;

const HOST: &str = "cart.shop.svc.clusterset.local";

#[tokio::test]
async fn http1_through_two_gateways_with_xfcc_and_traceparent() {
    let mesh = Pair::start().await;
    let backend = HttpBackend::start("cart-west").await;
    mesh.configure(
        1,
        &[("cart", 80, AppProtocol::Http, vec![backend.addr])],
        |_, _| {},
    );

    let mut client = H1::connect(mesh.east.egress_addr).await;
    let trace = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
    let forged = "By=spiffe://evil/x;URI=spiffe://evil/ns/a/sa/admin";
    let a = client
        .send(
            "POST",
            &format!("{HOST}:80"),
            "/orders?id=7",
            &[
                ("traceparent", trace),
                ("x-forwarded-client-cert", forged),
                ("x-causeway-source-cluster", "north"),
            ],
            "hello",
        )
        .await;
    assert_eq!(a.status, 200, "{}", a.body);
    let j = a.json();
    assert_eq!(j["backend"], "cart-west");
    assert_eq!(j["method"], "POST");
    assert_eq!(j["path"], "/orders");
    assert_eq!(j["body"], "hello");
    assert_eq!(a.headers["x-backend"], "cart-west");
    // traceparent untouched; the forged XFCC and source cluster replaced by what TLS proved.
    assert_eq!(a.seen("traceparent").as_deref(), Some(trace));
    assert_eq!(
        a.seen("x-forwarded-client-cert").unwrap(),
        format!("By={};URI={}", gateway_id("west"), gateway_id("east"))
    );
    assert_eq!(a.seen("x-causeway-source-cluster").as_deref(), Some("east"));
    assert_eq!(
        a.seen("host").as_deref(),
        Some("cart.shop.svc.clusterset.local:80")
    );

    // The same connection again (keep-alive), and a Host without a port.
    let a = client.get(HOST, "/again").await;
    assert_eq!(a.status, 200);
    assert_eq!(a.json()["path"], "/again");

    let eg = metric_or_zero(
        &mesh.east,
        "causeway_gateway_requests_total",
        &[
            ("direction", "egress"),
            ("service", "shop/cart"),
            ("source_cluster", "east"),
            ("destination_cluster", "west"),
            ("code", "200"),
        ],
    );
    assert_eq!(eg, 2.0);
    let ing = metric_or_zero(
        &mesh.west,
        "causeway_gateway_requests_total",
        &[
            ("direction", "ingress"),
            ("source_cluster", "east"),
            ("code", "200"),
        ],
    );
    assert_eq!(ing, 2.0);
}

#[tokio::test]
async fn http2_prior_knowledge_through_two_gateways() {
    let mesh = Pair::start().await;
    let backend = HttpBackend::start("cart-west").await;
    mesh.configure(
        1,
        &[("cart", 80, AppProtocol::Http, vec![backend.addr])],
        |_, _| {},
    );

    let mut client = H2::connect(mesh.east.egress_addr).await;
    let mut tasks = Vec::new();
    for i in 0..20 {
        let mut c = client.clone_sender();
        tasks.push(tokio::spawn(async move {
            c.send("PUT", &format!("{HOST}:80"), &format!("/item/{i}"), "x")
                .await
        }));
    }
    for t in tasks {
        let a = t.await.unwrap();
        assert_eq!(a.status, 200, "{}", a.body);
        assert_eq!(a.json()["backend"], "cart-west");
    }
    let a = client.send("GET", HOST, "/h2", "").await;
    assert_eq!(a.status, 200);
    // Plain HTTP port: the ingress re-originates HTTP/1.1 to the backend.
    assert_eq!(a.json()["version"], "HTTP/1.1");
}

#[tokio::test]
async fn unknown_service_is_404() {
    let mesh = Pair::start().await;
    let backend = HttpBackend::start("cart-west").await;
    mesh.configure(
        1,
        &[("cart", 80, AppProtocol::Http, vec![backend.addr])],
        |_, _| {},
    );

    let a = get(mesh.east.egress_addr, "nope.shop.svc.clusterset.local", "/").await;
    assert_eq!(a.status, 404);
    assert_eq!(a.headers["x-causeway-error"], "unknown_service");
    let a = get(mesh.east.egress_addr, "example.com", "/").await;
    assert_eq!(a.status, 404);
    let a = get(mesh.east.egress_addr, &format!("{HOST}:81"), "/").await;
    assert_eq!(a.status, 404);
    assert_eq!(backend.hits.load(std::sync::atomic::Ordering::SeqCst), 0);
}
