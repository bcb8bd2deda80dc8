//! TCP, EDNS0 buffer sizes, truncation and the TCP fallback.

use causeway_dns::DnsConfig;

use crate::support::*;

#[tokio::test]
async fn tcp_answers_like_udp() {
    let server = TestServer::start(mesh()).await;
    let d = server.dig(&["+tcp", WEB, "A"]).await;
    assert_eq!(d.transport, "TCP", "{}", d.raw);
    assert_eq!(d.data("A"), [WEB_LOCAL_IP], "{}", d.raw);
    let d = server
        .dig(&["+tcp", "nope.prod.svc.clusterset.local", "A"])
        .await;
    assert_eq!(d.transport, "TCP");
    d.assert_nxdomain();
    let d = server.dig(&["+tcp", "example.com", "A"]).await;
    assert_eq!(d.status, "REFUSED", "{}", d.raw);
    // Several queries on one connection (dig +keepopen with two questions).
    let d = server.dig(&["+tcp", "+keepopen", WEB, "A", DB, "A"]).await;
    assert_eq!(d.data("A"), ["10.0.5.1", "10.1.5.1"], "{}", d.raw);
    server.stop().await;
}

#[tokio::test]
async fn edns_buffer_size_is_respected() {
    let server = TestServer::start(mesh()).await;
    // 40 A records: ~700 bytes. Fits the 1232 bytes dig offers by default...
    let d = server.dig(&["+bufsize=1232", MID, "A"]).await;
    assert!(!d.has_flag("tc"), "{}", d.raw);
    assert_eq!(d.transport, "UDP", "{}", d.raw);
    assert_eq!(d.answer.len(), MID_ENDPOINTS, "{}", d.raw);
    assert_eq!(d.edns_udp, Some(1232), "our OPT record: {}", d.raw);
    // ... not 512 bytes, with EDNS or without.
    for args in [&["+bufsize=512", "+ignore"][..], &["+noedns", "+ignore"]] {
        let mut a = args.to_vec();
        a.extend([MID, "A"]);
        let d = server.dig(&a).await;
        assert!(d.has_flag("tc"), "{args:?}: {}", d.raw);
        assert!(d.answer.len() < MID_ENDPOINTS, "{}", d.raw);
    }
    // A client offering more than 1232 gets at most 1232 (no IP fragmentation).
    let d = server.dig(&["+bufsize=4096", "+ignore", MID, "A"]).await;
    assert_eq!(d.edns_udp, Some(1232), "{}", d.raw);
    assert!(!d.has_flag("tc"));
    server.stop().await;
}

#[tokio::test]
async fn truncated_over_udp_complete_over_tcp() {
    let server = TestServer::start(mesh()).await;
    // 200 A records (~3.2 kB) never fit UDP: TC set.
    let d = server.dig(&["+ignore", "+bufsize=4096", BIG, "A"]).await;
    assert!(d.has_flag("tc"), "{}", d.raw);
    assert_eq!(d.transport, "UDP");
    assert!(d.answer.len() < BIG_ENDPOINTS, "{}", d.raw);

    // dig's own fallback: TC over UDP, retry over TCP, every record.
    let d = server.dig(&[BIG, "A"]).await;
    assert!(
        d.raw.contains("Truncated, retrying in TCP mode"),
        "{}",
        d.raw
    );
    assert_eq!(d.transport, "TCP", "{}", d.raw);
    assert!(!d.has_flag("tc"), "{}", d.raw);
    assert_eq!(d.answer.len(), BIG_ENDPOINTS, "{}", d.raw);

    let d = server.dig(&["+tcp", BIG, "A"]).await;
    assert_eq!(d.answer.len(), BIG_ENDPOINTS, "{}", d.raw);
    server.stop().await;
}

#[tokio::test]
async fn the_do_bit_is_copied_into_the_response() {
    let server = TestServer::start(mesh()).await;
    let d = server.dig(&["+dnssec", WEB, "A"]).await;
    assert!(d.raw.contains("flags: do;"), "{}", d.raw);
    let d = server.dig(&[WEB, "A"]).await;
    assert!(!d.raw.contains("flags: do;"), "{}", d.raw);
    server.stop().await;
}

#[tokio::test]
async fn tcp_connections_are_bounded_and_udp_is_unaffected() {
    use tokio::io::AsyncReadExt;
    let config = DnsConfig {
        max_tcp_connections: 8,
        tcp_timeout: std::time::Duration::from_secs(60),
        ..DnsConfig::default()
    };
    let server = TestServer::start_with(config, mesh()).await;
    // Eight clients connect and say nothing; each holds a slot.
    let mut idle = Vec::new();
    for _ in 0..8 {
        idle.push(tokio::net::TcpStream::connect(server.addr).await.unwrap());
    }
    // A query over TCP still works once one of them is gone, and not before: the ninth
    // connection is closed at accept.
    let mut ninth = tokio::net::TcpStream::connect(server.addr).await.unwrap();
    let mut byte = [0u8; 1];
    let read = tokio::time::timeout(std::time::Duration::from_secs(10), ninth.read(&mut byte))
        .await
        .expect("the ninth connection is closed, not left waiting");
    assert!(matches!(read, Ok(0) | Err(_)), "{read:?}");
    let refused =
        || causeway_api::prom::series(&server.metrics_text(), "causeway_dns_tcp_refused_total");
    assert_eq!(refused(), Some(1.0), "{}", server.metrics_text());
    // UDP is served meanwhile.
    let d = server.dig(&[WEB, "A"]).await;
    assert_eq!(d.data("A"), [WEB_LOCAL_IP], "{}", d.raw);
    // One idle client leaves: TCP answers again (the server notices the close first).
    drop(idle.pop());
    let mut answered = None;
    for _ in 0..50 {
        let d = server.dig(&["+tcp", "+tries=1", WEB, "A"]).await;
        if d.transport == "TCP" && d.data("A") == [WEB_LOCAL_IP] {
            answered = Some(d);
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    assert!(answered.is_some(), "no TCP answer after a slot was freed");
    drop(idle);
    server.stop().await;
}
