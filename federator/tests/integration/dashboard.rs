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
            let body = http_get(&fed.admin, "/debug/snapshot").await.ok()?;
            let v: serde_json::Value = serde_json::from_str(&body).ok()?;
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
    drop(fed);
    Ok(())
}
