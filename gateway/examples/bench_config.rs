//! Writes the two config snapshots of the gateway benchmark (gateway/bench/run.sh):
//! `<out>/a.pb` for gateway A (cluster `east`, importing `--services` services, the first of
//! which, `echo.bench`, is the one under load) and `<out>/b.pb` for gateway B (cluster `west`,
//! exporting `echo.bench` to the backend).
//!
//!     cargo run --release -p causeway-gateway --example bench_config -- \
//!         OUT_DIR BUNDLE_PEM A_PEER_ADDR B_PEER_ADDR BACKEND_ADDR SERVICES [TCP_PORT TCP_BACKEND]
//!
//! With TCP_PORT and TCP_BACKEND (gateway/bench/tcp.sh) a second service, `sink.bench`, has one
//! opaque TCP port: A listens on TCP_PORT for it (a gateway port, as in Kubernetes mode) and
//! B sends it to TCP_BACKEND.

use causeway_api::proto::{
    self, AppProtocol, BackendTlsMode, Candidate, ConfigSnapshot, Endpoint, InboundService,
    OutboundService, Peer,
};
use prost::Message;

/// B's service `bench/<name>` on `port`, its one endpoint `address`, in plaintext.
fn inbound(name: &str, port: proto::Port, address: &str) -> InboundService {
    InboundService {
        namespace: "bench".into(),
        name: name.into(),
        ports: vec![port],
        endpoints: vec![Endpoint {
            address: address.into(),
            ready: true,
            hostname: String::new(),
        }],
        backend_tls_mode: BackendTlsMode::Plaintext as i32,
        ..Default::default()
    }
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let (fixed, tcp) = match args.len() {
        6 => (&args[..6], None),
        8 => (&args[..6], Some((&args[6], &args[7]))),
        _ => {
            eprintln!(
                "usage: bench_config OUT_DIR BUNDLE_PEM A_PEER_ADDR B_PEER_ADDR BACKEND_ADDR SERVICES [TCP_PORT TCP_BACKEND]"
            );
            std::process::exit(64);
        }
    };
    let [out, bundle, a_peer, b_peer, backend, services] = fixed else {
        unreachable!("six arguments");
    };
    let bundle = std::fs::read_to_string(bundle).expect("read the trust bundle");
    let services: usize = services.parse().expect("SERVICES is a number");
    let peer = |cluster: &str, addr: &str| Peer {
        cluster: cluster.into(),
        gateway_addresses: vec![addr.into()],
        trust_domain: format!("{cluster}.causeway.mesh"),
        trust_bundle_pem: bundle.clone(),
        locality: Default::default(),
    };
    let port = proto::Port {
        name: "http".into(),
        protocol: proto::Protocol::Tcp as i32,
        port: 80,
        app_protocol: AppProtocol::Http as i32,
        gateway_port: 0,
    };
    let outbound = (0..services)
        .map(|i| OutboundService {
            namespace: "bench".into(),
            name: if i == 0 {
                "echo".into()
            } else {
                format!("svc-{i}")
            },
            vip: format!("240.0.{}.{}", i / 250, i % 250 + 1),
            ports: vec![port.clone()],
            candidates: vec![Candidate {
                cluster: "west".into(),
                priority: 1,
                weight: 100,
                healthy: true,
                drained: false,
                ready_endpoints: 1,
            }],
            policy: None,
            header_routes: vec![],
            endpoints: vec![],
        })
        .collect();
    let mut outbound: Vec<OutboundService> = outbound;
    let mut sink_inbound = Vec::new();
    if let Some((tcp_port, tcp_backend)) = tcp {
        let sink_port = proto::Port {
            name: "tcp".into(),
            protocol: proto::Protocol::Tcp as i32,
            port: 5201,
            app_protocol: AppProtocol::Opaque as i32,
            gateway_port: tcp_port.parse().expect("TCP_PORT is a port"),
        };
        let mut sink = outbound[0].clone();
        sink.name = "sink".into();
        sink.vip = "240.1.0.1".into();
        sink.ports = vec![sink_port.clone()];
        outbound.push(sink);
        let port = proto::Port {
            gateway_port: 0,
            ..sink_port
        };
        sink_inbound.push(inbound("sink", port, tcp_backend));
    }
    let a = ConfigSnapshot {
        version: 1,
        cluster: "east".into(),
        peers: vec![peer("west", b_peer)],
        inbound: vec![],
        outbound,
        ..Default::default()
    };
    let b = ConfigSnapshot {
        version: 1,
        cluster: "west".into(),
        peers: vec![peer("east", a_peer)],
        inbound: std::iter::once(inbound("echo", port, backend))
            .chain(sink_inbound)
            .collect(),
        outbound: vec![],
        ..Default::default()
    };
    std::fs::create_dir_all(out).expect("create OUT_DIR");
    std::fs::write(format!("{out}/a.pb"), a.encode_to_vec()).expect("write a.pb");
    std::fs::write(format!("{out}/b.pb"), b.encode_to_vec()).expect("write b.pb");
}
