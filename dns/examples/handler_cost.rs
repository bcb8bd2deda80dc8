//! Benchmark fixture (not a test): the cost of the request path without sockets — parse,
//! answer from the snapshot, encode — through `DnsHandler::handle_bytes`.
//!
//! `cargo run --release -p causeway-dns --example handler_cost [iterations]`

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Instant;

use causeway_dns::{DnsConfig, DnsHandler};
use hickory_proto::op::{Edns, Message, MessageType, OpCode, Query};
use hickory_proto::rr::{Name, RecordType};

#[path = "bench_server.rs"]
#[allow(dead_code)]
mod fixture;

fn main() {
    let iterations: usize = std::env::args()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(1_000_000);
    let (_tx, rx) = tokio::sync::watch::channel(Arc::new(fixture::mesh()));
    let handler =
        DnsHandler::new(&DnsConfig::default(), rx, &prometheus::Registry::new()).expect("handler");
    let (_, queries) = fixture::files();
    let packets: Vec<Vec<u8>> = queries
        .lines()
        .enumerate()
        .map(|(i, line)| {
            let (name, ty) = line.split_once(' ').expect("name type");
            let mut m = Message::new(i as u16, MessageType::Query, OpCode::Query);
            m.add_query(Query::query(
                Name::from_ascii(name).expect("name"),
                ty.parse::<RecordType>().expect("type"),
            ));
            m.set_edns(Edns::new());
            m.to_vec().expect("encode")
        })
        .collect();
    let src: SocketAddr = "127.0.0.1:40000".parse().expect("addr");
    let start = Instant::now();
    let mut bytes = 0usize;
    for i in 0..iterations {
        let response = handler
            .handle_bytes(&packets[i % packets.len()], src, false)
            .expect("answer");
        bytes += response.len();
    }
    let took = start.elapsed();
    println!(
        "{iterations} queries in {took:?}: {:.0} ns/query, {:.0} queries/s on one core ({bytes} bytes)",
        took.as_nanos() as f64 / iterations as f64,
        iterations as f64 / took.as_secs_f64()
    );
}
