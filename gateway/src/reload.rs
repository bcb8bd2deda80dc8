//! Certificate, key and trust bundle reload: the files' modification times and sizes are
//! polled; on a change the TLS state is rebuilt and swapped. New connections use it at once;
//! open ones keep the identity they were made with. A bad file keeps the old state (logged
//! and counted in `causeway_gateway_cert_reloads_total{result="error"}`).

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use crate::app::Shared;

type Stamp = Vec<Option<(SystemTime, u64)>>;

fn stamp(shared: &Shared) -> Stamp {
    shared
        .tls_files
        .paths()
        .iter()
        .map(|p| {
            std::fs::metadata(p)
                .ok()
                .and_then(|m| Some((m.modified().ok()?, m.len())))
        })
        .collect()
}

pub(crate) async fn watch_files(shared: Arc<Shared>) {
    let interval = Duration::from_millis(shared.config.reload_interval_ms);
    let mut last = stamp(&shared);
    loop {
        tokio::select! {
            _ = shared.shutdown.cancelled() => return,
            _ = tokio::time::sleep(interval) => {}
        }
        let now = stamp(&shared);
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
