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
