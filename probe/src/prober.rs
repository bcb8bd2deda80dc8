//! [`Prober`]: a client that calls a service over and over (resolving its name every time) and
//! keeps a [`Timeline`] of what happened, from which failover and failback times and failed
//! requests are read: the drill's client and the failure tests'.

use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::Context as _;
use tokio::time::Instant;

use crate::dns::resolve;
use crate::http::{http_get, http_get_via};

/// What a [`Prober`] calls.
#[derive(Debug, Clone)]
pub struct ProbeTarget {
    /// DNS servers to resolve `name` with, in order.
    pub dns: Vec<SocketAddr>,
    /// e.g. `echo.demo.svc.clusterset.local`
    pub name: String,
    pub port: u16,
    pub path: String,
    /// An HTTP proxy to send every request through (absolute form), instead of the address
    /// DNS answered: the gateway's egress, where no ClusterSetIP is routable. DNS is still
    /// asked (when `dns` is not empty), for the timeline.
    pub proxy: Option<SocketAddr>,
    /// Pause between the end of one request and the start of the next.
    pub interval: Duration,
    /// Bound of the DNS query and of the HTTP request each.
    pub timeout: Duration,
}

impl ProbeTarget {
    /// An HTTP GET of `/` on `name:port` every 50 ms, each step bounded by 1 s.
    pub fn http(dns: Vec<SocketAddr>, name: impl Into<String>, port: u16) -> Self {
        Self {
            dns,
            name: name.into(),
            port,
            path: "/".to_string(),
            proxy: None,
            interval: Duration::from_millis(50),
            timeout: Duration::from_secs(1),
        }
    }
}

/// One request of a [`Prober`].
#[derive(Debug, Clone)]
pub struct Sample {
    /// When the request started, since the prober started.
    pub at: Duration,
    /// The address DNS answered (None: resolution failed).
    pub ip: Option<IpAddr>,
    /// HTTP status (None: no answer).
    pub status: Option<u16>,
    /// The cluster that answered.
    pub cluster: Option<String>,
    /// Why the request failed, when it did.
    pub error: Option<String>,
    /// How long resolution and request took together.
    pub took: Duration,
}

impl Sample {
    /// Answered with a 2xx status.
    pub fn ok(&self) -> bool {
        self.status.is_some_and(|s| (200..300).contains(&s))
    }
}

/// Calls a service over and over from a thread of its own (in a network namespace when asked),
/// until stopped. Each request resolves the name again and uses a new connection, as a
/// client honouring a short DNS TTL would.
pub struct Prober {
    samples: Arc<Mutex<Vec<Sample>>>,
    stop: Arc<AtomicBool>,
    started: std::time::Instant,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Prober {
    /// Starts probing `target` from the network namespace `netns` (None: this one).
    pub fn start(netns: Option<String>, target: ProbeTarget) -> anyhow::Result<Prober> {
        let samples = Arc::new(Mutex::new(Vec::new()));
        let stop = Arc::new(AtomicBool::new(false));
        let started = std::time::Instant::now();
        let (s, st) = (samples.clone(), stop.clone());
        let thread = std::thread::Builder::new()
            .name(format!("prober-{}", target.name))
            .spawn(move || {
                let run = || -> anyhow::Result<()> {
                    if let Some(ns) = &netns {
                        crate::netns::enter(ns)?;
                    }
                    let rt = tokio::runtime::Builder::new_current_thread()
                        .enable_all()
                        .build()?;
                    rt.block_on(probe_loop(target, s, st, started));
                    Ok(())
                };
                if let Err(e) = run() {
                    tracing::error!(error = %e, "prober could not start");
                }
            })
            .context("spawning the prober thread")?;
        Ok(Prober {
            samples,
            stop,
            started,
            thread: Some(thread),
        })
    }

    /// Time since the prober started: the clock of [`Sample::at`].
    pub fn now(&self) -> Duration {
        self.started.elapsed()
    }

    /// A copy of the samples so far.
    pub fn samples(&self) -> Vec<Sample> {
        self.samples
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// A [`Timeline`] of the samples so far.
    pub fn timeline(&self) -> Timeline {
        Timeline::new(self.samples())
    }

    /// Stops probing (after the request in flight) and returns every sample.
    pub fn stop(mut self) -> Timeline {
        self.stop_thread();
        self.timeline()
    }

    fn stop_thread(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

impl Drop for Prober {
    fn drop(&mut self) {
        self.stop_thread();
    }
}

async fn probe_loop(
    target: ProbeTarget,
    samples: Arc<Mutex<Vec<Sample>>>,
    stop: Arc<AtomicBool>,
    started: std::time::Instant,
) {
    let authority = if target.port == 80 {
        target.name.clone()
    } else {
        format!("{}:{}", target.name, target.port)
    };
    while !stop.load(Ordering::Relaxed) {
        let at = started.elapsed();
        let begun = Instant::now();
        let mut sample = Sample {
            at,
            ip: None,
            status: None,
            cluster: None,
            error: None,
            took: Duration::ZERO,
        };
        if !target.dns.is_empty() {
            match resolve(&target.dns, &target.name, target.timeout).await {
                Ok(ips) => sample.ip = Some(ips[0]),
                Err(e) => sample.error = Some(format!("{e:#}")),
            }
        }
        let answer = match (target.proxy, sample.ip) {
            (Some(proxy), _) => {
                Some(http_get_via(proxy, &authority, &target.path, target.timeout).await)
            }
            (None, Some(ip)) => {
                let addr = SocketAddr::new(ip, target.port);
                Some(http_get(addr, &authority, &target.path, target.timeout).await)
            }
            (None, None) => None,
        };
        match answer {
            Some(Ok(a)) => {
                sample.status = Some(a.status.as_u16());
                sample.cluster = a.cluster;
                if !a.status.is_success() {
                    sample.error = Some(format!(
                        "HTTP {}: {}",
                        a.status,
                        String::from_utf8_lossy(&a.body).trim()
                    ));
                }
            }
            Some(Err(e)) => sample.error = Some(format!("{e:#}")),
            None => {}
        }
        sample.took = begun.elapsed();
        samples
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(sample);
        tokio::time::sleep_until(begun + target.interval).await;
    }
}

// === Timeline ===

/// The samples of a [`Prober`], and the questions the failure tests and benchmarks ask them.
#[derive(Debug, Clone)]
pub struct Timeline {
    pub samples: Vec<Sample>,
}

impl Timeline {
    pub fn new(samples: Vec<Sample>) -> Self {
        Self { samples }
    }

    /// Samples that started in `[from, to)`.
    pub fn between(&self, from: Duration, to: Duration) -> impl Iterator<Item = &Sample> {
        self.samples
            .iter()
            .filter(move |s| s.at >= from && s.at < to)
    }

    /// Failed requests that started in `[from, to)`.
    /// The longest time a successful request between `from` and `to` took.
    pub fn slowest_ok(&self, from: Duration, to: Duration) -> Option<Duration> {
        self.between(from, to)
            .filter(|s| s.ok())
            .map(|s| s.took)
            .max()
    }

    pub fn failures(&self, from: Duration, to: Duration) -> Vec<&Sample> {
        self.between(from, to).filter(|s| !s.ok()).collect()
    }

    /// Requests that started in `[from, to)`.
    pub fn count(&self, from: Duration, to: Duration) -> usize {
        self.between(from, to).count()
    }

    /// How long after `from` the samples settled on `pred`: the start of the first sample at or
    /// after `from` from which every sample until `to` satisfies it, minus `from`. None when the
    /// last sample before `to` does not satisfy it (or there is none).
    pub fn settled(
        &self,
        from: Duration,
        to: Duration,
        pred: impl Fn(&Sample) -> bool,
    ) -> Option<Duration> {
        let window: Vec<&Sample> = self.between(from, to).collect();
        let last_bad = window.iter().rposition(|s| !pred(s));
        let first_good = match last_bad {
            None => 0,
            Some(i) => i + 1,
        };
        window.get(first_good).map(|s| s.at.saturating_sub(from))
    }

    /// The clusters that answered in `[from, to)`, with how many answers each.
    pub fn clusters(
        &self,
        from: Duration,
        to: Duration,
    ) -> std::collections::BTreeMap<String, usize> {
        let mut out = std::collections::BTreeMap::new();
        for s in self.between(from, to) {
            if let (true, Some(c)) = (s.ok(), &s.cluster) {
                *out.entry(c.clone()).or_insert(0) += 1;
            }
        }
        out
    }

    /// A short text of the failed samples in `[from, to)` for assertion messages.
    pub fn describe_failures(&self, from: Duration, to: Duration) -> String {
        let failures = self.failures(from, to);
        let mut out = format!("{} of {} failed", failures.len(), self.count(from, to));
        for s in failures.iter().take(10) {
            out.push_str(&format!(
                "\n  at {:>8.3}s ip={:?} status={:?}: {}",
                s.at.as_secs_f64(),
                s.ip,
                s.status,
                s.error.as_deref().unwrap_or("")
            ));
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn s(ms: u64, cluster: &str, ok: bool) -> Sample {
        Sample {
            at: Duration::from_millis(ms),
            ip: None,
            status: Some(if ok { 200 } else { 503 }),
            cluster: Some(cluster.to_string()),
            took: Duration::from_millis(1),
            error: None,
        }
    }

    #[test]
    fn settled_finds_the_start_of_the_last_good_run() {
        let t = Timeline::new(vec![
            s(0, "east", true),
            s(100, "east", true),
            s(200, "west", true),
            s(300, "east", true),
            s(400, "west", false),
            s(500, "west", true),
            s(600, "west", true),
        ]);
        let from = Duration::from_millis(50);
        let to = Duration::from_secs(1);
        let moved = t.settled(from, to, |s| s.ok() && s.cluster.as_deref() == Some("west"));
        assert_eq!(moved, Some(Duration::from_millis(450)));
        assert_eq!(t.failures(from, to).len(), 1);
        assert_eq!(t.clusters(Duration::ZERO, to)["east"], 3);
        let never = t.settled(from, Duration::from_millis(450), |s| s.ok());
        assert_eq!(never, None);
    }
}
