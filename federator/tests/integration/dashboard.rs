//! The dashboard page on the admin port: built in, nothing fetched from elsewhere, and the
//! snapshot it polls carries every field it reads.

use std::time::Duration;

use causeway_e2e::{wait_for, EtcdServer};

use crate::harness::{export_yaml, http_get, write_file, Fed};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_dashboard_is_built_in_and_its_snapshot_has_what_it_shows() -> anyhow::Result<()> {
    let etcd = EtcdServer::start().await?;
    let exports = tempfile::tempdir()?;
    let fed = Fed::start("east", &etcd.endpoint(), exports.path(), &[]).await?;
    write_file(
        &exports.path().join("echo.yaml"),
        &export_yaml("echo", "http", "TCP", 80, "2026-01-01T00:00:00Z"),
    );

    let page = http_get(&fed.admin, "/dashboard").await?;
    assert!(
        page.contains("<title>Causeway clusterset</title>"),
        "{page}"
    );
    assert!(
        page.contains("fetch(\"/debug/snapshot\""),
        "the page polls the snapshot"
    );
    // Built in: no script, style or font from anywhere else (the page names no URL), and data
    // set as text, never as HTML (export names come from other clusters).
    for outside in [
        "http://",
        "https://",
        "<link",
        "src=",
        "innerHTML",
        "insertAdjacentHTML",
    ] {
        assert!(!page.contains(outside), "the page holds {outside:?}");
    }

    // A drill on the exported service, as `causeway drill` writes it.
    let now_ms = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)?
        .as_millis() as i64;
    let drill = serde_json::json!({
        "schema": 2, "service": "demo/echo", "cluster": "east",
        "start_unix_ms": now_ms, "end_unix_ms": now_ms + 60_000,
    });
    let mut client = etcd.client().await?;
    client
        .put(
            "/causeway/v2/drills/echo-demo-east-1",
            drill.to_string(),
            None,
        )
        .await?;
    let body = wait_for(
        "the import and the drill in the snapshot",
        Duration::from_secs(20),
        || async {
            let v = snapshot(&fed).await?;
            let s = &v["snapshot"];
            (s["services"]["demo/echo"].is_object() && !s["drills"].as_object()?.is_empty())
                .then_some(v)
        },
    )
    .await?;
    // What the page reads, field by field (dashboard.html's render()).
    let s = &body["snapshot"];
    assert!(body["leader"].is_boolean());
    for field in ["local_cluster", "version", "revision", "synced", "health"] {
        assert!(!s[field].is_null(), "snapshot.{field}");
    }
    let east = &s["clusters"]["east"];
    assert_eq!(east["state"], "up");
    assert!(east["record"]["gateway_addresses"].is_array());
    let echo = &s["services"]["demo/echo"];
    assert_eq!(echo["import"]["type"], "ClusterSetIP");
    assert!(echo["import"]["conflict"].is_boolean());
    let export = &echo["exports"]["east"];
    assert!(export["conditions"]["conflicts"].is_array());
    assert!(export["stale"].is_boolean() && export["drained"].is_boolean());
    let d = s["drills"].as_object().unwrap().values().next().unwrap();
    assert_eq!(
        (d["service"].as_str(), d["cluster"].as_str()),
        (Some("demo/echo"), Some("east"))
    );
    assert!(d["end_unix_ms"].is_i64());
    assert_eq!(
        export["drained"], true,
        "the drilled cluster shows as drained"
    );

    // A drill report (a Drill resource's observer writes one): the fields the page shows.
    let report = serde_json::json!({
        "schema": 2, "phase": "Done", "passed": true, "verdict": "PASS: traffic moved away and came back",
        "baseline": {"requests": 20, "failed": 0, "clusters": {"east": 20}},
        "failover": {"requests": 60, "failed": 0, "clusters": {"west": 60}},
        "failback": {"requests": 10, "failed": 0, "clusters": {"east": 10}},
        "dnsExpectedToMove": true, "dnsMovedMs": 9, "trafficMovedMs": 60, "dnsBackMs": 30, "trafficBackMs": 30,
        "timeline": [{"atMs": 0, "event": "drain of east began"}],
    });
    client
        .put(
            "/causeway/v2/clusters/east/drill-reports/east/echo-east-1",
            report.to_string(),
            None,
        )
        .await?;
    let body = wait_for(
        "the drill report in the snapshot",
        Duration::from_secs(20),
        || async {
            let v = snapshot(&fed).await?;
            v["snapshot"]["drill_reports"]["east/echo-east-1"]["east"]
                .is_object()
                .then_some(v)
        },
    )
    .await?;
    let r = &body["snapshot"]["drill_reports"]["east/echo-east-1"]["east"];
    for field in [
        "phase",
        "passed",
        "verdict",
        "dnsMovedMs",
        "trafficMovedMs",
        "dnsBackMs",
        "trafficBackMs",
    ] {
        assert!(!r[field].is_null(), "drill report {field}: {r:#}");
    }
    for phase in ["baseline", "failover", "failback"] {
        assert!(
            r[phase]["failed"].is_u64() && r[phase]["requests"].is_u64(),
            "{r:#}"
        );
    }
    assert!(r["timeline"][0]["atMs"].is_i64() && r["timeline"][0]["event"].is_string());

    // Traffic: a gateway of east reports its counters to and from west with its peer health;
    // the snapshot carries the rates between its last two reports.
    use causeway_api::proto::health_client::HealthClient;
    use causeway_api::proto::PeerHealth;
    let (tx, rx) = tokio::sync::mpsc::channel(4);
    let mut health = HealthClient::connect(format!("http://{}", fed.config)).await?;
    let stream = tokio::spawn(async move {
        health
            .report(tokio_stream::wrappers::ReceiverStream::new(rx))
            .await
    });
    let counts = |egress: u64, egress_errors: u64, ingress: u64, suspect: bool| PeerHealth {
        observer: "east".into(),
        cluster: "west".into(),
        up: true,
        rtt_micros: 800,
        observed_at_unix_ms: 1,
        egress_requests: egress,
        egress_errors,
        ingress_requests: ingress,
        ingress_errors: 0,
        suspect,
    };
    let traffic = |body: &serde_json::Value| body["traffic"]["west"].clone();
    tx.send(counts(100, 0, 50, false)).await?;
    wait_for(
        "the first traffic report",
        Duration::from_secs(10),
        || async {
            let v = snapshot(&fed).await?;
            (traffic(&v)["egress_requests"] == 100).then_some(())
        },
    )
    .await?;
    tx.send(counts(300, 20, 50, true)).await?;
    let t = wait_for(
        "rates from two reports",
        Duration::from_secs(10),
        || async {
            let v = snapshot(&fed).await?;
            let t = traffic(&v);
            (t["egress_requests"] == 300).then_some(t)
        },
    )
    .await?;
    let (rps, errors) = (
        t["egress_rps"].as_f64().unwrap_or(0.0),
        t["egress_errors_rps"].as_f64().unwrap_or(0.0),
    );
    assert!(rps > 0.0 && errors > 0.0 && errors < rps, "{t:#}");
    assert_eq!(t["ingress_rps"], 0.0, "{t:#}");
    assert_eq!(t["gateways"], 1, "{t:#}");
    // The live RTT of this cluster's own reports (etcd gets only state changes).
    let body = snapshot(&fed)
        .await
        .ok_or_else(|| anyhow::anyhow!("no snapshot"))?;
    assert_eq!(body["local_health"]["west"]["rtt_micros"], 800, "{body:#}");
    // Suspect is a state change: published, so every cluster sees it.
    wait_for(
        "east's suspicion of west in etcd",
        Duration::from_secs(10),
        || async {
            let v = snapshot(&fed).await?;
            (v["snapshot"]["health"]["east"]["west"]["suspect"] == true).then_some(())
        },
    )
    .await?;
    // The gateway goes away: its counters with it.
    drop(tx);
    stream.await??;
    let gone = wait_for(
        "the ended stream's traffic to go",
        Duration::from_secs(10),
        || async {
            let v = snapshot(&fed).await?;
            v["traffic"].as_object()?.is_empty().then_some(())
        },
    )
    .await;
    assert!(gone.is_ok(), "{gone:?}");
    drop(fed);
    Ok(())
}

/// `/debug/snapshot` of `fed` as JSON (None while it does not answer).
async fn snapshot(fed: &Fed) -> Option<serde_json::Value> {
    let body = http_get(&fed.admin, "/debug/snapshot").await.ok()?;
    serde_json::from_str(&body).ok()
}
