//! Attacks by local clients on what they share with everyone: the pooled peer connection.

use std::sync::atomic::Ordering;
use std::time::Duration;

use causeway_api::proto::AppProtocol;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::support::*;

const HOST: &str = "cart.shop.svc.clusterset.local";

/// Sends a request with one header of `size` bytes over a fresh HTTP/1.1 connection and returns
/// the status line's code (0 when the gateway closed the connection without one).
async fn status_with_header_of(egress: std::net::SocketAddr, size: usize) -> u16 {
    let head = format!(
        "GET /big HTTP/1.1\r\nhost: {HOST}\r\nx-big: {}\r\nconnection: close\r\n\r\n",
        "a".repeat(size)
    );
    status_of(&raw_exchange(egress, head.as_bytes()).await)
}

#[tokio::test]
async fn oversized_request_heads_get_431_and_uploads_in_flight_complete() {
    let mesh = Pair::start().await;
    let backend = HttpBackend::start("cart-west").await;
    mesh.configure(
        1,
        &[("cart", 80, AppProtocol::Http, vec![backend.addr])],
        |_, _| {},
    );
    let egress = mesh.east.egress_addr;
    wait_for("the import to be served", 10, || async {
        (get(egress, HOST, "/warm").await.status == 200).then_some(())
    })
    .await;

    // Five uploads in flight on the pooled connection to west.
    let uploads: Vec<_> = (0..5)
        .map(|i| {
            tokio::spawn(async move {
                H1::connect(egress)
                    .await
                    .send("POST", HOST, "/hold", &[], &format!("upload {i}"))
                    .await
            })
        })
        .collect();
    wait_for("five uploads held at the backend", 10, || async {
        (backend.held.load(Ordering::SeqCst) == 5).then_some(())
    })
    .await;

    // Heads of 64 KB to 1 MB: 431 for the caller, nothing forwarded.
    let hits = backend.hits.load(Ordering::SeqCst);
    for size in [64 * 1024, 256 * 1024, 1024 * 1024] {
        let code = status_with_header_of(egress, size).await;
        assert_eq!(code, 431, "a {size}-byte header");
    }
    // Over HTTP/2 (h2c) too: 431, not REFUSED_STREAM.
    let mut h2 = H2::connect(egress).await;
    let big = "a".repeat(70 * 1024);
    let a = h2
        .send_with_header("GET", HOST, "/big", ("x-big", &big))
        .await;
    assert_eq!(a.status, 431, "{}", a.body);
    assert_eq!(a.headers["x-causeway-error"], "request_headers_too_large");
    assert!(!a.body.contains("10."), "no internal address in {}", a.body);
    assert_eq!(
        backend.hits.load(Ordering::SeqCst),
        hits,
        "nothing forwarded"
    );

    // A head just under the limit still crosses.
    let ok = H1::connect(egress)
        .await
        .send(
            "GET",
            HOST,
            "/fits",
            &[("x-fits", &"a".repeat(40 * 1024))],
            "",
        )
        .await;
    assert_eq!(ok.status, 200, "{}", ok.body);

    backend.release();
    for u in uploads {
        let a = u.await.unwrap();
        assert_eq!(a.status, 200, "an upload in flight failed: {}", a.body);
    }
    // Not the clusters' fault: nobody was ejected, and the 431s are counted as such.
    let a = get(egress, HOST, "/after").await;
    assert_eq!(a.status, 200, "{}", a.body);
}

/// Sends one GET for `cart` to `ingress` as the peer holding `files`, with `xfcc`; the answer's
/// status and body.
async fn as_peer(ingress: std::net::SocketAddr, files: &IdFiles, xfcc: &str) -> (u16, String) {
    use http_body_util::BodyExt;
    let identity = (
        std::fs::read_to_string(&files.cert).unwrap(),
        std::fs::read_to_string(&files.key).unwrap(),
    );
    let config = crate::peer_auth::client_config(Some(identity));
    let tcp = TcpStream::connect(ingress).await.unwrap();
    let tls = tokio_rustls::TlsConnector::from(config)
        .connect(
            rustls::pki_types::ServerName::try_from("peer").unwrap(),
            tcp,
        )
        .await
        .expect("the peer handshake");
    let (mut sender, conn) = hyper::client::conn::http2::handshake(
        hyper_util::rt::TokioExecutor::new(),
        hyper_util::rt::TokioIo::new(tls),
    )
    .await
    .unwrap();
    tokio::spawn(conn);
    let req = http::Request::get(format!("http://{HOST}:80/"))
        .header("x-forwarded-client-cert", xfcc)
        .body(http_body_util::Empty::<bytes::Bytes>::new())
        .unwrap();
    let resp = sender.send_request(req).await.unwrap();
    let status = resp.status().as_u16();
    let body = resp.into_body().collect().await.unwrap().to_bytes();
    (status, String::from_utf8_lossy(&body).into_owned())
}

#[tokio::test]
async fn a_peer_vouches_only_for_callers_of_its_own_trust_domain() {
    let mesh = Pair::start().await;
    let backend = HttpBackend::start("cart-west").await;
    let west_admin = format!("spiffe://{}/ns/shop/sa/admin", td("west"));
    let east_frontend = format!("spiffe://{}/ns/shop/sa/frontend", td("east"));
    let allowed = vec![west_admin.clone(), east_frontend.clone()];
    mesh.configure(
        1,
        &[("cart", 80, AppProtocol::Http, vec![backend.addr])],
        move |_, i| i.allowed_identities = allowed.clone(),
    );
    let east_gw = mesh.pki.gateway_files("east");
    let stripped = |reason: &str| {
        metric_or_zero(
            &mesh.west,
            "causeway_gateway_refused_total",
            &[("listener", "ingress"), ("reason", reason)],
        )
    };

    // east's gateway claims a caller of west's trust domain: the element is stripped, the
    // caller is east's gateway itself, which the export does not allow.
    let forged = format!("By={};URI={west_admin}", gateway_id("east"));
    let (status, body) = as_peer(mesh.west.peer_addr, &east_gw, &forged).await;
    assert_eq!(status, 403, "{body}");
    assert!(body.contains(&gateway_id("east")), "{body}");
    assert!(!body.contains(&west_admin), "{body}");
    assert_eq!(stripped("xfcc_foreign_trust_domain"), 1.0);
    assert_eq!(backend.hits.load(Ordering::SeqCst), 0);

    // A legitimate element (east vouching for east's workload) beside a forged one and junk:
    // the backend sees only the legitimate one, then the hop's own.
    let own = format!("By={};URI={east_frontend}", gateway_id("east"));
    let mixed = format!("{forged},{own},URI=junk");
    let (status, body) = as_peer(mesh.west.peer_addr, &east_gw, &mixed).await;
    assert_eq!(status, 200, "{body}");
    let seen: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(
        seen["headers"]["x-forwarded-client-cert"],
        format!("{own},By={};URI={}", gateway_id("west"), gateway_id("east")),
        "{seen}"
    );
    assert_eq!(stripped("xfcc_foreign_trust_domain"), 2.0);
    assert_eq!(stripped("xfcc_malformed"), 1.0);
    assert_eq!(backend.hits.load(Ordering::SeqCst), 1);
}

/// Writes `raw` on a fresh connection to `addr` and returns what came back.
async fn raw_exchange(addr: std::net::SocketAddr, raw: &[u8]) -> String {
    let mut s = TcpStream::connect(addr).await.unwrap();
    let _ = s.write_all(raw).await;
    let mut buf = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(10), s.read_to_end(&mut buf)).await;
    String::from_utf8_lossy(&buf).into_owned()
}

fn status_of(answer: &str) -> u16 {
    answer
        .strip_prefix("HTTP/1.1 ")
        .and_then(|r| r.get(..3))
        .and_then(|c| c.parse().ok())
        .unwrap_or(0)
}

#[tokio::test]
async fn client_errors_are_4xx_and_eject_no_cluster() {
    let mesh = Pair::start().await;
    let backend = HttpBackend::start("cart-west").await;
    let echo = TcpEcho::start("db-west").await;
    let dead = dead_addr().await;
    mesh.configure(
        1,
        &[
            ("cart", 80, AppProtocol::Http, vec![backend.addr]),
            ("db", 5432, AppProtocol::Opaque, vec![echo.addr]),
            ("gone", 80, AppProtocol::Http, vec![dead]),
        ],
        |_, _| {},
    );
    let egress = mesh.east.egress_addr;
    let ejections = || {
        metric_or_zero(&mesh.east, "causeway_gateway_ejections_total", &[])
            + metric_or_zero(&mesh.west, "causeway_gateway_ejections_total", &[])
    };

    // Each attack seven times, one more than outlier detection's default of five errors.
    for i in 0..7 {
        // A chunked body that breaks off with a malformed chunk size.
        let bad_chunk = format!(
            "POST /upload/{i} HTTP/1.1\r\nhost: {HOST}\r\ntransfer-encoding: chunked\r\n\r\n5\r\nhello\r\nzz\r\n"
        );
        let a = raw_exchange(egress, bad_chunk.as_bytes()).await;
        assert_eq!(status_of(&a) / 100, 4, "malformed chunked body: {a}");

        // Plain HTTP to an opaque TCP port.
        let to_tcp =
            "GET / HTTP/1.1\r\nhost: db.shop.svc.clusterset.local:5432\r\nconnection: close\r\n\r\n";
        let a = raw_exchange(egress, to_tcp.as_bytes()).await;
        assert_eq!(status_of(&a), 400, "HTTP to a TCP port: {a}");

        // No Host, and two of them.
        let a = raw_exchange(egress, b"GET / HTTP/1.1\r\nconnection: close\r\n\r\n").await;
        assert_eq!(status_of(&a), 400, "no Host: {a}");
        let two = format!(
            "GET / HTTP/1.1\r\nhost: {HOST}\r\nhost: db.shop.svc.clusterset.local:5432\r\nconnection: close\r\n\r\n"
        );
        let a = raw_exchange(egress, two.as_bytes()).await;
        assert_eq!(status_of(&a), 400, "two Hosts: {a}");
    }
    assert_eq!(ejections(), 0.0, "client errors ejected a cluster");
    assert_eq!(
        metric_or_zero(
            &mesh.east,
            "causeway_gateway_refused_total",
            &[("listener", "egress"), ("reason", "http_to_tcp_port")]
        ),
        7.0
    );

    // Traffic beside the attacks: HTTP and TCP still reach west.
    let a = get(egress, HOST, "/after").await;
    assert_eq!(a.status, 200, "{}", a.body);
    assert_eq!(a.headers["x-backend"], "cart-west");

    // An endpoint that is down: the caller learns the service, the cluster and the kind of
    // failure, never the endpoint's address.
    let a = get(egress, "gone.shop.svc.clusterset.local", "/").await;
    assert!(a.status.is_server_error(), "{}", a.body);
    assert!(a.body.contains("shop/gone"), "{}", a.body);
    for addr in [
        dead.to_string(),
        dead.ip().to_string(),
        mesh.west.peer_addr.to_string(),
    ] {
        assert!(
            !a.body.contains(&addr),
            "the error names {addr}: {}",
            a.body
        );
    }
}

/// A network namespace joined to this one by a veth pair: `outside` here, `inside` there.
/// Removed (with the pair) on drop.
struct Neighbour {
    ns: String,
    outside: std::net::Ipv4Addr,
}

impl Neighbour {
    /// None when this process cannot make namespaces (not root, or no `ip`).
    fn create() -> Option<Neighbour> {
        let id = std::process::id() % 60000;
        let ns = format!("cwg{id}");
        let (a, b) = (format!("cwg{id}a"), format!("cwg{id}b"));
        let (hi, lo) = ((id / 250 % 250) as u8, (id % 250) as u8);
        let outside = std::net::Ipv4Addr::new(169, 254, hi, lo & 0xfc | 1);
        let inside = std::net::Ipv4Addr::new(169, 254, hi, lo & 0xfc | 2);
        let ip = |args: &[&str]| {
            std::process::Command::new("ip")
                .args(args)
                .output()
                .is_ok_and(|o| o.status.success())
        };
        if !ip(&["netns", "add", &ns]) {
            return None;
        }
        let me = Neighbour { ns, outside };
        let ok = ip(&[
            "link", "add", &a, "type", "veth", "peer", "name", &b, "netns", &me.ns,
        ]) && ip(&["addr", "add", &format!("{outside}/30"), "dev", &a])
            && ip(&["link", "set", &a, "up"])
            && ip(&[
                "-n",
                &me.ns,
                "addr",
                "add",
                &format!("{inside}/30"),
                "dev",
                &b,
            ])
            && ip(&["-n", &me.ns, "link", "set", &b, "up"]);
        ok.then_some(me)
    }

    /// The HTTP status of GET `url` from inside the namespace (0: no answer).
    fn curl(&self, url: &str) -> u16 {
        let out = std::process::Command::new("ip")
            .args(["netns", "exec", &self.ns, "curl", "-s", "-o", "/dev/null"])
            .args(["-m", "5", "-w", "%{http_code}", url])
            .output()
            .expect("ip netns exec curl");
        String::from_utf8_lossy(&out.stdout)
            .trim()
            .parse()
            .unwrap_or(0)
    }
}

impl Drop for Neighbour {
    fn drop(&mut self) {
        // The veth pair goes with the namespace.
        let _ = std::process::Command::new("ip")
            .args(["netns", "del", &self.ns])
            .output();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn configuration_on_the_admin_port_answers_this_host_only() {
    let Some(neighbour) = Neighbour::create() else {
        eprintln!("SKIPPED: needs root and `ip` to make a network namespace");
        return;
    };
    let pki = Pki::new();
    let mut config = gateway_config(&pki, "east");
    config.admin_listen = "0.0.0.0:0".parse().unwrap();
    let gw = causeway_gateway::Gateway::start(config).await.unwrap();
    gw.apply_config(snapshot(1, "east", vec![], vec![], vec![]))
        .unwrap();
    let port = gw.admin_addr.port();
    let from_neighbour = |path: &str| {
        let url = format!("http://{}:{port}{path}", neighbour.outside);
        let n = &neighbour;
        move || n.curl(&url)
    };
    // From another host: metrics and readiness yes, configuration no.
    let (metrics, ready, dump, peers) = (
        tokio::task::block_in_place(from_neighbour("/metrics")),
        tokio::task::block_in_place(from_neighbour("/ready")),
        tokio::task::block_in_place(from_neighbour("/config_dump")),
        tokio::task::block_in_place(from_neighbour("/peers")),
    );
    assert_eq!((metrics, ready), (200, 200));
    assert_eq!((dump, peers), (403, 403));
    assert_eq!(
        metric_or_zero(
            &gw,
            "causeway_gateway_refused_total",
            &[("listener", "admin"), ("reason", "not_local")]
        ),
        2.0
    );
    // From this host, on loopback and on the address the neighbour used: configuration yes.
    let local = format!("127.0.0.1:{port}").parse().unwrap();
    assert_eq!(get(local, "x", "/config_dump").await.status, 200);
    let same_host = std::net::SocketAddr::new(neighbour.outside.into(), port);
    assert_eq!(get(same_host, "x", "/peers").await.status, 200);
}

/// A TLS handshake that stalls is closed after the one `tls_handshake_timeout_ms`, at the peer
/// listener and at the egress alike, and counted with reason `timeout`.
#[tokio::test]
async fn a_stalled_tls_handshake_is_closed_after_the_handshake_timeout_on_every_listener() {
    let pki = Pki::new();
    let mut cfg = gateway_config(&pki, "east");
    cfg.tls_handshake_timeout_ms = 300;
    let gw = causeway_gateway::Gateway::start(cfg).await.unwrap();
    for (addr, metric) in [
        (
            gw.peer_addr,
            "causeway_gateway_peer_handshake_failures_total",
        ),
        (
            gw.egress_addr,
            "causeway_gateway_client_handshake_failures_total",
        ),
    ] {
        let mut s = TcpStream::connect(addr).await.unwrap();
        // The first bytes of a ClientHello record, then nothing.
        s.write_all(&[0x16, 0x03, 0x01]).await.unwrap();
        let start = std::time::Instant::now();
        assert!(
            closed_within(&mut s, 5).await,
            "{metric}: the stalled handshake is still open"
        );
        let waited = start.elapsed();
        assert!(
            waited >= Duration::from_millis(250),
            "{metric}: closed after {waited:?}, before the timeout"
        );
        wait_for(&format!("{metric} counted"), 5, || async {
            (metric_or_zero(&gw, metric, &[("reason", "timeout")]) == 1.0).then_some(())
        })
        .await;
    }
}
