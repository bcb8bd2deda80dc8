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

/// A backend that switches any request with `Upgrade: echo` to a byte echo, after a `101` that
/// names the request's path and source cluster.
async fn upgrade_echo_backend() -> (std::net::SocketAddr, tokio::task::JoinHandle<()>) {
    use hyper::service::service_fn;
    use hyper_util::rt::TokioIo;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let task = tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                return;
            };
            tokio::spawn(async move {
                let svc = service_fn(|mut req: http::Request<hyper::body::Incoming>| async move {
                    let wants = req.headers().get("upgrade").map(|v| v.as_bytes().to_vec());
                    if wants.as_deref() != Some(b"echo") {
                        return Ok::<_, std::convert::Infallible>(
                            http::Response::builder()
                                .status(426)
                                .body(http_body_util::Empty::<bytes::Bytes>::new())
                                .unwrap(),
                        );
                    }
                    let source = req
                        .headers()
                        .get("x-causeway-source-cluster")
                        .and_then(|v| v.to_str().ok())
                        .unwrap_or("")
                        .to_string();
                    let path = req.uri().path().to_string();
                    let on = hyper::upgrade::on(&mut req);
                    tokio::spawn(async move {
                        if let Ok(up) = on.await {
                            let mut io = TokioIo::new(up);
                            let (mut r, mut w) = tokio::io::split(&mut io);
                            let _ = tokio::io::copy(&mut r, &mut w).await;
                        }
                    });
                    Ok(http::Response::builder()
                        .status(101)
                        .header("connection", "upgrade")
                        .header("upgrade", "echo")
                        .header("x-path", path)
                        .header("x-source", source)
                        .body(http_body_util::Empty::<bytes::Bytes>::new())
                        .unwrap())
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), svc)
                    .with_upgrades()
                    .await;
            });
        }
    });
    (addr, task)
}

#[tokio::test]
async fn websocket_style_upgrades_cross_the_gateways() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mesh = Pair::start().await;
    let (backend, _task) = upgrade_echo_backend().await;
    mesh.configure(
        1,
        &[("cart", 80, AppProtocol::Http, vec![backend])],
        |_, _| {},
    );

    let mut s = tokio::net::TcpStream::connect(mesh.east.egress_addr)
        .await
        .unwrap();
    s.write_all(
        format!(
            "GET /live?x=1 HTTP/1.1\r\nHost: {HOST}\r\nConnection: Upgrade\r\nUpgrade: echo\r\n\
             x-causeway-source-cluster: forged\r\n\r\n"
        )
        .as_bytes(),
    )
    .await
    .unwrap();
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        assert_eq!(s.read(&mut byte).await.unwrap(), 1, "{head:?}");
        head.push(byte[0]);
    }
    let head = String::from_utf8(head).unwrap().to_ascii_lowercase();
    assert!(head.starts_with("http/1.1 101"), "{head}");
    assert!(head.contains("x-path: /live"), "{head}");
    assert!(head.contains("x-source: east"), "{head}");
    for msg in ["hello", "over the gateways"] {
        s.write_all(msg.as_bytes()).await.unwrap();
        let mut buf = vec![0u8; msg.len()];
        s.read_exact(&mut buf).await.unwrap();
        assert_eq!(buf, msg.as_bytes());
    }

    // A backend that refuses the upgrade answers as any request would.
    let mut client = H1::connect(mesh.east.egress_addr).await;
    let a = client
        .send(
            "GET",
            HOST,
            "/",
            &[("connection", "upgrade"), ("upgrade", "websocket")],
            "",
        )
        .await;
    assert_eq!(a.status, 426, "{}", a.body);
}

#[tokio::test]
async fn silent_and_slow_clients_are_closed_after_the_header_timeout() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let pki = Pki::new();
    let mut cfg = gateway_config(&pki, "east");
    cfg.client_header_timeout_ms = 300;
    let east = causeway_gateway::Gateway::start(cfg).await.unwrap();

    // Says nothing at all; then sends half a request head and stops.
    let mut silent = tokio::net::TcpStream::connect(east.egress_addr)
        .await
        .unwrap();
    let mut slow = tokio::net::TcpStream::connect(east.egress_addr)
        .await
        .unwrap();
    slow.write_all(b"GET / HTTP/1.1\r\nHost: cart.shop.svc.clusterset.local\r\n")
        .await
        .unwrap();
    for (what, s) in [("silent", &mut silent), ("slow", &mut slow)] {
        let mut buf = Vec::new();
        let read =
            tokio::time::timeout(std::time::Duration::from_secs(10), s.read_to_end(&mut buf))
                .await
                .unwrap_or_else(|_| panic!("the {what} client was not closed"));
        // Closed, with nothing or with a 408 first.
        assert!(read.is_ok() || !buf.is_empty(), "{what}: {read:?}");
        let text = String::from_utf8_lossy(&buf);
        assert!(
            text.is_empty() || text.starts_with("HTTP/1.1 408"),
            "{what}: {text}"
        );
    }
    // A client that does speak is served (404: no config for that name).
    let a = get(east.egress_addr, "cart.shop.svc.clusterset.local", "/").await;
    assert!(a.status == 404 || a.status == 503, "{}", a.status);
}
