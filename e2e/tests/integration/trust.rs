//! Trust that grows and rotates (docs/certificates.md): short-lived gateway certificates
//! renewed by the federators' issuers, and one cluster's root rotated, each with clients
//! calling across clusters the whole time.

use std::time::Duration;

use crate::lab_support::{self, metric};
use causeway_e2e::lab::Lab;

const LIFETIME: Duration = Duration::from_secs(20);

/// `causeway_gateway_certificate_renewals_total{result="ok"}` of each cluster's gateway.
async fn renewals(lab: &Lab) -> Vec<(String, f64)> {
    let mut out = Vec::new();
    for c in &lab.state().clusters {
        let m = lab.gateway_metrics(&c.name).await.unwrap_or_default();
        let n = metric(
            &m,
            "causeway_gateway_certificate_renewals_total",
            &[("result", "ok")],
        )
        .unwrap_or(0.0);
        out.push((c.name.clone(), n));
    }
    out
}

/// The notAfter of a cluster's gateway certificate, from its expiry metric.
async fn gateway_not_after(lab: &Lab, cluster: &str) -> Option<i64> {
    let m = lab.gateway_metrics(cluster).await.ok()?;
    metric(
        &m,
        "causeway_certificate_expiry_timestamp_seconds",
        &[("component", "gateway")],
    )
    .map(|v| v as i64)
}

fn now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64
}

/// Certificates of 20 s: every gateway gets one from its federator at once and renews it at two
/// thirds of its life, several times over, while a client in north calls west's echo without
/// a failure; the peers accept each new certificate.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_gateways_certificate_is_renewed_several_times_under_load() {
    let Some(lab) = lab_support::start(3, |s| s.certificate_lifetime = Some(LIFETIME)).await else {
        return;
    };
    let north = lab.echo_prober("north").unwrap();
    lab_support::warm_up(&north, 5).await;
    let started = std::time::Instant::now();
    // The first certificate comes at once (the file one is not the issuer's); then one every
    // ~13 s. Four in all is three renewals of an issued certificate.
    let counts = causeway_e2e::wait_for(
        "every gateway to renew its certificate three times",
        Duration::from_secs(90),
        || async {
            let r = renewals(&lab).await;
            r.iter().all(|(_, n)| *n >= 4.0).then_some(r)
        },
    )
    .await
    .unwrap_or_else(|e| panic!("{e:#}"));
    let took = started.elapsed();
    // What each gateway holds now is a short-lived certificate of its federator's.
    for c in ["east", "west", "north"] {
        let not_after = gateway_not_after(&lab, c).await.expect("expiry metric");
        let left = not_after - now();
        assert!(
            (0..=LIFETIME.as_secs() as i64 + 1).contains(&left),
            "{c}'s certificate has {left} s left: not one of {LIFETIME:?}"
        );
    }
    // The peers saw the renewed certificates: west's view of north's is short-lived too.
    causeway_e2e::wait_for(
        "west to dial north with north's newest certificate",
        Duration::from_secs(20),
        || async {
            lab.peers_answering("west")
                .await
                .ok()?
                .contains("north")
                .then_some(())
        },
    )
    .await
    .expect("west answers north");

    let north = north.stop();
    let failed = north.failures(Duration::ZERO, Duration::MAX);
    assert!(
        failed.is_empty(),
        "north: {}",
        north.describe_failures(Duration::ZERO, Duration::MAX)
    );
    for (c, _) in &counts {
        let m = lab.gateway_metrics(c).await.unwrap();
        for bad in ["refused", "unusable", "unreachable"] {
            let n = metric(
                &m,
                "causeway_gateway_certificate_renewals_total",
                &[("result", bad)],
            )
            .unwrap_or(0.0);
            assert_eq!(n, 0.0, "{c}: {n} renewals {bad}");
        }
    }
    lab_support::result(
        "gateway_certificates_renewed",
        &[
            ("lifetime", lab_support::secs(Some(LIFETIME))),
            ("four_certificates_after", lab_support::secs(Some(took))),
            (
                "renewals",
                counts
                    .iter()
                    .map(|(c, n)| format!("{c}:{n}"))
                    .collect::<Vec<_>>()
                    .join(","),
            ),
            ("requests", north.samples.len().to_string()),
            ("failed", "0".to_string()),
        ],
    );
}

/// How many certificates the gateway of `cluster` holds in its bundle for peer `peer`.
async fn peer_roots(lab: &Lab, cluster: &str, peer: &str) -> Option<usize> {
    let dump = lab.gateway_dump(cluster).await.ok()?;
    let p = dump["peers"]
        .as_array()?
        .iter()
        .find(|p| p["cluster"] == peer)?
        .clone();
    Some(
        p["trust_bundle_pem"]
            .as_str()?
            .matches("BEGIN CERTIFICATE")
            .count(),
    )
}

fn fingerprint_of_first(path: &std::path::Path) -> String {
    let certs = causeway_api::pem::load_certs(path).unwrap();
    causeway_api::tls::fingerprint(&certs[0])
}

/// West's root rotated with `causeway rotate-root begin|switch|finish` while north calls west:
/// the peers take the two-root bundle, west's gateway renews from the new CA as soon as its
/// federator loads it, the old root leaves every bundle, north dials west again and verifies it
/// through the new root alone; no request fails.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_clusters_root_is_rotated_while_clients_call() {
    let Some(lab) = lab_support::start(3, |_| {}).await else {
        return;
    };
    let north = lab.echo_prober("north").unwrap();
    lab_support::warm_up(&north, 5).await;
    let pki = lab.state().pki_dir.clone();
    let pki_arg = pki.display().to_string();
    let step = |s: &str| {
        lab.causeway(&["rotate-root", s, "--out", &pki_arg, "--cluster", "west"])
            .unwrap_or_else(|e| panic!("rotate-root {s}: {e:#}"))
    };
    let wait = Duration::from_secs(20);
    let started = std::time::Instant::now();

    step("begin");
    for c in ["north", "east"] {
        causeway_e2e::wait_for(
            &format!("{c} to trust both of west's roots"),
            wait,
            || async { (peer_roots(&lab, c, "west").await? == 2).then_some(()) },
        )
        .await
        .unwrap_or_else(|e| panic!("{e:#}"));
    }
    let both_trusted = started.elapsed();

    step("switch");
    let new_ca = fingerprint_of_first(&pki.join("west").join("ca.pem"));
    let west_cert = causeway_e2e::wait_for(
        "west's gateway to hold a certificate of the new CA",
        wait,
        || async {
            let d = lab.gateway_dump("west").await.ok()?;
            let c = &d["certificate"];
            (c["issuer"] == new_ca.as_str() && c["source"] == "federator").then(|| c.clone())
        },
    )
    .await
    .unwrap_or_else(|e| panic!("{e:#}"));
    let switched = started.elapsed();

    step("finish");
    let new_root = std::fs::read_to_string(pki.join("west").join("root-ca.pem")).unwrap();
    for c in ["north", "east"] {
        causeway_e2e::wait_for(
            &format!("{c} to trust west's new root only"),
            wait,
            || async {
                let dump = lab.gateway_dump(c).await.ok()?;
                let west = dump["peers"]
                    .as_array()?
                    .iter()
                    .find(|p| p["cluster"] == "west")?
                    .clone();
                let pem = west["trust_bundle_pem"].as_str()?;
                (pem.matches("BEGIN CERTIFICATE").count() == 1 && pem.trim() == new_root.trim())
                    .then_some(())
            },
        )
        .await
        .unwrap_or_else(|e| panic!("{e:#}"));
    }
    // North replaced its connection to west (its trust changed) and verified west's new
    // certificate through the new root alone.
    let west_not_after = west_cert["not_after"].as_i64().expect("not_after");
    causeway_e2e::wait_for(
        "north to dial west and see its new certificate",
        wait,
        || async {
            let peers = lab.gateway_peers("north").await.ok()?;
            let w = peers.iter().find(|p| p["cluster"] == "west")?;
            (w["certificate_not_after"].as_i64()? >= west_not_after
                && w["up"] == true
                && w["suspect"] == false)
                .then_some(())
        },
    )
    .await
    .unwrap_or_else(|e| panic!("{e:#}"));
    let finished = started.elapsed();
    assert!(
        !pki.join("west").join("previous").exists(),
        "the old root's key is deleted"
    );
    // Calls from north keep being answered by west after the rotation.
    let seen = north.samples().len();
    causeway_e2e::wait_for("more answers for north", wait, || async {
        let s = north.samples();
        (s.len() >= seen + 10 && s[seen..].iter().all(|s| s.ok())).then_some(())
    })
    .await
    .unwrap_or_else(|e| panic!("{e:#}"));

    let north = north.stop();
    let failed = north.failures(Duration::ZERO, Duration::MAX);
    assert!(
        failed.is_empty(),
        "north: {}",
        north.describe_failures(Duration::ZERO, Duration::MAX)
    );
    lab_support::result(
        "cluster_root_rotated",
        &[
            (
                "both_roots_trusted_after",
                lab_support::secs(Some(both_trusted)),
            ),
            ("new_ca_in_use_after", lab_support::secs(Some(switched))),
            ("old_root_gone_after", lab_support::secs(Some(finished))),
            ("requests", north.samples.len().to_string()),
            ("failed", "0".to_string()),
        ],
    );
}

/// East's federators stopped, so east's gateway cannot renew its 8 s certificate. When it
/// expires, west closes east's connection and refuses the next (`expired`), west's probes of east
/// fail, and east says why (`/ready` 503, its expiry metric in the past), while north's client,
/// which calls west, sees nothing. East's federator back: east's gateway asks with its file
/// certificate, gets a new one, is ready again, and west accepts it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_expired_cluster_is_refused_and_recovers_when_renewed() {
    let Some(mut lab) =
        lab_support::start(3, |s| s.certificate_lifetime = Some(Duration::from_secs(8))).await
    else {
        return;
    };
    let north = lab.echo_prober("north").unwrap();
    lab_support::warm_up(&north, 5).await;
    causeway_e2e::wait_for(
        "east's gateway to hold an issued certificate",
        Duration::from_secs(20),
        || async {
            let d = lab.gateway_dump("east").await.ok()?;
            (d["certificate"]["source"] == "federator").then_some(())
        },
    )
    .await
    .unwrap_or_else(|e| panic!("{e:#}"));
    let federators: Vec<String> = lab
        .state()
        .clusters
        .iter()
        .find(|c| c.name == "east")
        .unwrap()
        .federators
        .iter()
        .map(|f| f.process.clone())
        .collect();
    for f in &federators {
        lab.stop(f, false).unwrap();
    }
    let stopped = std::time::Instant::now();
    let east = lab.cluster("east").clone();
    causeway_e2e::wait_for(
        "east's gateway to say its certificate expired",
        Duration::from_secs(20),
        || async {
            let (status, body) = lab
                .admin_get(east.netns.as_deref(), east.gateway.admin, "/ready")
                .await
                .ok()?;
            (status == 503 && body.contains("expired")).then_some(())
        },
    )
    .await
    .unwrap_or_else(|e| panic!("{e:#}"));
    let expired_after = stopped.elapsed();
    let not_after = gateway_not_after(&lab, "east")
        .await
        .expect("expiry metric");
    assert!(
        not_after <= now(),
        "east's certificate is reported expired at {not_after}"
    );
    // What west showed last, for the message if it never refuses.
    let seen = std::sync::Mutex::new(String::new());
    causeway_e2e::wait_for(
        "west to refuse east's expired certificate",
        Duration::from_secs(20),
        || async {
            let m = lab.gateway_metrics("west").await.ok()?;
            let refused = metric(
                &m,
                "causeway_gateway_peer_handshake_failures_total",
                &[("reason", "expired")],
            );
            let peers = lab
                .admin_get(
                    lab.cluster("west").netns.as_deref(),
                    lab.cluster("west").gateway.admin,
                    "/peers",
                )
                .await
                .map(|(_, body)| body)
                .unwrap_or_default();
            *seen.lock().unwrap() = format!("expired handshakes {refused:?}; /peers {peers}");
            let answering = lab.peers_answering("west").await.ok()?;
            (refused? >= 1.0 && !answering.contains("east")).then_some(())
        },
    )
    .await
    .unwrap_or_else(|e| panic!("{e:#}; west showed: {}", seen.lock().unwrap()));
    let refused_after = stopped.elapsed();

    for f in &federators {
        lab.start(f).unwrap();
    }
    let restarted = std::time::Instant::now();
    causeway_e2e::wait_for(
        "east to be renewed and accepted by west again",
        Duration::from_secs(60),
        || async {
            let (status, _) = lab
                .admin_get(east.netns.as_deref(), east.gateway.admin, "/ready")
                .await
                .ok()?;
            let answering = lab.peers_answering("west").await.ok()?;
            let left = gateway_not_after(&lab, "east").await? - now();
            (status == 200 && answering.contains("east") && left > 0).then_some(())
        },
    )
    .await
    .unwrap_or_else(|e| panic!("{e:#}"));
    let recovered_after = restarted.elapsed();

    let north = north.stop();
    let failed = north.failures(Duration::ZERO, Duration::MAX);
    assert!(
        failed.is_empty(),
        "north: {}",
        north.describe_failures(Duration::ZERO, Duration::MAX)
    );
    lab_support::result(
        "expired_cluster_refused_and_recovered",
        &[
            ("expired_after", lab_support::secs(Some(expired_after))),
            ("refused_after", lab_support::secs(Some(refused_after))),
            (
                "recovered_after_federator_start",
                lab_support::secs(Some(recovered_after)),
            ),
            ("requests", north.samples.len().to_string()),
            ("failed", "0".to_string()),
        ],
    );
}
