//! Benchmark fixture (not a test): serves a synthetic mesh with causeway-dns, or writes the same
//! names as a zone file and a dnsperf query file so another server can serve them. `bench/run.sh`
//! drives it.
//!
//! ```text
//! bench_server serve <listen-addr>          # current_thread runtime: one worker
//! bench_server files <zone-file> <query-file>
//! ```

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::net::{IpAddr, Ipv4Addr};
use std::sync::Arc;

use causeway_api::snapshot::{ExportView, ServiceView};
use causeway_api::{
    ClusterId, ExportConditions, ExportRecord, Import, MeshSnapshot, Protocol, ServiceKey,
    ServicePort, ServiceType,
};
use causeway_dns::{DnsConfig, DnsServer};

/// ClusterSetIP services `svc-<i>.bench`: even ones exported locally (local-first answers the
/// local address), odd ones remote only (answer: the ClusterSetIP).
const SERVICES: u32 = 1000;

fn local_ip(i: u32) -> IpAddr {
    IpAddr::V4(Ipv4Addr::from(0x0a00_0000 + i))
}

fn vip(i: u32) -> IpAddr {
    IpAddr::V4(Ipv4Addr::from(0xf000_0000 + i))
}

fn export(service_ip: IpAddr) -> ExportView {
    ExportView {
        record: std::sync::Arc::new(ExportRecord {
            created_unix_ms: 1,
            ready_endpoints: 1,
            service_ip: Some(service_ip),
            ..ExportRecord::default()
        }),
        conditions: ExportConditions::default(),
        stale: false,
        drained: false,
    }
}

pub(crate) fn mesh() -> MeshSnapshot {
    let east = ClusterId::new("east").unwrap();
    let west = ClusterId::new("west").unwrap();
    let mut services = BTreeMap::new();
    for i in 0..SERVICES {
        let key = ServiceKey::new("bench", format!("svc-{i}")).unwrap();
        let mut exports = BTreeMap::new();
        exports.insert(
            west.clone(),
            export(IpAddr::V4(Ipv4Addr::new(10, 99, 0, 1))),
        );
        if i % 2 == 0 {
            exports.insert(east.clone(), export(local_ip(i)));
        }
        let import = Import {
            key: key.clone(),
            service_type: ServiceType::ClusterSetIP,
            ports: vec![ServicePort {
                name: "http".into(),
                protocol: Protocol::Tcp,
                port: 80,
                app_protocol: None,
            }],
            session_affinity: Default::default(),
            clusters: exports.keys().cloned().collect(),
            conflict: false,
            exported: Default::default(),
        };
        services.insert(
            key,
            ServiceView {
                import,
                vip: Some(vip(i)),
                exports,
                endpoint_vips: Default::default(),
            }
            .into(),
        );
    }
    MeshSnapshot {
        version: 1,
        revision: 1,
        local_cluster: Some(east),
        synced: true,
        services,
        ..Default::default()
    }
}

/// The zone Causeway serves for `mesh()`, as a zone file, and a query mix: 90% A of services
/// (half local, half via the ClusterSetIP), 5% SRV, 5% unknown names (NXDOMAIN).
pub(crate) fn files() -> (String, String) {
    let mut zone = String::from(
        "$ORIGIN clusterset.local.\n$TTL 5\n\
         @ SOA ns.dns hostmaster 1 60 10 3600 5\n\
         @ NS ns.dns\n\
         ns.dns A 127.0.0.1\n\
         dns-version TXT \"1.0.0\"\n",
    );
    let mut queries = String::new();
    for i in 0..SERVICES {
        let ip = if i % 2 == 0 { local_ip(i) } else { vip(i) };
        let name = format!("svc-{i}.bench.svc");
        writeln!(zone, "{name} A {ip}").unwrap();
        writeln!(zone, "_http._tcp.{name} SRV 0 100 80 {name}").unwrap();
    }
    for i in 0..SERVICES * 2 {
        let s = (i * 7919) % SERVICES;
        match i % 20 {
            0 => writeln!(queries, "_http._tcp.svc-{s}.bench.svc.clusterset.local SRV"),
            1 => writeln!(queries, "nope-{s}.bench.svc.clusterset.local A"),
            _ => writeln!(queries, "svc-{s}.bench.svc.clusterset.local A"),
        }
        .unwrap();
    }
    (zone, queries)
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().collect();
    match args.get(1).map(String::as_str) {
        Some("files") if args.len() == 4 => {
            let (zone, queries) = files();
            std::fs::write(&args[2], zone)?;
            std::fs::write(&args[3], queries)?;
            Ok(())
        }
        Some("serve") if args.len() == 3 => {
            let config = DnsConfig {
                listen: args[2].parse()?,
                ..DnsConfig::default()
            };
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()?;
            runtime.block_on(async {
                let (_tx, rx) = tokio::sync::watch::channel(Arc::new(mesh()));
                let registry = prometheus::Registry::new();
                let server = DnsServer::bind(config, rx, &registry).await?;
                println!("listening on {}", server.local_addr());
                server
                    .run(async {
                        let _ = tokio::signal::ctrl_c().await;
                    })
                    .await?;
                Ok(())
            })
        }
        _ => {
            eprintln!("usage: bench_server serve <addr> | files <zone-file> <query-file>");
            std::process::exit(64);
        }
    }
}
