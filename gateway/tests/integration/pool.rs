//! The peer connection pool: a stream goes on the connection of its data thread with the
//! fewest streams, and a new connection is dialled when every one carries
//! `peer_streams_per_connection`, so that streams never wait on one connection for the peer's
//! stream limit. Each data thread keeps its own connections; probes, from the control side,
//! ride any of them (or one of their own when they come first).

use std::sync::atomic::Ordering;

use causeway_api::proto::AppProtocol;

use crate::support::*;

const HOST: &str = "cart.shop.svc.clusterset.local";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_connection_opens_before_the_first_is_full_and_no_stream_waits() {
    // 45 streams at 10 a connection: 5 connections, and the probes' own.
    held_streams_open(1, 5 + 1).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_data_thread_dials_its_own_connections() {
    // Connections go round-robin: 23 and 22 streams, 3 connections on each thread.
    held_streams_open(2, 3 + 3 + 1).await;
}

/// Holds 45 streams through a gateway with `data_threads` and peer connections of 10 streams,
/// and checks that all reach the backend at once on `connections` connections.
async fn held_streams_open(data_threads: u32, connections: u64) {
    let pki = Pki::new();
    let mut cfg = gateway_config(&pki, "east");
    cfg.peer_streams_per_connection = 10;
    cfg.data_threads = data_threads;
    let east = causeway_gateway::Gateway::start(cfg).await.unwrap();
    let west = start_gateway(&pki, "west").await;
    let mesh = Pair { pki, east, west };
    let backend = HttpBackend::start("cart-west").await;
    mesh.configure(
        1,
        &[("cart", 80, AppProtocol::Http, vec![backend.addr])],
        |_, _| {},
    );

    // The probes' connection first (a peer is `up` before its first probe, so wait for
    // `probed`), so that the count below does not depend on whether a probe comes first.
    wait_for("west to be probed", 20, || async {
        let peers = admin_get(&mesh.east, "/peers").await.json();
        let probed = peers
            .as_array()?
            .iter()
            .any(|p| p["cluster"] == "west" && p["probed"] == true && p["connections"] == 1);
        probed.then_some(())
    })
    .await;

    const STREAMS: usize = 45;
    let egress = mesh.east.egress_addr;
    let calls: Vec<_> = (0..STREAMS)
        .map(|_| tokio::spawn(async move { get(egress, HOST, "/hold").await }))
        .collect();
    // Every stream reaches the backend while all are held: none waits for another to end.
    wait_for("every stream to reach the backend at once", 20, || async {
        (backend.held.load(Ordering::SeqCst) == STREAMS).then_some(())
    })
    .await;
    let peers = admin_get(&mesh.east, "/peers").await.json();
    let west = peers
        .as_array()
        .and_then(|a| a.iter().find(|p| p["cluster"] == "west"))
        .cloned()
        .expect("west in /peers");
    let streams = west["streams"].as_u64().unwrap();
    assert_eq!(west["connections"].as_u64().unwrap(), connections, "{west}");
    assert!(streams >= STREAMS as u64, "{west}");

    backend.release();
    for c in calls {
        assert_eq!(c.await.unwrap().status, 200);
    }
    // Once the responses have ended, no stream is counted on any connection.
    wait_for("the slots to be given back", 10, || async {
        let peers = admin_get(&mesh.east, "/peers").await.json();
        let west = peers
            .as_array()?
            .iter()
            .find(|p| p["cluster"] == "west")?
            .clone();
        (west["streams"] == 0).then_some(())
    })
    .await;
}
