//! Certificate, key and trust bundle reload: the files' modification times and sizes are
//! polled; on a change the TLS state is rebuilt and swapped. New connections use it at once;
//! open ones keep the identity they were made with. A bad file keeps the old state (logged
//! and counted in `causeway_gateway_cert_reloads_total{result="error"}`).

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use crate::app::Shared;
use crate::tls::TlsFiles;

/// Modification time and size of each file (`None`: unreadable).
pub(crate) type Stamp = Vec<Option<(SystemTime, u64)>>;

/// Taken before the files are first loaded, so a change made meanwhile is not missed.
pub(crate) fn stamp(files: &TlsFiles) -> Stamp {
    files
        .paths()
        .iter()
        .map(|p| {
            std::fs::metadata(p)
                .ok()
                .and_then(|m| Some((m.modified().ok()?, m.len())))
        })
        .collect()
}

pub(crate) async fn watch_files(shared: Arc<Shared>, mut last: Stamp) {
    let interval = Duration::from_millis(shared.config.reload_interval_ms);
    loop {
        tokio::select! {
            _ = shared.shutdown.cancelled() => return,
            _ = tokio::time::sleep(interval) => {}
        }
        let now = stamp(&shared.tls_files);
        if now == last {
            continue;
        }
        last = now;
        match shared.reload_tls() {
            Ok(()) => {
                shared.metrics.cert_reloads.with_label_values(&["ok"]).inc();
                tracing::info!("certificates reloaded");
            }
            Err(e) => {
                shared
                    .metrics
                    .cert_reloads
                    .with_label_values(&["error"])
                    .inc();
                tracing::warn!(error = %e, "certificate reload failed; keeping the old ones");
            }
        }
    }
}
