//! NXDOMAIN vs NODATA, REFUSED, and requests we do not serve.

use std::time::Duration;

use hickory_proto::op::{Message, MessageType, OpCode, Query, ResponseCode};
use hickory_proto::rr::{Name, RecordType};
use tokio::net::UdpSocket;

use crate::support::*;

#[tokio::test]
async fn nxdomain_versus_nodata() {
    let server = TestServer::start(mesh()).await;
    // Unknown names of the zone.
    for name in [
        "nope.prod.svc.clusterset.local",
        "web.nope.svc.clusterset.local",
        "nope.clusterset.local",
        "a.b.c.d.e.f.svc.clusterset.local",
    ] {
        server.dig(&[name, "A"]).await.assert_nxdomain();
    }
    // Known names, other types, and empty non-terminals: NODATA with the SOA.
    for (name, ty) in [
        (WEB, "TXT"),
        (WEB, "MX"),
        ("prod.svc.clusterset.local", "A"),
        ("svc.clusterset.local", "A"),
        (DB, "SRV"),
    ] {
        server.dig(&[name, ty]).await.assert_nodata();
    }
    server.stop().await;
}

#[tokio::test]
async fn outside_the_zone_wrong_class_and_transfers_are_refused() {
    let server = TestServer::start(mesh()).await;
    for args in [
        &["example.com", "A"][..],
        &["local", "SOA"],
        &["svc.cluster.local", "A"],
        &["-c", "CH", "version.bind", "TXT"],
        &["-c", "HS", WEB, "A"],
    ] {
        let d = server.dig(args).await;
        assert_eq!(d.status, "REFUSED", "{args:?}: {}", d.raw);
        assert!(!d.has_flag("ra"), "{}", d.raw);
        assert!(d.answer.is_empty());
    }
    // A recursion-desired query outside the zone is refused too: we never recurse.
    let d = server.dig(&["+recurse", "example.com", "A"]).await;
    assert_eq!(d.status, "REFUSED", "{}", d.raw);
    assert!(!d.has_flag("ra"), "{}", d.raw);
    server.stop().await;
}

#[tokio::test]
async fn unsupported_opcode_and_edns_version() {
    let server = TestServer::start(mesh()).await;
    let d = server.dig(&["+opcode=2", WEB, "A"]).await;
    assert_eq!(d.status, "NOTIMP", "{}", d.raw);
    let d = server
        .dig(&["+edns=1", "+noednsnegotiation", WEB, "A"])
        .await;
    assert_eq!(d.status, "BADVERS", "{}", d.raw);
    server.stop().await;
}

#[tokio::test]
async fn before_the_initial_sync_answers_servfail() {
    let mut snapshot = mesh();
    snapshot.synced = false;
    let server = TestServer::start(snapshot).await;
    let d = server.dig(&[WEB, "A"]).await;
    assert_eq!(d.status, "SERVFAIL", "{}", d.raw);
    // Outside the zone is still REFUSED.
    let d = server.dig(&["example.com", "A"]).await;
    assert_eq!(d.status, "REFUSED", "{}", d.raw);
    server.stop().await;
}

async fn udp_exchange(server: &TestServer, packet: &[u8]) -> Option<Message> {
    let sock = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    sock.send_to(packet, server.addr).await.unwrap();
    let mut buf = vec![0u8; 65535];
    let n = tokio::time::timeout(Duration::from_secs(2), sock.recv(&mut buf))
        .await
        .ok()?
        .unwrap();
    Some(Message::from_vec(&buf[..n]).expect("a parsable response"))
}

fn query(id: u16, names: &[&str]) -> Message {
    let mut m = Message::new(id, MessageType::Query, OpCode::Query);
    for n in names {
        m.add_query(Query::query(Name::from_ascii(n).unwrap(), RecordType::A));
    }
    m
}

#[tokio::test]
async fn several_questions_none_and_garbage_are_formerr() {
    let server = TestServer::start(mesh()).await;

    let two = query(7, &[WEB, DB]).to_vec().unwrap();
    let r = udp_exchange(&server, &two).await.expect("an answer");
    assert_eq!(
        (r.metadata.id, r.metadata.response_code),
        (7, ResponseCode::FormErr)
    );
    assert!(r.answers.is_empty());

    let none = query(8, &[]).to_vec().unwrap();
    let r = udp_exchange(&server, &none).await.expect("an answer");
    assert_eq!(
        (r.metadata.id, r.metadata.response_code),
        (8, ResponseCode::FormErr)
    );

    // A header that promises a question that is not there.
    let mut cut = query(9, &[WEB]).to_vec().unwrap();
    cut.truncate(20);
    let r = udp_exchange(&server, &cut).await.expect("an answer");
    assert_eq!(
        (r.metadata.id, r.metadata.response_code),
        (9, ResponseCode::FormErr)
    );

    // A valid query still gets its answer.
    let r = udp_exchange(&server, &query(10, &[WEB]).to_vec().unwrap())
        .await
        .unwrap();
    assert_eq!(r.metadata.response_code, ResponseCode::NoError);
    assert_eq!(r.answers.len(), 1);
    server.stop().await;
}
