//! Certificate, key and trust bundle reload: the files' modification times and sizes are
//! polled; on a change the TLS state is rebuilt and swapped. New connections use it at once;
//! open ones keep the identity they were made with. A bad file keeps the old state (logged
//! and counted in `causeway_gateway_cert_reloads_total{result="error"}`).

use std::sync::Arc;
use std::time::Duration;

use crate::shared::Shared;
use crate::tls::TlsFiles;

pub(crate) type Stamp = causeway_api::pem::FileStamp;

/// Taken before the files are first loaded, so a change made meanwhile is not missed.
pub(crate) fn stamp(files: &TlsFiles) -> Stamp {
    causeway_api::pem::file_stamp(&files.paths())
}

pub(crate) async fn watch_files(shared: Arc<Shared>, mut last: Stamp) {
    let interval = Duration::from_millis(shared.proxy.config.reload_interval_ms);
    let mut health = CertHealth::Fine;
    loop {
        let before = health;
        health = observe_certificates(&shared, health);
        let issuer_gone = shared.wanted_issuer.borrow().is_empty() && shared.holds_issued();
        if health == CertHealth::Expired && (before != CertHealth::Expired || issuer_gone) {
            // An issued certificate expired: the federator connection falls back to the file
            // one (app.rs `reload_tls`), so that a renewal can still be asked for; if the
            // federator names no issuer any more, the file certificate takes over everywhere.
            if let Err(e) = shared.reload_tls() {
                tracing::warn!(error = %e, "rebuilding TLS after the certificate expired failed");
            }
        }
        tokio::select! {
            _ = shared.proxy.shutdown.cancelled() => return,
            _ = tokio::time::sleep(interval) => {}
        }
        let now = stamp(&shared.tls_files);
        if now == last {
            continue;
        }
        last = now;
        match shared.reload_tls() {
            Ok(()) => {
                shared
                    .proxy
                    .metrics
                    .cert_reloads
                    .with_label_values(&["ok"])
                    .inc();
                tracing::info!("certificates reloaded");
            }
            Err(e) => {
                shared
                    .proxy
                    .metrics
                    .cert_reloads
                    .with_label_values(&["error"])
                    .inc();
                tracing::warn!(error = %e, "certificate reload failed; keeping the old ones");
            }
        }
    }
}

/// How this gateway's own certificate stands, for logging each change once.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum CertHealth {
    Fine,
    /// Less than a third of its life left: it should have been renewed.
    RenewalOverdue,
    Expired,
}

/// The certificate's state at `now` (Unix seconds).
pub(crate) fn cert_health(v: &causeway_api::tls::Validity, now: i64) -> CertHealth {
    if v.left(now) <= 0 {
        CertHealth::Expired
    } else if v.renewal_overdue(now) {
        CertHealth::RenewalOverdue
    } else {
        CertHealth::Fine
    }
}

/// Sets `causeway_certificate_expiry_timestamp_seconds` for this gateway and every peer seen,
/// and logs when the own certificate's state changes from `before`. Returns the new state.
fn observe_certificates(shared: &Shared, before: CertHealth) -> CertHealth {
    let gauge = &shared.proxy.metrics.cert_expiry;
    for p in shared.proxy.peers.statuses() {
        if let Some(t) = p.certificate_not_after {
            gauge
                .with_label_values(&["peer_gateway", &p.cluster])
                .set(t);
        }
    }
    let Some(v) = shared.proxy.tls.load().validity else {
        return before;
    };
    gauge
        .with_label_values(&["gateway", &shared.proxy.config.cluster])
        .set(v.not_after);
    let now = crate::tls::unix_now();
    let health = cert_health(&v, now);
    if health != before {
        let left = std::time::Duration::from_secs(v.left(now).max(0) as u64);
        match health {
            CertHealth::Fine => tracing::info!(?left, "gateway certificate fine"),
            CertHealth::RenewalOverdue => tracing::warn!(
                ?left,
                not_after = v.not_after,
                "gateway certificate has less than a third of its life left and was not renewed"
            ),
            CertHealth::Expired => tracing::error!(
                not_after = v.not_after,
                "gateway certificate expired: peers refuse this gateway until it is renewed"
            ),
        }
    }
    health
}

#[cfg(test)]
mod tests {
    use super::*;
    use causeway_api::tls::Validity;

    #[test]
    fn a_certificate_is_overdue_in_its_last_third_and_expired_after() {
        let v = Validity {
            not_before: 0,
            not_after: 300,
        };
        assert_eq!(cert_health(&v, 10), CertHealth::Fine);
        assert_eq!(cert_health(&v, 199), CertHealth::Fine);
        assert_eq!(cert_health(&v, 201), CertHealth::RenewalOverdue);
        assert_eq!(cert_health(&v, 300), CertHealth::Expired);
        assert_eq!(v.left(250), 50);
    }
}
