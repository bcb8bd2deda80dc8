//! The answer follows the snapshot: the next query after a change sees it.

use std::time::{Duration, Instant};

use causeway_api::DrillRecord;

use crate::support::*;

/// Publishes `snapshot` and digs `WEB` until the answer is `want`, within one second.
/// Returns how many queries it took.
async fn publish_and_wait(
    server: &TestServer,
    snapshot: causeway_api::MeshSnapshot,
    want: &str,
) -> usize {
    let deadline = Duration::from_secs(1);
    let sent = Instant::now();
    server.publish(snapshot);
    let mut queries = 0;
    loop {
        let d = server.dig(&[WEB, "A"]).await;
        queries += 1;
        if d.data("A") == [want] {
            break;
        }
        assert!(
            sent.elapsed() < deadline,
            "answer still {:?} {:?} after publishing; want {want}",
            d.data("A"),
            sent.elapsed()
        );
    }
    let took = sent.elapsed();
    eprintln!("answer moved to {want} after {took:?} ({queries} queries)");
    assert!(took < deadline, "{took:?}");
    queries
}

#[tokio::test]
async fn local_endpoints_gone_moves_the_answer_to_the_clusterset_ip() {
    let server = TestServer::start(mesh()).await;
    assert_eq!(server.dig(&[WEB, "A"]).await.data("A"), [WEB_LOCAL_IP]);

    // east's endpoints for web all go unready.
    let mut s = mesh();
    s.version = 2;
    s.services
        .get_mut(&key("prod", "web"))
        .unwrap()
        .view_mut()
        .exports
        .get_mut(&cid("east"))
        .unwrap()
        .record_mut()
        .ready_endpoints = 0;
    // Computed per query: the very next answer has moved.
    assert_eq!(publish_and_wait(&server, s, WEB_VIP).await, 1);

    // And back when they return.
    let mut s = mesh();
    s.version = 3;
    assert_eq!(publish_and_wait(&server, s, WEB_LOCAL_IP).await, 1);
    server.stop().await;
}

#[tokio::test]
async fn a_drill_moves_the_answer_and_its_end_moves_it_back() {
    let server = TestServer::start(mesh()).await;
    assert_eq!(server.dig(&[WEB, "A"]).await.data("A"), [WEB_LOCAL_IP]);

    let mut s = mesh();
    s.version = 2;
    s.drills.insert(
        "drill-1".into(),
        DrillRecord {
            schema: causeway_api::SCHEMA_VERSION,
            service: key("prod", "web"),
            cluster: cid("east"),
            start_unix_ms: 0,
            end_unix_ms: 60_000,
            pending: false,
            observers: Vec::new(),
            probe: None,
            origin: String::new(),
        },
    );
    s.services
        .get_mut(&key("prod", "web"))
        .unwrap()
        .view_mut()
        .exports
        .get_mut(&cid("east"))
        .unwrap()
        .drained = true;
    assert_eq!(publish_and_wait(&server, s, WEB_VIP).await, 1);

    let mut s = mesh();
    s.version = 3;
    assert_eq!(publish_and_wait(&server, s, WEB_LOCAL_IP).await, 1);
    server.stop().await;
}

#[tokio::test]
async fn the_last_snapshot_is_served_when_the_publisher_is_gone() {
    let mut server = TestServer::start(mesh()).await;
    // The federator's watch sender dropping (its mesh view ended) must not stop DNS.
    server.drop_publisher();
    let d = server.dig(&[WEB, "A"]).await;
    assert_eq!(d.data("A"), [WEB_LOCAL_IP], "{}", d.raw);
    server.stop().await;
}
