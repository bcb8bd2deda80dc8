//! Every record form of the zone, as `dig` sees it.

use crate::support::*;

#[tokio::test]
async fn clusterset_ip_service_a_aaaa_and_srv() {
    let server = TestServer::start(mesh()).await;

    // east exports web itself with ready endpoints: local-first answers the local address.
    let d = server.dig(&[WEB, "A"]).await;
    assert_eq!(d.status, "NOERROR", "{}", d.raw);
    assert!(d.has_flag("qr") && d.has_flag("aa"), "{}", d.raw);
    assert!(!d.has_flag("ra"), "no recursion: {}", d.raw);
    assert_eq!(d.data("A"), [WEB_LOCAL_IP]);
    assert_eq!(d.answer[0].ttl, 5);
    assert_eq!(d.answer[0].name, format!("{WEB}."));
    // An IPv4 answer only: AAAA of the same name is NODATA.
    server.dig(&[WEB, "AAAA"]).await.assert_nodata();

    // api is exported by west only: its (IPv6) ClusterSetIP.
    let d = server.dig(&[API, "AAAA"]).await;
    assert_eq!(d.data("AAAA"), [API_VIP], "{}", d.raw);
    server.dig(&[API, "A"]).await.assert_nodata();

    // SRV for each named port, target the service name.
    let d = server.dig(&[&format!("_http._tcp.{WEB}"), "SRV"]).await;
    assert_eq!(d.data("SRV"), [format!("0 100 80 {WEB}.")], "{}", d.raw);
    let d = server.dig(&[&format!("_grpc._tcp.{WEB}"), "SRV"]).await;
    assert_eq!(d.data("SRV"), [format!("0 100 9090 {WEB}.")], "{}", d.raw);
    let d = server.dig(&[&format!("_dns._udp.{WEB}"), "SRV"]).await;
    assert_eq!(d.data("SRV"), [format!("0 100 53 {WEB}.")], "{}", d.raw);
    // Wrong protocol or unknown port name: NXDOMAIN; the protocol label alone exists.
    server
        .dig(&[&format!("_http._udp.{WEB}"), "SRV"])
        .await
        .assert_nxdomain();
    server
        .dig(&[&format!("_nope._tcp.{WEB}"), "SRV"])
        .await
        .assert_nxdomain();
    server
        .dig(&[&format!("_tcp.{WEB}"), "SRV"])
        .await
        .assert_nodata();
    // SRV at the service name itself: NODATA.
    server.dig(&[WEB, "SRV"]).await.assert_nodata();

    // <cluster>.<svc>... is never answered for ClusterSetIP services.
    server
        .dig(&[&format!("east.{WEB}"), "A"])
        .await
        .assert_nxdomain();
    server
        .dig(&[&format!("west.{WEB}"), "A"])
        .await
        .assert_nxdomain();
    server
        .dig(&[&format!("pod.east.{WEB}"), "A"])
        .await
        .assert_nxdomain();
    server.stop().await;
}

#[tokio::test]
async fn headless_service_endpoints_and_hostnames() {
    let server = TestServer::start(mesh()).await;

    // Ready endpoints of every serving export; the not-ready db-9 is left out.
    let d = server.dig(&[DB, "A"]).await;
    assert_eq!(d.status, "NOERROR", "{}", d.raw);
    assert_eq!(d.data("A"), ["10.0.5.1", "10.1.5.1"]);
    let d = server.dig(&[DB, "AAAA"]).await;
    assert_eq!(d.data("AAAA"), ["fd00:5::1"]);

    // Per-endpoint names.
    let d = server.dig(&[&format!("db-0.east.{DB}"), "A"]).await;
    assert_eq!(d.data("A"), ["10.0.5.1"], "{}", d.raw);
    let d = server.dig(&[&format!("db-0.east.{DB}"), "AAAA"]).await;
    assert_eq!(d.data("AAAA"), ["fd00:5::1"], "{}", d.raw);
    let d = server.dig(&[&format!("db-1.west.{DB}"), "A"]).await;
    assert_eq!(d.data("A"), ["10.1.5.1"], "{}", d.raw);
    // Wrong cluster, not-ready endpoint, unknown host: NXDOMAIN.
    server
        .dig(&[&format!("db-0.west.{DB}"), "A"])
        .await
        .assert_nxdomain();
    server
        .dig(&[&format!("db-9.east.{DB}"), "A"])
        .await
        .assert_nxdomain();
    server
        .dig(&[&format!("db-7.east.{DB}"), "A"])
        .await
        .assert_nxdomain();
    // The cluster label of a headless service with hostnames is an empty non-terminal.
    server
        .dig(&[&format!("east.{DB}"), "A"])
        .await
        .assert_nodata();

    // SRV of a headless service: one per endpoint with a hostname.
    let d = server.dig(&[&format!("_pg._tcp.{DB}"), "SRV"]).await;
    assert_eq!(
        d.data("SRV"),
        [
            format!("0 100 5432 db-0.east.{DB}."),
            format!("0 100 5432 db-1.west.{DB}.")
        ],
        "{}",
        d.raw
    );
    server.stop().await;
}

#[tokio::test]
async fn apex_version_and_name_server() {
    let server = TestServer::start(mesh()).await;

    let d = server.dig(&["dns-version.clusterset.local", "TXT"]).await;
    assert_eq!(d.data("TXT"), ["\"1.0.0\""], "{}", d.raw);
    server
        .dig(&["dns-version.clusterset.local", "A"])
        .await
        .assert_nodata();

    let d = server.dig(&["clusterset.local", "SOA"]).await;
    assert!(d.has_flag("aa"));
    let soa = d.data("SOA");
    assert_eq!(soa.len(), 1, "{}", d.raw);
    assert!(
        soa[0].starts_with("ns.dns.clusterset.local. hostmaster.clusterset.local. 1 "),
        "{}",
        d.raw
    );
    assert!(soa[0].ends_with(" 5"), "SOA minimum is the TTL: {}", d.raw);

    let d = server.dig(&["clusterset.local", "NS"]).await;
    assert_eq!(d.data("NS"), ["ns.dns.clusterset.local."], "{}", d.raw);
    let d = server.dig(&["ns.dns.clusterset.local", "A"]).await;
    assert_eq!(
        d.data("A"),
        ["127.0.0.1"],
        "the server's own address: {}",
        d.raw
    );

    let d = server.dig(&["clusterset.local", "ANY"]).await;
    assert_eq!(d.answer.len(), 2, "SOA and NS: {}", d.raw);
    server.dig(&["clusterset.local", "A"]).await.assert_nodata();
    server.stop().await;
}

#[tokio::test]
async fn names_are_case_insensitive_and_ttl_configurable() {
    let config = causeway_dns::DnsConfig {
        ttl: std::time::Duration::from_secs(30),
        ..Default::default()
    };
    let server = TestServer::start_with(config, mesh()).await;
    let d = server.dig(&["WeB.PROD.svc.ClusterSet.LOCAL", "A"]).await;
    assert_eq!(d.data("A"), [WEB_LOCAL_IP], "{}", d.raw);
    assert_eq!(d.answer[0].ttl, 30);
    let d = server.dig(&["nope.prod.svc.clusterset.local", "A"]).await;
    d.assert_nxdomain();
    assert!(
        d.authority[0].data.ends_with(" 30"),
        "SOA minimum follows: {}",
        d.raw
    );
    server.stop().await;
}

#[tokio::test]
async fn via_gateway_policy_answers_the_clusterset_ip() {
    let mut config = causeway_dns::DnsConfig::default();
    config
        .policy_overrides
        .insert(key("prod", "web"), causeway_dns::AnswerPolicy::ViaGateway);
    let server = TestServer::start_with(config, mesh()).await;
    let d = server.dig(&[WEB, "A"]).await;
    assert_eq!(d.data("A"), [WEB_VIP], "{}", d.raw);
    server.stop().await;
}

/// KEP-1645 as a user tries it with `dig`: PTR (`dig -x`) of a ClusterSetIP and of headless
/// endpoints, SRV and names of hostname-less endpoints, and a headless service with no ready
/// endpoint (NXDOMAIN, its SRV name too).
#[tokio::test]
async fn ptr_hostname_less_srv_and_the_empty_headless_service() {
    use causeway_api::{Endpoint, Protocol, ServiceType};
    let mut s = mesh();
    let hl = ServiceType::Headless;
    let ports = vec![port("redis", Protocol::Tcp, 6379)];
    add_service(
        &mut s,
        key("prod", "cache"),
        hl,
        ports.clone(),
        None,
        vec![(
            "west",
            export(
                hl,
                &ports,
                2,
                None,
                vec![
                    endpoint("10.1.7.1".parse().unwrap(), None),
                    endpoint("fd00:7::2".parse().unwrap(), None),
                ],
            ),
        )],
    );
    add_service(
        &mut s,
        key("prod", "empty"),
        hl,
        ports.clone(),
        None,
        vec![(
            "west",
            export(
                hl,
                &ports,
                0,
                None,
                vec![Endpoint {
                    ready: false,
                    ..endpoint("10.1.8.1".parse().unwrap(), Some("empty-0"))
                }],
            ),
        )],
    );
    let server = TestServer::start(s).await;
    let cache = "cache.prod.svc.clusterset.local";

    // Hostname-less endpoints: an SRV each, naming their system-assigned names, which answer.
    let d = server.dig(&[&format!("_redis._tcp.{cache}"), "SRV"]).await;
    assert_eq!(
        d.data("SRV"),
        [
            format!("0 100 6379 10-1-7-1.west.{cache}."),
            format!("0 100 6379 fd00-7--2.west.{cache}.")
        ],
        "{}",
        d.raw
    );
    let d = server.dig(&[&format!("10-1-7-1.west.{cache}"), "A"]).await;
    assert_eq!(d.data("A"), ["10.1.7.1"], "{}", d.raw);
    let d = server
        .dig(&[&format!("fd00-7--2.west.{cache}"), "AAAA"])
        .await;
    assert_eq!(d.data("AAAA"), ["fd00:7::2"], "{}", d.raw);

    // PTR: the ClusterSetIP names its service, an endpoint its own name.
    let d = server.dig(&["-x", WEB_VIP]).await;
    assert_eq!(d.status, "NOERROR", "{}", d.raw);
    assert!(d.has_flag("aa"), "{}", d.raw);
    assert_eq!(d.data("PTR"), [format!("{WEB}.")], "{}", d.raw);
    let d = server.dig(&["-x", "10.1.7.1"]).await;
    assert_eq!(
        d.data("PTR"),
        [format!("10-1-7-1.west.{cache}.")],
        "{}",
        d.raw
    );
    let d = server.dig(&["-x", "10.1.5.1"]).await;
    assert_eq!(d.data("PTR"), [format!("db-1.west.{DB}.")], "{}", d.raw);
    let d = server.dig(&["-x", "fd00:7::2"]).await;
    assert_eq!(
        d.data("PTR"),
        [format!("fd00-7--2.west.{cache}.")],
        "{}",
        d.raw
    );
    // An address no import has (or a not-ready endpoint's) is not ours.
    for ip in ["192.0.2.1", "10.1.8.1"] {
        let d = server.dig(&["-x", ip]).await;
        assert_eq!(d.status, "REFUSED", "{ip}: {}", d.raw);
    }

    // The headless service with no ready endpoint: NXDOMAIN, and so is its SRV name.
    let empty = "empty.prod.svc.clusterset.local";
    server.dig(&[empty, "A"]).await.assert_nxdomain();
    server
        .dig(&[&format!("_redis._tcp.{empty}"), "SRV"])
        .await
        .assert_nxdomain();
    server.stop().await;
}

/// Headless through gateways: the endpoints of another cluster that this cluster gave an
/// address of its own (leading to its gateway) are answered by that address, for the service
/// and for their per-endpoint names, and PTR names them; this cluster's own endpoints keep
/// their pod addresses.
#[tokio::test]
async fn remote_headless_endpoints_are_answered_by_their_gateway_addresses() {
    use causeway_api::{Protocol, ServiceType};
    let mut s = mesh();
    let hl = ServiceType::Headless;
    let ports = vec![port("http", Protocol::Tcp, 80)];
    add_service(
        &mut s,
        key("prod", "stateful"),
        hl,
        ports.clone(),
        None,
        vec![
            (
                "west",
                export(
                    hl,
                    &ports,
                    2,
                    None,
                    vec![
                        endpoint("10.1.9.10".parse().unwrap(), Some("db-0")),
                        endpoint("10.1.9.11".parse().unwrap(), Some("db-1")),
                    ],
                ),
            ),
            (
                "east",
                export(
                    hl,
                    &ports,
                    1,
                    None,
                    vec![endpoint("10.0.9.10".parse().unwrap(), Some("db-5"))],
                ),
            ),
        ],
    );
    {
        let key = key("prod", "stateful");
        let view = std::sync::Arc::make_mut(s.services.get_mut(&key).unwrap());
        view.endpoint_vips.insert(
            cid("west"),
            [
                ("db-0".to_string(), "240.0.9.1".parse().unwrap()),
                ("db-1".to_string(), "240.0.9.2".parse().unwrap()),
            ]
            .into(),
        );
    }
    let server = TestServer::start(s.clone()).await;
    let name = "stateful.prod.svc.clusterset.local";
    let mut a = server.dig(&[name, "A"]).await.data("A");
    a.sort();
    assert_eq!(a, ["10.0.9.10", "240.0.9.1", "240.0.9.2"]);
    let d = server.dig(&[&format!("db-1.west.{name}"), "A"]).await;
    assert_eq!(d.data("A"), ["240.0.9.2"], "{}", d.raw);
    let d = server.dig(&[&format!("db-5.east.{name}"), "A"]).await;
    assert_eq!(d.data("A"), ["10.0.9.10"], "{}", d.raw);
    let d = server.dig(&["-x", "240.0.9.1"]).await;
    assert_eq!(d.data("PTR"), [format!("db-0.west.{name}.")], "{}", d.raw);
    server.stop().await;

    // Where other clusters' pods are reached only through the gateway, an endpoint that has no
    // address here yet is not answered (its pod address would lead nowhere); once none is left
    // the service does not exist.
    s.headless_via_gateway = true;
    let key = key("prod", "stateful");
    let view = std::sync::Arc::make_mut(s.services.get_mut(&key).unwrap());
    view.endpoint_vips
        .get_mut(&cid("west"))
        .unwrap()
        .remove("db-1");
    let server = TestServer::start(s.clone()).await;
    let mut a = server.dig(&[name, "A"]).await.data("A");
    a.sort();
    assert_eq!(
        a,
        ["10.0.9.10", "240.0.9.1"],
        "db-1 has no address here yet"
    );
    server
        .dig(&[&format!("db-1.west.{name}"), "A"])
        .await
        .assert_nxdomain();
    let d = server.dig(&[&format!("db-5.east.{name}"), "A"]).await;
    assert_eq!(
        d.data("A"),
        ["10.0.9.10"],
        "our own endpoints keep their pod addresses"
    );
    server.stop().await;
    let view = std::sync::Arc::make_mut(s.services.get_mut(&key).unwrap());
    view.endpoint_vips.clear();
    view.exports.remove(&cid("east"));
    let server = TestServer::start(s).await;
    server.dig(&[name, "A"]).await.assert_nxdomain();
    server
        .dig(&[&format!("db-0.west.{name}"), "A"])
        .await
        .assert_nxdomain();
    server.stop().await;
}
