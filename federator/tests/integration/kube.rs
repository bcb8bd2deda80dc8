//! Issue "Kubernetes: ServiceExport resources in, ServiceImports out": real federator processes
//! (`source: kube`, `kube_sink: true`) against a real etcd, each with its own Kubernetes API (the
//! `causeway_e2e::kubeapi` test fixture), driven with the real kubectl.

use std::path::Path;
use std::time::Duration;

use anyhow::Context;
use causeway_e2e::kubeapi::KubeApiServer;
use causeway_e2e::{wait_for, EtcdServer};
use serde_json::Value;
use tokio::process::{Child, Command};

use crate::harness::{dig_a, http_get, spawn_federator};

const T: Duration = Duration::from_secs(30);
const MCS: &str = "multicluster.x-k8s.io/v1alpha1";
/// The block of the (test) Service CIDR kept for ClusterSetIPs: the test server hands out
/// ClusterIPs from 10.96.0.10 up, so this never collides.
const VIP_RANGE: &str = "10.96.128.0/20";

/// A federator of one cluster whose Kubernetes API is `api`. Killed on drop.
struct KubeFed {
    admin: String,
    dns: String,
    /// The gateway config server (plain gRPC).
    config: String,
    _child: Child,
    _dir: tempfile::TempDir,
}

impl KubeFed {
    /// Starts it and waits until it leads its cluster.
    async fn start(cluster: &str, etcd: &str, api: &KubeApiServer) -> anyhow::Result<KubeFed> {
        let fed = Self::spawn(cluster, etcd, api).await?;
        wait_for(&format!("{cluster}'s federator to lead"), T, || async {
            fed.is_leader().await.then_some(())
        })
        .await?;
        Ok(fed)
    }

    async fn is_leader(&self) -> bool {
        let Ok(body) = http_get(&self.admin, "/debug/snapshot").await else {
            return false;
        };
        serde_json::from_str::<Value>(&body).is_ok_and(|v| v["leader"] == Value::Bool(true))
    }

    /// Starts it (another replica may lead).
    async fn spawn(cluster: &str, etcd: &str, api: &KubeApiServer) -> anyhow::Result<KubeFed> {
        Self::spawn_with(cluster, etcd, api, "").await
    }

    /// [`KubeFed::spawn`] with more lines of federator config.
    async fn spawn_with(
        cluster: &str,
        etcd: &str,
        api: &KubeApiServer,
        extra: &str,
    ) -> anyhow::Result<KubeFed> {
        let dir = tempfile::tempdir()?;
        let config = dir.path().join("federator.yaml");
        std::fs::write(
            &config,
            format!(
                "cluster: {cluster}\netcd:\n  endpoints: [\"{etcd}\"]\nsource: kube\nkube_sink: true\n\
                 kube:\n  gateway_selector: {{app: causeway-gateway}}\n  gateway_namespace: causeway-system\n  gateway_port: 15001\n\
                 vip_range: \"{VIP_RANGE}\"\nlease_ttl: 3s\nkeepalive_interval: 1s\n{extra}"
            ),
        )?;
        let config = config.display().to_string();
        let any = "127.0.0.1:0";
        let args = [
            "--config",
            &config,
            "--admin-listen",
            any,
            "--dns-listen",
            any,
            "--config-listen",
            any,
        ]
        .map(String::from);
        let kubeconfig = api.kubeconfig().display().to_string();
        let (child, admin, config, dns) =
            spawn_federator(&args, &[("KUBECONFIG", &kubeconfig)]).await?;
        let dns = dns.context("the federator printed no DNS address")?;
        Ok(KubeFed {
            admin,
            dns,
            config,
            _child: child,
            _dir: dir,
        })
    }
}

/// Two clusters on one etcd, each with its own Kubernetes API and a leading federator.
struct TwoClusters {
    etcd: EtcdServer,
    east_api: KubeApiServer,
    west_api: KubeApiServer,
    east: KubeFed,
    west: KubeFed,
}

impl TwoClusters {
    async fn start() -> anyhow::Result<Self> {
        let etcd = EtcdServer::start().await?;
        let (east_api, west_api) = (KubeApiServer::start().await?, KubeApiServer::start().await?);
        let east = KubeFed::start("east", &etcd.endpoint(), &east_api).await?;
        let west = KubeFed::start("west", &etcd.endpoint(), &west_api).await?;
        Ok(Self {
            etcd,
            east_api,
            west_api,
            east,
            west,
        })
    }
}

fn namespace(ns: &str) -> String {
    format!("apiVersion: v1\nkind: Namespace\nmetadata:\n  name: {ns}\n---\n")
}

/// A Service `demo/<name>` with one port, an EndpointSlice with one ready endpoint, and its
/// ServiceExport.
fn exported_service(name: &str, port_name: &str, port: u16) -> String {
    format!(
        "apiVersion: v1\nkind: Service\nmetadata:\n  name: {name}\n  namespace: demo\nspec:\n  ports:\n    - name: {port_name}\n      port: {port}\n---\n\
         apiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\nmetadata:\n  name: {name}-1\n  namespace: demo\n  labels:\n    kubernetes.io/service-name: {name}\n\
         addressType: IPv4\nports:\n  - name: {port_name}\n    port: 8080\nendpoints:\n  - addresses: [\"10.1.0.5\"]\n    conditions:\n      ready: true\n---\n\
         apiVersion: {MCS}\nkind: ServiceExport\nmetadata:\n  name: {name}\n  namespace: demo\n"
    )
}

/// `(status, reason)` of a ServiceExport condition.
fn condition(api: &KubeApiServer, name: &str, type_: &str) -> Option<(String, String)> {
    let se = api.get(MCS, "serviceexports", "demo", name)?;
    let c = se["status"]["conditions"]
        .as_array()?
        .iter()
        .find(|c| c["type"] == type_)?
        .clone();
    Some((
        c["status"].as_str()?.to_string(),
        c["reason"].as_str()?.to_string(),
    ))
}

async fn until_condition(
    api: &KubeApiServer,
    cluster: &str,
    name: &str,
    type_: &str,
    want: (&str, &str),
) -> anyhow::Result<()> {
    wait_for(
        &format!(
            "{cluster}'s ServiceExport demo/{name} to get {type_}={}/{}",
            want.0, want.1
        ),
        T,
        || async {
            let got = condition(api, name, type_)?;
            (got.0 == want.0 && got.1 == want.1).then_some(())
        },
    )
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_service_export_in_east_becomes_a_service_import_and_a_dns_name_in_west(
) -> anyhow::Result<()> {
    let TwoClusters {
        etcd: _etcd,
        east_api,
        west_api,
        east,
        west,
    } = TwoClusters::start().await?;
    east_api
        .apply(&format!(
            "{}{}",
            namespace("demo"),
            exported_service("echo", "http", 80)
        ))
        .await?;

    // Imports appear only in namespaces that exist: none in west until it has `demo`.
    wait_for("west's federator to know demo/echo", T, || async {
        let body = http_get(&west.admin, "/debug/snapshot").await.ok()?;
        let v: Value = serde_json::from_str(&body).ok()?;
        v["snapshot"]["services"]["demo/echo"]["exports"]["east"]
            .is_object()
            .then_some(())
    })
    .await?;
    // East imports it too, in its own namespace.
    wait_for("east's own ServiceImport", T, || async {
        east_api
            .get(MCS, "serviceimports", "demo", "echo")
            .map(|_| ())
    })
    .await?;
    assert!(west_api
        .get(MCS, "serviceimports", "demo", "echo")
        .is_none());
    let gateways = gateway_pods(&west_api, &["10.244.1.7", "10.244.2.9"])?;
    west_api.apply(&namespace("demo")).await?;

    // West: a ServiceImport whose ClusterSetIP is the ClusterIP of a derived Service it owns.
    let (import, ip) = wait_for(
        "west's ServiceImport demo/echo with its ClusterSetIP",
        T,
        || async {
            let si = west_api.get(MCS, "serviceimports", "demo", "echo")?;
            let ip = si["spec"]["ips"][0].as_str()?.to_string();
            (si["status"]["clusters"] == serde_json::json!([{"cluster": "east"}]))
                .then_some((si, ip))
        },
    )
    .await?;
    assert_eq!(import["spec"]["type"], "ClusterSetIP");
    assert_eq!(import["spec"]["ports"][0]["port"], 80);
    assert_eq!(import["spec"]["ports"][0]["name"], "http");
    let derived = wait_for("the derived Service with the ClusterSetIP", T, || async {
        let svc = west_api.get("v1", "services", "demo", "echo-clusterset")?;
        (svc["spec"]["clusterIP"] == ip.as_str()).then_some(svc)
    })
    .await?;
    // No selector: a selector matches pods of the Service's own namespace only, and the gateways
    // run in causeway-system. Its endpoints are a slice the federator writes: exactly the gateway
    // pods, on the derived Service's target port.
    assert!(derived["spec"].get("selector").is_none(), "{derived}");
    let slices = wait_for(
        "the derived Service's slice of the gateway pods",
        T,
        || async {
            let slices = slices_of(&west_api, "demo", "echo-clusterset");
            (slices.len() == 1 && endpoint_ips(&slices[0]) == gateways).then_some(slices)
        },
    )
    .await?;
    assert_eq!(
        slices[0]["metadata"]["labels"]["endpointslice.kubernetes.io/managed-by"],
        "causeway-federator"
    );
    assert_eq!(
        slices[0]["ports"][0]["port"], derived["spec"]["ports"][0]["targetPort"],
        "the slice's port is the Service's target port"
    );
    assert_eq!(slices[0]["ports"][0]["name"], "http");
    // A gateway pod that stops being ready is not ready in the slice either.
    west_api.set_status(
        "v1",
        "pods",
        "causeway-system",
        "gateway-1",
        pod_status("10.244.2.9", false),
    )?;
    wait_for("gateway-1 not ready in the slice", T, || async {
        let slices = slices_of(&west_api, "demo", "echo-clusterset");
        let eps = slices.first()?["endpoints"].as_array()?.clone();
        eps.iter()
            .any(|e| e["addresses"][0] == "10.244.2.9" && e["conditions"]["ready"] == false)
            .then_some(())
    })
    .await?;
    at_rest(&west_api, &west.admin).await?;
    // The gateway port kept for demo/echo:80 (docs/kubernetes.md), not the egress port.
    let target = derived["spec"]["ports"][0]["targetPort"].as_u64().unwrap();
    assert!((20000..30000).contains(&target), "targetPort {target}");
    assert_eq!(
        derived["metadata"]["labels"]["multicluster.kubernetes.io/service-name"],
        "echo"
    );
    assert_eq!(
        derived["metadata"]["ownerReferences"][0]["uid"],
        import["metadata"]["uid"]
    );
    assert!(
        ip.starts_with("10.96.1"),
        "the ClusterSetIP {ip} comes from {VIP_RANGE}"
    );

    // West's DNS answers the clusterset name with the ClusterSetIP.
    let name = "echo.demo.svc.clusterset.local";
    wait_for(&format!("west's DNS to answer {name}"), T, || async {
        (dig_a(&west.dns, name).await.ok()? == [ip.clone()]).then_some(())
    })
    .await?;

    // East: the export's conditions.
    until_condition(&east_api, "east", "echo", "Valid", ("True", "Valid")).await?;
    until_condition(&east_api, "east", "echo", "Ready", ("True", "Exported")).await?;
    // What the sink and the source wrote shows in their metrics.
    for (fed, kind) in [(&west, "ServiceImport"), (&east, "ServiceExport")] {
        let sample =
            format!("causeway_federator_kube_writes_total{{kind=\"{kind}\",result=\"ok\"}}");
        let metrics = http_get(&fed.admin, "/metrics").await?;
        let value: f64 = causeway_api::prom::series(&metrics, &sample)
            .with_context(|| format!("{sample} in\n{metrics}"))?;
        assert!(value >= 1.0, "{sample} = {value}");
    }
    until_condition(
        &east_api,
        "east",
        "echo",
        "Conflict",
        ("False", "NoConflicts"),
    )
    .await?;

    // Unexport: everything goes in west.
    east_api
        .run_kubectl(&["-n", "demo", "delete", "serviceexport", "echo"], "")
        .await?;
    wait_for(
        "west's ServiceImport and derived Service to go",
        T,
        || async {
            (west_api
                .get(MCS, "serviceimports", "demo", "echo")
                .is_none()
                && west_api
                    .get("v1", "services", "demo", "echo-clusterset")
                    .is_none())
            .then_some(())
        },
    )
    .await?;
    wait_for(&format!("west's DNS to forget {name}"), T, || async {
        dig_a(&west.dns, name).await.ok()?.is_empty().then_some(())
    })
    .await?;
    drop(east);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_external_name_service_or_none_at_all_makes_the_export_invalid() -> anyhow::Result<()> {
    let etcd = EtcdServer::start().await?;
    let api = KubeApiServer::start().await?;
    let _east = KubeFed::start("east", &etcd.endpoint(), &api).await?;
    api.apply(&format!(
            "{}apiVersion: v1\nkind: Service\nmetadata:\n  name: ext\n  namespace: demo\nspec:\n  type: ExternalName\n  externalName: example.org\n---\n\
             apiVersion: {MCS}\nkind: ServiceExport\nmetadata:\n  name: ext\n  namespace: demo\n---\n\
             apiVersion: {MCS}\nkind: ServiceExport\nmetadata:\n  name: ghost\n  namespace: demo\n",
            namespace("demo")
        ),
    )
    .await?;
    until_condition(
        &api,
        "east",
        "ext",
        "Valid",
        ("False", "InvalidServiceType"),
    )
    .await?;
    until_condition(&api, "east", "ext", "Ready", ("False", "Pending")).await?;
    // Not in the mesh: whether it conflicts is not known (docs/kubernetes.md).
    until_condition(&api, "east", "ext", "Conflict", ("Unknown", "Pending")).await?;
    until_condition(&api, "east", "ghost", "Valid", ("False", "NoService")).await?;

    // The Service appears: the export becomes valid and ready.
    api.apply(&exported_service("ghost", "http", 80)).await?;
    until_condition(&api, "east", "ghost", "Valid", ("True", "Valid")).await?;
    until_condition(&api, "east", "ghost", "Ready", ("True", "Exported")).await?;
    // The invalid one is not in the mesh.
    assert!(api.get(MCS, "serviceimports", "demo", "ext").is_none());
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_port_conflict_marks_both_exports() -> anyhow::Result<()> {
    let TwoClusters {
        etcd: _etcd,
        east_api,
        west_api,
        east: _east,
        west: _west,
    } = TwoClusters::start().await?;
    // Same port name, different port numbers.
    east_api
        .apply(&format!(
            "{}{}",
            namespace("demo"),
            exported_service("echo", "http", 80)
        ))
        .await?;
    west_api
        .apply(&format!(
            "{}{}",
            namespace("demo"),
            exported_service("echo", "http", 8080)
        ))
        .await?;
    until_condition(
        &east_api,
        "east",
        "echo",
        "Conflict",
        ("True", "PortConflict"),
    )
    .await?;
    until_condition(
        &west_api,
        "west",
        "echo",
        "Conflict",
        ("True", "PortConflict"),
    )
    .await?;
    // The import exists in both clusters all the same.
    for (cluster, api) in [("east", &east_api), ("west", &west_api)] {
        wait_for(&format!("{cluster}'s ServiceImport"), T, || async {
            let si = api.get(MCS, "serviceimports", "demo", "echo")?;
            (si["status"]["clusters"].as_array()?.len() == 2).then_some(())
        })
        .await?;
    }
    Ok(())
}

/// West's slice of `demo/db` for `cluster`'s endpoints, if it lists an address.
fn headless_slice(api: &KubeApiServer, cluster: &str) -> Option<Value> {
    api.list("discovery.k8s.io/v1", "endpointslices", "demo")
        .into_iter()
        .find(|s| {
            s["metadata"]["labels"]["multicluster.kubernetes.io/service-name"] == "db"
                && s["metadata"]["labels"]["kubernetes.io/service-name"] == "db-clusterset"
                && s["metadata"]["labels"]["multicluster.kubernetes.io/source-cluster"] == cluster
                && s["endpoints"][0]["addresses"][0].is_string()
        })
}

/// On a flat pod network (`flat_pod_network: true`) the import's slices list the other
/// cluster's pod addresses, as they are.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_headless_export_becomes_endpoint_slices_per_cluster() -> anyhow::Result<()> {
    let etcd = EtcdServer::start().await?;
    let (east_api, west_api) = (KubeApiServer::start().await?, KubeApiServer::start().await?);
    let _east = KubeFed::start("east", &etcd.endpoint(), &east_api).await?;
    let west = KubeFed::spawn_with(
        "west",
        &etcd.endpoint(),
        &west_api,
        "flat_pod_network: true\n",
    )
    .await?;
    wait_for("west's federator to lead", T, || async {
        west.is_leader().await.then_some(())
    })
    .await?;
    west_api.apply(&namespace("demo")).await?;
    let headless = exported_service("db", "pg", 5432)
        .replace("spec:\n  ports:", "spec:\n  clusterIP: None\n  ports:");
    east_api
        .apply(&format!("{}{headless}", namespace("demo")))
        .await?;

    let slice = wait_for("west's EndpointSlice of demo/db from east", T, || async {
        headless_slice(&west_api, "east")
    })
    .await?;
    assert_eq!(slice["endpoints"][0]["addresses"][0], "10.1.0.5");
    assert_eq!(slice["addressType"], "IPv4");
    let import = west_api
        .get(MCS, "serviceimports", "demo", "db")
        .context("the ServiceImport")?;
    assert_eq!(import["spec"]["type"], "Headless");
    assert!(import["spec"].get("ips").is_none(), "{import}");
    let derived = west_api
        .get("v1", "services", "demo", "db-clusterset")
        .context("the derived Service")?;
    assert_eq!(derived["spec"]["clusterIP"], "None");
    let endpoint_services: Vec<Value> = west_api
        .list("v1", "services", "demo")
        .into_iter()
        .filter(|s| s["metadata"]["labels"]["causeway.io/endpoint"].is_string())
        .collect();
    assert!(endpoint_services.is_empty(), "{endpoint_services:?}");

    // Unexport: the slices go with the import.
    east_api
        .run_kubectl(&["-n", "demo", "delete", "serviceexport", "db"], "")
        .await?;
    wait_for("west's slices of demo/db to go", T, || async {
        west_api
            .list("discovery.k8s.io/v1", "endpointslices", "demo")
            .is_empty()
            .then_some(())
    })
    .await?;
    Ok(())
}

/// Headless across networks (the default): each endpoint of another cluster gets a derived
/// Service whose ClusterIP (the endpoint's VIP here) is what the import's slice and DNS answer,
/// for the service and for `<hostname>.<cluster>.<svc>...`; the Service leads to the gateway
/// pods on a gateway port kept for that endpoint, which the gateway config pins to it. A
/// replica that goes away takes its Service, slice entry and name with it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn remote_headless_endpoints_get_derived_services_leading_to_the_gateway(
) -> anyhow::Result<()> {
    let TwoClusters {
        etcd: _etcd,
        east_api,
        west_api,
        east: _east,
        west,
    } = TwoClusters::start().await?;
    west_api.apply(&namespace("demo")).await?;
    let _gateway = gateway_pods(&west_api, &["10.244.0.7"])?;
    let headless = exported_service("db", "pg", 5432)
        .replace("spec:\n  ports:", "spec:\n  clusterIP: None\n  ports:")
        .replace(
            "  - addresses: [\"10.1.0.5\"]\n    conditions:\n      ready: true\n",
            "  - addresses: [\"10.1.0.5\"]\n    hostname: db-0\n    conditions:\n      ready: true\n\
             \x20 - addresses: [\"10.1.0.6\"]\n    hostname: db-1\n    conditions:\n      ready: true\n",
        );
    east_api
        .apply(&format!("{}{headless}", namespace("demo")))
        .await?;

    let endpoint_services = || {
        let mut v: Vec<Value> = west_api
            .list("v1", "services", "demo")
            .into_iter()
            .filter(|s| s["metadata"]["labels"]["causeway.io/endpoint"].is_string())
            .collect();
        v.sort_by_key(|s| s["metadata"]["name"].as_str().map(str::to_string));
        v
    };
    let services = wait_for("a derived Service per endpoint of east", T, || async {
        let v = endpoint_services();
        (v.len() == 2 && v.iter().all(|s| s["spec"]["clusterIP"].is_string())).then_some(v)
    })
    .await?;
    let names: Vec<&str> = services
        .iter()
        .filter_map(|s| s["metadata"]["name"].as_str())
        .collect();
    assert_eq!(
        names,
        ["db-clusterset-east-db-0", "db-clusterset-east-db-1"]
    );
    let ips: Vec<String> = services
        .iter()
        .map(|s| s["spec"]["clusterIP"].as_str().unwrap().to_string())
        .collect();
    for (s, ip) in services.iter().zip(&ips) {
        assert!(
            ip.starts_with("10.96.1"),
            "{ip}: the endpoint's VIP from {VIP_RANGE}"
        );
        assert_ne!(ip, "10.1.0.5");
        let target = s["spec"]["ports"][0]["targetPort"].as_u64().unwrap();
        assert!((20000..30000).contains(&target), "{s}");
        assert_eq!(
            s["metadata"]["ownerReferences"][0]["kind"], "ServiceImport",
            "{s}"
        );
    }
    // The Service leads to the gateway pods, on its gateway port.
    let gw = wait_for("the endpoint Service's gateway slice", T, || async {
        west_api
            .list("discovery.k8s.io/v1", "endpointslices", "demo")
            .into_iter()
            .find(|s| {
                s["metadata"]["labels"]["kubernetes.io/service-name"] == "db-clusterset-east-db-0"
                    && s["endpoints"][0]["addresses"][0] == "10.244.0.7"
            })
    })
    .await?;
    assert_eq!(
        gw["ports"][0]["port"],
        services[0]["spec"]["ports"][0]["targetPort"]
    );

    // West's gateway config pins each endpoint to the gateway port its Service targets.
    let mut config = causeway_api::proto::config_client::ConfigClient::connect(format!(
        "http://{}",
        west.config
    ))
    .await?;
    let mut stream = config
        .watch(causeway_api::proto::GatewayHello {
            cluster: "west".into(),
            node: "gw-0".into(),
            last_applied_version: 0,
        })
        .await?
        .into_inner();
    let deadline = tokio::time::Instant::now() + T;
    let pinned = loop {
        let snap = tokio::time::timeout_at(deadline, stream.message())
            .await
            .context("no gateway config pinning both endpoints in time")??
            .context("the config stream ended")?;
        let db = snap.outbound.iter().find(|o| o.name == "db");
        if let Some(db) = db.filter(|d| d.endpoints.len() == 2) {
            break db.endpoints.clone();
        }
    };
    for (pe, s) in pinned.iter().zip(&services) {
        assert_eq!(pe.cluster, "east");
        assert_eq!(
            Some(pe.name.as_str()),
            s["metadata"]["labels"]["causeway.io/endpoint"].as_str()
        );
        assert_eq!(
            pe.gateway_ports.get(&5432).map(|p| u64::from(*p)),
            s["spec"]["ports"][0]["targetPort"].as_u64(),
            "{pe:?} vs {s}"
        );
    }

    // The import's slice for east lists those addresses, not the pods'.
    let mut sorted = ips.clone();
    sorted.sort();
    let slice = wait_for(
        "east's slice to list both endpoint addresses",
        T,
        || async {
            let s = headless_slice(&west_api, "east")?;
            (endpoint_ips(&s) == sorted).then_some(s)
        },
    )
    .await
    .with_context(|| {
        let all = west_api.list("discovery.k8s.io/v1", "endpointslices", "demo");
        format!("want {ips:?}; the slices: {all:#?}")
    })?;
    assert_eq!(slice["endpoints"][0]["hostname"], "db-0");
    // Federator DNS answers them too, by name.
    let name = "db.demo.svc.clusterset.local";
    wait_for(
        "west's DNS to answer both endpoint addresses",
        T,
        || async {
            let mut got = dig_a(&west.dns, name).await.ok()?;
            got.sort();
            (got == sorted).then_some(())
        },
    )
    .await
    .with_context(|| format!("want {sorted:?}"))?;
    assert_eq!(
        dig_a(&west.dns, &format!("db-1.east.{name}")).await?,
        [ips[1].clone()]
    );

    // db-1 goes away in east: its Service goes, and its name.
    east_api
        .apply(
            &exported_service("db", "pg", 5432)
                .replace("spec:\n  ports:", "spec:\n  clusterIP: None\n  ports:")
                .replace(
                    "  - addresses: [\"10.1.0.5\"]\n    conditions:",
                    "  - addresses: [\"10.1.0.5\"]\n    hostname: db-0\n    conditions:",
                ),
        )
        .await?;
    wait_for("db-1's derived Service to go", T, || async {
        (endpoint_services().len() == 1).then_some(())
    })
    .await?;
    wait_for("db-1's name to go", T, || async {
        dig_a(&west.dns, &format!("db-1.east.{name}"))
            .await
            .ok()?
            .is_empty()
            .then_some(())
    })
    .await?;

    // Unexport: everything goes with the import.
    east_api
        .run_kubectl(&["-n", "demo", "delete", "serviceexport", "db"], "")
        .await?;
    wait_for("west's endpoint Services of demo/db to go", T, || async {
        endpoint_services().is_empty().then_some(())
    })
    .await?;
    Ok(())
}

/// Two replicas of one cluster's federator: only the leader writes conditions; when it dies, the
/// other takes over within the lease TTL and writes them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_standby_replica_takes_over_writing_conditions() -> anyhow::Result<()> {
    let etcd = EtcdServer::start().await?;
    let api = KubeApiServer::start().await?;
    let first = KubeFed::start("east", &etcd.endpoint(), &api).await?;
    let second = KubeFed::spawn("east", &etcd.endpoint(), &api).await?;
    assert!(!second.is_leader().await, "one leader per cluster");
    api.apply(&format!(
        "{}{}",
        namespace("demo"),
        exported_service("echo", "http", 80)
    ))
    .await?;
    until_condition(&api, "east", "echo", "Ready", ("True", "Exported")).await?;

    drop(first);
    wait_for("the standby to lead", T, || async {
        second.is_leader().await.then_some(())
    })
    .await?;
    api.apply(&exported_service("web", "http", 8080)).await?;
    until_condition(&api, "east", "web", "Ready", ("True", "Exported")).await?;
    until_condition(&api, "east", "echo", "Ready", ("True", "Exported")).await?;
    Ok(())
}

/// `causeway crds` prints exactly what the chart ships.
#[tokio::test]
async fn causeway_crds_prints_the_charts_crds() -> anyhow::Result<()> {
    let out = Command::new(crate::harness::CLI)
        .arg("crds")
        .output()
        .await?;
    anyhow::ensure!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let committed = std::fs::read_to_string(
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../helm/causeway/crds/crds.yaml"),
    )?;
    assert!(
        String::from_utf8(out.stdout)? == committed,
        "helm/causeway/crds/crds.yaml differs from `causeway crds`"
    );
    // The API server takes them (about.k8s.io is a protected group: its CRD needs the approval
    // annotation, which a real kube-apiserver checks and so does the test server) ...
    let api = KubeApiServer::start().await?;
    api.apply(&committed).await?;
    assert!(api
        .get(
            "apiextensions.k8s.io/v1",
            "customresourcedefinitions",
            "",
            "clusterproperties.about.k8s.io"
        )
        .is_some());
    // ... and without the annotation it refuses them.
    let other = KubeApiServer::start().await?;
    let unapproved: String = committed
        .lines()
        .filter(|l| {
            !l.contains("api-approved.kubernetes.io") && !l.trim_start().starts_with("https://")
        })
        .map(|l| format!("{l}\n"))
        .collect();
    let refused = other
        .apply(&unapproved)
        .await
        .expect_err("unapproved CRD accepted");
    assert!(
        format!("{refused:#}").contains("api-approved.kubernetes.io"),
        "{refused:#}"
    );
    Ok(())
}

/// `helm`: `$HELM`, else on `PATH`, else where `scripts/setup.sh` unpacked it.
fn helm() -> std::path::PathBuf {
    if let Some(h) = std::env::var_os("HELM") {
        return h.into();
    }
    let on_path = std::env::var_os("PATH")
        .map(|p| {
            std::env::split_paths(&p)
                .map(|d| d.join("helm"))
                .find(|h| h.is_file())
        })
        .unwrap_or_default();
    on_path.unwrap_or_else(|| {
        let cache = std::env::var_os("CAUSEWAY_TOOLS_DIR")
            .map(std::path::PathBuf::from)
            .unwrap_or_else(|| {
                std::path::PathBuf::from(std::env::var_os("HOME").unwrap_or_default())
                    .join(".cache/causeway")
            });
        cache.join("bin/helm")
    })
}

/// The chart renders config files that the federator's and the gateway's own parsers accept, for
/// the default values and every values file in `helm/causeway/ci/`.
#[tokio::test]
async fn the_helm_chart_renders_configs_the_binaries_accept() -> anyhow::Result<()> {
    let chart = Path::new(env!("CARGO_MANIFEST_DIR")).join("../helm/causeway");
    let mut variants: Vec<Option<std::path::PathBuf>> = vec![None];
    for entry in std::fs::read_dir(chart.join("ci"))? {
        variants.push(Some(entry?.path()));
    }
    let dir = tempfile::tempdir()?;
    for values in variants {
        let mut cmd = Command::new(helm());
        cmd.args(["template", "east"])
            .arg(&chart)
            .args(["--namespace", "causeway-system"]);
        if let Some(v) = &values {
            cmd.arg("-f").arg(v);
        }
        let out = cmd
            .output()
            .await
            .context("running helm (scripts/setup.sh installs it)")?;
        anyhow::ensure!(
            out.status.success(),
            "helm template: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let rendered = String::from_utf8(out.stdout)?;
        let which = values
            .as_ref()
            .map(|v| v.display().to_string())
            .unwrap_or_else(|| "default values".into());
        let mut seen = 0;
        for doc in rendered.split("\n---\n") {
            let Ok(obj) = serde_saphyr::from_str::<Value>(doc) else {
                continue;
            };
            if obj["kind"] != "ConfigMap" {
                continue;
            }
            let data = &obj["data"];
            if let Some(text) = data["federator.yaml"].as_str() {
                let p = dir.path().join("federator.yaml");
                std::fs::write(&p, text)?;
                let cfg = causeway_federator::config::Config::from_yaml_file(&p)
                    .and_then(|c| c.validate())
                    .map_err(|e| anyhow::anyhow!("{which}: federator.yaml: {e}\n{text}"))?;
                // The release name, or `cluster` of the values file.
                assert!(["east", "west"].contains(&cfg.cluster.as_str()), "{which}");
                seen += 1;
            }
            if let Some(text) = data["gateway.yaml"].as_str() {
                let p = dir.path().join("gateway.yaml");
                std::fs::write(&p, text)?;
                let mut cfg = causeway_gateway::config::Config::from_yaml_file(&p)
                    .map_err(|e| anyhow::anyhow!("{which}: gateway.yaml: {e}\n{text}"))?;
                // The chart sets the node from the pod name (CAUSEWAY_GATEWAY_NODE).
                cfg.node = "causeway-gateway-0".into();
                cfg.validate()
                    .map_err(|e| anyhow::anyhow!("{which}: gateway.yaml: {e}\n{text}"))?;
                seen += 1;
            }
        }
        assert_eq!(seen, 2, "{which}: both config files rendered");
    }
    Ok(())
}

/// The names of the metrics the code registers: every `"causeway_..."` literal of the crates'
/// sources, and the short names a file registers under `format!("causeway_federator_{name}")`
/// through its `gauge(` / `counter(` helpers.
fn exported_metric_names(root: &Path) -> anyhow::Result<std::collections::BTreeSet<String>> {
    fn ident(rest: &str) -> &str {
        let end = rest
            .find(|c: char| !(c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_'))
            .unwrap_or(rest.len());
        &rest[..end]
    }
    let mut names = std::collections::BTreeSet::new();
    let mut dirs: Vec<std::path::PathBuf> = ["api", "dns", "federator", "gateway"]
        .iter()
        .map(|c| root.join(c).join("src"))
        .collect();
    while let Some(dir) = dirs.pop() {
        for entry in std::fs::read_dir(&dir)? {
            let path = entry?.path();
            if path.is_dir() {
                dirs.push(path);
                continue;
            }
            if path.extension().is_none_or(|e| e != "rs") {
                continue;
            }
            let text = std::fs::read_to_string(&path)?;
            for (i, _) in text.match_indices("\"causeway_") {
                let name = ident(&text[i + 1..]);
                if !name.ends_with('_') {
                    names.insert(name.to_string());
                }
            }
            if text.contains("format!(\"causeway_federator_{name}\")") {
                for helper in ["gauge(", "counter("] {
                    for (i, _) in text.match_indices(helper) {
                        let rest = text[i + helper.len()..].trim_start();
                        if let Some(rest) = rest.strip_prefix('"') {
                            names.insert(format!("causeway_federator_{}", ident(rest)));
                        }
                    }
                }
            }
        }
    }
    Ok(names)
}

/// The metric names `expr` reads that are not in `exported` (a histogram's `_bucket`, `_sum`
/// and `_count` series count as its own).
fn unknown_metrics(expr: &str, exported: &std::collections::BTreeSet<String>) -> Vec<String> {
    let mut out = Vec::new();
    for (i, _) in expr.match_indices("causeway_") {
        let before = expr[..i].chars().next_back();
        if before.is_some_and(|c| c.is_ascii_alphanumeric() || c == '_') {
            continue;
        }
        let name: String = expr[i..]
            .chars()
            .take_while(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || *c == '_')
            .collect();
        let base = ["_bucket", "_sum", "_count"]
            .iter()
            .find_map(|s| name.strip_suffix(s))
            .unwrap_or(&name);
        if !exported.contains(&name) && !exported.contains(base) {
            out.push(name);
        }
    }
    out
}

/// Every query in a Grafana dashboard (panels, rows' panels, their targets).
fn dashboard_queries(dash: &Value) -> Vec<(String, String)> {
    let mut out = Vec::new();
    let mut panels: Vec<&Value> = dash["panels"].as_array().into_iter().flatten().collect();
    while let Some(p) = panels.pop() {
        panels.extend(p["panels"].as_array().into_iter().flatten());
        for t in p["targets"].as_array().into_iter().flatten() {
            if let Some(e) = t["expr"].as_str() {
                out.push((p["title"].as_str().unwrap_or("").to_string(), e.to_string()));
            }
        }
    }
    out
}

/// The chart's Grafana dashboards query only metrics the code exports, and the chart renders each
/// as a ConfigMap with the dashboard sidecar's label when asked (and none by default).
#[tokio::test]
async fn the_grafana_dashboards_query_only_metrics_the_code_exports() -> anyhow::Result<()> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let exported = exported_metric_names(&root)?;
    for known in [
        "causeway_gateway_requests_total",
        "causeway_federator_leader",
        "causeway_dns_queries_total",
    ] {
        assert!(exported.contains(known), "{known} not found in the sources");
    }
    // The check can fail: a name the code does not export is named.
    assert_eq!(
        unknown_metrics(
            "rate(causeway_gateway_nope_total[5m]) / causeway_up",
            &exported
        ),
        ["causeway_gateway_nope_total"]
    );
    let chart = root.join("helm/causeway");
    let mut dashboards = std::collections::BTreeMap::new();
    for entry in std::fs::read_dir(chart.join("dashboards"))? {
        let path = entry?.path();
        let file = path.file_name().unwrap().to_string_lossy().into_owned();
        let dash: Value = serde_json::from_str(&std::fs::read_to_string(&path)?)
            .with_context(|| format!("{file} is not JSON"))?;
        assert!(
            dash["uid"].as_str().is_some_and(|u| !u.is_empty()),
            "{file}: uid"
        );
        assert!(
            dash["title"].as_str().is_some_and(|t| !t.is_empty()),
            "{file}: title"
        );
        let queries = dashboard_queries(&dash);
        assert!(
            queries.len() >= 10,
            "{file}: only {} queries",
            queries.len()
        );
        for (panel, expr) in &queries {
            let unknown = unknown_metrics(expr, &exported);
            assert!(
                unknown.is_empty(),
                "{file}: panel {panel:?} queries {unknown:?}, which the code does not export: {expr}"
            );
        }
        dashboards.insert(file, dash);
    }
    assert_eq!(dashboards.len(), 2, "{:?}", dashboards.keys());

    let render = |set: &'static [&'static str]| {
        let chart = chart.clone();
        async move {
            let out = Command::new(helm())
                .args(["template", "east"])
                .arg(&chart)
                .args(["--namespace", "causeway-system"])
                .args(set)
                .output()
                .await
                .context("running helm (scripts/setup.sh installs it)")?;
            anyhow::ensure!(
                out.status.success(),
                "{}",
                String::from_utf8_lossy(&out.stderr)
            );
            let text = String::from_utf8(out.stdout)?;
            let maps: Vec<Value> = text
                .split("\n---\n")
                .filter_map(|d| serde_saphyr::from_str::<Value>(d).ok())
                .filter(|o| {
                    o["kind"] == "ConfigMap" && o["metadata"]["labels"]["grafana_dashboard"] == "1"
                })
                .collect();
            Ok::<_, anyhow::Error>(maps)
        }
    };
    assert!(render(&[]).await?.is_empty(), "no dashboards unless asked");
    let maps = render(&["--set", "grafanaDashboards.enabled=true"]).await?;
    assert_eq!(maps.len(), dashboards.len());
    for m in &maps {
        let (file, text) = m["data"]
            .as_object()
            .and_then(|d| d.iter().next())
            .map(|(k, v)| (k.clone(), v.as_str().unwrap_or("").to_string()))
            .expect("one dashboard per ConfigMap");
        let rendered: Value = serde_json::from_str(&text)?;
        assert_eq!(
            Some(&rendered),
            dashboards.get(&file),
            "{file} renders as it is"
        );
    }
    Ok(())
}

/// Gateway pods `gateway-<i>` in causeway-system (labels the federators' `gateway_selector`
/// selects), each Ready with its IP, as the kubelet reports them. Returns the IPs, sorted.
fn gateway_pods(api: &KubeApiServer, ips: &[&str]) -> anyhow::Result<Vec<String>> {
    if api.get("v1", "namespaces", "", "causeway-system").is_none() {
        api.create(serde_json::json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "causeway-system"}}))?;
    }
    for (i, ip) in ips.iter().enumerate() {
        let name = format!("gateway-{i}");
        api.create(serde_json::json!({
            "apiVersion": "v1", "kind": "Pod",
            "metadata": {"name": name, "namespace": "causeway-system", "labels": {"app": "causeway-gateway"}},
            "spec": {"containers": [{"name": "gateway", "image": "causeway-gateway"}]},
        }))?;
        api.set_status("v1", "pods", "causeway-system", &name, pod_status(ip, true))?;
    }
    let mut out: Vec<String> = ips.iter().map(|s| s.to_string()).collect();
    out.sort();
    Ok(out)
}

fn pod_status(ip: &str, ready: bool) -> Value {
    serde_json::json!({
        "phase": "Running",
        "podIP": ip,
        "conditions": [{"type": "Ready", "status": if ready { "True" } else { "False" }}],
    })
}

/// The EndpointSlices of Service `ns/name` (label `kubernetes.io/service-name`).
fn slices_of(api: &KubeApiServer, ns: &str, name: &str) -> Vec<Value> {
    api.list("discovery.k8s.io/v1", "endpointslices", ns)
        .into_iter()
        .filter(|s| s["metadata"]["labels"]["kubernetes.io/service-name"] == name)
        .collect()
}

fn endpoint_ips(slice: &Value) -> Vec<String> {
    let mut ips: Vec<String> = slice["endpoints"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|e| e["addresses"][0].as_str().map(str::to_string))
        .collect();
    ips.sort();
    ips
}

/// Writes the federator made to the Kubernetes API (kubectl's and the test's own go around it or
/// are reads): every request that is not a GET, from the test server's log.
fn federator_writes(api: &KubeApiServer) -> Vec<String> {
    api.requests()
        .into_iter()
        .filter(|r| !r.starts_with("GET "))
        .collect()
}

/// At rest, the sink writes nothing: while it makes five more passes over every import (each
/// started by a change it watches: a namespace nobody imports into), and kube-controller-manager's
/// EndpointSlice controller (the test server's) runs after every write, no ServiceImport,
/// Service or EndpointSlice is written and the store's resourceVersion moves only by the test's
/// own five namespaces.
async fn at_rest(api: &KubeApiServer, admin: &str) -> anyhow::Result<()> {
    let passes = || async {
        let m = http_get(admin, "/metrics").await.ok()?;
        causeway_api::prom::series(&m, "causeway_federator_kube_sink_passes_total")
    };
    // One pass, started by a change the sink watches (a namespace nobody imports into).
    let pass = |name: String| async move {
        let before = passes().await.unwrap_or(0.0);
        api.create(serde_json::json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": name}}))?;
        wait_for("a sink pass", T, || async {
            (passes().await? > before).then_some(())
        })
        .await
    };
    // Settled first: a whole pass without a write (the last changes may still be in flight).
    let mut settled = false;
    for i in 0..20 {
        let before = federator_writes(api).len();
        pass(format!("settle-{i}")).await?;
        if federator_writes(api).len() == before {
            settled = true;
            break;
        }
    }
    anyhow::ensure!(
        settled,
        "the sink kept writing: {:?}",
        federator_writes(api)
    );
    let writes = federator_writes(api).len();
    let rv = api.resource_version();
    for i in 0..5 {
        pass(format!("rest-{i}")).await?;
    }
    let after = federator_writes(api);
    assert_eq!(
        after[writes..],
        [] as [String; 0],
        "writes at rest (five passes)"
    );
    assert_eq!(
        api.resource_version(),
        rv + 5,
        "only the test's own namespaces changed"
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slices_kube_controller_manager_makes_from_our_labels_are_left_alone() -> anyhow::Result<()>
{
    let TwoClusters {
        etcd: _etcd,
        east_api,
        west_api,
        east: _east,
        west,
    } = TwoClusters::start().await?;
    gateway_pods(&west_api, &["10.244.1.7"])?;
    west_api.apply(&namespace("demo")).await?;
    east_api
        .apply(&format!(
            "{}{}",
            namespace("demo"),
            exported_service("echo", "http", 80)
        ))
        .await?;
    wait_for("west's slice of the gateway pods", T, || async {
        (endpoint_ips(slices_of(&west_api, "demo", "echo-clusterset").first()?) == ["10.244.1.7"])
            .then_some(())
    })
    .await?;
    // A Service with a selector that carries the labels of ours (someone copied them): the
    // EndpointSlice controller makes its slice, with those labels copied, as the real one does.
    // Neither is ours: the sink must not delete them (it did, and the controller made them again,
    // 14 writes a second).
    west_api.create(serde_json::json!({
        "apiVersion": "v1", "kind": "Service",
        "metadata": {"name": "lookalike", "namespace": "demo", "labels": {
            "app.kubernetes.io/managed-by": "causeway-federator",
            "multicluster.kubernetes.io/service-name": "echo"}},
        "spec": {"selector": {"app": "lookalike"}, "ports": [{"port": 80}]},
    }))?;
    let controller_slice = slices_of(&west_api, "demo", "lookalike");
    assert_eq!(controller_slice.len(), 1, "the controller made a slice");
    assert_eq!(
        controller_slice[0]["metadata"]["labels"]["app.kubernetes.io/managed-by"],
        "causeway-federator",
        "with the Service's labels copied"
    );
    at_rest(&west_api, &west.admin).await?;
    assert_eq!(slices_of(&west_api, "demo", "lookalike").len(), 1);
    assert!(west_api
        .get("v1", "services", "demo", "lookalike")
        .is_some());
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_clusterset_ip_held_by_another_service_is_a_condition_and_an_event_and_dns_stays_silent(
) -> anyhow::Result<()> {
    let TwoClusters {
        etcd: _etcd,
        east_api,
        west_api,
        east: _east,
        west,
    } = TwoClusters::start().await?;
    east_api
        .apply(&format!(
            "{}{}",
            namespace("demo"),
            exported_service("echo", "http", 80)
        ))
        .await?;
    let vip = wait_for("west's federator to know demo/echo's VIP", T, || async {
        let body = http_get(&west.admin, "/debug/snapshot").await.ok()?;
        let v: Value = serde_json::from_str(&body).ok()?;
        v["snapshot"]["services"]["demo/echo"]["vip"]
            .as_str()
            .map(str::to_string)
    })
    .await?;
    // West gets the namespace with a Service of its own already holding that IP.
    west_api.create(
        serde_json::json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "demo"}}),
    )?;
    west_api.create(serde_json::json!({
        "apiVersion": "v1", "kind": "Service",
        "metadata": {"name": "squatter", "namespace": "demo"},
        "spec": {"clusterIP": vip, "ports": [{"port": 5432}]},
    }))?;
    let ready = |api: &KubeApiServer| {
        let si = api.get(MCS, "serviceimports", "demo", "echo")?;
        let c = si["status"]["conditions"]
            .as_array()?
            .iter()
            .find(|c| c["type"] == "Ready")?
            .clone();
        Some((si, c))
    };
    let (si, cond) = wait_for(
        "Ready=False ClusterSetIPUnavailable on west's ServiceImport",
        T,
        || async {
            let (si, c) = ready(&west_api)?;
            (c["status"] == "False" && c["reason"] == "ClusterSetIPUnavailable").then_some((si, c))
        },
    )
    .await?;
    assert!(
        cond["message"]
            .as_str()
            .unwrap_or("")
            .contains("already allocated"),
        "{cond}"
    );
    assert!(
        si["spec"].get("ips").is_none(),
        "no ips while the IP is another's: {si}"
    );
    let events: Vec<Value> = west_api
        .list("v1", "events", "demo")
        .into_iter()
        .filter(|e| e["reason"] == "ClusterSetIPUnavailable")
        .collect();
    assert_eq!(events.len(), 1, "one Event: {events:?}");
    assert_eq!(events[0]["involvedObject"]["name"], "echo");
    // DNS does not answer the squatter's address for the import.
    let name = "echo.demo.svc.clusterset.local";
    assert_eq!(dig_a(&west.dns, name).await?, [] as [String; 0]);
    // Retried with backoff, not in a loop.
    let attempts = || {
        west_api
            .requests()
            .iter()
            .filter(|r| r.starts_with("PATCH /api/v1/namespaces/demo/services/echo-clusterset"))
            .count()
    };
    let first = attempts();
    assert!(first <= 3, "{first} attempts at once");

    // The other Service goes: the next retry takes the IP, and DNS answers it.
    west_api.delete("v1", "services", "demo", "squatter")?;
    wait_for(
        "west's ServiceImport Ready with the ClusterSetIP",
        T,
        || async {
            let (si, c) = ready(&west_api)?;
            (c["status"] == "True" && si["spec"]["ips"][0] == vip.as_str()).then_some(())
        },
    )
    .await?;
    wait_for(&format!("west's DNS to answer {name}"), T, || async {
        (dig_a(&west.dns, name).await.ok()? == [vip.clone()]).then_some(())
    })
    .await?;
    let total = attempts();
    assert!(
        total <= first + 6,
        "{total} attempts in all: not backed off"
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn after_api_server_restarts_new_exports_flow_within_seconds() -> anyhow::Result<()> {
    let TwoClusters {
        etcd: _etcd,
        mut east_api,
        mut west_api,
        east: _east,
        west: _west,
    } = TwoClusters::start().await?;
    gateway_pods(&west_api, &["10.244.1.7"])?;
    west_api.apply(&namespace("demo")).await?;
    east_api
        .apply(&format!(
            "{}{}",
            namespace("demo"),
            exported_service("echo", "http", 80)
        ))
        .await?;
    wait_for("west's ServiceImport demo/echo", T, || async {
        west_api
            .get(MCS, "serviceimports", "demo", "echo")
            .map(|_| ())
    })
    .await?;
    // Both API servers restart (8 s down: watches fail and back off meanwhile); resumed
    // watches get 410 Expired.
    let down = Duration::from_secs(8);
    let (a, b) = tokio::join!(east_api.restart(down), west_api.restart(down));
    a?;
    b?;
    let back = std::time::Instant::now();
    east_api
        .apply(&exported_service("fresh", "http", 81))
        .await?;
    let bound = Duration::from_secs(8);
    wait_for(
        "the new export in west within 8 s of the restart",
        bound,
        || async {
            west_api
                .get(MCS, "serviceimports", "demo", "fresh")
                .map(|_| ())
        },
    )
    .await?;
    let imported = back.elapsed();
    wait_for(
        "its conditions in east within 8 s of the restart",
        bound,
        || async {
            (condition(&east_api, "fresh", "Ready")?
                == ("True".to_string(), "Exported".to_string()))
                .then_some(())
        },
    )
    .await?;
    eprintln!(
        "RESULT api_restart imported_after_s={:.2} conditions_after_s={:.2}",
        imported.as_secs_f64(),
        back.elapsed().as_secs_f64()
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forbidden_before_rbac_is_ready_and_initialising_storage_are_retried() -> anyhow::Result<()>
{
    let etcd = EtcdServer::start().await?;
    let api = KubeApiServer::builder()
        .forbidden_until_ready()
        .start()
        .await?;
    let _east = KubeFed::start("east", &etcd.endpoint(), &api).await?;
    wait_for("the federator to be refused (403)", T, || async {
        (api.requests().len() >= 3).then_some(())
    })
    .await?;
    api.set_initializing("serviceexports", true);
    api.set_forbidden(false);
    let seen = api.requests().len();
    wait_for(
        "the federator to be answered 429 for serviceexports",
        T,
        || async {
            api.requests()[seen..]
                .iter()
                .any(|r| r.contains("/serviceexports"))
                .then_some(())
        },
    )
    .await?;
    api.set_initializing("serviceexports", false);
    api.apply(&format!(
        "{}{}",
        namespace("demo"),
        exported_service("echo", "http", 80)
    ))
    .await?;
    until_condition(&api, "east", "echo", "Ready", ("True", "Exported")).await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_cluster_id_comes_from_the_cluster_property_and_a_mismatch_stops_the_start(
) -> anyhow::Result<()> {
    let etcd = EtcdServer::start().await?;
    let api = KubeApiServer::start().await?;
    api.create(serde_json::json!({
        "apiVersion": "about.k8s.io/v1alpha1", "kind": "ClusterProperty",
        "metadata": {"name": "cluster.clusterset.k8s.io"},
        "spec": {"value": "east"},
    }))?;
    // Configured as another cluster: refused at start, naming both IDs.
    let dir = tempfile::tempdir()?;
    let config = dir.path().join("federator.yaml");
    let body = |cluster: &str| {
        format!(
            "{cluster}etcd:\n  endpoints: [\"{}\"]\nsource: kube\nkube_sink: true\n",
            etcd.endpoint()
        )
    };
    std::fs::write(&config, body("cluster: west\n"))?;
    let out = tokio::time::timeout(
        T,
        Command::new(crate::harness::FEDERATOR)
            .args([
                "--config",
                &config.display().to_string(),
                "--admin-listen",
                "127.0.0.1:0",
            ])
            .env("KUBECONFIG", api.kubeconfig())
            .kill_on_drop(true)
            .output(),
    )
    .await??;
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "started as west in east: {stderr}");
    assert!(
        stderr.contains("\"west\"")
            && stderr.contains("\"east\"")
            && stderr.contains("cluster.clusterset.k8s.io"),
        "{stderr}"
    );
    // No cluster configured: the property's is used.
    std::fs::write(&config, body(""))?;
    let args = [
        "--config",
        &config.display().to_string(),
        "--admin-listen",
        "127.0.0.1:0",
    ]
    .map(String::from);
    let kubeconfig = api.kubeconfig().display().to_string();
    let (_child, admin, _, _) = spawn_federator(&args, &[("KUBECONFIG", &kubeconfig)]).await?;
    wait_for("the federator to call itself east", T, || async {
        let v: Value =
            serde_json::from_str(&http_get(&admin, "/debug/snapshot").await.ok()?).ok()?;
        (v["snapshot"]["local_cluster"] == "east").then_some(())
    })
    .await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_internal_traffic_policy_is_carried_and_a_differing_one_conflicts() -> anyhow::Result<()>
{
    let TwoClusters {
        etcd: _etcd,
        east_api,
        west_api,
        east: _east,
        west: _west,
    } = TwoClusters::start().await?;
    let local = exported_service("echo", "http", 80).replacen(
        "spec:\n  ports:",
        "spec:\n  internalTrafficPolicy: Local\n  trafficDistribution: PreferClose\n  ports:",
        1,
    );
    east_api
        .apply(&format!("{}{local}", namespace("demo")))
        .await?;
    until_condition(&east_api, "east", "echo", "Ready", ("True", "Exported")).await?;
    wait_for("east's ServiceImport to carry the policy", T, || async {
        let si = east_api.get(MCS, "serviceimports", "demo", "echo")?;
        (si["spec"]["internalTrafficPolicy"] == "Local"
            && si["spec"]["trafficDistribution"] == "PreferClose")
            .then_some(())
    })
    .await?;
    // West exports it with the default policy (Cluster) and no traffic distribution: both
    // conflict, and the oldest (east's) still applies.
    west_api
        .apply(&format!(
            "{}{}",
            namespace("demo"),
            exported_service("echo", "http", 80)
        ))
        .await?;
    let want = (
        "True",
        "InternalTrafficPolicyConflict,TrafficDistributionConflict",
    );
    until_condition(&west_api, "west", "echo", "Conflict", want).await?;
    until_condition(&east_api, "east", "echo", "Conflict", want).await?;
    let si = west_api
        .get(MCS, "serviceimports", "demo", "echo")
        .context("west's ServiceImport")?;
    assert_eq!(si["spec"]["internalTrafficPolicy"], "Local", "{si}");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exported_labels_and_annotations_reach_the_import_and_bad_ones_are_named(
) -> anyhow::Result<()> {
    let TwoClusters {
        etcd: _etcd,
        east_api,
        west_api,
        east: _east,
        west: _west,
    } = TwoClusters::start().await?;
    west_api.apply(&namespace("demo")).await?;
    let with_spec = |labels: &str| {
        exported_service("echo", "http", 80).replace(
            "kind: ServiceExport\nmetadata:\n  name: echo\n  namespace: demo\n",
            &format!(
                "kind: ServiceExport\nmetadata:\n  name: echo\n  namespace: demo\nspec:\n  exportedLabels: {labels}\n  exportedAnnotations: {{note: hello}}\n"
            ),
        )
    };
    east_api
        .apply(&format!(
            "{}{}",
            namespace("demo"),
            with_spec("{team: payments}")
        ))
        .await?;
    let (si, svc) = wait_for(
        "west's ServiceImport and Service with the exported labels",
        T,
        || async {
            let si = west_api.get(MCS, "serviceimports", "demo", "echo")?;
            let svc = west_api.get("v1", "services", "demo", "echo-clusterset")?;
            (si["metadata"]["labels"]["team"] == "payments"
                && svc["metadata"]["labels"]["team"] == "payments")
                .then_some((si, svc))
        },
    )
    .await?;
    assert_eq!(si["metadata"]["annotations"]["note"], "hello");
    assert_eq!(svc["metadata"]["annotations"]["note"], "hello");
    assert_eq!(
        si["metadata"]["labels"]["app.kubernetes.io/managed-by"],
        "causeway-federator"
    );
    // A label Kubernetes would refuse is refused at the source, named; nothing else changes.
    east_api.apply(&with_spec("{\"bad key!\": x}")).await?;
    until_condition(
        &east_api,
        "east",
        "echo",
        "Valid",
        ("False", "InvalidExport"),
    )
    .await?;
    let se = east_api
        .get(MCS, "serviceexports", "demo", "echo")
        .context("export")?;
    let valid = se["status"]["conditions"]
        .as_array()
        .and_then(|c| c.iter().find(|c| c["type"] == "Valid").cloned())
        .context("Valid")?;
    assert!(
        valid["message"].as_str().unwrap_or("").contains("bad key!"),
        "{valid}"
    );
    Ok(())
}
