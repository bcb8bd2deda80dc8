//! Random and mutated packets on the request path: no panic, no wedge, always a well-formed
//! response (or none), and the next valid query is still answered.

use std::net::SocketAddr;
use std::sync::{Arc, LazyLock};

use causeway_dns::{DnsConfig, DnsHandler, MAX_UDP_PAYLOAD};
use hickory_proto::op::{Edns, Message, MessageType, OpCode, Query, ResponseCode};
use hickory_proto::rr::{DNSClass, Name, RecordType};
use proptest::prelude::*;
use tokio::io::AsyncWriteExt;
use tokio::net::{TcpStream, UdpSocket};
use tokio::sync::watch;

use crate::support::*;

static HANDLER: LazyLock<DnsHandler> = LazyLock::new(|| {
    // The receiver keeps the last value after the sender is gone.
    let (_tx, rx) = watch::channel(Arc::new(mesh()));
    DnsHandler::new(&DnsConfig::default(), rx, &prometheus::Registry::new()).unwrap()
});

const SRC: SocketAddr = SocketAddr::new(std::net::IpAddr::V4(std::net::Ipv4Addr::LOCALHOST), 40000);

fn query(id: u16, name: &str, ty: RecordType, edns: Option<u16>) -> Vec<u8> {
    let mut m = Message::new(id, MessageType::Query, OpCode::Query);
    let mut q = Query::query(Name::from_ascii(name).unwrap(), ty);
    q.set_query_class(DNSClass::IN);
    m.add_query(q);
    if let Some(size) = edns {
        let mut e = Edns::new();
        e.set_max_payload(size);
        m.set_edns(e);
    }
    m.to_vec().unwrap()
}

/// Valid requests of every kind, to mutate.
fn seeds() -> Vec<Vec<u8>> {
    vec![
        query(1, WEB, RecordType::A, None),
        query(2, WEB, RecordType::AAAA, Some(1232)),
        query(3, &format!("_http._tcp.{WEB}"), RecordType::SRV, Some(4096)),
        query(4, "dns-version.clusterset.local", RecordType::TXT, None),
        query(5, "clusterset.local", RecordType::ANY, Some(512)),
        query(6, BIG, RecordType::A, Some(1232)),
        query(7, &format!("db-0.east.{DB}"), RecordType::A, None),
        query(8, "example.com", RecordType::A, None),
    ]
}

/// What any response must be: parsable, our id, QR set, RA clear, within the UDP limit.
fn check_response(request: &[u8], response: Option<Vec<u8>>, tcp: bool) {
    let Some(response) = response else { return };
    let m = Message::from_vec(&response)
        .unwrap_or_else(|e| panic!("unparsable response {response:02x?} to {request:02x?}: {e}"));
    assert_eq!(m.metadata.message_type, MessageType::Response);
    assert_eq!(m.metadata.id, u16::from_be_bytes([request[0], request[1]]));
    assert!(!m.metadata.recursion_available);
    if !tcp {
        assert!(
            response.len() <= usize::from(MAX_UDP_PAYLOAD),
            "{} bytes",
            response.len()
        );
    }
}

fn assert_still_answers() {
    let q = query(4242, WEB, RecordType::A, None);
    let r = HANDLER.handle_bytes(&q, SRC, false).expect("answered");
    let m = Message::from_vec(&r).unwrap();
    assert_eq!(m.metadata.response_code, ResponseCode::NoError);
    assert_eq!(m.answers.len(), 1);
    assert_eq!(m.answers[0].data.to_string(), WEB_LOCAL_IP);
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 512, failure_persistence: None, ..ProptestConfig::default() })]

    #[test]
    fn random_bytes_never_break_the_request_path(
        raw in proptest::collection::vec(any::<u8>(), 0..700),
        tcp in any::<bool>(),
    ) {
        let response = HANDLER.handle_bytes(&raw, SRC, tcp);
        check_response(&raw, response, tcp);
    }

    #[test]
    fn mutated_queries_never_break_the_request_path(
        seed in 0usize..8,
        flips in proptest::collection::vec((any::<usize>(), any::<u8>()), 0..6),
        cut in proptest::option::of(any::<usize>()),
        tail in proptest::collection::vec(any::<u8>(), 0..24),
        tcp in any::<bool>(),
    ) {
        let mut raw = seeds()[seed].clone();
        for (at, byte) in flips {
            let i = at % raw.len();
            raw[i] = byte;
        }
        if let Some(cut) = cut {
            raw.truncate(cut % (raw.len() + 1));
        }
        raw.extend(tail);
        let response = HANDLER.handle_bytes(&raw, SRC, tcp);
        check_response(&raw, response, tcp);
    }
}

#[test]
fn handler_answers_after_the_fuzz_and_seeds_are_valid() {
    for (i, seed) in seeds().iter().enumerate() {
        let r = HANDLER.handle_bytes(seed, SRC, false).expect("answered");
        let m = Message::from_vec(&r).unwrap();
        let want = if i == 7 {
            ResponseCode::Refused
        } else {
            ResponseCode::NoError
        };
        assert_eq!(m.metadata.response_code, want, "seed {i}");
    }
    // Many questions, huge packets, a response instead of a query.
    let mut huge = query(9, WEB, RecordType::A, None);
    huge.resize(70_000, 0xff);
    check_response(&huge, HANDLER.handle_bytes(&huge, SRC, true), true);
    let mut response = query(10, WEB, RecordType::A, None);
    response[2] |= 0x80;
    assert!(HANDLER.handle_bytes(&response, SRC, false).is_none());
    assert!(HANDLER.handle_bytes(&[1, 2, 3], SRC, false).is_none());
    assert_still_answers();
}

/// xorshift64*: deterministic bytes without another dependency.
struct Rng(u64);
impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
    fn bytes(&mut self, n: usize) -> Vec<u8> {
        (0..n).map(|_| self.next() as u8).collect()
    }
}

#[tokio::test]
async fn garbage_over_udp_and_tcp_does_not_wedge_the_server() {
    let server = TestServer::start(mesh()).await;
    let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
    let sock = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let seeds = seeds();
    for i in 0..400 {
        let packet = match i % 4 {
            // Mutated valid queries reach deeper than pure noise.
            0 | 1 => {
                let mut p = seeds[(rng.next() as usize) % seeds.len()].clone();
                for _ in 0..(1 + rng.next() % 4) {
                    let at = (rng.next() as usize) % p.len();
                    p[at] = rng.next() as u8;
                }
                p
            }
            _ => {
                let n = (rng.next() % 600) as usize;
                rng.bytes(n)
            }
        };
        sock.send_to(&packet, server.addr).await.unwrap();
    }
    // The largest datagram there is, and an empty one.
    sock.send_to(&rng.bytes(65_507), server.addr).await.unwrap();
    sock.send_to(&[], server.addr).await.unwrap();

    // TCP: a length prefix promising more than comes, then garbage frames, then hang up.
    let mut tcp = TcpStream::connect(server.addr).await.unwrap();
    tcp.write_all(&[0xff, 0xff, 1, 2, 3]).await.unwrap();
    drop(tcp);
    let mut tcp = TcpStream::connect(server.addr).await.unwrap();
    for _ in 0..20 {
        let n = 1 + (rng.next() % 300) as usize;
        let body = rng.bytes(n);
        tcp.write_all(&(body.len() as u16).to_be_bytes())
            .await
            .unwrap();
        let _ = tcp.write_all(&body).await;
    }
    drop(tcp);

    let d = server.dig(&[WEB, "A"]).await;
    assert_eq!(d.data("A"), [WEB_LOCAL_IP], "{}", d.raw);
    let d = server.dig(&["+tcp", WEB, "A"]).await;
    assert_eq!(d.data("A"), [WEB_LOCAL_IP], "{}", d.raw);
    server.stop().await;
}
