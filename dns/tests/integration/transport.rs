//! TCP, EDNS0 buffer sizes, truncation and the TCP fallback.

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
