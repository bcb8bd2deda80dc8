//! Failover across clusters: when every endpoint of the first cluster fails, idempotent
//! requests are retried on the next cluster and the client sees no failure; outlier
//! detection then ejects the failing cluster.

use std::sync::atomic::Ordering;

use causeway_api::proto::AppProtocol;
use causeway_gateway::RunningGateway;

use crate::support::*;

struct Three {
    pki: Pki,
    east: RunningGateway,
    west: RunningGateway,
    north: RunningGateway,
}

/// east imports `cart` from west (priority 1) and north (priority 2).
async fn three(
    west_endpoints: Vec<std::net::SocketAddr>,
    north_endpoints: Vec<std::net::SocketAddr>,
) -> Three {
    let pki = Pki::new();
    let east = start_gateway(&pki, "east").await;
    let west = start_gateway(&pki, "west").await;
    let north = start_gateway(&pki, "north").await;
    let http = || vec![port(80, AppProtocol::Http)];
    east.apply_config(snapshot(
        1,
        "east",
        vec![peer(&pki, "west", &west), peer(&pki, "north", &north)],
        vec![],
        vec![outbound(
            "cart",
            http(),
            vec![cand("west", 1), cand("north", 2)],
        )],
    ))
    .unwrap();
    west.apply_config(snapshot(
        1,
        "west",
        vec![peer(&pki, "east", &east)],
        vec![inbound("cart", http(), &west_endpoints)],
        vec![],
    ))
    .unwrap();
    north
        .apply_config(snapshot(
            1,
            "north",
            vec![peer(&pki, "east", &east)],
            vec![inbound("cart", http(), &north_endpoints)],
            vec![],
        ))
        .unwrap();
    Three {
        pki,
        east,
        west,
        north,
    }
}

async fn hundred_gets_all_from_north(east: &RunningGateway) {
    let mut client = H1::connect(east.egress_addr).await;
    for i in 0..100 {
        let a = client
            .get("cart.shop.svc.clusterset.local", &format!("/item/{i}"))
            .await;
        assert_eq!(a.status, 200, "request {i}: {}", a.body);
        assert_eq!(a.headers["x-backend"], "cart-north", "request {i}");
        // The egress names the cluster that answered (the backend does not).
        assert_eq!(a.headers["x-causeway-cluster"], "north", "request {i}");
    }
}

#[tokio::test]
async fn unreachable_endpoints_fail_over_with_no_client_error() {
    let north_backend = HttpBackend::start("cart-north").await;
    let m = three(
        vec![dead_addr().await, dead_addr().await],
        vec![north_backend.addr],
    )
    .await;
    hundred_gets_all_from_north(&m.east).await;

    let retries = metric_or_zero(&m.east, "causeway_gateway_retries_total", &[]);
    let ejections = metric_or_zero(&m.east, "causeway_gateway_ejections_total", &[]);
    assert!(retries >= 1.0, "retries {retries}");
    assert!(ejections >= 1.0, "ejections {ejections}");
    // After the ejection, requests go straight to north: far fewer retries than requests.
    assert!(retries < 20.0, "retries {retries}");
    assert_eq!(north_backend.hits.load(Ordering::SeqCst), 100);
    let _ = (&m.pki, &m.west, &m.north);
}

#[tokio::test]
async fn failing_endpoints_fail_over_with_no_client_error() {
    let west_backend = HttpBackend::start_with("cart-west", Some(503)).await;
    let north_backend = HttpBackend::start("cart-north").await;
    let m = three(vec![west_backend.addr], vec![north_backend.addr]).await;
    hundred_gets_all_from_north(&m.east).await;
    assert!(metric_or_zero(&m.east, "causeway_gateway_ejections_total", &[]) >= 1.0);
    // West saw only the requests before its ejection (5 consecutive 5xx by default).
    let west_hits = west_backend.hits.load(Ordering::SeqCst);
    assert!((1..=10).contains(&west_hits), "west hits {west_hits}");
}

#[tokio::test]
async fn a_down_peer_gateway_is_skipped_after_probes_miss() {
    let north_backend = HttpBackend::start("cart-north").await;
    let west_backend = HttpBackend::start("cart-west").await;
    let m = three(vec![west_backend.addr], vec![north_backend.addr]).await;
    let a = get(m.east.egress_addr, "cart.shop.svc.clusterset.local", "/").await;
    assert_eq!(a.headers["x-backend"], "cart-west");
    assert_eq!(a.headers["x-causeway-cluster"], "west");

    let Three { east, west, .. } = m;
    west.shutdown().await;
    wait_for("east marks west down", 10, || async {
        let up = metric(
            &east.metrics_text(),
            "causeway_gateway_peer_up",
            &[("cluster", "west")],
        );
        (up == Some(0.0)).then_some(())
    })
    .await;
    // Non-idempotent requests too: west is not even tried.
    let mut client = H1::connect(east.egress_addr).await;
    for _ in 0..10 {
        let a = client
            .send(
                "POST",
                "cart.shop.svc.clusterset.local",
                "/order",
                &[],
                "{}",
            )
            .await;
        assert_eq!(a.status, 200, "{}", a.body);
        assert_eq!(a.headers["x-backend"], "cart-north");
    }
    let peers = admin_get(&east, "/peers").await.json();
    let west_status = peers
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["cluster"] == "west")
        .unwrap();
    assert_eq!(west_status["up"], false);
}

/// east imports `cart` from west (priority 1, reached through a [`Path`] that can be cut) and
/// north (priority 2); west's backend holds every request until released.
struct DeadPath {
    east: RunningGateway,
    path: Path,
    west_backend: HttpBackend,
    _rest: (Pki, RunningGateway, RunningGateway, HttpBackend),
}

async fn dead_path_mesh(tweak: impl FnOnce(&mut causeway_gateway::Config)) -> DeadPath {
    let west_backend = HttpBackend::start_holding("cart-west").await;
    let north_backend = HttpBackend::start("cart-north").await;
    let pki = Pki::new();
    let mut config = gateway_config(&pki, "east");
    tweak(&mut config);
    let east = causeway_gateway::Gateway::start(config).await.unwrap();
    let west = start_gateway(&pki, "west").await;
    let north = start_gateway(&pki, "north").await;
    let path = Path::start(west.peer_addr).await;
    let http = || vec![port(80, AppProtocol::Http)];
    east.apply_config(snapshot(
        1,
        "east",
        vec![
            peer_at(&pki, "west", &path.addr.to_string()),
            peer(&pki, "north", &north),
        ],
        vec![],
        vec![outbound(
            "cart",
            http(),
            vec![cand("west", 1), cand("north", 2)],
        )],
    ))
    .unwrap();
    for (gw, cluster, backend) in [
        (&west, "west", &west_backend),
        (&north, "north", &north_backend),
    ] {
        gw.apply_config(snapshot(
            1,
            cluster,
            vec![peer(&pki, "east", &east)],
            vec![inbound("cart", http(), &[backend.addr])],
            vec![],
        ))
        .unwrap();
    }
    DeadPath {
        east,
        path,
        west_backend,
        _rest: (pki, west, north, north_backend),
    }
}

impl DeadPath {
    /// Sends `GET /in-flight` in the background and waits until west's backend holds it.
    async fn request_held_by_west(&self) -> tokio::task::JoinHandle<Answer> {
        let egress = self.east.egress_addr;
        let request = tokio::spawn(async move {
            get(egress, "cart.shop.svc.clusterset.local", "/in-flight").await
        });
        wait_for("the request held by west", 10, || async {
            (self.west_backend.held.load(Ordering::SeqCst) == 1).then_some(())
        })
        .await;
        request
    }

    async fn answer(&self, request: tokio::task::JoinHandle<Answer>) -> Answer {
        match tokio::time::timeout(std::time::Duration::from_secs(10), request).await {
            Ok(a) => a.unwrap(),
            Err(_) => panic!(
                "the request did not move off the dead path; east's metrics:\n{}",
                self.east.metrics_text()
            ),
        }
    }

    fn peer_up(&self, cluster: &str) -> Option<f64> {
        metric(
            &self.east.metrics_text(),
            "causeway_gateway_peer_up",
            &[("cluster", cluster)],
        )
    }
}

#[tokio::test]
async fn in_flight_requests_leave_a_dead_path_before_it_is_marked_down() {
    // West is never marked down here (1,000 misses needed): the request must move because a
    // probe asked for while it waited went unanswered, not because the peer went down.
    let m = dead_path_mesh(|c| c.probe_misses = 1000).await;
    let request = m.request_held_by_west().await;
    m.path.cut();
    let a = m.answer(request).await;
    assert_eq!(a.status, 200, "{}", a.body);
    assert_eq!(a.headers["x-backend"], "cart-north");
    let text = m.east.metrics_text();
    assert_eq!(
        metric(&text, "causeway_gateway_path_lost_total", &[]),
        Some(1.0)
    );
    assert_eq!(m.peer_up("west"), Some(1.0), "west is up, only suspect");
    // While west stays suspect, new requests go to north first.
    for _ in 0..5 {
        let a = get(m.east.egress_addr, "cart.shop.svc.clusterset.local", "/").await;
        assert_eq!(a.status, 200, "{}", a.body);
        assert_eq!(a.headers["x-backend"], "cart-north");
    }
}

#[tokio::test]
async fn a_slow_backend_on_a_sound_path_is_waited_for() {
    // Probes with generous timeouts, so that a loaded test machine does not miss one.
    let m = dead_path_mesh(|c| {
        c.probe_interval_ms = 2000;
        c.path_check_timeout_ms = 1000;
    })
    .await;
    let request = m.request_held_by_west().await;
    // The request waited long enough for east to check the path: the probe was answered.
    wait_for("a path check of west answered", 10, || async {
        let n = metric(
            &m.east.metrics_text(),
            "causeway_gateway_path_checks_total",
            &[("cluster", "west"), ("result", "answered")],
        )?;
        (n >= 1.0).then_some(())
    })
    .await;
    m.west_backend.release();
    let a = m.answer(request).await;
    assert_eq!(a.status, 200, "{}", a.body);
    assert_eq!(
        a.headers["x-backend"], "cart-west",
        "the slow answer is the one"
    );
    assert_eq!(
        metric_or_zero(&m.east, "causeway_gateway_path_lost_total", &[]),
        0.0
    );
}

#[tokio::test]
async fn in_flight_requests_fail_fast_when_a_dead_path_is_marked_down() {
    // Without path checks, the requests in flight wait until the probes mark west down; the
    // gateway then drops the connection and the request is retried on north.
    let m = dead_path_mesh(|c| c.path_check_after_ms = 0).await;
    let request = m.request_held_by_west().await;
    m.path.cut();
    let a = m.answer(request).await;
    assert_eq!(a.status, 200, "{}", a.body);
    assert_eq!(a.headers["x-backend"], "cart-north");
    assert_eq!(m.peer_up("west"), Some(0.0));
}

#[tokio::test]
async fn shutdown_lets_requests_in_flight_finish() {
    let mesh = Pair::start().await;
    let backend = HttpBackend::start("cart-west").await;
    mesh.configure(
        1,
        &[("cart", 80, AppProtocol::Http, vec![backend.addr])],
        |_, _| {},
    );
    let Pair {
        pki: _pki,
        east,
        west,
    } = mesh;
    let egress = east.egress_addr;
    let request =
        tokio::spawn(async move { get(egress, "cart.shop.svc.clusterset.local", "/hold").await });
    wait_for("the request held by the backend", 10, || async {
        (backend.held.load(Ordering::SeqCst) == 1).then_some(())
    })
    .await;
    // west drains: it stops accepting at once, but the request in flight completes.
    let peer_addr = west.peer_addr;
    let stopping = tokio::spawn(west.shutdown());
    wait_for("west to stop accepting", 10, || async {
        tokio::net::TcpStream::connect(peer_addr)
            .await
            .is_err()
            .then_some(())
    })
    .await;
    backend.release();
    let a = request.await.unwrap();
    assert_eq!(a.status, 200, "{}", a.body);
    tokio::time::timeout(std::time::Duration::from_secs(10), stopping)
        .await
        .expect("shutdown ends once the connections are drained")
        .unwrap();
}
