//! The real-etcd fixture, and Causeway's key schema stored in and read back from a real etcd.

use std::time::Duration;

use causeway_api::keys::{self, Key};
use causeway_api::{BackendTlsMode, ClusterId, ExportRecord, Protocol, ServiceKey, ServicePort};
use causeway_e2e::{wait_for, EtcdServer};
use etcd_client::{Client, GetOptions};

fn export_record() -> ExportRecord {
    ExportRecord {
        ports: vec![
            ServicePort {
                name: "http".to_string(),
                protocol: Protocol::Tcp,
                port: 8080,
                app_protocol: Some("http".to_string()),
            },
            ServicePort {
                name: "grpc".to_string(),
                protocol: Protocol::Tcp,
                port: 9090,
                app_protocol: Some("grpc".to_string()),
            },
        ]
        .into(),
        created_unix_ms: 1_700_000_000_000,
        ready_endpoints: 3,
        backend_tls_mode: BackendTlsMode::Mtls,
        allowed_source_clusters: vec![ClusterId::new("west").expect("valid cluster ID")],
        weight: Some(100),
        service_ip: Some("10.96.0.10".parse().expect("valid IP")),
        ..ExportRecord::default()
    }
}

/// Lists every export in etcd: parsed key, decoded value.
async fn list_exports(client: &mut Client) -> anyhow::Result<Vec<(Key, ExportRecord)>> {
    let resp = client
        .get(
            keys::clusters_prefix(),
            Some(GetOptions::new().with_prefix()),
        )
        .await?;
    let mut out = Vec::new();
    for kv in resp.kvs() {
        let key = kv.key_str()?;
        let parsed = Key::parse(key)?;
        if !matches!(parsed, Key::Export { .. }) {
            continue;
        }
        let value: ExportRecord = keys::decode(key, kv.value())?;
        out.push((parsed, value));
    }
    Ok(out)
}

// === the fixture ===

#[tokio::test]
async fn etcd_server_starts_answers_and_cleans_up() -> anyhow::Result<()> {
    let server = EtcdServer::start().await?;
    assert!(server.is_running());
    assert!(server.endpoint().starts_with("http://127.0.0.1:"));
    assert_eq!(server.endpoints(), vec![server.endpoint()]);

    let mut client = server.client().await?;
    client.put("/causeway-e2e/hello", "world", None).await?;
    let resp = client.get("/causeway-e2e/hello", None).await?;
    assert_eq!(resp.kvs()[0].value(), b"world");

    let data_dir = server.data_dir();
    let log = server.log_path();
    assert!(data_dir.is_dir(), "{}", data_dir.display());
    assert!(log.is_file(), "{}", log.display());
    drop(server);
    assert!(!data_dir.exists(), "drop removes {}", data_dir.display());
    Ok(())
}

#[tokio::test]
async fn two_etcd_servers_run_side_by_side() -> anyhow::Result<()> {
    let (a, b) = tokio::try_join!(EtcdServer::start(), EtcdServer::start())?;
    assert_ne!(a.endpoint(), b.endpoint());
    let (mut ca, mut cb) = (a.client().await?, b.client().await?);
    ca.put("/k", "a", None).await?;
    cb.put("/k", "b", None).await?;
    assert_eq!(ca.get("/k", None).await?.kvs()[0].value(), b"a");
    assert_eq!(cb.get("/k", None).await?.kvs()[0].value(), b"b");
    Ok(())
}

#[tokio::test]
async fn compaction_retention_is_passed_to_etcd() -> anyhow::Result<()> {
    let server = EtcdServer::builder()
        .compaction_retention(5)
        .start()
        .await?;
    // etcd's revision compactor only runs every few minutes, so check what etcd says it was
    // started with rather than waiting for a compaction.
    let log = std::fs::read_to_string(server.log_path())?;
    assert!(
        log.contains(r#""auto-compaction-mode":"revision""#),
        "{log}"
    );

    let plain = EtcdServer::start().await?;
    let log = std::fs::read_to_string(plain.log_path())?;
    assert!(
        !log.contains(r#""auto-compaction-mode":"revision""#),
        "{log}"
    );
    Ok(())
}

#[tokio::test]
async fn a_compacted_revision_is_reported_as_such() -> anyhow::Result<()> {
    // What watchers that relist on compaction (DESIGN.md "etcd key schema") will meet.
    let server = EtcdServer::start().await?;
    let mut client = server.client().await?;
    let first = client.put("/compacted", "0", None).await?;
    let first_rev = first.header().expect("put has a header").revision();
    let mut last_rev = first_rev;
    for i in 1..=5 {
        let put = client.put("/compacted", i.to_string(), None).await?;
        last_rev = put.header().expect("put has a header").revision();
    }
    client.compact(last_rev, None).await?;

    let err = client
        .get(
            "/compacted",
            Some(GetOptions::new().with_revision(first_rev)),
        )
        .await
        .expect_err("the revision was compacted");
    assert!(err.to_string().contains("compacted"), "{err}");
    let latest = client.get("/compacted", None).await?;
    assert_eq!(latest.kvs()[0].value(), b"5");
    Ok(())
}

// === the key schema through a real etcd ===

#[tokio::test]
async fn export_round_trips_through_etcd_with_the_key_schema() -> anyhow::Result<()> {
    let server = EtcdServer::start().await?;
    let mut client = server.client().await?;

    let service = ServiceKey::new("shop", "checkout")?;
    let cluster = ClusterId::new("east")?;
    let record = export_record();
    let key = keys::export_key(&service, &cluster);
    client.put(key.clone(), keys::encode(&record), None).await?;
    // Something outside the exports prefix must not show up in the listing.
    client
        .put(
            keys::cluster_key(&cluster),
            b"{\"schema\":1}".to_vec(),
            None,
        )
        .await?;

    let exports = list_exports(&mut client).await?;
    assert_eq!(exports.len(), 1, "{exports:?}");
    let (parsed, value) = &exports[0];
    assert_eq!(
        parsed,
        &Key::Export {
            service: service.clone(),
            cluster: cluster.clone(),
        }
    );
    assert_eq!(parsed.to_string(), key);
    assert_eq!(value, &record);

    // A value written by a newer federator, with fields this one does not know, still decodes.
    let mut newer: serde_json::Value = serde_json::from_slice(&keys::encode(&record))?;
    newer["from_the_future"] = serde_json::json!({"x": 1});
    client
        .put(key.clone(), serde_json::to_vec(&newer)?, None)
        .await?;
    let exports = list_exports(&mut client).await?;
    assert_eq!(exports[0].1, record);
    Ok(())
}

#[tokio::test]
async fn exports_survive_an_etcd_restart_and_the_client_reconnects() -> anyhow::Result<()> {
    let mut server = EtcdServer::start().await?;
    let endpoint = server.endpoint();
    let mut client = server.client().await?;

    let cluster = ClusterId::new("west")?;
    let services = [
        ServiceKey::new("shop", "cart")?,
        ServiceKey::new("shop", "checkout")?,
    ];
    for service in &services {
        client
            .put(
                keys::export_key(service, &cluster),
                keys::encode(&export_record()),
                None,
            )
            .await?;
    }

    server.stop().await?;
    assert!(!server.is_running());
    // While etcd is down a request fails instead of answering from somewhere else.
    let down = tokio::time::timeout(Duration::from_secs(3), list_exports(&mut client)).await;
    assert!(
        !matches!(down, Ok(Ok(_))),
        "etcd is stopped but a read succeeded"
    );

    server.restart().await?;
    assert!(server.is_running());
    assert_eq!(server.endpoint(), endpoint, "restart keeps the ports");

    // The client made before the stop reconnects by itself.
    let exports = wait_for(
        "the old client to read the exports again",
        Duration::from_secs(20),
        || {
            let mut client = client.clone();
            async move { list_exports(&mut client).await.ok() }
        },
    )
    .await?;
    let found: Vec<Key> = exports.iter().map(|(k, _)| k.clone()).collect();
    let expected: Vec<Key> = services
        .iter()
        .map(|s| Key::Export {
            service: s.clone(),
            cluster: cluster.clone(),
        })
        .collect();
    assert_eq!(found, expected);
    assert!(exports.iter().all(|(_, v)| v == &export_record()));

    // And it can write again.
    client
        .put(
            keys::export_key(&ServiceKey::new("shop", "search")?, &cluster),
            keys::encode(&export_record()),
            None,
        )
        .await?;
    assert_eq!(list_exports(&mut client).await?.len(), 3);
    Ok(())
}
