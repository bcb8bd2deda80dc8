//! The peer connection pool: a stream goes on the connection with the fewest streams, and a
//! new connection is dialled when every one carries `peer_streams_per_connection`, so that
//! streams never wait on one connection for the peer's stream limit.

use std::sync::atomic::Ordering;

use causeway_api::proto::AppProtocol;

use crate::support::*;

const HOST: &str = "cart.shop.svc.clusterset.local";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_connection_opens_before_the_first_is_full_and_no_stream_waits() {
    let pki = Pki::new();
    let mut cfg = gateway_config(&pki, "east");
    cfg.peer_streams_per_connection = 10;
    let east = causeway_gateway::Gateway::start(cfg).await.unwrap();
    let west = start_gateway(&pki, "west").await;
    let mesh = Pair { pki, east, west };
    let backend = HttpBackend::start("cart-west").await;
    mesh.configure(
        1,
        &[("cart", 80, AppProtocol::Http, vec![backend.addr])],
        |_, _| {},
    );

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
    let connections = west["connections"].as_u64().unwrap();
    let streams = west["streams"].as_u64().unwrap();
    // 45 streams at 10 a connection: 5 connections (the probes' streams ride along).
    assert_eq!(connections, 5, "{west}");
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
