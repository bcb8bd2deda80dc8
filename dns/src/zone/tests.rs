use std::net::SocketAddr;
use std::str::FromStr;

use causeway_api::snapshot::{ClusterState, ClusterView, ExportView};
use causeway_api::{
    ClusterRecord, DrillRecord, ExportConditions, ExportRecord, HealthRecord, Import, Protocol,
    ServicePort,
};

use super::*;

fn cid(s: &str) -> ClusterId {
    ClusterId::new(s).unwrap()
}

fn key(ns: &str, name: &str) -> ServiceKey {
    ServiceKey::new(ns, name).unwrap()
}

fn port(name: &str, protocol: Protocol, port: u16) -> ServicePort {
    ServicePort {
        name: name.to_string(),
        protocol,
        port,
        app_protocol: None,
    }
}

fn export(ready: u32, service_ip: Option<&str>, endpoints: Vec<Endpoint>) -> ExportView {
    ExportView {
        record: std::sync::Arc::new(ExportRecord {
            created_unix_ms: 1,
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

fn ep(addr: &str, ready: bool, hostname: Option<&str>) -> Endpoint {
    Endpoint {
        address: addr.parse().unwrap(),
        port: None,
        ready,
        hostname: hostname.map(str::to_string),
    }
}

fn service(
    k: &ServiceKey,
    ty: ServiceType,
    ports: Vec<ServicePort>,
    vip: Option<&str>,
    exports: Vec<(&str, ExportView)>,
) -> ServiceView {
    ServiceView {
        import: Import {
            key: k.clone(),
            service_type: ty,
            ports,
            session_affinity: Default::default(),
            clusters: exports.iter().map(|(c, _)| cid(c)).collect(),
            conflict: false,
            exported: Default::default(),
        },
        vip: vip.map(|s| s.parse().unwrap()),
        exports: exports.into_iter().map(|(c, e)| (cid(c), e)).collect(),
        endpoint_vips: Default::default(),
    }
}

/// east is local; prod/web exported by east (10.0.0.10) and west, vip 240.0.0.1; prod/db
/// headless in east and west.
fn snapshot() -> MeshSnapshot {
    let mut s = MeshSnapshot {
        version: 7,
        synced: true,
        local_cluster: Some(cid("east")),
        ..Default::default()
    };
    for c in ["east", "west"] {
        s.clusters.insert(
            cid(c),
            ClusterView {
                record: ClusterRecord {
                    schema: causeway_api::SCHEMA_VERSION,
                    gateway_addresses: Vec::new(),
                    trust_domain: format!("{c}.example"),
                    trust_bundle_pem: String::new(),
                    locality: Default::default(),
                    federator_version: String::new(),
                    certificate_not_after: None,
                },
                state: ClusterState::Up,
                last_change_unix_ms: 0,
                stale_since_unix_ms: None,
                synced_revision: Some(1),
            },
        );
    }
    let web = key("prod", "web");
    s.services.insert(
        web.clone(),
        service(
            &web,
            ServiceType::ClusterSetIP,
            vec![
                port("http", Protocol::Tcp, 80),
                port("dns", Protocol::Udp, 53),
            ],
            Some("240.0.0.1"),
            vec![
                ("east", export(2, Some("10.0.0.10"), vec![])),
                ("west", export(3, Some("10.1.0.10"), vec![])),
            ],
        )
        .into(),
    );
    let db = key("prod", "db");
    let mut east = export(
        2,
        None,
        vec![
            ep("10.0.1.1", true, Some("db-0")),
            ep("10.0.1.2", false, Some("db-1")),
            ep("fd00::1", true, Some("db-0")),
        ],
    );
    east.record_mut().service_type = ServiceType::Headless;
    let mut west = export(
        1,
        None,
        vec![
            ep("10.1.1.1", true, Some("db-2")),
            ep("10.1.1.9", true, None),
        ],
    );
    west.record_mut().service_type = ServiceType::Headless;
    s.services.insert(
        db.clone(),
        service(
            &db,
            ServiceType::Headless,
            vec![port("pg", Protocol::Tcp, 5432)],
            None,
            vec![("east", east), ("west", west)],
        )
        .into(),
    );
    s
}

fn zone(policy: AnswerPolicy) -> Zone {
    Zone::new(&DnsConfig {
        listen: SocketAddr::from(([127, 0, 0, 1], 5353)),
        default_policy: policy,
        ..DnsConfig::default()
    })
}

fn name(s: &str) -> LowerName {
    LowerName::from(Name::from_str(s).unwrap())
}

fn ask(z: &Zone, s: &MeshSnapshot, n: &str, t: RecordType) -> Answer {
    let n = name(n);
    assert!(z.contains(&n));
    z.lookup(s, &n, t)
}

fn rdata(a: &Answer) -> Vec<String> {
    a.answers.iter().map(|r| r.data.to_string()).collect()
}

#[test]
fn local_first_answers_the_local_address_while_it_serves() {
    let z = zone(AnswerPolicy::LocalFirst);
    let mut s = snapshot();
    let a = ask(&z, &s, "web.prod.svc.clusterset.local.", RecordType::A);
    assert_eq!(a.rcode, ResponseCode::NoError);
    assert_eq!(rdata(&a), ["10.0.0.10"]);
    assert_eq!(a.answers[0].ttl, 5);

    // Local endpoints gone: the ClusterSetIP.
    let web = key("prod", "web");
    let east = cid("east");
    s.services
        .get_mut(&web)
        .unwrap()
        .view_mut()
        .exports
        .get_mut(&east)
        .unwrap()
        .record_mut()
        .ready_endpoints = 0;
    assert_eq!(
        rdata(&ask(
            &z,
            &s,
            "web.prod.svc.clusterset.local.",
            RecordType::A
        )),
        ["240.0.0.1"]
    );

    // Drained by a drill (even before the export's flag follows): the ClusterSetIP.
    let mut s = snapshot();
    s.drills.insert(
        "d1".into(),
        DrillRecord {
            schema: causeway_api::SCHEMA_VERSION,
            service: web.clone(),
            cluster: east.clone(),
            start_unix_ms: 0,
            end_unix_ms: 1,
            pending: false,
            observers: Vec::new(),
            probe: None,
            origin: String::new(),
        },
    );
    assert_eq!(
        rdata(&ask(
            &z,
            &s,
            "web.prod.svc.clusterset.local.",
            RecordType::A
        )),
        ["240.0.0.1"]
    );

    // Not exported locally at all.
    let mut s = snapshot();
    s.services
        .get_mut(&web)
        .unwrap()
        .view_mut()
        .exports
        .remove(&east);
    assert_eq!(
        rdata(&ask(
            &z,
            &s,
            "web.prod.svc.clusterset.local.",
            RecordType::A
        )),
        ["240.0.0.1"]
    );
}

#[test]
fn via_gateway_always_answers_the_clusterset_ip() {
    let s = snapshot();
    let z = zone(AnswerPolicy::ViaGateway);
    assert_eq!(
        rdata(&ask(
            &z,
            &s,
            "web.prod.svc.clusterset.local.",
            RecordType::A
        )),
        ["240.0.0.1"]
    );

    let mut overrides = BTreeMap::new();
    overrides.insert(key("prod", "web"), AnswerPolicy::ViaGateway);
    let z = Zone::new(&DnsConfig {
        policy_overrides: overrides,
        ..DnsConfig::default()
    });
    assert_eq!(
        rdata(&ask(
            &z,
            &s,
            "web.prod.svc.clusterset.local.",
            RecordType::A
        )),
        ["240.0.0.1"]
    );
}

#[test]
fn no_address_at_all_is_nodata_with_soa() {
    let mut s = snapshot();
    let web = key("prod", "web");
    let view = s.services.get_mut(&web).unwrap().view_mut();
    view.vip = None;
    view.exports
        .get_mut(&cid("east"))
        .unwrap()
        .record_mut()
        .ready_endpoints = 0;
    let a = ask(
        &zone(AnswerPolicy::LocalFirst),
        &s,
        "web.prod.svc.clusterset.local.",
        RecordType::A,
    );
    assert_eq!(a.rcode, ResponseCode::NoError);
    assert!(a.answers.is_empty());
    assert_eq!(a.authority[0].record_type(), RecordType::SOA);
    // Awaiting its address is a passing state: not to be cached.
    assert_eq!(a.authority[0].ttl, 0);
    match &a.authority[0].data {
        RData::SOA(soa) => assert_eq!(soa.minimum, 0),
        other => panic!("{other:?}"),
    }
    // An IPv4 ClusterSetIP asked for AAAA is NODATA as the zone's TTL says.
    let aaaa = ask(
        &zone(AnswerPolicy::LocalFirst),
        &snapshot(),
        "web.prod.svc.clusterset.local.",
        RecordType::AAAA,
    );
    assert!(aaaa.answers.is_empty());
    assert!(aaaa.authority[0].ttl > 0);
}

#[test]
fn names_types_and_case() {
    let z = zone(AnswerPolicy::LocalFirst);
    let s = snapshot();
    // Other type of a known name: NODATA with the SOA.
    let a = ask(&z, &s, "web.prod.svc.clusterset.local.", RecordType::AAAA);
    assert_eq!((a.rcode, a.answers.len()), (ResponseCode::NoError, 0));
    assert_eq!(a.authority[0].record_type(), RecordType::SOA);
    // Case-insensitive.
    assert_eq!(
        rdata(&ask(
            &z,
            &s,
            "WEB.Prod.SVC.ClusterSet.Local.",
            RecordType::A
        )),
        ["10.0.0.10"]
    );
    // Unknown names: NXDOMAIN with the SOA.
    for n in [
        "nope.prod.svc.clusterset.local.",
        "web.nope.svc.clusterset.local.",
        "east.web.prod.svc.clusterset.local.",
        "x.east.web.prod.svc.clusterset.local.",
        "a.b.c.d.e.f.svc.clusterset.local.",
        "_grpc._tcp.web.prod.svc.clusterset.local.",
        "_http._udp.web.prod.svc.clusterset.local.",
        "_sctp.web.prod.svc.clusterset.local.",
        "other.clusterset.local.",
    ] {
        let a = ask(&z, &s, n, RecordType::A);
        assert_eq!(a.rcode, ResponseCode::NXDomain, "{n}");
        assert_eq!(a.authority[0].record_type(), RecordType::SOA, "{n}");
    }
    // Empty non-terminals exist.
    for n in [
        "svc.clusterset.local.",
        "prod.svc.clusterset.local.",
        "_tcp.web.prod.svc.clusterset.local.",
        "east.db.prod.svc.clusterset.local.",
        "dns.clusterset.local.",
    ] {
        let a = ask(&z, &s, n, RecordType::A);
        assert_eq!(
            (a.rcode, a.answers.len()),
            (ResponseCode::NoError, 0),
            "{n}"
        );
    }
    assert!(!z.contains(&name("example.com.")));
    assert!(!z.contains(&name("local.")));
    assert!(!z.contains(&name("xclusterset.local.")));
}

#[test]
fn apex_version_and_name_server() {
    let z = zone(AnswerPolicy::LocalFirst);
    let s = snapshot();
    let soa = ask(&z, &s, "clusterset.local.", RecordType::SOA);
    assert_eq!(
        rdata(&soa)[0],
        "ns.dns.clusterset.local. hostmaster.clusterset.local. 7 60 10 3600 5"
    );
    assert_eq!(
        rdata(&ask(&z, &s, "clusterset.local.", RecordType::NS)),
        ["ns.dns.clusterset.local."]
    );
    assert_eq!(
        ask(&z, &s, "clusterset.local.", RecordType::ANY)
            .answers
            .len(),
        2
    );
    assert_eq!(
        rdata(&ask(
            &z,
            &s,
            "dns-version.clusterset.local.",
            RecordType::TXT
        )),
        ["1.0.0"]
    );
    assert_eq!(
        rdata(&ask(&z, &s, "ns.dns.clusterset.local.", RecordType::A)),
        ["127.0.0.1"]
    );
}

#[test]
fn srv_for_named_ports() {
    let z = zone(AnswerPolicy::LocalFirst);
    let s = snapshot();
    let a = ask(
        &z,
        &s,
        "_http._tcp.web.prod.svc.clusterset.local.",
        RecordType::SRV,
    );
    assert_eq!(rdata(&a), ["0 100 80 web.prod.svc.clusterset.local."]);
    let a = ask(
        &z,
        &s,
        "_dns._udp.web.prod.svc.clusterset.local.",
        RecordType::SRV,
    );
    assert_eq!(rdata(&a), ["0 100 53 web.prod.svc.clusterset.local."]);
    // Headless: one SRV per serving endpoint, a hostname-less one by its dashed address
    // (KEP-1645's system-assigned name), which answers that address.
    let a = ask(
        &z,
        &s,
        "_pg._tcp.db.prod.svc.clusterset.local.",
        RecordType::SRV,
    );
    assert_eq!(
        rdata(&a),
        [
            "0 100 5432 db-0.east.db.prod.svc.clusterset.local.",
            "0 100 5432 db-2.west.db.prod.svc.clusterset.local.",
            "0 100 5432 10-1-1-9.west.db.prod.svc.clusterset.local."
        ]
    );
    assert_eq!(
        rdata(&ask(
            &z,
            &s,
            "10-1-1-9.west.db.prod.svc.clusterset.local.",
            RecordType::A
        )),
        ["10.1.1.9"]
    );
}

#[test]
fn headless_answers_ready_endpoints_of_serving_clusters() {
    let z = zone(AnswerPolicy::LocalFirst);
    let mut s = snapshot();
    let db = "db.prod.svc.clusterset.local.";
    assert_eq!(
        rdata(&ask(&z, &s, db, RecordType::A)),
        ["10.0.1.1", "10.1.1.1", "10.1.1.9"]
    );
    assert_eq!(rdata(&ask(&z, &s, db, RecordType::AAAA)), ["fd00::1"]);
    assert_eq!(
        rdata(&ask(
            &z,
            &s,
            "db-0.east.db.prod.svc.clusterset.local.",
            RecordType::A
        )),
        ["10.0.1.1"]
    );
    assert_eq!(
        rdata(&ask(
            &z,
            &s,
            "DB-0.east.db.prod.svc.clusterset.local.",
            RecordType::AAAA
        )),
        ["fd00::1"]
    );
    // Not ready: no name.
    let a = ask(
        &z,
        &s,
        "db-1.east.db.prod.svc.clusterset.local.",
        RecordType::A,
    );
    assert_eq!(a.rcode, ResponseCode::NXDomain);
    // Hostname in the wrong cluster.
    let a = ask(
        &z,
        &s,
        "db-0.west.db.prod.svc.clusterset.local.",
        RecordType::A,
    );
    assert_eq!(a.rcode, ResponseCode::NXDomain);

    // west's gateway seen down from east: west's endpoints leave the pooled answer.
    s.health.entry(cid("east")).or_default().insert(
        cid("west"),
        HealthRecord {
            schema: causeway_api::SCHEMA_VERSION,
            up: false,
            suspect: false,
            rtt_micros: 0,
            observed_unix_ms: 0,
        },
    );
    assert_eq!(rdata(&ask(&z, &s, db, RecordType::A)), ["10.0.1.1"]);
    // ... unless nothing else is left.
    let dbk = key("prod", "db");
    s.services
        .get_mut(&dbk)
        .unwrap()
        .view_mut()
        .exports
        .get_mut(&cid("east"))
        .unwrap()
        .drained = true;
    assert_eq!(
        rdata(&ask(&z, &s, db, RecordType::A)),
        ["10.1.1.1", "10.1.1.9"]
    );
    // Drained clusters keep their pinned hostnames.
    assert_eq!(
        rdata(&ask(
            &z,
            &s,
            "db-0.east.db.prod.svc.clusterset.local.",
            RecordType::A
        )),
        ["10.0.1.1"]
    );
}

/// `MeshSnapshot::services` holds `ServiceView`s or `Arc<ServiceView>`s (shared between snapshots);
/// tests edit either in place.
trait ViewMut {
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

#[test]
fn a_headless_service_without_ready_endpoints_does_not_exist() {
    let z = zone(AnswerPolicy::LocalFirst);
    let mut s = snapshot();
    let key = ServiceKey::new("prod", "db").unwrap();
    let view = std::sync::Arc::make_mut(s.services.get_mut(&key).unwrap());
    for e in view.exports.values_mut() {
        for ep in &mut e.record_mut().endpoints {
            ep.ready = false;
        }
    }
    for name in [
        "db.prod.svc.clusterset.local.",
        "_pg._tcp.db.prod.svc.clusterset.local.",
        "east.db.prod.svc.clusterset.local.",
    ] {
        for t in [RecordType::A, RecordType::SRV] {
            let a = z.lookup(&s, &LowerName::from(Name::from_ascii(name).unwrap()), t);
            assert_eq!(a.rcode, ResponseCode::NXDomain, "{name} {t}");
        }
    }
}

#[test]
fn ptr_of_clusterset_ips_and_headless_endpoints() {
    let z = zone(AnswerPolicy::LocalFirst);
    let s = snapshot();
    let ptr = |name: &str| {
        let n = LowerName::from(Name::from_ascii(name).unwrap());
        let ip = reverse_address(&n)?;
        z.reverse(&s, &n, ip, RecordType::PTR)
            .map(|r| r.iter().map(|r| r.data.to_string()).collect::<Vec<_>>())
    };
    let vip = s.services[&ServiceKey::new("prod", "web").unwrap()]
        .vip
        .unwrap();
    let IpAddr::V4(v4) = vip else {
        panic!("v4 VIP")
    };
    let o = v4.octets();
    assert_eq!(
        ptr(&format!(
            "{}.{}.{}.{}.in-addr.arpa.",
            o[3], o[2], o[1], o[0]
        )),
        Some(vec!["web.prod.svc.clusterset.local.".to_string()])
    );
    assert_eq!(
        ptr("1.1.1.10.in-addr.arpa."),
        Some(vec!["db-2.west.db.prod.svc.clusterset.local.".to_string()])
    );
    // fd00::1, nibble by nibble.
    let v6 = format!(
        "{}ip6.arpa.",
        "1.".to_string() + &"0.".repeat(27) + "0.0.d.f."
    );
    assert_eq!(
        ptr(&v6),
        Some(vec!["db-0.east.db.prod.svc.clusterset.local.".to_string()])
    );
    // An address nobody has, a not-ready endpoint's, and malformed reverse names: not ours.
    assert_eq!(ptr("9.9.9.9.in-addr.arpa."), None);
    assert_eq!(ptr("2.1.0.10.in-addr.arpa."), None);
    for bad in [
        "1.1.10.in-addr.arpa.",
        "01.1.1.10.in-addr.arpa.",
        "300.1.1.10.in-addr.arpa.",
        "x.ip6.arpa.",
    ] {
        assert_eq!(
            reverse_address(&LowerName::from(Name::from_ascii(bad).unwrap())),
            None,
            "{bad}"
        );
    }
}
