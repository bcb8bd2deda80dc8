//! Opaque TCP through two gateways: CONNECT on the egress listener and by ClusterSetIP.

use causeway_api::proto::{self, AppProtocol};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::support::*;

async fn read_exact_str(s: &mut TcpStream, n: usize) -> String {
    let mut buf = vec![0u8; n];
    s.read_exact(&mut buf).await.unwrap();
    String::from_utf8(buf).unwrap()
}

#[tokio::test]
async fn tcp_via_connect_through_two_gateways() {
    let mesh = Pair::start().await;
    let echo = TcpEcho::start("west-echo").await;
    mesh.configure(
        1,
        &[("db", 5432, AppProtocol::Opaque, vec![echo.addr])],
        |_, _| {},
    );

    let mut s = TcpStream::connect(mesh.east.egress_addr).await.unwrap();
    s.write_all(
        b"CONNECT db.shop.svc.clusterset.local:5432 HTTP/1.1\r\nHost: db.shop.svc.clusterset.local:5432\r\n\r\n",
    )
    .await
    .unwrap();
    let mut head = Vec::new();
    while !head.ends_with(b"\r\n\r\n") {
        let mut b = [0u8; 1];
        s.read_exact(&mut b).await.unwrap();
        head.push(b[0]);
    }
    let head = String::from_utf8(head).unwrap();
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    assert_eq!(read_exact_str(&mut s, 10).await, "west-echo:");
    for msg in ["hello", "across the mesh"] {
        s.write_all(msg.as_bytes()).await.unwrap();
        assert_eq!(read_exact_str(&mut s, msg.len()).await, msg);
    }
    drop(s);
    wait_for("the TCP connection counted at ingress", 10, || async {
        (metric_or_zero(
            &mesh.west,
            "causeway_gateway_requests_total",
            &[
                ("direction", "ingress"),
                ("service", "shop/db"),
                ("code", "tcp"),
            ],
        ) == 1.0)
            .then_some(())
    })
    .await;
}

#[tokio::test]
async fn tcp_by_cluster_set_ip() {
    let pki = Pki::new();
    // The service port must be free on 127.0.0.1 for the VIP listener: take one the kernel
    // gives, then release it. 127.0.0.1 stands in for a ClusterSetIP routed here by AnyIP.
    let svc_port = dead_addr().await.port();
    let mut cfg = gateway_config(&pki, "east");
    cfg.vip_range = Some("127.0.0.0/8".parse().unwrap());
    cfg.vip_listen_ip = "127.0.0.1".parse().unwrap();
    let east = causeway_gateway::Gateway::start(cfg).await.unwrap();
    let west = start_gateway(&pki, "west").await;
    let echo = TcpEcho::start("west-echo").await;

    let mut out = outbound(
        "db",
        vec![port(svc_port, AppProtocol::Opaque)],
        vec![cand("west", 1)],
    );
    out.vip = "127.0.0.1".into();
    east.apply_config(snapshot(
        1,
        "east",
        vec![peer(&pki, "west", &west)],
        vec![],
        vec![out],
    ))
    .unwrap();
    west.apply_config(snapshot(
        1,
        "west",
        vec![peer(&pki, "east", &east)],
        vec![inbound(
            "db",
            vec![port(svc_port, AppProtocol::Opaque)],
            &[echo.addr],
        )],
        vec![],
    ))
    .unwrap();

    let mut s = wait_for("the VIP listener", 10, || async {
        TcpStream::connect(("127.0.0.1", svc_port)).await.ok()
    })
    .await;
    assert_eq!(read_exact_str(&mut s, 10).await, "west-echo:");
    s.write_all(b"ping").await.unwrap();
    assert_eq!(read_exact_str(&mut s, 4).await, "ping");
}

#[tokio::test]
async fn http_by_cluster_set_ip_ignores_the_host_header() {
    let pki = Pki::new();
    let svc_port = dead_addr().await.port();
    let mut cfg = gateway_config(&pki, "east");
    cfg.vip_range = Some("127.0.0.0/8".parse().unwrap());
    cfg.vip_listen_ip = "127.0.0.1".parse().unwrap();
    let east = causeway_gateway::Gateway::start(cfg).await.unwrap();
    let west = start_gateway(&pki, "west").await;
    let backend = HttpBackend::start("web-west").await;

    let mut out = outbound(
        "web",
        vec![port(svc_port, AppProtocol::Http)],
        vec![cand("west", 1)],
    );
    out.vip = "127.0.0.1".into();
    east.apply_config(snapshot(
        1,
        "east",
        vec![peer(&pki, "west", &west)],
        vec![],
        vec![out],
    ))
    .unwrap();
    west.apply_config(snapshot(
        1,
        "west",
        vec![peer(&pki, "east", &east)],
        vec![inbound(
            "web",
            vec![port(svc_port, AppProtocol::Http)],
            &[backend.addr],
        )],
        vec![],
    ))
    .unwrap();

    let vip: std::net::SocketAddr = ([127, 0, 0, 1], svc_port).into();
    wait_for("the VIP listener", 10, || async {
        TcpStream::connect(vip).await.ok()
    })
    .await;
    // A client that resolved the name to the ClusterSetIP sends whatever Host it likes.
    let a = get(vip, "web.example", "/by-vip").await;
    assert_eq!(a.status, 200, "{}", a.body);
    assert_eq!(a.json()["backend"], "web-west");
    assert_eq!(a.json()["path"], "/by-vip");
    assert_eq!(
        a.seen("host"),
        Some(format!("web.shop.svc.clusterset.local:{svc_port}"))
    );
}

#[tokio::test]
async fn gateway_ports_route_by_the_port_they_arrive_on() {
    // Kubernetes mode: no VIP range; a derived Service's traffic reaches the gateway pod on the
    // gateway port kept for the import port, with the pod's own address as destination. Two
    // imports share service port 5432 (opaque TCP) and one HTTP import has port 80: each gets a
    // gateway port of its own.
    let pki = Pki::new();
    let (db_gp, other_gp, web_gp) = (
        dead_addr().await.port(),
        dead_addr().await.port(),
        dead_addr().await.port(),
    );
    let mut cfg = gateway_config(&pki, "east");
    cfg.vip_listen_ip = "127.0.0.1".parse().unwrap();
    let east = causeway_gateway::Gateway::start(cfg).await.unwrap();
    let west = start_gateway(&pki, "west").await;
    let db = TcpEcho::start("west-db").await;
    let other = TcpEcho::start("west-xx").await;
    let web = HttpBackend::start("web-west").await;

    let with_gateway_port = |p: u16, app: AppProtocol, gp: u16| causeway_api::proto::Port {
        gateway_port: u32::from(gp),
        ..port(p, app)
    };
    east.apply_config(snapshot(
        1,
        "east",
        vec![peer(&pki, "west", &west)],
        vec![],
        vec![
            outbound(
                "db",
                vec![with_gateway_port(5432, AppProtocol::Opaque, db_gp)],
                vec![cand("west", 1)],
            ),
            outbound(
                "other",
                vec![with_gateway_port(5432, AppProtocol::Opaque, other_gp)],
                vec![cand("west", 1)],
            ),
            outbound(
                "web",
                vec![with_gateway_port(80, AppProtocol::Http, web_gp)],
                vec![cand("west", 1)],
            ),
        ],
    ))
    .unwrap();
    west.apply_config(snapshot(
        1,
        "west",
        vec![peer(&pki, "east", &east)],
        vec![
            inbound("db", vec![port(5432, AppProtocol::Opaque)], &[db.addr]),
            inbound(
                "other",
                vec![port(5432, AppProtocol::Opaque)],
                &[other.addr],
            ),
            inbound("web", vec![port(80, AppProtocol::Http)], &[web.addr]),
        ],
        vec![],
    ))
    .unwrap();

    for (gp, greeting) in [(db_gp, "west-db:"), (other_gp, "west-xx:")] {
        let mut s = wait_for("the gateway port listener", 10, || async {
            TcpStream::connect(("127.0.0.1", gp)).await.ok()
        })
        .await;
        assert_eq!(read_exact_str(&mut s, greeting.len()).await, greeting);
        s.write_all(b"ping").await.unwrap();
        assert_eq!(read_exact_str(&mut s, 4).await, "ping");
    }
    let addr: std::net::SocketAddr = ([127, 0, 0, 1], web_gp).into();
    wait_for("the HTTP gateway port", 10, || async {
        TcpStream::connect(addr).await.ok()
    })
    .await;
    // The Host of the derived Service's name, which the egress port could not route.
    let a = get(addr, "web-clusterset.shop.svc.cluster.local", "/k8s").await;
    assert_eq!(a.status, 200, "{}", a.body);
    assert_eq!(a.json()["backend"], "web-west");
    assert_eq!(
        a.seen("host"),
        Some("web.shop.svc.clusterset.local:80".into())
    );

    // A config that gives two import ports one gateway port is refused.
    let clash = snapshot(
        2,
        "east",
        vec![peer(&pki, "west", &west)],
        vec![],
        vec![
            outbound(
                "db",
                vec![with_gateway_port(5432, AppProtocol::Opaque, db_gp)],
                vec![cand("west", 1)],
            ),
            outbound(
                "other",
                vec![with_gateway_port(5432, AppProtocol::Opaque, db_gp)],
                vec![cand("west", 1)],
            ),
        ],
    );
    let err = east.apply_config(clash).unwrap_err();
    assert!(
        err.to_string().contains(&format!("gateway port {db_gp}")),
        "{err}"
    );
}

/// A headless import's per-endpoint addresses (issue "Headless across networks"): each address
/// leads, through west's gateway, to exactly the endpoint it was given for, over HTTP and TCP
/// alike, whatever the Host; the peer's ingress sends it to that endpoint only.
#[tokio::test]
async fn each_pinned_endpoint_address_reaches_exactly_its_endpoint() {
    let pki = Pki::new();
    let (http_port, tcp_port) = (dead_addr().await.port(), dead_addr().await.port());
    let mut cfg = gateway_config(&pki, "east");
    cfg.vip_range = Some("127.0.0.0/8".parse().unwrap());
    // Every 127/8 address arrives here; the destination address picks the endpoint.
    cfg.vip_listen_ip = "0.0.0.0".parse().unwrap();
    let east = causeway_gateway::Gateway::start(cfg).await.unwrap();
    let west = start_gateway(&pki, "west").await;
    let replicas = [
        HttpBackend::start("db-0").await,
        HttpBackend::start("db-1").await,
        HttpBackend::start("db-2").await,
    ];
    let echoes = [
        TcpEcho::start("db-0").await,
        TcpEcho::start("db-1").await,
        TcpEcho::start("db-2").await,
    ];
    let named = |addrs: Vec<std::net::SocketAddr>| {
        addrs
            .iter()
            .enumerate()
            .map(|(i, a)| proto::Endpoint {
                address: a.to_string(),
                ready: true,
                hostname: format!("db-{i}"),
            })
            .collect::<Vec<_>>()
    };
    let pins = |names: &[(&str, &str)]| {
        names
            .iter()
            .map(|(vip, name)| proto::PinnedEndpoint {
                vip: vip.to_string(),
                cluster: "west".into(),
                name: name.to_string(),
                ..Default::default()
            })
            .collect::<Vec<_>>()
    };
    let mut http_out = outbound(
        "db",
        vec![port(http_port, AppProtocol::Http)],
        vec![cand("west", 1)],
    );
    http_out.endpoints = pins(&[("127.0.0.2", "db-0"), ("127.0.0.3", "db-2")]);
    let mut tcp_out = outbound(
        "dbtcp",
        vec![port(tcp_port, AppProtocol::Opaque)],
        vec![cand("west", 1)],
    );
    tcp_out.endpoints = pins(&[("127.0.0.4", "db-1")]);
    east.apply_config(snapshot(
        1,
        "east",
        vec![peer(&pki, "west", &west)],
        vec![],
        vec![http_out, tcp_out],
    ))
    .unwrap();
    let mut http_in = inbound("db", vec![port(http_port, AppProtocol::Http)], &[]);
    http_in.endpoints = named(replicas.iter().map(|r| r.addr).collect());
    let mut tcp_in = inbound("dbtcp", vec![port(tcp_port, AppProtocol::Opaque)], &[]);
    tcp_in.endpoints = named(echoes.iter().map(|e| e.addr).collect());
    west.apply_config(snapshot(
        1,
        "west",
        vec![peer(&pki, "east", &east)],
        vec![http_in, tcp_in],
        vec![],
    ))
    .unwrap();

    let db0: std::net::SocketAddr = ([127, 0, 0, 2], http_port).into();
    wait_for("the pinned listener", 10, || async {
        TcpStream::connect(db0).await.ok()
    })
    .await;
    for (vip, want) in [([127, 0, 0, 2], "db-0"), ([127, 0, 0, 3], "db-2")] {
        for i in 0..5 {
            let a = get(
                (vip, http_port).into(),
                "whatever.example",
                &format!("/{i}"),
            )
            .await;
            assert_eq!(a.status, 200, "{}", a.body);
            assert_eq!(a.json()["backend"], want, "{vip:?}: {}", a.body);
        }
    }
    for _ in 0..3 {
        let mut s = TcpStream::connect(("127.0.0.4", tcp_port)).await.unwrap();
        assert_eq!(read_exact_str(&mut s, 5).await, "db-1:");
    }
    assert_eq!(
        replicas[1].hits.load(std::sync::atomic::Ordering::SeqCst),
        0
    );
}

/// Kubernetes mode of the same: no VIP range; each remote endpoint's derived Service leads to a
/// gateway port of its own on the gateway pod, and what arrives there goes to exactly that
/// endpoint, HTTP and TCP alike.
#[tokio::test]
async fn each_pinned_endpoint_gateway_port_reaches_exactly_its_endpoint() {
    let pki = Pki::new();
    let mut gps = Vec::new();
    for _ in 0..3 {
        gps.push(dead_addr().await.port());
    }
    let mut cfg = gateway_config(&pki, "east");
    cfg.vip_listen_ip = "127.0.0.1".parse().unwrap();
    let east = causeway_gateway::Gateway::start(cfg).await.unwrap();
    let west = start_gateway(&pki, "west").await;
    let replicas = [
        HttpBackend::start("db-0").await,
        HttpBackend::start("db-1").await,
    ];
    let echo = TcpEcho::start("db-0").await;
    let pin = |name: &str, port: u16, gp: u16| proto::PinnedEndpoint {
        vip: String::new(),
        cluster: "west".into(),
        name: name.to_string(),
        gateway_ports: [(u32::from(port), u32::from(gp))].into(),
    };
    let mut http_out = outbound(
        "db",
        vec![port(80, AppProtocol::Http)],
        vec![cand("west", 1)],
    );
    http_out.endpoints = vec![pin("db-0", 80, gps[0]), pin("db-1", 80, gps[1])];
    let mut tcp_out = outbound(
        "dbtcp",
        vec![port(5432, AppProtocol::Opaque)],
        vec![cand("west", 1)],
    );
    tcp_out.endpoints = vec![pin("db-0", 5432, gps[2])];
    east.apply_config(snapshot(
        1,
        "east",
        vec![peer(&pki, "west", &west)],
        vec![],
        vec![http_out.clone(), tcp_out],
    ))
    .unwrap();
    let named = |addrs: Vec<std::net::SocketAddr>| {
        addrs
            .iter()
            .enumerate()
            .map(|(i, a)| proto::Endpoint {
                address: a.to_string(),
                ready: true,
                hostname: format!("db-{i}"),
            })
            .collect::<Vec<_>>()
    };
    let mut http_in = inbound("db", vec![port(80, AppProtocol::Http)], &[]);
    http_in.endpoints = named(replicas.iter().map(|r| r.addr).collect());
    let mut tcp_in = inbound("dbtcp", vec![port(5432, AppProtocol::Opaque)], &[]);
    tcp_in.endpoints = named(vec![echo.addr]);
    west.apply_config(snapshot(
        1,
        "west",
        vec![peer(&pki, "east", &east)],
        vec![http_in, tcp_in],
        vec![],
    ))
    .unwrap();

    for (gp, want) in [(gps[0], "db-0"), (gps[1], "db-1")] {
        let addr: std::net::SocketAddr = ([127, 0, 0, 1], gp).into();
        wait_for("the endpoint's gateway port", 10, || async {
            TcpStream::connect(addr).await.ok()
        })
        .await;
        for i in 0..5 {
            let a = get(addr, "db-0-west.demo.svc.cluster.local", &format!("/{i}")).await;
            assert_eq!(a.status, 200, "{}", a.body);
            assert_eq!(a.json()["backend"], want, "port {gp}: {}", a.body);
        }
    }
    let mut s = wait_for("the TCP endpoint's gateway port", 10, || async {
        TcpStream::connect(("127.0.0.1", gps[2])).await.ok()
    })
    .await;
    assert_eq!(read_exact_str(&mut s, 5).await, "db-0:");

    // A pinned endpoint with neither an address nor gateway ports, or one whose gateway port
    // another import holds, is refused with the reason.
    let mut bare = http_out.clone();
    bare.endpoints[0].gateway_ports.clear();
    let err = east
        .apply_config(snapshot(
            2,
            "east",
            vec![peer(&pki, "west", &west)],
            vec![],
            vec![bare],
        ))
        .unwrap_err();
    assert!(
        err.to_string().contains("neither a vip nor gateway ports"),
        "{err}"
    );
    let mut clash = http_out;
    clash.endpoints[1].gateway_ports = [(80, u32::from(gps[0]))].into();
    let err = east
        .apply_config(snapshot(
            3,
            "east",
            vec![peer(&pki, "west", &west)],
            vec![],
            vec![clash],
        ))
        .unwrap_err();
    assert!(
        err.to_string()
            .contains(&format!("gateway port {}", gps[0])),
        "{err}"
    );
}

/// A CONNECT through east's egress to `authority`; returns the stream and the response head.
async fn open_tunnel(egress: std::net::SocketAddr, authority: &str) -> (TcpStream, String) {
    let mut s = TcpStream::connect(egress).await.unwrap();
    s.write_all(format!("CONNECT {authority} HTTP/1.1\r\nHost: {authority}\r\n\r\n").as_bytes())
        .await
        .unwrap();
    let mut head = Vec::new();
    while !head.ends_with(b"\r\n\r\n") {
        let mut b = [0u8; 1];
        if s.read_exact(&mut b).await.is_err() {
            break;
        }
        head.push(b[0]);
    }
    (s, String::from_utf8_lossy(&head).into_owned())
}

/// An open tunnel is authorised again on every applied config: a change that leaves it allowed
/// keeps it, one that forbids its cluster closes it, and the reason is counted.
#[tokio::test]
async fn an_open_tunnel_is_closed_when_the_config_no_longer_allows_it() {
    let mesh = Pair::start().await;
    let echo = TcpEcho::start("west-echo").await;
    let db = |name| (name, 5432, AppProtocol::Opaque, vec![echo.addr]);
    mesh.configure(1, &[db("db")], |_, _| {});
    let authority = "db.shop.svc.clusterset.local:5432";
    let (mut s, head) = open_tunnel(mesh.east.egress_addr, authority).await;
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    assert_eq!(read_exact_str(&mut s, 10).await, "west-echo:");
    s.write_all(b"one").await.unwrap();
    assert_eq!(read_exact_str(&mut s, 3).await, "one");

    // Another service appears, and db allows east by name: still allowed.
    mesh.configure(2, &[db("db"), db("cache")], |_, i| {
        i.allowed_source_clusters = vec!["east".into()];
    });
    s.write_all(b"two").await.unwrap();
    assert_eq!(read_exact_str(&mut s, 3).await, "two");

    // Now only north may call it: the open tunnel goes.
    mesh.configure(3, &[db("db")], |_, i| {
        i.allowed_source_clusters = vec!["north".into()];
    });
    assert!(
        closed_within(&mut s, 5).await,
        "the tunnel is still open after the config forbade it"
    );
    let closed = metric_or_zero(
        &mesh.west,
        "causeway_gateway_tunnels_closed_total",
        &[("reason", "forbidden_cluster")],
    );
    assert_eq!(closed, 1.0);
    let (_, head) = open_tunnel(mesh.east.egress_addr, authority).await;
    assert!(
        !head.starts_with("HTTP/1.1 200"),
        "a new tunnel is refused too: {head}"
    );
}
