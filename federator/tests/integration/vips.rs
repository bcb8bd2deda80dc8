//! The ClusterSetIP lifecycle under churn: a real federator and etcd, 1,000 exports created and
//! removed in random order. Watching `clusters/east/vips/` all along: no address is ever held by
//! two keys, headless imports get none, and every address is freed after the grace once its
//! import is gone.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use causeway_e2e::{wait_for, EtcdServer};
use rand::seq::SliceRandom;
use rand::SeedableRng;

use crate::harness::{write_file, Fed};

const EXPORTS: usize = 1000;

fn export(name: &str, headless: bool) -> String {
    let ty = if headless { "Headless" } else { "ClusterSetIP" };
    format!(
        "apiVersion: causeway.io/v1\nkind: ServiceExport\nmetadata:\n  name: {name}\n  namespace: churn\n  creationTimestamp: \"2026-01-01T00:00:00Z\"\nspec:\n  type: {ty}\n  serviceIP: 10.96.0.10\n  ports:\n    - name: http\n      protocol: TCP\n      port: 80\n  endpoints:\n    - address: 10.1.0.5\n"
    )
}

/// `clusters/east/vips/`: service name → address, read at one revision.
async fn held(client: &mut etcd_client::Client) -> anyhow::Result<BTreeMap<String, String>> {
    let resp = client
        .get(
            "/causeway/v2/clusters/east/vips/",
            Some(etcd_client::GetOptions::new().with_prefix()),
        )
        .await?;
    let mut out = BTreeMap::new();
    for kv in resp.kvs() {
        let key = String::from_utf8_lossy(kv.key()).into_owned();
        let v: serde_json::Value = serde_json::from_slice(kv.value())?;
        out.insert(key, v["ip"].as_str().unwrap_or_default().to_string());
    }
    Ok(out)
}

/// Panics naming both keys when two keys hold one address.
fn assert_unique(held: &BTreeMap<String, String>) {
    let mut owner: BTreeMap<&str, &str> = BTreeMap::new();
    for (key, ip) in held {
        if let Some(other) = owner.insert(ip, key) {
            panic!("{ip} is held by both {other} and {key}");
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn under_churn_no_clusterset_ip_is_held_twice_and_all_are_freed() -> anyhow::Result<()> {
    let etcd = EtcdServer::start().await?;
    let exports = tempfile::tempdir()?;
    // A /22 (1,024 addresses) for up to 500 ClusterSetIP imports and those in their grace.
    let fed = Fed::start(
        "east",
        &etcd.endpoint(),
        exports.path(),
        &[
            "--vip-range",
            "10.250.0.0/22",
            "--vip-release-grace",
            "1s",
            "--dns-ttl",
            "1s",
        ],
    )
    .await?;
    let mut client = etcd.client().await?;

    // Every 8th name is exported headless; the order of creation and removal is random, and
    // removals start while creations go on.
    let mut rng = rand::rngs::StdRng::seed_from_u64(1645);
    let mut names: Vec<(String, bool)> = (0..EXPORTS)
        .map(|i| (format!("svc-{i:04}"), i % 8 == 0))
        .collect();
    names.shuffle(&mut rng);
    let mut removal: Vec<String> = names.iter().map(|(n, _)| n.clone()).collect();
    removal.shuffle(&mut rng);

    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let watcher = {
        let mut client = etcd.client().await?;
        let stop = stop.clone();
        tokio::spawn(async move {
            let mut observations = 0u32;
            let mut most = 0usize;
            let deadline = tokio::time::Instant::now() + Duration::from_secs(180);
            while !stop.load(std::sync::atomic::Ordering::Relaxed)
                && tokio::time::Instant::now() < deadline
            {
                match held(&mut client).await {
                    Ok(h) => {
                        assert_unique(&h);
                        most = most.max(h.len());
                        observations += 1;
                    }
                    Err(e) => panic!("listing the VIPs: {e}"),
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            (observations, most)
        })
    };

    let mut removed = BTreeSet::new();
    for (i, (name, headless)) in names.iter().enumerate() {
        write_file(
            &exports.path().join(format!("{name}.yaml")),
            &export(name, *headless),
        );
        // From the 300th on, every creation is followed by a removal of a random earlier one.
        if i >= 300 {
            if let Some(victim) = removal.iter().find(|n| {
                !removed.contains(*n) && exports.path().join(format!("{n}.yaml")).exists()
            }) {
                std::fs::remove_file(exports.path().join(format!("{victim}.yaml")))?;
                removed.insert(victim.clone());
            }
        }
        if i % 50 == 0 {
            tokio::time::sleep(Duration::from_millis(60)).await;
        }
    }
    // The survivors with ClusterSetIP get an address each; the headless ones none.
    let survivors: BTreeSet<String> = names
        .iter()
        .filter(|(n, h)| !h && !removed.contains(n))
        .map(|(n, _)| format!("/causeway/v2/clusters/east/vips/churn/{n}"))
        .collect();
    wait_for(
        "the survivors to hold ClusterSetIPs, and only they",
        Duration::from_secs(60),
        || {
            let (mut c, survivors) = (client.clone(), survivors.clone());
            async move {
                let h = held(&mut c).await.ok()?;
                (h.keys().cloned().collect::<BTreeSet<_>>() == survivors).then_some(())
            }
        },
    )
    .await?;
    // All removed: every address is freed after the grace.
    for (name, _) in &names {
        let _ = std::fs::remove_file(exports.path().join(format!("{name}.yaml")));
    }
    wait_for(
        "every ClusterSetIP to be freed",
        Duration::from_secs(60),
        || {
            let mut c = client.clone();
            async move { held(&mut c).await.ok()?.is_empty().then_some(()) }
        },
    )
    .await?;
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let (observations, most) = watcher.await.expect("no address was held by two keys");
    assert!(observations > 20, "only {observations} looks at the VIPs");
    assert!(
        most > 100,
        "at most {most} addresses held at once: no churn to speak of"
    );
    println!("RESULT vip_churn: exports={EXPORTS} observations={observations} most_held_at_once={most} held_twice=0");
    // One more look: nothing reappeared.
    assert!(held(&mut client).await?.is_empty());
    drop(fed);
    Ok(())
}

/// The mod revision of `key` (None: no such key).
async fn mod_revision(client: &mut etcd_client::Client, key: &str) -> Option<i64> {
    let resp = client.get(key, None).await.ok()?;
    resp.kvs().first().map(|kv| kv.mod_revision())
}

#[tokio::test]
async fn a_new_imports_clusterset_ip_is_written_in_the_transaction_of_its_first_export(
) -> anyhow::Result<()> {
    let etcd = EtcdServer::start().await?;
    let exports = tempfile::tempdir()?;
    let fed = Fed::start(
        "east",
        &etcd.endpoint(),
        exports.path(),
        &[
            "--vip-range",
            "10.250.0.0/24",
            "--dns-listen",
            "127.0.0.1:0",
        ],
    )
    .await?;
    let dns: std::net::SocketAddr = fed.dns.as_deref().expect("DNS listens").parse()?;
    let mut client = etcd.client().await?;
    let vip = |n: &str| format!("/causeway/v2/clusters/east/vips/churn/{n}");
    let export_key = |n: &str| format!("/causeway/v2/clusters/east/exports/churn/{n}");
    // The first one: the leader learns what etcd holds.
    write_file(&exports.path().join("first.yaml"), &export("first", false));
    wait_for(
        "the first import's ClusterSetIP",
        Duration::from_secs(20),
        || {
            let (mut c, k) = (client.clone(), vip("first"));
            async move { mod_revision(&mut c, &k).await }
        },
    )
    .await?;
    for name in ["second", "third"] {
        // Asked all along, DNS goes from "no such name" straight to the address: never
        // NODATA (the name known, its address not yet), which resolvers would cache.
        let asking = tokio::spawn(async move {
            let fqdn = format!("{name}.churn.svc.clusterset.local");
            let t = Duration::from_millis(500);
            let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
            let mut seen = Vec::new();
            while tokio::time::Instant::now() < deadline {
                if let Ok((code, ips)) = causeway_probe::dns::dns_query_a(dns, &fqdn, t).await {
                    seen.push((code, ips.len()));
                    if !ips.is_empty() {
                        return seen;
                    }
                }
                tokio::time::sleep(Duration::from_millis(2)).await;
            }
            seen
        });
        write_file(
            &exports.path().join(format!("{name}.yaml")),
            &export(name, false),
        );
        let exported = wait_for(
            "the export to be published",
            Duration::from_secs(20),
            || {
                let (mut c, k) = (client.clone(), export_key(name));
                async move { mod_revision(&mut c, &k).await }
            },
        )
        .await?;
        let addressed = mod_revision(&mut client, &vip(name)).await;
        assert_eq!(
            addressed,
            Some(exported),
            "{name}: the ClusterSetIP is written with the export, not a round trip later"
        );
        let seen = asking.await?;
        assert!(
            seen.last().is_some_and(|(_, n)| *n > 0),
            "{name}: never answered: {seen:?}"
        );
        let nodata = seen
            .iter()
            .filter(|(code, n)| *code == causeway_probe::dns::ResponseCode::NoError && *n == 0)
            .count();
        assert_eq!(nodata, 0, "{name}: NODATA before the address: {seen:?}");
    }
    // A headless export gets none, in that transaction or later.
    write_file(&exports.path().join("db.yaml"), &export("db", true));
    wait_for(
        "the headless export to be published",
        Duration::from_secs(20),
        || {
            let (mut c, k) = (client.clone(), export_key("db"));
            async move { mod_revision(&mut c, &k).await }
        },
    )
    .await?;
    assert_eq!(mod_revision(&mut client, &vip("db")).await, None);
    let all = held(&mut client).await?;
    assert_unique(&all);
    assert_eq!(all.len(), 3, "{all:?}");
    drop(fed);
    Ok(())
}

fn stateful(ready: [bool; 3]) -> String {
    let mut y = "apiVersion: causeway.io/v1\nkind: ServiceExport\nmetadata:\n  name: db\n  namespace: demo\n  creationTimestamp: \"2026-01-01T00:00:00Z\"\nspec:\n  type: Headless\n  ports:\n    - name: http\n      protocol: TCP\n      port: 80\n  endpoints:\n".to_string();
    for (i, r) in ready.iter().enumerate() {
        y.push_str(&format!(
            "    - address: 10.1.0.{}\n      hostname: db-{i}\n      ready: {r}\n",
            10 + i
        ));
    }
    y
}

/// The endpoints of `demo/db` exported by east, as west's snapshot gives them addresses.
fn endpoint_vips(snap: &serde_json::Value) -> BTreeMap<String, String> {
    snap["services"]["demo/db"]["endpoint_vips"]["east"]
        .as_object()
        .map(|m| {
            m.iter()
                .map(|(k, v)| (k.clone(), v.as_str().unwrap_or_default().to_string()))
                .collect()
        })
        .unwrap_or_default()
}

/// A headless import's endpoints in another cluster each get an address of the importing
/// cluster's range (what DNS answers there, leading to its gateway); the exporter gives its own
/// endpoints none; an endpoint that stops being ready loses its address after the grace, and
/// no address is ever given to two.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn remote_headless_endpoints_get_addresses_of_the_importer() -> anyhow::Result<()> {
    let etcd = EtcdServer::start().await?;
    let (de, dw) = (tempfile::tempdir()?, tempfile::tempdir()?);
    let args = [
        "--vip-range",
        "10.250.0.0/24",
        "--vip-release-grace",
        "1s",
        "--dns-ttl",
        "1s",
    ];
    write_file(&de.path().join("db.yaml"), &stateful([true; 3]));
    let east = Fed::start("east", &etcd.endpoint(), de.path(), &args).await?;
    let west = Fed::start("west", &etcd.endpoint(), dw.path(), &args).await?;
    let got = wait_for(
        "west to give east's three endpoints an address each",
        Duration::from_secs(30),
        || async {
            let m = endpoint_vips(&west.snapshot().await.ok()?);
            (m.len() == 3).then_some(m)
        },
    )
    .await?;
    assert_eq!(
        got.keys().cloned().collect::<Vec<_>>(),
        ["db-0", "db-1", "db-2"]
    );
    let ips: BTreeSet<&String> = got.values().collect();
    assert_eq!(ips.len(), 3, "three distinct addresses: {got:?}");
    assert!(
        got.values().all(|ip| ip.starts_with("10.250.0.")),
        "{got:?}"
    );
    // The exporter gives its own endpoints none (they are local there).
    assert!(endpoint_vips(&east.snapshot().await?).is_empty());
    // db-1 not ready: its address goes after the grace; the others keep theirs.
    write_file(&de.path().join("db.yaml"), &stateful([true, false, true]));
    let after = wait_for(
        "db-1's address to be freed",
        Duration::from_secs(30),
        || async {
            let m = endpoint_vips(&west.snapshot().await.ok()?);
            (m.len() == 2).then_some(m)
        },
    )
    .await?;
    assert_eq!(after.get("db-0"), got.get("db-0"), "db-0 keeps its address");
    assert_eq!(after.get("db-2"), got.get("db-2"), "db-2 keeps its address");
    let mut client = etcd.client().await?;
    let keys = client
        .get(
            "/causeway/v2/clusters/west/vips/demo/db/",
            Some(etcd_client::GetOptions::new().with_prefix()),
        )
        .await?;
    assert_eq!(keys.kvs().len(), 2, "db-1's key is deleted");
    Ok(())
}
