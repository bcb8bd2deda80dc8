//! Reflectors of the Kubernetes source and sink: a watcher feeding a reflector store, with the
//! retry rules a real API server needs.
//!
//! - **410 Expired relists at once.** After an API server restart (or a compaction) a watch resumed
//!   from an old resourceVersion gets 410; the watcher has already reset itself to relist, and
//!   waiting first only delays the relist (kube-runtime's default backoff waited up to 30 s, and it
//!   kept growing over an outage: a new export took 12-30 s to show up after a restart).
//! - **Other errors back off**, exponentially from 200 ms to [`MAX_BACKOFF`] with jitter, and the
//!   backoff resets on the first event that arrives. 403 (RBAC not ready yet) and 429 (a CRD's
//!   storage initialising) are such errors: retried, never fatal.
//! - **Logs say what happened once**: the first error of a streak is a warning naming the resource
//!   and the error, repeats are debug (counted in `causeway_federator_kube_watch_errors_total`) with
//!   a warning at most once a minute, and the end of a streak is logged with its length. Logs go
//!   through the caller's [`WatchLog`], so they carry the caller's module (source or sink).

use std::sync::Arc;
use std::time::{Duration, Instant};

use causeway_api::backoff::Backoff;
use futures::StreamExt;
use kube::runtime::reflector::{self};
use kube::runtime::watcher;
use kube::Api;
use tokio::sync::Notify;

use prometheus::{IntCounterVec, Opts, Registry};

/// The longest wait between two attempts of a failing watch.
pub(crate) const MAX_BACKOFF: Duration = Duration::from_secs(3);
const FIRST_BACKOFF: Duration = Duration::from_millis(200);
/// How often a long error streak is logged as a warning again.
const REPEAT_WARNING: Duration = Duration::from_secs(60);

/// What a reflector logs, under the caller's module.
#[derive(Clone, Copy)]
pub(crate) struct WatchLog {
    /// A watch error: resource, error, how many in a row (1 = the first), whether to warn.
    pub error: fn(&'static str, &watcher::Error, u64, bool),
    /// A streak of errors ended: resource, how many.
    pub recovered: fn(&'static str, u64),
}

/// A [`WatchLog`] that logs under the module where it is written (tracing's target is the
/// module of the macro's call site).
macro_rules! watch_log {
    () => {
        $crate::kubewatch::WatchLog {
            error: |what, e, streak, warn| {
                if warn {
                    tracing::warn!(resource = what, error = %e, failures_in_a_row = streak, "Kubernetes watch failed; retrying");
                } else {
                    tracing::debug!(resource = what, error = %e, failures_in_a_row = streak, "Kubernetes watch failed; retrying");
                }
            },
            recovered: |what, streak| {
                tracing::info!(resource = what, failures = streak, "Kubernetes watch recovered");
            },
        }
    };
}
pub(crate) use watch_log;

/// Whether a watcher error is a 410 Gone / Expired (the watcher relists on its next poll).
pub(crate) fn is_gone(e: &watcher::Error) -> bool {
    match e {
        watcher::Error::WatchError(s) => s.code == 410,
        watcher::Error::WatchFailed(kube::Error::Api(s))
        | watcher::Error::InitialListFailed(kube::Error::Api(s))
        | watcher::Error::WatchStartFailed(kube::Error::Api(s)) => s.code == 410,
        _ => false,
    }
}

/// The watches' backoff: [`FIRST_BACKOFF`] doubling to `max`.
pub(crate) fn backoff(max: Duration) -> Backoff {
    Backoff::new(FIRST_BACKOFF, max)
}

/// For kube-runtime's `Controller` (its trigger streams): a bounded backoff. A `Backoff` cannot
/// tell a 410 from other errors, so after a restart the controller waits once for the outage and
/// once more for the 410; a bound of [`CONTROLLER_MAX_BACKOFF`] keeps both short.
pub(crate) struct ControllerBackoff(Backoff);

/// The longest wait of [`ControllerBackoff`].
pub(crate) const CONTROLLER_MAX_BACKOFF: Duration = Duration::from_secs(1);

impl Default for ControllerBackoff {
    fn default() -> Self {
        Self(backoff(CONTROLLER_MAX_BACKOFF))
    }
}

impl Iterator for ControllerBackoff {
    type Item = Duration;
    fn next(&mut self) -> Option<Duration> {
        Some(self.0.next_wait())
    }
}

impl kube::runtime::utils::Backoff for ControllerBackoff {
    fn reset(&mut self) {
        self.0.reset();
    }
}

/// Keeps a reflector store in sync, pokes `changed` on every event, counts and logs errors.
pub(crate) async fn reflect<K>(
    api: Api<K>,
    cfg: watcher::Config,
    writer: reflector::store::Writer<K>,
    changed: Arc<Notify>,
    metrics: KubeMetrics,
    what: &'static str,
    log: WatchLog,
) where
    K: kube::Resource<DynamicType = ()>
        + Clone
        + serde::de::DeserializeOwned
        + std::fmt::Debug
        + Send
        + Sync
        + 'static,
{
    let stream = reflector::reflector(writer, watcher(api, cfg));
    let mut stream = std::pin::pin!(stream);
    let mut backoff = backoff(MAX_BACKOFF);
    let mut streak = 0u64;
    let mut last_warning: Option<Instant> = None;
    while let Some(ev) = stream.next().await {
        match ev {
            Ok(_) => {
                if streak > 0 {
                    (log.recovered)(what, streak);
                    streak = 0;
                    last_warning = None;
                }
                backoff.reset();
                changed.notify_one();
            }
            Err(e) => {
                metrics.watch_errors.with_label_values(&[what]).inc();
                streak += 1;
                let warn = last_warning.is_none_or(|t| t.elapsed() >= REPEAT_WARNING);
                if warn {
                    last_warning = Some(Instant::now());
                }
                (log.error)(what, &e, streak, warn);
                if is_gone(&e) {
                    // The watcher lists again on the next poll: no wait.
                    continue;
                }
                tokio::time::sleep(backoff.next_wait()).await;
            }
        }
    }
}

/// Metrics of the Kubernetes source and sink.
#[derive(Clone)]
pub(crate) struct KubeMetrics {
    /// `causeway_federator_kube_writes_total{kind, result}`: writes to the Kubernetes API.
    pub writes: IntCounterVec,
    /// `causeway_federator_kube_watch_errors_total{resource}`: failed lists and watches.
    pub watch_errors: IntCounterVec,
    /// `causeway_federator_kube_sink_passes_total`: passes of the sink over every import (each
    /// compares and writes only what differs; at rest, passes come without writes).
    pub sink_passes: prometheus::IntCounter,
}

impl KubeMetrics {
    /// Registers the metrics in `registry` (kept unregistered if the names are taken).
    pub(crate) fn new(registry: &Registry) -> Self {
        let vec = |name: &str, help: &str, labels: &[&str]| {
            let v = IntCounterVec::new(Opts::new(name, help), labels).expect("valid metric");
            if let Err(e) = registry.register(Box::new(v.clone())) {
                tracing::warn!(metric = name, error = %e, "metric not registered");
            }
            v
        };
        let sink_passes = prometheus::IntCounter::new(
            "causeway_federator_kube_sink_passes_total",
            "Passes of the Kubernetes sink over every import (writes only what differs).",
        )
        .expect("valid metric");
        if let Err(e) = registry.register(Box::new(sink_passes.clone())) {
            tracing::warn!(error = %e, "metric not registered");
        }
        Self {
            sink_passes,
            writes: vec(
                "causeway_federator_kube_writes_total",
                "Writes of the Kubernetes source and sink, by object kind and result (ok, error).",
                &["kind", "result"],
            ),
            watch_errors: vec(
                "causeway_federator_kube_watch_errors_total",
                "Failed Kubernetes lists and watches, by resource (they are retried).",
                &["resource"],
            ),
        }
    }

    /// Counts one write.
    pub(crate) fn wrote(&self, kind: &str, ok: bool) {
        self.writes
            .with_label_values(&[kind, if ok { "ok" } else { "error" }])
            .inc();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Logs go under the module that wrote `watch_log!()` (the source or the sink), not here.
    #[test]
    fn watch_logs_carry_the_callers_module() {
        #[derive(Clone, Default)]
        struct Buf(Arc<std::sync::Mutex<Vec<u8>>>);
        impl std::io::Write for Buf {
            fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
                self.0.lock().unwrap().extend_from_slice(b);
                Ok(b.len())
            }
            fn flush(&mut self) -> std::io::Result<()> {
                Ok(())
            }
        }
        let buf = Buf::default();
        let out = buf.clone();
        let subscriber = tracing_subscriber::fmt()
            .with_writer(move || out.clone())
            .with_ansi(false)
            .with_max_level(tracing::Level::DEBUG)
            .finish();
        const LOG: WatchLog = watch_log!();
        tracing::subscriber::with_default(subscriber, || {
            let e = watcher::Error::NoResourceVersion;
            (LOG.error)("pods", &e, 1, true);
            (LOG.error)("pods", &e, 2, false);
            (LOG.recovered)("pods", 2);
        });
        let text = String::from_utf8(buf.0.lock().unwrap().clone()).unwrap();
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines.len(), 3, "{text}");
        assert!(
            lines[0].contains("WARN") && lines[0].contains("causeway_federator::kubewatch::tests"),
            "{text}"
        );
        assert!(lines[1].contains("DEBUG"), "repeats are debug: {text}");
        assert!(
            lines[2].contains("INFO") && lines[2].contains("recovered"),
            "{text}"
        );
    }

    #[test]
    fn gone_is_told_apart_from_other_errors() {
        let status = |code| kube::core::Status {
            code,
            ..Default::default()
        };
        assert!(is_gone(&watcher::Error::WatchError(Box::new(status(410)))));
        assert!(!is_gone(&watcher::Error::WatchError(Box::new(status(403)))));
        assert!(is_gone(&watcher::Error::InitialListFailed(
            kube::Error::Api(Box::new(status(410)))
        )));
        assert!(!is_gone(&watcher::Error::InitialListFailed(
            kube::Error::Api(Box::new(status(429)))
        )));
    }
}
