//! The test mesh, a server running on a loopback port, and `dig` with its output parsed.

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use causeway_api::snapshot::{ClusterState, ClusterView, ExportView, ServiceView};
use causeway_api::{
    ClusterId, ClusterRecord, Endpoint, ExportConditions, ExportRecord, Import, MeshSnapshot,
    Protocol, ServiceKey, ServicePort, ServiceType,
};
use causeway_dns::{DnsConfig, DnsServer};
use tokio::sync::{oneshot, watch};
use tokio::task::JoinHandle;

pub(crate) const WEB: &str = "web.prod.svc.clusterset.local";
pub(crate) const WEB_LOCAL_IP: &str = "10.0.0.10";
pub(crate) const WEB_VIP: &str = "240.0.0.1";
/// Exported by west only, IPv6 ClusterSetIP.
pub(crate) const API: &str = "api.prod.svc.clusterset.local";
pub(crate) const API_VIP: &str = "fd00:240::2";
/// Headless, hostnames db-0 (east) and db-1 (west).
pub(crate) const DB: &str = "db.prod.svc.clusterset.local";
/// Headless, 40 endpoints: fits 1232 bytes, not 512.
pub(crate) const MID: &str = "mid.prod.svc.clusterset.local";
pub(crate) const MID_ENDPOINTS: usize = 40;
/// Headless, 200 endpoints: truncated over UDP whatever the buffer size.
pub(crate) const BIG: &str = "big.prod.svc.clusterset.local";
pub(crate) const BIG_ENDPOINTS: usize = 200;

/// `MeshSnapshot::services` holds `ServiceView`s or `Arc<ServiceView>`s (shared between snapshots);
/// tests edit either in place.
pub(crate) trait ViewMut {
    fn view_mut(&mut self) -> &mut ServiceView;
}

impl ViewMut for ServiceView {
    fn view_mut(&mut self) -> &mut ServiceView {
        self
    }
}

impl ViewMut for std::sync::Arc<ServiceView> {
    fn view_mut(&mut self) -> &mut ServiceView {
        std::sync::Arc::make_mut(self)
    }
}

pub(crate) fn cid(s: &str) -> ClusterId {
    ClusterId::new(s).unwrap()
}

pub(crate) fn key(ns: &str, name: &str) -> ServiceKey {
    ServiceKey::new(ns, name).unwrap()
}

pub(crate) fn port(name: &str, protocol: Protocol, port: u16) -> ServicePort {
    ServicePort {
        name: name.to_string(),
        protocol,
        port,
        app_protocol: None,
    }
}

pub(crate) fn endpoint(addr: IpAddr, hostname: Option<&str>) -> Endpoint {
    Endpoint {
        address: addr,
        port: None,
        ready: true,
        hostname: hostname.map(str::to_string),
    }
}

pub(crate) fn export(
    ty: ServiceType,
    ports: &[ServicePort],
    ready: u32,
    service_ip: Option<&str>,
    endpoints: Vec<Endpoint>,
) -> ExportView {
    ExportView {
        record: std::sync::Arc::new(ExportRecord {
            ports: ports.to_vec().into(),
            service_type: ty,
            created_unix_ms: 1_700_000_000_000,
            ready_endpoints: ready,
            endpoints,
            service_ip: service_ip.map(|s| s.parse().unwrap()),
            ..ExportRecord::default()
        }),
        conditions: ExportConditions::default(),
        stale: false,
        drained: false,
    }
}

pub(crate) fn add_service(
    s: &mut MeshSnapshot,
    k: ServiceKey,
    ty: ServiceType,
    ports: Vec<ServicePort>,
    vip: Option<&str>,
    exports: Vec<(&str, ExportView)>,
) {
    let view = ServiceView {
        import: Import {
            key: k.clone(),
            service_type: ty,
            ports,
            session_affinity: Default::default(),
            clusters: exports.iter().map(|(c, _)| cid(c)).collect(),
            conflict: false,
            exported: Default::default(),
        },
        vip: vip.map(|v| v.parse().unwrap()),
        exports: exports.into_iter().map(|(c, e)| (cid(c), e)).collect(),
        endpoint_vips: Default::default(),
    };
    s.services.insert(k, view.into());
}

/// The mesh as the federator of cluster `east` sees it.
pub(crate) fn mesh() -> MeshSnapshot {
    let mut s = MeshSnapshot {
        version: 1,
        revision: 10,
        local_cluster: Some(cid("east")),
        synced: true,
        ..Default::default()
    };
    for c in ["east", "west"] {
        s.clusters.insert(
            cid(c),
            ClusterView {
                record: ClusterRecord {
                    schema: causeway_api::SCHEMA_VERSION,
                    gateway_addresses: vec![format!("{c}.gw:15443")],
                    trust_domain: format!("{c}.causeway"),
                    trust_bundle_pem: String::new(),
                    locality: Default::default(),
                    federator_version: "test".into(),
                    certificate_not_after: None,
                },
                state: ClusterState::Up,
                last_change_unix_ms: 0,
                stale_since_unix_ms: None,
                synced_revision: Some(1),
            },
        );
    }

    let ip = ServiceType::ClusterSetIP;
    let web_ports = vec![
        port("http", Protocol::Tcp, 80),
        port("grpc", Protocol::Tcp, 9090),
        port("dns", Protocol::Udp, 53),
        port("", Protocol::Tcp, 8080),
    ];
    add_service(
        &mut s,
        key("prod", "web"),
        ip,
        web_ports.clone(),
        Some(WEB_VIP),
        vec![
            (
                "east",
                export(ip, &web_ports, 2, Some(WEB_LOCAL_IP), vec![]),
            ),
            ("west", export(ip, &web_ports, 3, Some("10.1.0.10"), vec![])),
        ],
    );
    let api_ports = vec![port("https", Protocol::Tcp, 443)];
    add_service(
        &mut s,
        key("prod", "api"),
        ip,
        api_ports.clone(),
        Some(API_VIP),
        vec![("west", export(ip, &api_ports, 1, Some("10.1.0.20"), vec![]))],
    );

    let hl = ServiceType::Headless;
    let db_ports = vec![port("pg", Protocol::Tcp, 5432)];
    add_service(
        &mut s,
        key("prod", "db"),
        hl,
        db_ports.clone(),
        None,
        vec![
            (
                "east",
                export(
                    hl,
                    &db_ports,
                    1,
                    None,
                    vec![
                        endpoint("10.0.5.1".parse().unwrap(), Some("db-0")),
                        endpoint("fd00:5::1".parse().unwrap(), Some("db-0")),
                        Endpoint {
                            ready: false,
                            ..endpoint("10.0.5.9".parse().unwrap(), Some("db-9"))
                        },
                    ],
                ),
            ),
            (
                "west",
                export(
                    hl,
                    &db_ports,
                    1,
                    None,
                    vec![endpoint("10.1.5.1".parse().unwrap(), Some("db-1"))],
                ),
            ),
        ],
    );
    for (name, n) in [("mid", MID_ENDPOINTS), ("big", BIG_ENDPOINTS)] {
        let eps = |base: u8, count: usize| {
            (0..count)
                .map(|i| {
                    endpoint(
                        IpAddr::from([10, base, (i / 250) as u8, (i % 250 + 1) as u8]),
                        None,
                    )
                })
                .collect::<Vec<_>>()
        };
        let half = n / 2;
        add_service(
            &mut s,
            key("prod", name),
            hl,
            vec![],
            None,
            vec![
                ("east", export(hl, &[], half as u32, None, eps(20, half))),
                (
                    "west",
                    export(hl, &[], (n - half) as u32, None, eps(21, n - half)),
                ),
            ],
        );
    }
    s
}

/// A DnsServer running in the test's runtime; stops when dropped.
pub(crate) struct TestServer {
    pub(crate) addr: SocketAddr,
    snapshots: Option<watch::Sender<Arc<MeshSnapshot>>>,
    pub(crate) registry: prometheus::Registry,
    shutdown: Option<oneshot::Sender<()>>,
    task: Option<JoinHandle<Result<(), causeway_dns::DnsError>>>,
}

impl TestServer {
    pub(crate) async fn start(snapshot: MeshSnapshot) -> Self {
        Self::start_with(DnsConfig::default(), snapshot).await
    }

    pub(crate) async fn start_with(config: DnsConfig, snapshot: MeshSnapshot) -> Self {
        let config = DnsConfig {
            listen: "127.0.0.1:0".parse().unwrap(),
            ..config
        };
        let (tx, rx) = watch::channel(Arc::new(snapshot));
        let registry = prometheus::Registry::new();
        let server = DnsServer::bind(config, rx, &registry).await.expect("bind");
        let addr = server.local_addr();
        assert_ne!(addr.port(), 0);
        let (stop, stopped) = oneshot::channel::<()>();
        let task = tokio::spawn(server.run(async move {
            let _ = stopped.await;
        }));
        TestServer {
            addr,
            snapshots: Some(tx),
            registry,
            shutdown: Some(stop),
            task: Some(task),
        }
    }

    /// Publishes a new snapshot, as the federator's mesh view does.
    pub(crate) fn publish(&self, snapshot: MeshSnapshot) {
        self.snapshots
            .as_ref()
            .expect("publisher present")
            .send_replace(Arc::new(snapshot));
    }

    /// Drops the snapshot sender, as a federator whose mesh view ended would.
    pub(crate) fn drop_publisher(&mut self) {
        self.snapshots = None;
    }

    pub(crate) async fn dig(&self, args: &[&str]) -> Dig {
        dig(self.addr, args).await
    }

    /// Stops the server and checks it ended cleanly.
    pub(crate) async fn stop(mut self) {
        let _ = self.shutdown.take().unwrap().send(());
        let task = self.task.take().unwrap();
        tokio::time::timeout(Duration::from_secs(5), task)
            .await
            .expect("server stops within 5s")
            .expect("server task")
            .expect("server ends without error");
    }

    pub(crate) fn metrics_text(&self) -> String {
        prometheus::TextEncoder::new()
            .encode_to_string(&self.registry.gather())
            .unwrap()
    }
}

impl Drop for TestServer {
    fn drop(&mut self) {
        if let Some(stop) = self.shutdown.take() {
            let _ = stop.send(());
        }
    }
}

/// One resource record as dig prints it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Rr {
    pub(crate) name: String,
    pub(crate) ttl: u32,
    pub(crate) class: String,
    pub(crate) rtype: String,
    pub(crate) data: String,
}

/// What dig printed, parsed.
#[derive(Debug)]
pub(crate) struct Dig {
    pub(crate) status: String,
    pub(crate) flags: Vec<String>,
    pub(crate) answer: Vec<Rr>,
    pub(crate) authority: Vec<Rr>,
    /// The `udp:` size of the OPT pseudo-section, when there is one.
    pub(crate) edns_udp: Option<u16>,
    /// `UDP` or `TCP`, from the `;; SERVER:` line.
    pub(crate) transport: String,
    pub(crate) raw: String,
}

impl Dig {
    pub(crate) fn has_flag(&self, f: &str) -> bool {
        self.flags.iter().any(|x| x == f)
    }

    /// The data of the answer records of one type, sorted.
    pub(crate) fn data(&self, rtype: &str) -> Vec<String> {
        let mut v: Vec<String> = self
            .answer
            .iter()
            .filter(|r| r.rtype == rtype)
            .map(|r| r.data.clone())
            .collect();
        v.sort();
        v
    }

    pub(crate) fn assert_nodata(&self) {
        assert_eq!(self.status, "NOERROR", "{}", self.raw);
        assert!(self.answer.is_empty(), "{}", self.raw);
        self.assert_soa_in_authority();
    }

    pub(crate) fn assert_nxdomain(&self) {
        assert_eq!(self.status, "NXDOMAIN", "{}", self.raw);
        assert!(self.answer.is_empty(), "{}", self.raw);
        self.assert_soa_in_authority();
    }

    pub(crate) fn assert_soa_in_authority(&self) {
        assert!(self.has_flag("aa"), "{}", self.raw);
        assert_eq!(self.authority.len(), 1, "{}", self.raw);
        let soa = &self.authority[0];
        assert_eq!(
            (soa.name.as_str(), soa.rtype.as_str()),
            ("clusterset.local.", "SOA"),
            "{}",
            self.raw
        );
    }
}

/// Runs the real `dig` against `addr` without recursion, one try.
pub(crate) async fn dig(addr: SocketAddr, args: &[&str]) -> Dig {
    let out = tokio::process::Command::new("dig")
        .arg(format!("@{}", addr.ip()))
        .arg("-p")
        .arg(addr.port().to_string())
        .args(["+norecurse", "+tries=1", "+time=3", "+nocookie"])
        .args(args)
        .output()
        .await
        .expect("dig runs (package bind9-dnsutils)");
    let raw = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "dig {args:?} failed: {raw}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    parse_dig(raw)
}

fn parse_dig(raw: String) -> Dig {
    let mut dig = Dig {
        status: String::new(),
        flags: Vec::new(),
        answer: Vec::new(),
        authority: Vec::new(),
        edns_udp: None,
        transport: String::new(),
        raw: String::new(),
    };
    #[derive(PartialEq)]
    enum Section {
        Other,
        Answer,
        Authority,
    }
    let mut section = Section::Other;
    for line in raw.lines() {
        if let Some(rest) = line.strip_prefix(";; ->>HEADER<<-") {
            // A retried query prints a second header: the last one is the answer dig used.
            dig.answer.clear();
            dig.authority.clear();
            dig.edns_udp = None;
            if let Some(s) = rest.split("status: ").nth(1) {
                dig.status = s.split(',').next().unwrap_or("").trim().to_string();
            }
        } else if let Some(rest) = line.strip_prefix(";; flags:") {
            let flags = rest.split(';').next().unwrap_or("");
            dig.flags = flags.split_whitespace().map(str::to_string).collect();
        } else if let Some(rest) = line.strip_prefix("; EDNS:") {
            dig.edns_udp = rest
                .split("udp: ")
                .nth(1)
                .and_then(|s| s.trim().parse().ok());
        } else if let Some(rest) = line.strip_prefix(";; SERVER:") {
            dig.transport = rest
                .rsplit('(')
                .next()
                .unwrap_or("")
                .trim_end_matches(')')
                .to_string();
        } else if line.starts_with(";; ANSWER SECTION:") {
            section = Section::Answer;
        } else if line.starts_with(";; AUTHORITY SECTION:") {
            section = Section::Authority;
        } else if line.trim().is_empty() || line.starts_with(';') {
            section = Section::Other;
        } else if section != Section::Other {
            let mut f = line.split_whitespace();
            let rr = Rr {
                name: f.next().unwrap_or("").to_string(),
                ttl: f.next().and_then(|t| t.parse().ok()).unwrap_or(u32::MAX),
                class: f.next().unwrap_or("").to_string(),
                rtype: f.next().unwrap_or("").to_string(),
                data: f.collect::<Vec<_>>().join(" "),
            };
            match section {
                Section::Answer => dig.answer.push(rr),
                Section::Authority => dig.authority.push(rr),
                Section::Other => {}
            }
        }
    }
    dig.raw = raw;
    dig
}
