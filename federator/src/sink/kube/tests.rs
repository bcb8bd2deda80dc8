use std::collections::BTreeMap;

use causeway_api::snapshot::ExportView;
use causeway_api::{
    BackendTlsMode, ClusterId, Endpoint, ExportConditions, ExportRecord, Import, Protocol,
    ServicePort, SCHEMA_VERSION,
};

use super::*;

fn view(service_type: ServiceType) -> ServiceView {
    let key: ServiceKey = "demo/echo".parse().unwrap();
    let ports = vec![ServicePort {
        name: "http".into(),
        protocol: Protocol::Tcp,
        port: 80,
        app_protocol: Some("http".into()),
    }];
    let mut exports = BTreeMap::new();
    for (c, ip) in [("east", "10.1.0.5"), ("west", "fd00::5")] {
        exports.insert(
            ClusterId::new(c).unwrap(),
            ExportView {
                record: ExportRecord {
                    schema: SCHEMA_VERSION,
                    ports: ports.clone(),
                    service_type,
                    session_affinity: SessionAffinity::None,
                    created_unix_ms: 1,
                    ready_endpoints: 1,
                    backend_tls_mode: BackendTlsMode::Plaintext,
                    endpoints: vec![Endpoint {
                        address: ip.parse().unwrap(),
                        port: None,
                        ready: true,
                        hostname: Some("pod-0".into()),
                    }],
                    allowed_source_clusters: vec![],
                    allowed_identities: vec![],
                    weight: None,
                    service_ip: None,
                    traffic_policy: Default::default(),
                },
                conditions: ExportConditions::default(),
                stale: false,
                drained: false,
            },
        );
    }
    ServiceView {
        import: Import {
            key,
            service_type,
            ports,
            session_affinity: SessionAffinity::None,
            clusters: exports.keys().cloned().collect(),
            conflict: false,
        },
        vip: None,
        exports,
    }
}

#[test]
fn a_clusterset_ip_import_gets_a_derived_service_to_the_gateways() {
    let opts = KubeOptions::default();
    let none = GatewayPorts::new();
    let want = desired_import(&view(ServiceType::ClusterSetIP), &opts, None, &none);
    assert_eq!(want.import["spec"]["type"], "ClusterSetIP");
    assert!(want.import["spec"].get("ips").is_none(), "no ClusterIP yet");
    assert_eq!(
        want.status["clusters"],
        json!([{"cluster": "east"}, {"cluster": "west"}])
    );
    assert_eq!(want.service["metadata"]["name"], "echo-clusterset");
    assert_eq!(
        want.service["metadata"]["labels"][LABEL_SERVICE_NAME],
        "echo"
    );
    assert_eq!(
        want.service["spec"]["selector"]["app.kubernetes.io/name"],
        "causeway-gateway"
    );
    // No gateway port for it: the egress port, routed by Host.
    assert_eq!(want.service["spec"]["ports"][0]["targetPort"], 15001);
    assert_eq!(want.service["spec"]["ports"][0]["appProtocol"], "http");
    assert!(want.slices.is_empty());
    let ports = GatewayPorts::from([(("demo/echo".parse().unwrap(), 80), 20417)]);
    let want = desired_import(
        &view(ServiceType::ClusterSetIP),
        &opts,
        Some("10.96.0.42"),
        &ports,
    );
    assert_eq!(want.import["spec"]["ips"], json!(["10.96.0.42"]));
    assert_eq!(want.service["spec"]["ports"][0]["targetPort"], 20417);
    assert_eq!(want.service["spec"]["ports"][0]["port"], 80);
}

#[test]
fn a_headless_import_gets_slices_per_cluster_and_family() {
    let want = desired_import(
        &view(ServiceType::Headless),
        &KubeOptions::default(),
        Some("ignored"),
        &GatewayPorts::new(),
    );
    assert!(want.import["spec"].get("ips").is_none());
    assert_eq!(want.service["spec"]["clusterIP"], "None");
    assert!(want.service["spec"].get("selector").is_none());
    let names: Vec<&String> = want.slices.keys().collect();
    assert_eq!(names, ["echo-clusterset-east", "echo-clusterset-west-v6"]);
    let east = &want.slices["echo-clusterset-east"];
    assert_eq!(east["addressType"], "IPv4");
    assert_eq!(east["metadata"]["labels"][LABEL_SOURCE_CLUSTER], "east");
    assert_eq!(east["metadata"]["labels"][LABEL_SERVICE_NAME], "echo");
    assert_eq!(
        east["metadata"]["labels"]["kubernetes.io/service-name"],
        "echo-clusterset"
    );
    assert_eq!(east["endpoints"][0]["hostname"], "pod-0");
}

#[test]
fn long_names_stay_dns_labels() {
    let long = "a".repeat(60);
    let d = derived_name(&long);
    assert!(d.len() <= 63, "{d}");
    assert_eq!(d, derived_name(&long), "stable");
    assert_ne!(d, derived_name(&"b".repeat(60)));
}

#[test]
fn contains_ignores_what_the_server_adds() {
    let have = json!({"metadata": {"name": "x", "uid": "u"}, "spec": {"ports": [{"port": 80, "protocol": "TCP", "targetPort": 80}]}});
    assert!(contains(&have, &json!({"spec": {"ports": [{"port": 80}]}})));
    assert!(!contains(
        &have,
        &json!({"spec": {"ports": [{"port": 81}]}})
    ));
    assert!(!contains(
        &have,
        &json!({"spec": {"ports": [{"port": 80}, {"port": 81}]}})
    ));
    assert!(!contains(&have, &json!({"spec": {"selector": {}}})));
}
