//! The lab itself: it comes up, every demo service answers across clusters through the
//! gateways, clusters are isolated from each other, a drill runs, and dropping the lab leaves
//! nothing behind.

use std::net::SocketAddr;
use std::time::Duration;

use causeway_e2e::lab::{net, probe, process, LabState};

use crate::lab_support;

const T: Duration = Duration::from_secs(3);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lab_serves_every_demo_service_across_clusters_and_cleans_up() {
    let Some(lab) = lab_support::start(3, |_| {}).await else {
        return;
    };
    let north = lab.cluster("north").clone();
    let east = lab.cluster("east").clone();
    let west = lab.cluster("west").clone();

    // north exports nothing: DNS answers the ClusterSetIP, the gateways carry the call to west
    // (north's region) for each protocol.
    let dns = north.dns_servers.clone();
    let (http, grpc, tcp, vip) = net::try_run_in(north.netns.as_deref(), move || async move {
        let name = "echo.demo.svc.clusterset.local";
        let vip = probe::resolve(&dns, name, T).await?[0];
        let http = probe::http_get(SocketAddr::new(vip, 80), name, "/", T).await?;
        let g = "grpc.demo.svc.clusterset.local";
        let gip = probe::resolve(&dns, g, T).await?[0];
        let grpc = probe::grpc_health(SocketAddr::new(gip, 9090), &format!("{g}:9090"), T).await?;
        let t = "tcp-echo.demo.svc.clusterset.local";
        let tip = probe::resolve(&dns, t, T).await?[0];
        let tcp = probe::tcp_echo(SocketAddr::new(tip, 7000), "hello", T).await?;
        Ok((http, grpc, tcp, vip))
    })
    .await
    .expect("north calls every demo service");
    let snap = lab.snapshot("north").await.expect("north's snapshot");
    let echo_vip = snap.services[&"demo/echo".parse().unwrap()].vip;
    assert_eq!(Some(vip), echo_vip, "north's DNS answers the ClusterSetIP");
    assert_eq!(http.status, 200, "{http:?}");
    assert_eq!(
        http.cluster.as_deref(),
        Some("west"),
        "north prefers west (same region)"
    );
    let body: serde_json::Value = serde_json::from_slice(&http.body).expect("JSON body");
    assert_eq!(
        body["headers"]["x-causeway-source-cluster"], "north",
        "{body}"
    );
    assert_eq!(grpc.grpc_status, 0, "{grpc:?}");
    assert_eq!(grpc.message.as_ref(), &[0x08, 0x01], "SERVING");
    assert_eq!(grpc.cluster.as_deref(), Some("west"));
    assert_eq!(tcp, "west: hello");

    // east exports echo itself: local-first DNS answers its own service address.
    let ips = lab
        .resolve("east", "echo.demo.svc.clusterset.local")
        .await
        .unwrap();
    assert_eq!(ips, vec![east.demo("echo").unwrap().service_ip]);
    let a = lab.call_echo("east").await.unwrap();
    assert_eq!(a.cluster.as_deref(), Some("east"));

    // The echo export's traffic policy (timeout 10 s) reached north's gateway.
    let (status, dump) = lab
        .admin_get(north.netns.as_deref(), north.gateway.admin, "/config_dump")
        .await
        .unwrap();
    assert_eq!(status, 200);
    let dump: serde_json::Value = serde_json::from_str(&dump).unwrap();
    let echo = dump["outbound"]
        .as_array()
        .unwrap()
        .iter()
        .find(|o| o["name"] == "echo")
        .expect("north imports echo");
    assert_eq!(echo["policy"]["timeout_ms"], 10_000, "{echo}");

    // Isolation: north cannot reach west's service address, only its gateway on the WAN.
    let west_svc = west.demo("echo").unwrap().service_ip;
    let direct = net::run_in(north.netns.as_deref(), move || async move {
        probe::http_get(
            SocketAddr::new(west_svc, 8080),
            "x",
            "/",
            Duration::from_millis(500),
        )
        .await
    })
    .await
    .unwrap();
    assert!(
        direct.is_err(),
        "north reached west's backend directly: {direct:?}"
    );

    // The drill CLI against this lab: drain echo in east, seen from east.
    let state = lab.state().clone();
    let out = tokio::task::spawn_blocking(move || {
        std::process::Command::new(state.bin_dir.join("causeway"))
            .args(["drill", "--lab"])
            .arg(LabState::path(&state.state_dir))
            .args([
                "--service",
                "demo/echo",
                "--cluster",
                "east",
                "--from",
                "east",
            ])
            .args(["--for", "3s", "--json"])
            .output()
    })
    .await
    .unwrap()
    .expect("causeway drill runs");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "drill failed: {stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let report: serde_json::Value = serde_json::from_str(&stdout).expect("a JSON report");
    assert_eq!(report["passed"], true, "{report:#}");
    assert_eq!(report["failover"]["failed"], 0, "{report:#}");
    assert!(
        report["failover"]["clusters"]["west"].as_u64() > Some(0),
        "{report:#}"
    );
    lab_support::result(
        "drill_service_from_its_own_cluster",
        &[
            (
                "dns_moved_ms",
                report["failover"]["dns_moved_ms"].to_string(),
            ),
            (
                "traffic_moved_ms",
                report["failover"]["traffic_moved_ms"].to_string(),
            ),
            ("failed", report["failover"]["failed"].to_string()),
            ("requests", report["failover"]["requests"].to_string()),
            ("dns_back_ms", report["failback"]["dns_back_ms"].to_string()),
            (
                "traffic_back_ms",
                report["failback"]["traffic_back_ms"].to_string(),
            ),
            ("failed_back", report["failback"]["failed"].to_string()),
        ],
    );

    // Dropping the lab removes its processes and namespaces.
    let namespaces: Vec<String> = lab
        .state()
        .clusters
        .iter()
        .filter_map(|c| c.netns.clone())
        .chain(lab.state().wan_netns.clone())
        .collect();
    let pids: Vec<(u32, String)> = lab
        .state()
        .processes
        .iter()
        .filter_map(|p| {
            let program = p.program.file_name()?.to_string_lossy().into_owned();
            Some((p.pid?, program))
        })
        .collect();
    drop(lab);
    for ns in &namespaces {
        assert!(!net::netns_exists(ns), "{ns} is left behind");
        assert!(!std::path::Path::new("/etc/netns").join(ns).exists());
    }
    for (pid, program) in pids {
        // pid_max may be small: a pid alive again may be somebody else's.
        let same = process::is_alive(pid) && process::program_of(pid).as_deref() == Some(&program);
        assert!(!same, "{program} (pid {pid}) is left behind");
    }
}

/// The README's first command, as a user runs it (with a state directory and namespace prefix
/// of its own): `up --drill` succeeds and leaves a lab that `status` and `exec` see, and `down`
/// removes it, twice.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn causeway_lab_up_drill_status_exec_down() {
    if !net::can_use_namespaces() {
        eprintln!("SKIPPED: the lab tests need root and `ip` (network namespaces)");
        return;
    }
    tokio::task::spawn_blocking(lab_support::ensure_binaries)
        .await
        .unwrap()
        .unwrap_or_else(|e| panic!("cannot build the lab's binaries: {e}"));
    let dir = tempfile::tempdir().unwrap();
    let prefix = format!("cwc{}-", std::process::id());
    let bin = env!("CARGO_BIN_EXE_causeway-lab");
    let run = {
        let (dir, prefix) = (dir.path().to_path_buf(), prefix.clone());
        move |args: &[&str]| {
            std::process::Command::new(bin)
                .arg("--state-dir")
                .arg(&dir)
                .args(["--prefix", &prefix])
                .args(args)
                .env("CAUSEWAY_LOG", "warn")
                .output()
                .expect("causeway-lab runs")
        }
    };
    // Whatever happens, the lab goes.
    struct Down<F: Fn(&[&str]) -> std::process::Output>(F);
    impl<F: Fn(&[&str]) -> std::process::Output> Drop for Down<F> {
        fn drop(&mut self) {
            let _ = (self.0)(&["down"]);
        }
    }
    let down = Down(run.clone());

    let up = tokio::task::spawn_blocking({
        let run = run.clone();
        move || run(&["up", "--no-build", "--drill", "--clusters", "2"])
    })
    .await
    .unwrap();
    let stdout = String::from_utf8_lossy(&up.stdout);
    assert!(
        up.status.success(),
        "up --drill failed:\n{stdout}\n{}",
        String::from_utf8_lossy(&up.stderr)
    );
    assert!(stdout.contains("PASS"), "{stdout}");
    assert!(stdout.contains("exec east -- curl"), "{stdout}");

    let status = run(&["status"]);
    let text = String::from_utf8_lossy(&status.stdout);
    assert!(status.status.success(), "{text}");
    assert!(text.contains("200 from east"), "{text}");
    let exec = run(&["exec", "west", "--", "cat", "/etc/resolv.conf"]);
    let resolv = String::from_utf8_lossy(&exec.stdout);
    assert!(resolv.contains("nameserver 10.96.2.53"), "{resolv}");

    let gone = run(&["down"]);
    assert!(gone.status.success());
    assert!(net::netns_with_prefix(&prefix).is_empty());
    assert!(!dir.path().join("lab.json").exists());
    let again = run(&["down"]);
    assert!(again.status.success(), "down is idempotent");
    drop(down);
}

/// A cluster with a root of its own joins a running federation (issue "Trust that grows"):
/// certificates from `causeway certs --add`, which touches no other cluster's
/// files, its etcd role from `causeway etcd-auth`; within 10 s it calls the demo services and
/// its peers accept its gateway, while the clients of the others see nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cluster_with_a_root_of_its_own_joins_a_running_lab() {
    let Some(mut lab) = lab_support::start(3, |_| {}).await else {
        return;
    };
    let north = lab.echo_prober("north").unwrap();
    let east = lab.echo_prober("east").unwrap();
    lab_support::warm_up(&north, 5).await;
    lab_support::warm_up(&east, 5).await;
    let pki = lab.state().pki_dir.clone();
    let others: Vec<(std::path::PathBuf, Vec<u8>)> = ["east", "west", "north"]
        .iter()
        .flat_map(|c| std::fs::read_dir(pki.join(c)).unwrap())
        .map(|e| e.unwrap().path())
        .chain([pki.join("bundle.pem")])
        .map(|p| {
            let b = std::fs::read(&p).unwrap();
            (p, b)
        })
        .collect();

    let started = std::time::Instant::now();
    lab.add_cluster("south").await.expect("south joins");
    let answer = causeway_e2e::wait_for("south to call echo", Duration::from_secs(10), || async {
        lab.call_echo("south")
            .await
            .ok()
            .filter(|a| a.status == 200)
    })
    .await
    .expect("south calls echo");
    let calls_after = started.elapsed();
    causeway_e2e::wait_for(
        "west's gateway to see south up",
        Duration::from_secs(10),
        || async {
            lab.peers_answering("west")
                .await
                .ok()?
                .contains("south")
                .then_some(())
        },
    )
    .await
    .expect("west accepts south's gateway");
    let served_after = started.elapsed();
    assert!(
        matches!(answer.cluster.as_deref(), Some("east" | "west")),
        "{answer:?}"
    );
    // south's trust is its own: a root naming its trust domain, no other file touched.
    let south_root =
        causeway_api::tls::TrustBundle::load(pki.join("south").join("bundle.pem")).unwrap();
    assert_eq!(
        south_root.trust_domains(),
        vec![Some("south.causeway.mesh".to_string())]
    );
    for (path, bytes) in &others {
        assert_eq!(
            &std::fs::read(path).unwrap(),
            bytes,
            "{} changed",
            path.display()
        );
    }

    let (north, east) = (north.stop(), east.stop());
    for (who, t) in [("north", &north), ("east", &east)] {
        let failed = t.failures(Duration::ZERO, Duration::MAX);
        assert!(
            failed.is_empty(),
            "{who}: {}",
            t.describe_failures(Duration::ZERO, Duration::MAX)
        );
    }
    assert!(
        calls_after < Duration::from_secs(10),
        "south called after {calls_after:?}"
    );
    assert!(
        served_after < Duration::from_secs(10),
        "south served after {served_after:?}"
    );
    lab_support::result(
        "cluster_joins_with_its_own_root",
        &[
            ("calls_after", lab_support::secs(Some(calls_after))),
            ("served_after", lab_support::secs(Some(served_after))),
            (
                "requests",
                (north.samples.len() + east.samples.len()).to_string(),
            ),
            ("failed", "0".to_string()),
        ],
    );
}
