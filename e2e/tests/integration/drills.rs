//! Issue "Failover drills on a Helm-installed federation, as a Kubernetes resource": two
//! clusters, each with its own Kubernetes API (the test server), a federator in Kubernetes mode
//! (`source: kube`, `kube_sink: true`) holding its cluster's issuer, and a gateway; one etcd;
//! `demo/echo` served in both by in-process echo backends. Drills are created with the real
//! kubectl and with `causeway drill --kubeconfig`; what they drain is checked through each
//! cluster's DNS and gateway, as a client there would.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use anyhow::Context as _;
use causeway_e2e::kubeapi::KubeApiServer;
use causeway_e2e::lab::demo::{serve_http_echo, Demo};
use causeway_e2e::{wait_for, EtcdServer};
use serde_json::Value;
use tokio::process::{Child, Command};

use crate::lab_support::{self, result};

const T: Duration = Duration::from_secs(60);
const DRILLS: &str = "causeway.io/v1alpha1";
const NAME: &str = "echo.demo.svc.clusterset.local";
const VIP_RANGE: &str = "10.96.128.0/20";
/// `drills.lease_ttl`: how soon a drain ends after the federator running it dies.
const DRILL_LEASE_TTL_S: u64 = 3;

/// One cluster: its API, federator, gateway and echo backend. Processes are killed on drop.
struct Cluster {
    name: String,
    api: KubeApiServer,
    dns: SocketAddr,
    fed_admin: SocketAddr,
    egress: SocketAddr,
    gw_admin: SocketAddr,
    fed: Child,
    _gw: Child,
    _backend: tokio::task::JoinHandle<()>,
    _dir: tempfile::TempDir,
}

/// A port that was free a moment ago (the gateway takes fixed listen addresses).
fn free_port() -> anyhow::Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port())
}

fn bin(name: &str) -> anyhow::Result<PathBuf> {
    Ok(causeway_e2e::lab::default_bin_dir()?.join(name))
}

/// `causeway_e2e::spawn_printing` with the tests' log level and stderr.
async fn spawn_printing(
    mut cmd: Command,
    prefixes: &[&str],
) -> anyhow::Result<(Child, Vec<String>)> {
    cmd.env(
        "RUST_LOG",
        std::env::var("CAUSEWAY_TEST_LOG").unwrap_or_else(|_| "warn".into()),
    )
    .stderr(Stdio::inherit());
    causeway_e2e::spawn_printing(&mut cmd, prefixes).await
}

impl Cluster {
    async fn start(name: &str, etcd: &str, pki: &Path) -> anyhow::Result<Cluster> {
        // The backends listen on loopback, which a real API server refuses in EndpointSlices.
        let api = KubeApiServer::builder()
            .loopback_endpoints()
            .start()
            .await?;
        let dir = tempfile::tempdir()?;
        let (egress_port, peer_port, gw_admin_port) = (free_port()?, free_port()?, free_port()?);
        let egress: SocketAddr = format!("127.0.0.1:{egress_port}").parse()?;
        let gw_admin: SocketAddr = format!("127.0.0.1:{gw_admin_port}").parse()?;
        // Each gateway opens a listener per ClusterSetIP port; keep the two apart.
        let port_first =
            40_000 + (std::process::id() % 500) as u16 * 40 + if name == "east" { 0 } else { 20 };

        let config = dir.path().join("federator.yaml");
        std::fs::write(
            &config,
            format!(
                "cluster: {name}\netcd:\n  endpoints: [\"{etcd}\"]\nsource: kube\nkube_sink: true\n\
                 kube:\n  gateway_selector: {{app: causeway-gateway}}\n  gateway_namespace: causeway-system\n  \
                 gateway_port: {egress_port}\n  gateway_port_first: {port_first}\n  gateway_port_count: 20\n\
                 vip_range: \"{VIP_RANGE}\"\nlease_ttl: 3s\nkeepalive_interval: 1s\n\
                 drills:\n  gateway_egress: \"{egress}\"\n  failback_timeout: 10s\n  lease_ttl: {DRILL_LEASE_TTL_S}s\n  max_concurrent: 1\n"
            ),
        )?;
        let certs = pki.join(name);
        let mut fed = Command::new(bin("causeway-federator")?);
        fed.arg("--config")
            .arg(&config)
            .args([
                "--admin-listen",
                "127.0.0.1:0",
                "--dns-listen",
                "127.0.0.1:0",
            ])
            .args(["--config-listen", "127.0.0.1:0"])
            .arg("--issuer-cert")
            .arg(certs.join("ca.pem"))
            .arg("--issuer-key")
            .arg(certs.join("ca.key"))
            .arg("--trust-bundle")
            .arg(certs.join("bundle.pem"))
            .args(["--gateway-address", &format!("127.0.0.1:{peer_port}")])
            .env("KUBECONFIG", api.kubeconfig());
        let (fed, addrs) = spawn_printing(
            fed,
            &[
                "admin listening on ",
                "config listening on ",
                "dns listening on ",
            ],
        )
        .await
        .with_context(|| format!("{name}'s federator"))?;
        let (fed_admin, config_addr, dns) =
            (addrs[0].parse()?, addrs[1].clone(), addrs[2].parse()?);

        let state = dir.path().join("gateway");
        std::fs::create_dir_all(&state)?;
        let mut gw = Command::new(bin("causeway-gateway")?);
        gw.args(["--cluster", name, "--node", &format!("{name}-gateway")])
            .arg("--cert")
            .arg(certs.join("gateway.pem"))
            .arg("--key")
            .arg(certs.join("gateway.key"))
            .arg("--trust-bundle")
            .arg(certs.join("bundle.pem"))
            .args(["--federator", &format!("https://{config_addr}")])
            .arg("--state-dir")
            .arg(&state)
            .args(["--egress-listen", &egress.to_string()])
            .args(["--peer-listen", &format!("127.0.0.1:{peer_port}")])
            .args(["--admin-listen", &gw_admin.to_string()])
            .env(
                "RUST_LOG",
                std::env::var("CAUSEWAY_TEST_LOG").unwrap_or_else(|_| "warn".into()),
            )
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .kill_on_drop(true);
        let gw = gw.spawn().context("spawning causeway-gateway")?;

        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let backend_port = listener.local_addr()?.port();
        let demo = Demo::new(name, None);
        let backend = tokio::spawn(async move {
            let _ = serve_http_echo(listener, demo).await;
        });
        api.apply(&exported("echo", backend_port)).await?;
        Ok(Cluster {
            name: name.to_string(),
            api,
            dns,
            fed_admin,
            egress,
            gw_admin,
            fed,
            _gw: gw,
            _backend: backend,
            _dir: dir,
        })
    }

    /// What this cluster's DNS answers for `echo` (None: no answer).
    async fn resolve(&self) -> Option<std::net::IpAddr> {
        causeway_probe::dns::dns_a(self.dns, NAME, Duration::from_secs(1))
            .await
            .ok()?
            .first()
            .copied()
    }

    /// The cluster whose backend answered a call to `echo` through this cluster's gateway.
    async fn call(&self) -> Option<String> {
        let a = causeway_probe::http::http_get_via(
            self.egress,
            &format!("{NAME}:80"),
            "/",
            Duration::from_secs(2),
        )
        .await
        .ok()?;
        a.status.is_success().then_some(a.cluster?)
    }

    async fn snapshot(&self) -> Option<Value> {
        let a = causeway_probe::http::http_get(
            self.fed_admin,
            "localhost",
            "/debug/snapshot",
            Duration::from_secs(2),
        )
        .await
        .ok()?;
        serde_json::from_slice(&a.body).ok()
    }

    fn drill(&self, name: &str) -> Option<Value> {
        self.api.get(DRILLS, "drills", "demo", name)
    }
}

/// Namespace `demo`, a Service `demo/<name>` on port 80, an EndpointSlice whose one ready
/// endpoint is the backend on loopback, and its ServiceExport.
fn exported(name: &str, backend_port: u16) -> String {
    format!(
        "apiVersion: v1\nkind: Namespace\nmetadata:\n  name: demo\n---\n\
         apiVersion: v1\nkind: Service\nmetadata:\n  name: {name}\n  namespace: demo\nspec:\n  ports:\n    - name: http\n      port: 80\n      appProtocol: http\n---\n\
         apiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\nmetadata:\n  name: {name}-1\n  namespace: demo\n  labels:\n    kubernetes.io/service-name: {name}\n\
         addressType: IPv4\nports:\n  - name: http\n    port: {backend_port}\n    appProtocol: http\nendpoints:\n  - addresses: [\"127.0.0.1\"]\n    conditions:\n      ready: true\n---\n\
         apiVersion: multicluster.x-k8s.io/v1alpha1\nkind: ServiceExport\nmetadata:\n  name: {name}\n  namespace: demo\n"
    )
}

fn drill_yaml(name: &str, service: &str, cluster: &str, duration: &str) -> String {
    format!(
        "apiVersion: {DRILLS}\nkind: Drill\nmetadata:\n  name: {name}\n  namespace: demo\n\
         spec:\n  service: {service}\n  cluster: {cluster}\n  duration: {duration}\n  observeFrom: [east, west]\n  interval: 50ms\n"
    )
}

/// The drill keys in etcd, of every cluster.
async fn drill_keys(etcd: &EtcdServer) -> anyhow::Result<Vec<String>> {
    let mut client = etcd.client().await?;
    let resp = client
        .get(
            "/causeway/v2/clusters/",
            Some(
                etcd_client::GetOptions::new()
                    .with_prefix()
                    .with_keys_only(),
            ),
        )
        .await?;
    Ok(resp
        .kvs()
        .iter()
        .filter_map(|kv| kv.key_str().ok())
        .filter(|k| k.contains("/drills/"))
        .map(str::to_string)
        .collect())
}

struct Mesh {
    etcd: EtcdServer,
    east: Cluster,
    west: Cluster,
    /// East's own answer for `echo` (its Service's ClusterIP) and the ClusterSetIP.
    east_local_ip: std::net::IpAddr,
    vip: std::net::IpAddr,
    _pki: tempfile::TempDir,
}

async fn mesh() -> anyhow::Result<Mesh> {
    tokio::task::spawn_blocking(lab_support::ensure_binaries)
        .await?
        .map_err(anyhow::Error::msg)?;
    let pki = tempfile::tempdir()?;
    let out = Command::new(bin("causeway")?)
        .args(["certs", "--out"])
        .arg(pki.path())
        .args(["--clusters", "east,west", "--force"])
        .output()
        .await?;
    anyhow::ensure!(
        out.status.success(),
        "causeway certs: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let etcd = EtcdServer::start().await?;
    let east = Cluster::start("east", &etcd.endpoint(), pki.path()).await?;
    let west = Cluster::start("west", &etcd.endpoint(), pki.path()).await?;
    for c in [&east, &west] {
        let seen = wait_for(
            &format!("{} to serve echo itself and see both exports", c.name),
            T,
            || async {
                let snap = c.snapshot().await?;
                let exports = snap["snapshot"]["services"]["demo/echo"]["exports"].as_object()?;
                (snap["leader"] == Value::Bool(true) && exports.len() == 2).then_some(())
            },
        )
        .await;
        if let Err(e) = seen {
            eprintln!(
                "{}'s snapshot: {:#}",
                c.name,
                c.snapshot().await.unwrap_or_default()
            );
            return Err(e);
        }
        wait_for(
            &format!("{}'s gateway to see its peer up", c.name),
            T,
            || async {
                let a = causeway_probe::http::http_get(
                    c.gw_admin,
                    "localhost",
                    "/peers",
                    Duration::from_secs(1),
                )
                .await
                .ok()?;
                let peers: Vec<Value> = serde_json::from_slice(&a.body).ok()?;
                peers
                    .iter()
                    .any(|p| p["up"] == Value::Bool(true) && p["suspect"] == Value::Bool(false))
                    .then_some(())
            },
        )
        .await?;
        let answered = wait_for(
            &format!("echo to answer from {} itself", c.name),
            T,
            || async { (c.call().await? == c.name).then_some(()) },
        )
        .await;
        if let Err(e) = answered {
            let last = causeway_probe::http::http_get_via(
                c.egress,
                &format!("{NAME}:80"),
                "/",
                Duration::from_secs(2),
            )
            .await;
            eprintln!("{}'s gateway answered: {last:?}", c.name);
            return Err(e);
        }
    }
    let vip_range: causeway_api::net::Cidr = VIP_RANGE.parse().map_err(anyhow::Error::msg)?;
    let east_local_ip = wait_for("east's DNS to answer its own ClusterIP", T, || async {
        east.resolve().await.filter(|ip| !vip_range.contains(*ip))
    })
    .await?;
    // Both export echo, so each answers its own ClusterIP; east's ClusterSetIP (the answer
    // once east is drained) is in its ServiceImport.
    let vip = wait_for(
        "east's ServiceImport to carry a ClusterSetIP",
        T,
        || async {
            let import = east.api.get(
                "multicluster.x-k8s.io/v1alpha1",
                "serviceimports",
                "demo",
                "echo",
            )?;
            let ip: std::net::IpAddr = import["spec"]["ips"][0].as_str()?.parse().ok()?;
            vip_range.contains(ip).then_some(ip)
        },
    )
    .await?;
    // East's DNS answers the ClusterSetIP only once its derived Service holds it (before, a
    // drained east has no address to give): the Drill must not start before that.
    wait_for(
        "east's derived Service to hold the ClusterSetIP",
        T,
        || async {
            east.api
                .list("v1", "services", "demo")
                .iter()
                .any(|s| s["spec"]["clusterIP"] == vip.to_string())
                .then_some(())
        },
    )
    .await?;
    Ok(Mesh {
        etcd,
        east,
        west,
        east_local_ip,
        vip,
        _pki: pki,
    })
}

fn observer<'a>(drill: &'a Value, cluster: &str) -> &'a Value {
    drill["status"]["observers"]
        .as_array()
        .and_then(|o| o.iter().find(|o| o["cluster"] == cluster))
        .unwrap_or(&Value::Null)
}

fn failed(o: &Value) -> u64 {
    ["baseline", "failover", "failback"]
        .iter()
        .map(|p| o[p]["failed"].as_u64().unwrap_or(u64::MAX))
        .sum()
}

fn condition<'a>(drill: &'a Value, type_: &str) -> &'a Value {
    drill["status"]["conditions"]
        .as_array()
        .and_then(|c| c.iter().find(|c| c["type"] == type_))
        .unwrap_or(&Value::Null)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn drills_as_kubernetes_resources_drain_report_reject_and_end_on_delete() -> anyhow::Result<()>
{
    let m = mesh().await?;
    let mut m = m;
    let (east, west) = (&m.east, &m.west);

    // 1. A Drill created in west with kubectl drains echo in east for 3 s.
    west.api
        .apply(&drill_yaml("echo-east", "echo", "east", "3s"))
        .await?;
    let running = wait_for("the Drill to run", T, || async {
        let d = west.drill("echo-east")?;
        (d["status"]["phase"] == "Running").then_some(d)
    })
    .await?;
    assert_eq!(
        condition(&running, "Accepted")["status"],
        "True",
        "{running:#}"
    );
    for who in ["east", "west"] {
        assert_eq!(observer(&running, who)["phase"], "Probing", "{running:#}");
    }
    wait_for(
        "east's DNS to answer the ClusterSetIP during the drill",
        T,
        || async { (east.resolve().await? == m.vip).then_some(()) },
    )
    .await?;
    wait_for(
        "east's callers to be served by west during the drill",
        T,
        || async { (east.call().await? == "west").then_some(()) },
    )
    .await?;
    let done = wait_for("the Drill to finish", T, || async {
        let d = west.drill("echo-east")?;
        let p = d["status"]["phase"].as_str()?;
        matches!(p, "Succeeded" | "Failed").then_some(d)
    })
    .await?;
    assert_eq!(done["status"]["phase"], "Succeeded", "{done:#}");
    assert_eq!(condition(&done, "Passed")["status"], "True", "{done:#}");
    let from_east = observer(&done, "east");
    let from_west = observer(&done, "west");
    for (who, o) in [("east", from_east), ("west", from_west)] {
        assert_eq!(o["phase"], "Done", "{who}: {o:#}");
        assert_eq!(o["passed"], true, "{who}: {o:#}");
        assert_eq!(failed(o), 0, "{who} saw failed requests: {o:#}");
        assert!(
            o["timeline"].as_array().is_some_and(|t| !t.is_empty()),
            "{who}: {o:#}"
        );
    }
    // From inside east: DNS moved from its ClusterIP to the ClusterSetIP and back; its
    // traffic went to west and came back.
    assert_eq!(
        from_east["baseline"]["dns"],
        m.east_local_ip.to_string(),
        "{from_east:#}"
    );
    assert_eq!(
        from_east["failover"]["clusters"]["west"]
            .as_u64()
            .map(|n| n > 0),
        Some(true),
        "{from_east:#}"
    );
    for f in ["dnsMovedMs", "trafficMovedMs", "dnsBackMs", "trafficBackMs"] {
        assert!(from_east[f].as_u64().is_some(), "east's {f}: {from_east:#}");
    }
    // West exports echo too: its clients keep their own ClusterIP and west's backend.
    assert_eq!(from_west["dnsExpectedToMove"], false, "{from_west:#}");
    assert!(
        from_west["failover"]["clusters"].get("east").is_none(),
        "west's calls went to the drained east: {from_west:#}"
    );
    let report = done["status"]["report"].as_str().unwrap_or_default();
    assert!(
        report.contains("from east:")
            && report.contains("PASS")
            && report.contains("never went to east"),
        "{report}"
    );
    assert!(
        drill_keys(&m.etcd).await?.is_empty(),
        "a finished drill left keys behind"
    );
    result(
        "drill_resource",
        &[
            ("dns_moved_ms", from_east["dnsMovedMs"].to_string()),
            ("traffic_moved_ms", from_east["trafficMovedMs"].to_string()),
            ("dns_back_ms", from_east["dnsBackMs"].to_string()),
            ("traffic_back_ms", from_east["trafficBackMs"].to_string()),
            (
                "requests_east",
                (["baseline", "failover", "failback"]
                    .iter()
                    .map(|p| from_east[p]["requests"].as_u64().unwrap_or(0))
                    .sum::<u64>())
                .to_string(),
            ),
        ],
    );

    // 2. The CLI, with east's kubeconfig: creates the Drill, follows it, prints the report.
    let out = Command::new(bin("causeway")?)
        .args(["drill", "--kubeconfig"])
        .arg(east.api.kubeconfig())
        .args([
            "--service",
            "demo/echo",
            "--cluster",
            "east",
            "--for",
            "3s",
            "--from",
            "east,west",
        ])
        .stdin(Stdio::null())
        .output();
    let out = tokio::time::timeout(T, out).await??;
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "causeway drill --kubeconfig: {stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        stdout.contains("from east:") && stdout.contains("from west:") && stdout.contains("PASS"),
        "{stdout}"
    );

    // 2b. Ctrl-C on the CLI deletes its Drill: the drain ends at once.
    let cli = Command::new(bin("causeway")?)
        .args(["drill", "--kubeconfig"])
        .arg(east.api.kubeconfig())
        .args(["--service", "demo/echo", "--cluster", "east", "--for", "5m"])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()?;
    wait_for("the CLI's Drill to drain east", T, || async {
        (east.resolve().await? == m.vip).then_some(())
    })
    .await?;
    let pid = nix::unistd::Pid::from_raw(cli.id().context("the CLI's pid")? as i32);
    nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGINT)?;
    let interrupted = Instant::now();
    let out = tokio::time::timeout(Duration::from_secs(10), cli.wait_with_output()).await??;
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success() && stderr.contains("interrupted") && stderr.contains("deleted"),
        "{:?}: {stderr}",
        out.status
    );
    wait_for(
        "east's DNS to answer its own ClusterIP after Ctrl-C",
        Duration::from_secs(2),
        || async { (east.resolve().await? == m.east_local_ip).then_some(()) },
    )
    .await?;
    let ctrl_c_back = interrupted.elapsed();
    // Only the first CLI run's Drill is left in east, finished.
    let left = east.api.list(DRILLS, "drills", "demo");
    assert!(
        left.len() == 1 && left[0]["status"]["phase"] == "Succeeded",
        "the CLI's Drill is still there after Ctrl-C: {left:#?}"
    );

    // 3. West does not export `solo`: a Drill of it in west is rejected and drains nothing.
    let solo_backend = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let solo_port = solo_backend.local_addr()?.port();
    east.api.apply(&exported("solo", solo_port)).await?;
    wait_for("west to see east's export of solo", T, || async {
        let snap = west.snapshot().await?;
        snap["snapshot"]["services"]["demo/solo"]["exports"]["east"]
            .is_object()
            .then_some(())
    })
    .await?;
    west.api
        .apply(&drill_yaml("solo-west", "solo", "west", "30s"))
        .await?;
    let rejected = wait_for("the Drill of solo to be rejected", T, || async {
        let d = west.drill("solo-west")?;
        (d["status"]["phase"] == "Rejected").then_some(d)
    })
    .await?;
    let accepted = condition(&rejected, "Accepted");
    assert_eq!(accepted["status"], "False", "{rejected:#}");
    assert_eq!(accepted["reason"], "ClusterNotExporting", "{rejected:#}");
    assert!(
        accepted["message"]
            .as_str()
            .is_some_and(|m| m.contains("west") && m.contains("demo/solo")),
        "{rejected:#}"
    );
    assert!(
        drill_keys(&m.etcd).await?.is_empty(),
        "a rejected drill wrote a key"
    );
    assert_eq!(
        west.snapshot().await.context("west's snapshot")?["snapshot"]["drills"],
        serde_json::json!({})
    );

    // 4. A long Drill, deleted while it runs: routing comes back within a second.
    west.api
        .apply(&drill_yaml("long", "echo", "east", "5m"))
        .await?;
    wait_for("the long Drill to drain east", T, || async {
        let d = west.drill("long")?;
        (d["status"]["phase"] == "Running" && east.resolve().await? == m.vip).then_some(())
    })
    .await?;
    // drills.max_concurrent is 1 here: a second Drill meanwhile is turned away.
    west.api
        .apply(&drill_yaml("second", "echo", "west", "30s"))
        .await?;
    let second = wait_for("the second Drill to be turned away", T, || async {
        let d = west.drill("second")?;
        (d["status"]["phase"] == "Rejected").then_some(d)
    })
    .await?;
    assert_eq!(
        condition(&second, "Accepted")["reason"],
        "TooManyDrills",
        "{second:#}"
    );
    let deleted = Instant::now();
    west.api
        .run_kubectl(
            &["delete", "drill", "-n", "demo", "long", "--wait=false"],
            "",
        )
        .await?;
    wait_for(
        "east's DNS to answer its own ClusterIP again",
        Duration::from_secs(5),
        || async { (east.resolve().await? == m.east_local_ip).then_some(()) },
    )
    .await?;
    let dns_back = deleted.elapsed();
    wait_for(
        "east's callers to be served by east again",
        Duration::from_secs(5),
        || async { (east.call().await? == "east").then_some(()) },
    )
    .await?;
    let traffic_back = deleted.elapsed();
    result(
        "drill_deleted",
        &[
            ("dns_back_ms", dns_back.as_millis().to_string()),
            ("traffic_back_ms", traffic_back.as_millis().to_string()),
            (
                "dns_back_after_ctrl_c_ms",
                ctrl_c_back.as_millis().to_string(),
            ),
        ],
    );
    assert!(
        dns_back <= Duration::from_secs(1),
        "DNS came back after {dns_back:?}"
    );
    assert!(
        traffic_back <= Duration::from_secs(1),
        "traffic came back after {traffic_back:?}"
    );
    wait_for(
        "the deleted drill's key to be gone",
        Duration::from_secs(5),
        || async { drill_keys(&m.etcd).await.ok()?.is_empty().then_some(()) },
    )
    .await?;

    // 5. The federator running a Drill dies (SIGKILL, no goodbye): its lease lapses and the
    // drain ends with it.
    west.api
        .apply(&drill_yaml("orphan", "echo", "east", "5m"))
        .await?;
    wait_for("the orphaned Drill to drain east", T, || async {
        let d = west.drill("orphan")?;
        (d["status"]["phase"] == "Running" && east.resolve().await? == m.vip).then_some(())
    })
    .await?;
    m.west.fed.start_kill()?;
    m.west.fed.wait().await?;
    let killed = Instant::now();
    let limit = Duration::from_secs(DRILL_LEASE_TTL_S) + Duration::from_secs(2);
    let east = &m.east;
    wait_for(
        "east's DNS to answer its own ClusterIP after west's federator died",
        limit,
        || async { (east.resolve().await? == m.east_local_ip).then_some(()) },
    )
    .await?;
    let dns_back = killed.elapsed();
    wait_for(
        "east's callers to be served by east after west's federator died",
        limit,
        || async { (east.call().await? == "east").then_some(()) },
    )
    .await?;
    result(
        "drill_orphaned",
        &[
            ("lease_ttl_ms", (DRILL_LEASE_TTL_S * 1000).to_string()),
            ("dns_back_ms", dns_back.as_millis().to_string()),
            ("traffic_back_ms", killed.elapsed().as_millis().to_string()),
        ],
    );
    assert!(
        drill_keys(&m.etcd).await?.is_empty(),
        "the dead federator's drill key outlived its lease"
    );
    Ok(())
}
