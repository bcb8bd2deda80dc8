use std::collections::BTreeMap;

use causeway_api::{ClusterId, Endpoint, ExportRecord, Protocol, ServicePort};

use super::*;

fn view(service_type: ServiceType) -> ServiceView {
    let key: ServiceKey = "demo/echo".parse().unwrap();
    let ports = vec![ServicePort {
        name: "http".into(),
        protocol: Protocol::Tcp,
        port: 80,
        app_protocol: Some("http".into()),
    }];
    let records = [("east", "10.1.0.5"), ("west", "fd00::5")].map(|(c, ip)| {
        let record = ExportRecord {
            ports: ports.clone().into(),
            service_type,
            created_unix_ms: 1,
            ready_endpoints: 1,
            endpoints: vec![Endpoint {
                address: ip.parse().unwrap(),
                port: None,
                ready: true,
                hostname: Some("pod-0".into()),
            }],
            ..ExportRecord::default()
        };
        (ClusterId::new(c).unwrap(), record)
    });
    ServiceView::merged(&key, records).unwrap()
}

#[test]
fn a_clusterset_ip_import_gets_a_derived_service_to_the_gateways() {
    let opts = KubeOptions::default();
    let none = GatewayPorts::new();
    let gateways = [
        GatewayPod {
            namespace: "causeway-system".into(),
            name: "gw-a".into(),
            ip: "10.244.1.7".parse().unwrap(),
            ready: true,
        },
        GatewayPod {
            namespace: "causeway-system".into(),
            name: "gw-b".into(),
            ip: "10.244.2.9".parse().unwrap(),
            ready: false,
        },
    ];
    let want = desired_import(
        &view(ServiceType::ClusterSetIP),
        &opts,
        None,
        &none,
        &gateways,
        None,
    );
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
    // No selector: it would match pods of the import's namespace only, and the gateways run in
    // theirs. The sink writes the slice of the gateway pods itself.
    assert!(
        want.service["spec"].get("selector").is_none(),
        "{}",
        want.service
    );
    // No gateway port for it: the egress port, routed by Host.
    assert_eq!(want.service["spec"]["ports"][0]["targetPort"], 15001);
    assert_eq!(want.service["spec"]["ports"][0]["appProtocol"], "http");
    let names: Vec<&String> = want.slices.keys().collect();
    assert_eq!(names, ["echo-clusterset-gateways"]);
    let slice = &want.slices["echo-clusterset-gateways"];
    let labels = &slice["metadata"]["labels"];
    assert_eq!(labels["kubernetes.io/service-name"], "echo-clusterset");
    assert_eq!(
        labels["endpointslice.kubernetes.io/managed-by"],
        "causeway-federator"
    );
    assert_eq!(labels[LABEL_SERVICE_NAME], "echo");
    assert_eq!(
        slice["endpoints"],
        json!([
            {"addresses": ["10.244.1.7"], "conditions": {"ready": true, "serving": true, "terminating": false},
             "targetRef": {"kind": "Pod", "namespace": "causeway-system", "name": "gw-a"}},
            {"addresses": ["10.244.2.9"], "conditions": {"ready": false, "serving": false, "terminating": false},
             "targetRef": {"kind": "Pod", "namespace": "causeway-system", "name": "gw-b"}},
        ])
    );
    // The slice's port is the Service's target port, under the Service port's name.
    assert_eq!(
        slice["ports"],
        json!([{"name": "http", "port": 15001, "protocol": "TCP", "appProtocol": "http"}])
    );
    let ports = GatewayPorts::from([(("demo/echo".parse().unwrap(), 80), 20417)]);
    let want = desired_import(
        &view(ServiceType::ClusterSetIP),
        &opts,
        Some("10.96.0.42"),
        &ports,
        &gateways,
        None,
    );
    assert_eq!(want.import["spec"]["ips"], json!(["10.96.0.42"]));
    assert_eq!(want.import["spec"]["ipFamilies"], json!(["IPv4"]));
    assert_eq!(want.service["spec"]["ports"][0]["targetPort"], 20417);
    assert_eq!(want.service["spec"]["ports"][0]["port"], 80);
    assert_eq!(
        want.slices["echo-clusterset-gateways"]["ports"][0]["port"],
        20417
    );
    // No gateway pod with an address yet: one empty slice, so the set does not flap.
    let want = desired_import(
        &view(ServiceType::ClusterSetIP),
        &opts,
        None,
        &none,
        &[],
        None,
    );
    assert_eq!(
        want.slices["echo-clusterset-gateways"]["endpoints"],
        json!([])
    );
}

#[test]
fn the_import_carries_what_the_oldest_export_asks_for() {
    let mut v = view(ServiceType::ClusterSetIP);
    v.import
        .exported
        .labels
        .insert("team".into(), "payments".into());
    // Ours wins over an exporter's label of the same name.
    v.import
        .exported
        .labels
        .insert(LABEL_MANAGED_BY.into(), "someone".into());
    v.import
        .exported
        .annotations
        .insert("note".into(), "x".into());
    v.import.exported.internal_traffic_policy = Some("Local".into());
    v.import.exported.traffic_distribution = Some("PreferClose".into());
    let want = desired_import(
        &v,
        &KubeOptions::default(),
        Some("fd00::7"),
        &GatewayPorts::new(),
        &[],
        None,
    );
    let labels = &want.import["metadata"]["labels"];
    assert_eq!(labels["team"], "payments");
    assert_eq!(labels[LABEL_MANAGED_BY], MANAGER);
    assert_eq!(want.import["metadata"]["annotations"]["note"], "x");
    assert_eq!(want.import["spec"]["internalTrafficPolicy"], "Local");
    assert_eq!(want.import["spec"]["trafficDistribution"], "PreferClose");
    assert_eq!(want.import["spec"]["ipFamilies"], json!(["IPv6"]));
    let svc_labels = &want.service["metadata"]["labels"];
    assert_eq!(svc_labels["team"], "payments");
    assert_eq!(svc_labels[LABEL_MANAGED_BY], MANAGER);
    assert_eq!(svc_labels[LABEL_SERVICE_NAME], "echo");
    assert_eq!(want.service["metadata"]["annotations"]["note"], "x");
}

#[test]
fn only_our_own_slices_are_ours() {
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
    let meta = |labels: &[(&str, &str)]| ObjectMeta {
        labels: Some(
            labels
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
        ),
        ..Default::default()
    };
    // kube-controller-manager's slice of a Service of ours carries our labels, copied.
    let copied = meta(&[
        (LABEL_MANAGED_BY, MANAGER),
        (LABEL_SERVICE_NAME, "echo"),
        ("kubernetes.io/service-name", "echo-clusterset"),
        (
            "endpointslice.kubernetes.io/managed-by",
            "endpointslice-controller.k8s.io",
        ),
    ]);
    assert!(!is_ours(&copied));
    let ours = meta(&[
        (LABEL_MANAGED_BY, MANAGER),
        (LABEL_SERVICE_NAME, "echo"),
        ("kubernetes.io/service-name", "echo-clusterset"),
        ("endpointslice.kubernetes.io/managed-by", MANAGER),
    ]);
    assert!(is_ours(&ours));
    // A Service (no slice labels) of ours.
    assert!(is_ours(&meta(&[(LABEL_MANAGED_BY, MANAGER)])));
    assert!(!is_ours(&meta(&[(LABEL_MANAGED_BY, "someone-else")])));
}

#[test]
fn dns_answers_only_addresses_the_derived_service_holds() {
    let key: ServiceKey = "demo/echo".parse().unwrap();
    let mut v = view(ServiceType::ClusterSetIP);
    v.vip = Some("10.96.200.5".parse().unwrap());
    let snap = MeshSnapshot {
        services: BTreeMap::from([(key.clone(), Arc::new(v))]),
        ..Default::default()
    };
    // The cluster refused the VIP (another Service holds it): no derived Service, no address.
    let none = HeldAddresses::default();
    assert_eq!(dns_view(&snap, &none, true).services[&key].vip, None);
    let held = |ip: &str| HeldAddresses {
        services: BTreeMap::from([(key.clone(), ip.parse().unwrap())]),
        ..Default::default()
    };
    // Held: answered.
    let held_vip = held("10.96.200.5");
    assert_eq!(
        dns_view(&snap, &held_vip, true).services[&key].vip,
        Some("10.96.200.5".parse().unwrap())
    );
    // A derived Service with another ClusterIP (while it is being replaced): not the VIP.
    let other = held("10.96.0.77");
    assert_eq!(dns_view(&snap, &other, true).services[&key].vip, None);
    // Without a VIP range, the derived Service's own ClusterIP is the address.
    assert_eq!(
        dns_view(&snap, &other, false).services[&key].vip,
        Some("10.96.0.77".parse().unwrap())
    );
}

#[test]
fn a_headless_import_gets_slices_per_cluster_and_family() {
    let want = desired_import(
        &view(ServiceType::Headless),
        &KubeOptions::default(),
        Some("ignored"),
        &GatewayPorts::new(),
        &[],
        None,
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

/// Headless across networks in Kubernetes mode: another cluster's endpoint gets a derived
/// Service of its own, leading to the gateway port kept for it, and the import's slice for that
/// cluster lists the ClusterIP it holds; our own cluster's endpoints keep their pod addresses.
#[test]
fn remote_headless_endpoints_get_derived_services_to_the_gateway() {
    let view = view(ServiceType::Headless);
    let key = view.import.key.clone();
    let (east, west) = (
        ClusterId::new("east").unwrap(),
        ClusterId::new("west").unwrap(),
    );
    let gateways = [GatewayPod {
        namespace: "causeway-system".into(),
        name: "gw-a".into(),
        ip: "10.244.1.7".parse().unwrap(),
        ready: true,
    }];
    let mut remote = RemoteEndpoints {
        local: Some(west.clone()),
        ports: BTreeMap::from([((key.clone(), east.clone(), "pod-0".to_string(), 80), 20417)]),
        held: BTreeMap::new(),
        vips: false,
    };
    let want = desired_import(
        &view,
        &KubeOptions::default(),
        None,
        &GatewayPorts::new(),
        &gateways,
        Some(&remote),
    );
    let names: Vec<&String> = want.endpoint_services.keys().collect();
    assert_eq!(
        names,
        ["echo-clusterset-east-pod-0"],
        "east's only, not our own (west)"
    );
    let svc = &want.endpoint_services["echo-clusterset-east-pod-0"];
    assert_eq!(svc["spec"]["type"], "ClusterIP");
    assert!(
        svc["spec"].get("clusterIP").is_none(),
        "any ClusterIP without a VIP range"
    );
    assert_eq!(svc["spec"]["ports"][0]["targetPort"], 20417);
    assert_eq!(svc["metadata"]["labels"][LABEL_ENDPOINT], "pod-0");
    assert_eq!(svc["metadata"]["labels"][LABEL_SOURCE_CLUSTER], "east");
    assert!(svc["metadata"]["labels"].get(LABEL_SLICE_SERVICE).is_none());
    let gw = &want.slices["echo-clusterset-east-pod-0-gateways"];
    assert_eq!(
        gw["metadata"]["labels"][LABEL_SLICE_SERVICE],
        "echo-clusterset-east-pod-0"
    );
    assert_eq!(gw["endpoints"][0]["addresses"][0], "10.244.1.7");
    assert_eq!(gw["ports"][0]["port"], 20417);
    assert_eq!(gw["ports"][0]["name"], "http");
    // Before the Service holds a ClusterIP, east's slice lists nothing (the pod address would
    // lead nowhere); our own endpoints keep their pod address.
    assert_eq!(want.slices["echo-clusterset-east"]["endpoints"], json!([]));
    assert_eq!(
        want.slices["echo-clusterset-west-v6"]["endpoints"][0]["addresses"][0],
        "fd00::5"
    );
    remote.held.insert(
        (key.clone(), east.clone(), "pod-0".into()),
        "10.96.0.44".parse().unwrap(),
    );
    let want = desired_import(
        &view,
        &KubeOptions::default(),
        None,
        &GatewayPorts::new(),
        &gateways,
        Some(&remote),
    );
    let slice = &want.slices["echo-clusterset-east"];
    assert_eq!(slice["endpoints"][0]["addresses"][0], "10.96.0.44");
    assert_eq!(slice["endpoints"][0]["hostname"], "pod-0");
    // With a VIP range the Service asks for the endpoint's VIP, and waits for it.
    remote.vips = true;
    let want = desired_import(
        &view,
        &KubeOptions::default(),
        None,
        &GatewayPorts::new(),
        &gateways,
        Some(&remote),
    );
    assert!(want.endpoint_services.is_empty(), "no VIP yet");
    let mut with_vip = view.clone();
    with_vip.endpoint_vips = BTreeMap::from([(
        east.clone(),
        BTreeMap::from([("pod-0".to_string(), "10.96.128.9".parse().unwrap())]),
    )]);
    let want = desired_import(
        &with_vip,
        &KubeOptions::default(),
        None,
        &GatewayPorts::new(),
        &gateways,
        Some(&remote),
    );
    assert_eq!(
        want.endpoint_services["echo-clusterset-east-pod-0"]["spec"]["clusterIP"],
        "10.96.128.9"
    );

    // DNS answers the address the endpoint's Service holds (with a VIP range: only its VIP).
    let snap = MeshSnapshot {
        services: BTreeMap::from([(key.clone(), Arc::new(with_vip))]),
        headless_via_gateway: true,
        ..Default::default()
    };
    let held = |ip: &str| HeldAddresses {
        endpoints: BTreeMap::from([(
            (key.clone(), east.clone(), "pod-0".to_string()),
            ip.parse().unwrap(),
        )]),
        ..Default::default()
    };
    let given = |h: &HeldAddresses, vips: bool| {
        dns_view(&snap, h, vips).services[&key]
            .endpoint_vips
            .get(&east)
            .and_then(|m| m.get("pod-0").copied())
    };
    assert_eq!(given(&HeldAddresses::default(), true), None);
    assert_eq!(
        given(&held("10.96.128.9"), true),
        Some("10.96.128.9".parse().unwrap())
    );
    assert_eq!(given(&held("10.96.0.44"), true), None, "not its VIP");
    assert_eq!(
        given(&held("10.96.0.44"), false),
        Some("10.96.0.44".parse().unwrap())
    );
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
