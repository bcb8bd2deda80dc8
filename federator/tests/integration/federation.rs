//! Issue "Federator: sync exports between clusters through etcd": two or three real federator
//! processes against a real etcd.

use std::time::{Duration, Instant};

use causeway_e2e::{wait_for, EtcdServer};

use crate::harness::{export_yaml, exporters, services, write_file, Fed, CLI};

/// Generous: CI runs these beside the lab tests on two cores.
const T: Duration = Duration::from_secs(30);
/// Short lease so kill tests take seconds, not the production 10 s.
const FAST: &[&str] = &["--lease-ttl", "3s", "--keepalive-interval", "1s"];

async fn until_exported(fed: &Fed, svc: &str, want: &[(&str, bool)]) -> anyhow::Result<()> {
    let want: Vec<(String, bool)> = want.iter().map(|(c, s)| (c.to_string(), *s)).collect();
    wait_for(
        &format!("{} to see {svc} exported by {want:?}", fed.cluster),
        T,
        || async {
            let snap = fed.snapshot().await.ok()?;
            (exporters(&snap, svc) == want).then_some(())
        },
    )
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn export_appears_in_the_peer_and_unexport_removes_it() -> anyhow::Result<()> {
    let etcd = EtcdServer::start().await?;
    let (de, dw) = (tempfile::tempdir()?, tempfile::tempdir()?);
    let east = Fed::start("east", &etcd.endpoint(), de.path(), FAST).await?;
    let west = Fed::start("west", &etcd.endpoint(), dw.path(), FAST).await?;

    let file = de.path().join("echo.yaml");
    write_file(
        &file,
        &export_yaml("echo", "http", "TCP", 80, "2026-01-01T00:00:00Z"),
    );
    until_exported(&west, "demo/echo", &[("east", false)]).await?;
    until_exported(&east, "demo/echo", &[("east", false)]).await?;
    let snap = west.snapshot().await?;
    assert_eq!(
        snap["services"]["demo/echo"]["import"]["ports"][0]["port"],
        80
    );
    assert_eq!(snap["clusters"]["east"]["state"], "up");
    assert_eq!(
        west.metric("causeway_federator_exports{cluster=\"east\"}")
            .await,
        Some(1.0)
    );

    std::fs::remove_file(&file)?;
    for fed in [&west, &east] {
        wait_for("the import to vanish everywhere", T, || async {
            let snap = fed.snapshot().await.ok()?;
            services(&snap).is_empty().then_some(())
        })
        .await?;
    }
    // Unexport is not a lapse: east is still up, nothing is kept as stale.
    assert_eq!(west.snapshot().await?["clusters"]["east"]["state"], "up");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killed_cluster_goes_stale_then_gone_then_comes_back_whole() -> anyhow::Result<()> {
    let etcd = EtcdServer::start().await?;
    let (de, dw) = (tempfile::tempdir()?, tempfile::tempdir()?);
    for name in ["echo", "grpc", "tcp"] {
        write_file(
            &de.path().join(format!("{name}.yaml")),
            &export_yaml(name, "main", "TCP", 7000, "2026-01-01T00:00:00Z"),
        );
    }
    let mut east = Fed::start("east", &etcd.endpoint(), de.path(), FAST).await?;
    let mut west_args = FAST.to_vec();
    west_args.extend(["--stale-grace", "4s"]);
    let west = Fed::start("west", &etcd.endpoint(), dw.path(), &west_args).await?;
    for svc in ["demo/echo", "demo/grpc", "demo/tcp"] {
        until_exported(&west, svc, &[("east", false)]).await?;
    }
    let before = services(&west.snapshot().await?);

    east.kill().await;
    let killed = Instant::now();
    // The lease lapses: west keeps the exports, marked stale.
    until_exported(&west, "demo/echo", &[("east", true)]).await?;
    let stale_after = killed.elapsed();
    let snap = west.snapshot().await?;
    assert_eq!(snap["clusters"]["east"]["state"], "stale");
    assert_eq!(services(&snap), before, "stale exports are still served");
    assert_eq!(
        west.metric("causeway_federator_stale_clusters").await,
        Some(1.0)
    );
    // Then the grace ends and they are dropped.
    wait_for("east's stale exports to be dropped", T, || async {
        let snap = west.snapshot().await.ok()?;
        services(&snap).is_empty().then_some(())
    })
    .await?;
    let dropped_after = killed.elapsed();
    assert!(
        dropped_after >= stale_after + Duration::from_secs(3),
        "dropped {dropped_after:?} after the kill, stale since {stale_after:?}: grace is 4s"
    );

    east.restart().await?;
    for svc in ["demo/echo", "demo/grpc", "demo/tcp"] {
        until_exported(&west, svc, &[("east", false)]).await?;
    }
    let snap = west.snapshot().await?;
    assert_eq!(services(&snap), before, "nothing lost");
    // The snapshot and /metrics are read one after the other: a newer snapshot may come
    // between, so the count is waited for (a duplicate would keep it above 3).
    let counted = wait_for("east's exports to be counted once each", T, || async {
        let n = west
            .metric("causeway_federator_exports{cluster=\"east\"}")
            .await?;
        (n == 3.0).then_some(n)
    })
    .await;
    assert!(
        counted.is_ok(),
        "nothing duplicated: {:?}",
        west.metric("causeway_federator_exports{cluster=\"east\"}")
            .await
    );
    // And a restart within the grace: nothing flaps out of the snapshot.
    east.kill().await;
    until_exported(&west, "demo/echo", &[("east", true)]).await?;
    east.restart().await?;
    until_exported(&west, "demo/echo", &[("east", false)]).await?;
    assert_eq!(services(&west.snapshot().await?), before);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn etcd_down_for_30s_keeps_snapshots_and_catches_up() -> anyhow::Result<()> {
    let mut etcd = EtcdServer::start().await?;
    let (de, dw) = (tempfile::tempdir()?, tempfile::tempdir()?);
    write_file(
        &de.path().join("echo.yaml"),
        &export_yaml("echo", "http", "TCP", 80, "2026-01-01T00:00:00Z"),
    );
    // Production lease settings: the outage is longer than the TTL.
    let mut east = Fed::start("east", &etcd.endpoint(), de.path(), &[]).await?;
    let mut west = Fed::start("west", &etcd.endpoint(), dw.path(), &[]).await?;
    // Both views must hold the export before the outage: east's own view may trail west's.
    until_exported(&west, "demo/echo", &[("east", false)]).await?;
    until_exported(&east, "demo/echo", &[("east", false)]).await?;
    let (east_pid, west_pid) = (east.pid(), west.pid());

    etcd.stop().await?;
    let down = Instant::now();
    wait_for("west to notice etcd is down", T, || async {
        (west.metric("causeway_federator_etcd_up").await == Some(0.0)).then_some(())
    })
    .await?;
    // While etcd is away the content stays: check it all along the 30 s.
    let mut checks = 0;
    while down.elapsed() < Duration::from_secs(30) {
        for fed in [&east, &west] {
            let snap = fed.snapshot().await?;
            assert_eq!(
                exporters(&snap, "demo/echo"),
                vec![("east".to_string(), false)],
                "{} during the outage",
                fed.cluster
            );
        }
        checks += 1;
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    assert!(checks >= 30);
    // A change made during the outage is published once etcd is back.
    write_file(
        &de.path().join("late.yaml"),
        &export_yaml("late", "http", "TCP", 81, "2026-01-01T00:00:00Z"),
    );
    etcd.restart().await?;
    until_exported(&west, "demo/late", &[("east", false)]).await?;
    until_exported(&west, "demo/echo", &[("east", false)]).await?;
    wait_for("etcd_up back to 1", T, || async {
        (west.metric("causeway_federator_etcd_up").await == Some(1.0)).then_some(())
    })
    .await?;
    assert!(east.is_running() && west.is_running());
    assert_eq!(
        (east.pid(), west.pid()),
        (east_pid, west_pid),
        "no federator restarted"
    );
    assert!(west.metric("causeway_federator_watch_restarts_total").await >= Some(1.0));
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_replicas_one_writer_and_takeover_within_the_ttl() -> anyhow::Result<()> {
    let etcd = EtcdServer::start().await?;
    let (de, dw) = (tempfile::tempdir()?, tempfile::tempdir()?);
    write_file(
        &de.path().join("echo.yaml"),
        &export_yaml("echo", "http", "TCP", 80, "2026-01-01T00:00:00Z"),
    );
    let ttl = Duration::from_secs(3);
    let mut a = Fed::start(
        "east",
        &etcd.endpoint(),
        de.path(),
        &[FAST, &["--node", "east-a"]].concat(),
    )
    .await?;
    let mut b = Fed::start(
        "east",
        &etcd.endpoint(),
        de.path(),
        &[FAST, &["--node", "east-b"]].concat(),
    )
    .await?;
    let west = Fed::start("west", &etcd.endpoint(), dw.path(), FAST).await?;
    until_exported(&west, "demo/echo", &[("east", false)]).await?;
    let leaders = wait_for("exactly one leader", T, || async {
        let (la, lb) = (a.is_leader().await, b.is_leader().await);
        (la ^ lb).then_some((la, lb))
    })
    .await?;
    // Still exactly one a moment later (no flapping, both campaigning).
    for _ in 0..5 {
        assert_eq!((a.is_leader().await, b.is_leader().await), leaders);
        assert_eq!(
            a.metric("causeway_federator_leader").await.unwrap_or(0.0)
                + b.metric("causeway_federator_leader").await.unwrap_or(0.0),
            1.0
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let (leader, standby) = if leaders.0 {
        (&mut a, &mut b)
    } else {
        (&mut b, &mut a)
    };
    leader.kill().await;
    let killed = Instant::now();
    wait_for("the standby to take over", T, || async {
        standby.is_leader().await.then_some(())
    })
    .await?;
    let took = killed.elapsed();
    assert!(
        took <= ttl + Duration::from_millis(1500),
        "takeover took {took:?}, lease TTL is {ttl:?}"
    );
    // And it writes: a new export reaches west.
    write_file(
        &de.path().join("new.yaml"),
        &export_yaml("new", "http", "TCP", 82, "2026-01-01T00:00:00Z"),
    );
    until_exported(&west, "demo/new", &[("east", false)]).await?;
    eprintln!("standby took over {took:?} after the leader was killed");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn conflicting_ports_mark_both_exports_and_status_shows_it() -> anyhow::Result<()> {
    let etcd = EtcdServer::start().await?;
    let (de, dw) = (tempfile::tempdir()?, tempfile::tempdir()?);
    // Same port name, different protocol; east's export is older and wins.
    write_file(
        &de.path().join("dns.yaml"),
        &export_yaml("dns", "dns", "TCP", 53, "2026-01-01T00:00:00Z"),
    );
    write_file(
        &dw.path().join("dns.yaml"),
        &export_yaml("dns", "dns", "UDP", 53, "2026-02-01T00:00:00Z"),
    );
    let east = Fed::start("east", &etcd.endpoint(), de.path(), FAST).await?;
    let west = Fed::start("west", &etcd.endpoint(), dw.path(), FAST).await?;
    for fed in [&east, &west] {
        until_exported(fed, "demo/dns", &[("east", false), ("west", false)]).await?;
        let snap = fed.snapshot().await?;
        let svc = &snap["services"]["demo/dns"];
        for c in ["east", "west"] {
            assert_eq!(
                svc["exports"][c]["conditions"]["conflicts"],
                serde_json::json!(["PortConflict"]),
                "{c} in {}",
                fed.cluster
            );
        }
        assert_eq!(svc["import"]["conflict"], true);
        assert_eq!(
            svc["import"]["ports"],
            serde_json::json!([{"name": "dns", "protocol": "TCP", "port": 53}]),
            "the oldest wins"
        );
    }
    let out = tokio::process::Command::new(CLI)
        .args(["status", "--admin", &west.admin])
        .output()
        .await?;
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "causeway status failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let line = stdout
        .lines()
        .find(|l| l.contains("demo/dns"))
        .unwrap_or_default();
    assert!(
        line.contains("PortConflict") && line.contains("east") && line.contains("west"),
        "status:\n{stdout}"
    );
    assert!(
        stdout
            .lines()
            .any(|l| l.starts_with("east") && l.contains("up")),
        "status:\n{stdout}"
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bad_export_file_is_reported_and_the_others_flow() -> anyhow::Result<()> {
    let etcd = EtcdServer::start().await?;
    let (de, dw) = (tempfile::tempdir()?, tempfile::tempdir()?);
    write_file(
        &de.path().join("good.yaml"),
        &export_yaml("good", "http", "TCP", 80, "2026-01-01T00:00:00Z"),
    );
    write_file(
        &de.path().join("bad.yaml"),
        &export_yaml("Bad_Name", "http", "TCP", 80, "2026-01-01T00:00:00Z"),
    );
    let east = Fed::start("east", &etcd.endpoint(), de.path(), FAST).await?;
    let west = Fed::start("west", &etcd.endpoint(), dw.path(), FAST).await?;
    until_exported(&west, "demo/good", &[("east", false)]).await?;
    wait_for("the invalid export metric", T, || async {
        (east.metric("causeway_federator_invalid_exports").await == Some(1.0)).then_some(())
    })
    .await?;
    let snap = east.snapshot().await?;
    let invalid = &snap["invalid_exports"][0];
    assert!(
        invalid["source"]
            .as_str()
            .unwrap_or("")
            .ends_with("bad.yaml"),
        "{invalid}"
    );
    assert!(
        invalid["reason"]
            .as_str()
            .unwrap_or("")
            .contains("Bad_Name"),
        "{invalid}"
    );
    let out = tokio::process::Command::new(CLI)
        .args(["status", "--admin", &east.admin])
        .output()
        .await?;
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        stdout.contains("bad.yaml") && stdout.contains("Bad_Name"),
        "status:\n{stdout}"
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gateways_get_config_snapshots_and_their_health_reports_reach_peers() -> anyhow::Result<()>
{
    use causeway_api::proto::config_client::ConfigClient;
    use causeway_api::proto::health_client::HealthClient;
    use causeway_api::proto::{AckRequest, GatewayHello, PeerHealth};

    let etcd = EtcdServer::start().await?;
    let (de, dw) = (tempfile::tempdir()?, tempfile::tempdir()?);
    let east = Fed::start(
        "east",
        &etcd.endpoint(),
        de.path(),
        &[FAST, &["--gateway-address", "10.0.1.1:15443"]].concat(),
    )
    .await?;
    // West's operator overrides east's timeout and adds a canary header route.
    let cfg = dw.path().join("federator.yaml");
    std::fs::write(
        &cfg,
        "import_policies:\n  demo/echo:\n    timeout: 700ms\n    header_routes: [{header: x-canary, value: \"1\", cluster: east}]\n",
    )?;
    let cfg = cfg.display().to_string();
    let west = Fed::start(
        "west",
        &etcd.endpoint(),
        dw.path(),
        &[
            FAST,
            &[
                "--vip-range",
                "10.255.0.0/16",
                "--config",
                &cfg,
                "--config-listen",
                "127.0.0.1:0",
            ],
        ]
        .concat(),
    )
    .await?;

    // West's gateway watches its federator.
    let mut config = ConfigClient::connect(format!("http://{}", west.config)).await?;
    let mut stream = config
        .watch(GatewayHello {
            cluster: "west".into(),
            node: "gw-0".into(),
            last_applied_version: 0,
        })
        .await?
        .into_inner();
    let first = stream.message().await?.expect("a first snapshot");
    assert_eq!(first.cluster, "west");
    assert!(first.outbound.is_empty());

    // The exporter's traffic policy travels with the export to the importers' gateways.
    write_file(
        &de.path().join("echo.yaml"),
        &export_yaml("echo", "http", "TCP", 80, "2026-01-01T00:00:00Z").replace(
            "spec:\n",
            "spec:\n  trafficPolicy: {timeout: 1500ms, retries: 0}\n",
        ),
    );
    let deadline = Instant::now() + T;
    let got = loop {
        let snap = tokio::time::timeout_at(deadline.into(), stream.message())
            .await??
            .expect("stream open");
        assert!(snap.version > first.version, "versions only move forward");
        let ready = snap
            .outbound
            .iter()
            .any(|o| o.name == "echo" && !o.vip.is_empty())
            && snap.peers.iter().any(|p| p.cluster == "east");
        if ready {
            break snap;
        }
    };
    let out = got
        .outbound
        .iter()
        .find(|o| o.name == "echo")
        .expect("echo");
    assert_eq!(out.candidates.len(), 1);
    assert_eq!(out.candidates[0].cluster, "east");
    assert!(out.candidates[0].healthy);
    let policy = out.policy.as_ref().expect("a policy");
    assert_eq!(policy.timeout_ms, 700, "west's import policy wins");
    assert_eq!(
        policy.retry_attempts,
        Some(0),
        "east's export asks for no retries"
    );
    assert_eq!(out.header_routes.len(), 1);
    assert_eq!(out.header_routes[0].cluster, "east");
    assert_eq!(
        got.peers
            .iter()
            .find(|p| p.cluster == "east")
            .unwrap()
            .gateway_addresses,
        vec!["10.0.1.1:15443"]
    );
    config
        .ack(AckRequest {
            cluster: "west".into(),
            node: "gw-0".into(),
            version: got.version,
            nack_reason: String::new(),
        })
        .await?;

    // West's gateway reports east's gateway down: every federator sees it under health/west/east,
    // and west's next config marks the east candidate unhealthy.
    let mut health = HealthClient::connect(format!("http://{}", west.config)).await?;
    let report = PeerHealth {
        observer: "west".into(),
        cluster: "east".into(),
        up: false,
        rtt_micros: 0,
        observed_at_unix_ms: 1,
        ..Default::default()
    };
    let reports = tokio_stream::iter(vec![report]);
    health.report(reports).await?;
    wait_for("east to see west's health report", T, || async {
        let snap = east.snapshot().await.ok()?;
        (snap["health"]["west"]["east"]["up"] == false).then_some(())
    })
    .await?;
    loop {
        let snap = tokio::time::timeout_at(deadline.into(), stream.message())
            .await??
            .expect("stream open");
        let echo = snap.outbound.iter().find(|o| o.name == "echo");
        if echo.is_some_and(|o| !o.candidates[0].healthy) {
            break;
        }
    }
    assert!(
        west.metric("causeway_federator_gateway_acks_total{result=\"ack\"}")
            .await
            >= Some(1.0)
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mesh_dns_answers_follow_the_exports() -> anyhow::Result<()> {
    use crate::harness::dig_a;

    let etcd = EtcdServer::start().await?;
    let (de, dw) = (tempfile::tempdir()?, tempfile::tempdir()?);
    let extra = [
        FAST,
        &[
            "--vip-range",
            "10.255.0.0/16",
            "--dns-listen",
            "127.0.0.1:0",
        ],
    ]
    .concat();
    let east = Fed::start("east", &etcd.endpoint(), de.path(), &extra).await?;
    let west = Fed::start("west", &etcd.endpoint(), dw.path(), &extra).await?;
    let file = de.path().join("echo.yaml");
    write_file(
        &file,
        &export_yaml("echo", "http", "TCP", 80, "2026-01-01T00:00:00Z"),
    );
    let name = "echo.demo.svc.clusterset.local";
    let (east_dns, west_dns) = (
        east.dns.clone().expect("dns"),
        west.dns.clone().expect("dns"),
    );
    // West imports it: the ClusterSetIP, once allocated.
    let vip = wait_for("west's DNS to answer the ClusterSetIP", T, || async {
        let a = dig_a(&west_dns, name).await.ok()?;
        a.first().filter(|ip| ip.starts_with("10.255.")).cloned()
    })
    .await?;
    // East exports it with a ready endpoint: local-first answers its own service IP.
    wait_for("east's DNS to answer the local service IP", T, || async {
        (dig_a(&east_dns, name).await.ok()? == vec!["10.96.0.10".to_string()]).then_some(())
    })
    .await?;
    // East's endpoints go unready: its next answers are the ClusterSetIP.
    write_file(
        &file,
        &export_yaml("echo", "http", "TCP", 80, "2026-01-01T00:00:00Z").replace(
            "- address: 10.1.0.5",
            "- address: 10.1.0.5\n      ready: false",
        ),
    );
    wait_for("east's DNS to move to the ClusterSetIP", T, || async {
        (dig_a(&east_dns, name).await.ok()? == vec![vip.clone()]).then_some(())
    })
    .await?;
    assert!(dig_a(&west_dns, "nope.demo.svc.clusterset.local")
        .await?
        .is_empty());
    Ok(())
}

/// An etcd client as `user` of `pki`.
async fn etcd_as(
    etcd: &EtcdServer,
    pki: &causeway_e2e::EtcdPki,
    user: &str,
) -> anyhow::Result<etcd_client::Client> {
    let (cert, key) = pki.client(user);
    let tls = causeway_e2e::etcd::client_tls(&pki.ca, &cert, &key)?;
    let opts = etcd_client::ConnectOptions::new()
        .with_tls(tls)
        .with_timeout(Duration::from_secs(5));
    Ok(etcd_client::Client::connect(etcd.endpoints(), Some(opts)).await?)
}

/// Whether `client` may put `key` (etcd answers "permission denied" otherwise).
async fn may_put(client: &mut etcd_client::Client, key: &str) -> anyhow::Result<bool> {
    match client.put(key, "{}", None).await {
        Ok(_) => Ok(true),
        Err(e) if e.to_string().contains("permission denied") => Ok(false),
        Err(e) => Err(e.into()),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_etcd_auth_each_cluster_writes_only_its_own_prefix() -> anyhow::Result<()> {
    use causeway_api::{keys, ClusterId, ServiceKey};
    let pki_dir = tempfile::tempdir()?;
    let pki = causeway_e2e::EtcdPki::write(
        pki_dir.path(),
        &[],
        &["cluster-east", "cluster-west", "operator"],
    )?;
    let etcd = EtcdServer::builder()
        .tls(pki.tls_as("root"))
        .start()
        .await?;
    assert!(etcd.endpoint().starts_with("https://"));
    let (east_id, west_id) = (ClusterId::new("east")?, ClusterId::new("west")?);
    let created = causeway_federator::etcd::setup_auth(
        &mut etcd.client().await?,
        &[east_id.clone(), west_id.clone()],
    )
    .await?;
    assert!(
        created.contains(&"user cluster-east".to_string()),
        "{created:?}"
    );
    // Run again (adding a cluster later does): nothing fails, nothing is created twice.
    let again = causeway_federator::etcd::setup_auth(
        &mut etcd.client().await?,
        std::slice::from_ref(&east_id),
    )
    .await?;
    assert!(again.is_empty(), "{again:?}");

    let ca = pki.ca.display().to_string();
    let tls_of = |user: &str| {
        let (cert, key) = pki.client(user);
        vec![
            "--etcd-ca".to_string(),
            ca.clone(),
            "--etcd-cert".to_string(),
            cert.display().to_string(),
            "--etcd-key".to_string(),
            key.display().to_string(),
        ]
    };
    let args = |user: &str| -> Vec<String> {
        FAST.iter()
            .map(|s| s.to_string())
            .chain(tls_of(user))
            .collect()
    };
    let (de, dw) = (tempfile::tempdir()?, tempfile::tempdir()?);
    let east_args = args("cluster-east");
    let west_args = args("cluster-west");
    let east_args: Vec<&str> = east_args.iter().map(String::as_str).collect();
    let west_args: Vec<&str> = west_args.iter().map(String::as_str).collect();
    let _east = Fed::start("east", &etcd.endpoint(), de.path(), &east_args).await?;
    let west = Fed::start("west", &etcd.endpoint(), dw.path(), &west_args).await?;
    write_file(
        &de.path().join("echo.yaml"),
        &export_yaml("echo", "http", "TCP", 80, "2026-01-01T00:00:00Z"),
    );
    // Leases, the election, the watch and the publisher all work under the roles.
    until_exported(&west, "demo/echo", &[("east", false)]).await?;

    // west's credentials cannot write east's keys or drills; its own prefix, yes.
    let echo = ServiceKey::new("demo", "echo")?;
    let mut as_west = etcd_as(&etcd, &pki, "cluster-west").await?;
    for key in [
        keys::export_key(&echo, &east_id),
        keys::cluster_key(&east_id),
        keys::vip_key(&east_id, &echo),
        keys::drill_key("d1"),
        "/causeway/v2/clusters/eastx/info".to_string(),
    ] {
        assert!(!may_put(&mut as_west, &key).await?, "west wrote {key}");
    }
    assert!(may_put(&mut as_west, &keys::health_key(&west_id, &east_id)).await?);
    // The operator writes drills and nothing of a cluster's.
    let mut operator = etcd_as(&etcd, &pki, "operator").await?;
    assert!(!may_put(&mut operator, &keys::export_key(&echo, &east_id)).await?);
    let drill = keys::drill_key("probe");
    assert!(may_put(&mut operator, &drill).await?);
    operator.delete(drill, None).await?;
    // The forged writes changed nothing for anyone: west still sees east's echo, unchanged.
    assert_eq!(
        exporters(&west.snapshot().await?, "demo/echo"),
        vec![("east".to_string(), false)]
    );

    // Without a client certificate etcd refuses the federator: it never becomes ready.
    let dn = tempfile::tempdir()?;
    let north = Fed::start(
        "north",
        &etcd.endpoint(),
        dn.path(),
        &[FAST, &["--etcd-ca", &ca]].concat(),
    )
    .await?;
    let ready = wait_for("north to become ready", Duration::from_secs(3), || async {
        crate::harness::http_get(&north.admin, "/ready").await.ok()
    })
    .await;
    assert!(
        ready.is_err(),
        "north has no client certificate and must not sync"
    );
    assert_eq!(north.metric("causeway_federator_etcd_up").await, Some(0.0));
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_a_config_endpoint_the_leader_keeps_leading() -> anyhow::Result<()> {
    let etcd = EtcdServer::start().await?;
    let (de, dw) = (tempfile::tempdir()?, tempfile::tempdir()?);
    let cfg = de.path().join("federator.yaml");
    std::fs::write(&cfg, "config_listen: null\n")?;
    let cfg = cfg.display().to_string();
    let east = Fed::start(
        "east",
        &etcd.endpoint(),
        de.path(),
        &[FAST, &["--config", &cfg]].concat(),
    )
    .await?;
    let west = Fed::start("west", &etcd.endpoint(), dw.path(), FAST).await?;
    write_file(
        &de.path().join("echo.yaml"),
        &export_yaml("echo", "http", "TCP", 80, "2026-01-01T00:00:00Z"),
    );
    until_exported(&west, "demo/echo", &[("east", false)]).await?;
    // Three lease TTLs later east still leads and its export never went stale.
    let until = Instant::now() + Duration::from_secs(9);
    while Instant::now() < until {
        assert!(east.is_leader().await, "east lost its leadership");
        assert_eq!(
            exporters(&west.snapshot().await?, "demo/echo"),
            vec![("east".to_string(), false)]
        );
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    assert_eq!(
        east.metric("causeway_federator_leader_elections_total")
            .await,
        Some(1.0)
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upgrading_from_v1_keeps_clustersetips_and_ignores_v1_keys() -> anyhow::Result<()> {
    use causeway_api::{keys, ClusterId, ServiceKey};
    let etcd = EtcdServer::start().await?;
    // What a v1 federation left: a shared ClusterSetIP, an export and a cluster of v1's layout.
    let mut client = etcd.client().await?;
    client
        .put(
            "/causeway/v1/vips/demo/echo",
            r#"{"schema":1,"ip":"10.255.77.7"}"#,
            None,
        )
        .await?;
    client
        .put(
            "/causeway/v1/exports/demo/ghost/north",
            r#"{"schema":1,"created_unix_ms":1}"#,
            None,
        )
        .await?;
    client
        .put(
            "/causeway/v1/clusters/north",
            r#"{"schema":1,"trust_domain":"north.causeway.mesh"}"#,
            None,
        )
        .await?;
    let (de, dw) = (tempfile::tempdir()?, tempfile::tempdir()?);
    let extra = [FAST, &["--vip-range", "10.255.0.0/16"]].concat();
    let _east = Fed::start("east", &etcd.endpoint(), de.path(), &extra).await?;
    let west = Fed::start("west", &etcd.endpoint(), dw.path(), &extra).await?;
    write_file(
        &de.path().join("echo.yaml"),
        &export_yaml("echo", "http", "TCP", 80, "2026-01-01T00:00:00Z"),
    );
    until_exported(&west, "demo/echo", &[("east", false)]).await?;
    // west gives echo the address v1 gave it, under its own v2 key.
    let echo = ServiceKey::new("demo", "echo")?;
    let vip = wait_for("west's ClusterSetIP for echo", T, || async {
        let snap = west.snapshot().await.ok()?;
        snap["services"]["demo/echo"]["vip"]
            .as_str()
            .map(String::from)
    })
    .await?;
    assert_eq!(vip, "10.255.77.7");
    let v2 = client
        .get(keys::vip_key(&ClusterId::new("west")?, &echo), None)
        .await?;
    let value: serde_json::Value = serde_json::from_slice(v2.kvs()[0].value())?;
    assert_eq!(value["ip"], "10.255.77.7", "{value}");
    assert_eq!(value["schema"], 2, "{value}");
    // v1's other keys are not v2's: no cluster north, no import ghost.
    let snap = west.snapshot().await?;
    assert_eq!(services(&snap), vec!["demo/echo".to_string()], "{snap}");
    assert!(snap["clusters"].get("north").is_none(), "{snap}");
    Ok(())
}
