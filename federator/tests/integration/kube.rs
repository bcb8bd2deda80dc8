//! Issue "Kubernetes: ServiceExport resources in, ServiceImports out": real federator processes
//! (`source: kube`, `kube_sink: true`) against a real etcd, each with its own Kubernetes API (the
//! `causeway_e2e::kubeapi` test fixture), driven with the real kubectl.

use std::path::Path;
use std::process::Stdio;
use std::time::Duration;

use anyhow::Context;
use causeway_e2e::kubeapi::KubeApiServer;
use causeway_e2e::{wait_for, EtcdServer};
use serde_json::Value;
use tokio::io::AsyncWriteExt;
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
        let dir = tempfile::tempdir()?;
        let config = dir.path().join("federator.yaml");
        std::fs::write(
            &config,
            format!(
                "cluster: {cluster}\netcd:\n  endpoints: [\"{etcd}\"]\nsource: kube\nkube_sink: true\n\
                 kube:\n  gateway_selector: {{app: causeway-gateway}}\n  gateway_port: 15001\n\
                 vip_range: \"{VIP_RANGE}\"\nlease_ttl: 3s\nkeepalive_interval: 1s\n"
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
        let (child, admin, _config, dns) =
            spawn_federator(&args, &[("KUBECONFIG", &kubeconfig)]).await?;
        let dns = dns.context("the federator printed no DNS address")?;
        Ok(KubeFed {
            admin,
            dns,
            _child: child,
            _dir: dir,
        })
    }
}

/// `kubectl apply --validate=false -f -` of `yaml`.
async fn apply(api: &KubeApiServer, yaml: &str) -> anyhow::Result<()> {
    kubectl(api, &["apply", "--validate=false", "-f", "-"], yaml).await
}

async fn kubectl(api: &KubeApiServer, args: &[&str], stdin: &str) -> anyhow::Result<()> {
    let mut child = api
        .kubectl()
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .context("running kubectl (scripts/setup.sh installs it)")?;
    let mut input = child.stdin.take().context("stdin")?;
    let text = stdin.to_string();
    tokio::spawn(async move {
        let _ = input.write_all(text.as_bytes()).await;
    });
    let out = tokio::time::timeout(T, child.wait_with_output()).await??;
    anyhow::ensure!(
        out.status.success(),
        "kubectl {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(())
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
    let etcd = EtcdServer::start().await?;
    let (east_api, west_api) = (KubeApiServer::start().await?, KubeApiServer::start().await?);
    let east = KubeFed::start("east", &etcd.endpoint(), &east_api).await?;
    let west = KubeFed::start("west", &etcd.endpoint(), &west_api).await?;
    apply(
        &east_api,
        &format!(
            "{}{}",
            namespace("demo"),
            exported_service("echo", "http", 80)
        ),
    )
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
    apply(&west_api, &namespace("demo")).await?;

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
    assert_eq!(derived["spec"]["selector"]["app"], "causeway-gateway");
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
        let value: f64 = metrics
            .lines()
            .find_map(|l| l.strip_prefix(&sample))
            .and_then(|v| v.trim().parse().ok())
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
    kubectl(
        &east_api,
        &["-n", "demo", "delete", "serviceexport", "echo"],
        "",
    )
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
    apply(
        &api,
        &format!(
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
    until_condition(&api, "east", "ghost", "Valid", ("False", "NoService")).await?;

    // The Service appears: the export becomes valid and ready.
    apply(&api, &exported_service("ghost", "http", 80)).await?;
    until_condition(&api, "east", "ghost", "Valid", ("True", "Valid")).await?;
    until_condition(&api, "east", "ghost", "Ready", ("True", "Exported")).await?;
    // The invalid one is not in the mesh.
    assert!(api.get(MCS, "serviceimports", "demo", "ext").is_none());
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_port_conflict_marks_both_exports() -> anyhow::Result<()> {
    let etcd = EtcdServer::start().await?;
    let (east_api, west_api) = (KubeApiServer::start().await?, KubeApiServer::start().await?);
    let _east = KubeFed::start("east", &etcd.endpoint(), &east_api).await?;
    let _west = KubeFed::start("west", &etcd.endpoint(), &west_api).await?;
    // Same port name, different port numbers.
    apply(
        &east_api,
        &format!(
            "{}{}",
            namespace("demo"),
            exported_service("echo", "http", 80)
        ),
    )
    .await?;
    apply(
        &west_api,
        &format!(
            "{}{}",
            namespace("demo"),
            exported_service("echo", "http", 8080)
        ),
    )
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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_headless_export_becomes_endpoint_slices_per_cluster() -> anyhow::Result<()> {
    let etcd = EtcdServer::start().await?;
    let (east_api, west_api) = (KubeApiServer::start().await?, KubeApiServer::start().await?);
    let _east = KubeFed::start("east", &etcd.endpoint(), &east_api).await?;
    let _west = KubeFed::start("west", &etcd.endpoint(), &west_api).await?;
    apply(&west_api, &namespace("demo")).await?;
    let headless = exported_service("db", "pg", 5432)
        .replace("spec:\n  ports:", "spec:\n  clusterIP: None\n  ports:");
    apply(&east_api, &format!("{}{headless}", namespace("demo"))).await?;

    let slice = wait_for("west's EndpointSlice of demo/db from east", T, || async {
        west_api
            .list("discovery.k8s.io/v1", "endpointslices", "demo")
            .into_iter()
            .find(|s| {
                s["metadata"]["labels"]["multicluster.kubernetes.io/service-name"] == "db"
                    && s["metadata"]["labels"]["multicluster.kubernetes.io/source-cluster"]
                        == "east"
            })
    })
    .await?;
    assert_eq!(slice["endpoints"][0]["addresses"][0], "10.1.0.5");
    assert_eq!(slice["addressType"], "IPv4");
    assert_eq!(
        slice["metadata"]["labels"]["kubernetes.io/service-name"],
        "db-clusterset"
    );
    let import = west_api
        .get(MCS, "serviceimports", "demo", "db")
        .context("the ServiceImport")?;
    assert_eq!(import["spec"]["type"], "Headless");
    assert!(import["spec"].get("ips").is_none(), "{import}");
    let derived = west_api
        .get("v1", "services", "demo", "db-clusterset")
        .context("the derived Service")?;
    assert_eq!(derived["spec"]["clusterIP"], "None");

    // Unexport: the slices go with the import.
    kubectl(
        &east_api,
        &["-n", "demo", "delete", "serviceexport", "db"],
        "",
    )
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

/// Two replicas of one cluster's federator: only the leader writes conditions; when it dies, the
/// other takes over within the lease TTL and writes them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_standby_replica_takes_over_writing_conditions() -> anyhow::Result<()> {
    let etcd = EtcdServer::start().await?;
    let api = KubeApiServer::start().await?;
    let first = KubeFed::start("east", &etcd.endpoint(), &api).await?;
    let second = KubeFed::spawn("east", &etcd.endpoint(), &api).await?;
    assert!(!second.is_leader().await, "one leader per cluster");
    apply(
        &api,
        &format!(
            "{}{}",
            namespace("demo"),
            exported_service("echo", "http", 80)
        ),
    )
    .await?;
    until_condition(&api, "east", "echo", "Ready", ("True", "Exported")).await?;

    drop(first);
    wait_for("the standby to lead", T, || async {
        second.is_leader().await.then_some(())
    })
    .await?;
    apply(&api, &exported_service("web", "http", 8080)).await?;
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
        Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../helm/causeway/crds/multicluster.x-k8s.io.yaml"),
    )?;
    assert!(
        String::from_utf8(out.stdout)? == committed,
        "helm/causeway/crds/multicluster.x-k8s.io.yaml differs from `causeway crds`"
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
