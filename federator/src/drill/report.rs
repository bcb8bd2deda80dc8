//! What a drill's client saw, summarised: the same analysis for `causeway drill` (the lab, an
//! operator's etcd) and for the federators observing a Drill resource.

use std::fmt::Write as _;
use std::net::IpAddr;
use std::time::Duration;

use causeway_api::model::{
    DrillEvent, DrillPhase, DrillReport, DRILL_TIMELINE_MAX, SCHEMA_VERSION,
};
use causeway_probe::prober::{Sample, Timeline};

/// `Probing` / `Done` of [`DrillReport::phase`].
pub(crate) const PROBING: &str = "Probing";
pub(crate) const DONE: &str = "Done";

/// What the analysis needs besides the samples.
#[derive(Debug, Clone)]
pub(crate) struct Window {
    /// The cluster drained.
    pub drained: String,
    /// When the drain began and ended, on the prober's clock.
    pub start: Duration,
    pub end: Duration,
    /// The drain was revoked (Ctrl-C, the Drill deleted) rather than run out.
    pub interrupted: bool,
    pub expect_dns_move: bool,
    pub expect_traffic_back: bool,
    /// DNS and traffic came back within the failback timeout.
    pub came_back: bool,
}

/// The samples of one phase, summarised.
pub(crate) fn phase(samples: &[Sample], from: Duration, to: Duration) -> DrillPhase {
    let mut p = DrillPhase::default();
    for s in samples.iter().filter(|s| s.at >= from && s.at < to) {
        p.requests += 1;
        if !s.ok() {
            p.failed += 1;
        }
        if s.ip.is_some() {
            p.dns = s.ip;
        }
        if let (true, Some(c)) = (s.ok(), &s.cluster) {
            *p.clusters.entry(c.clone()).or_insert(0) += 1;
        }
    }
    p
}

/// Time after `from` of the first request answered by `cluster`.
pub(crate) fn first_from(samples: &[Sample], from: Duration, cluster: &str) -> Option<Duration> {
    samples
        .iter()
        .find(|s| s.at >= from && s.ok() && s.cluster.as_deref() == Some(cluster))
        .map(|s| s.at - from)
}

/// Time after `from` from which every DNS answer was `answer` again.
pub(crate) fn dns_back_after(
    samples: &[Sample],
    from: Duration,
    answer: Option<IpAddr>,
) -> Option<Duration> {
    Timeline::new(samples.to_vec()).settled(from, Duration::MAX, |s| s.ip == answer)
}

/// Whether the client is back: DNS answers what it answered before (when it had to move) and
/// the drained cluster answers again (when it answered before).
pub(crate) fn is_back(samples: &[Sample], w: &Window, base_dns: Option<IpAddr>) -> bool {
    let dns_ok = !w.expect_dns_move || dns_back_after(samples, w.end, base_dns).is_some();
    let traffic_ok = !w.expect_traffic_back || first_from(samples, w.end, &w.drained).is_some();
    dns_ok && traffic_ok
}

/// The report of a finished drill.
pub(crate) fn analyse(timeline: &Timeline, w: &Window) -> DrillReport {
    let samples = &timeline.samples;
    let base = phase(samples, Duration::ZERO, w.start);
    let during = phase(samples, w.start, w.end);
    let after = phase(samples, w.end, Duration::MAX);
    let drained = w.drained.as_str();

    let dns_moved = w
        .expect_dns_move
        .then(|| timeline.settled(w.start, w.end, |s| s.ip.is_some() && s.ip != base.dns))
        .flatten();
    let traffic_moved = timeline.settled(w.start, w.end, |s| {
        s.ok() && s.cluster.as_deref() != Some(drained)
    });
    let dns_back = w
        .expect_dns_move
        .then(|| dns_back_after(samples, w.end, base.dns))
        .flatten();
    let traffic_back = first_from(samples, w.end, drained);

    let failover_ok = traffic_moved.is_some() && (!w.expect_dns_move || dns_moved.is_some());
    let failback_ok = w.came_back
        && (!w.expect_dns_move || dns_back.is_some())
        && (!w.expect_traffic_back || traffic_back.is_some());
    let verdict = match (failover_ok, failback_ok) {
        (true, true) if !w.expect_traffic_back && !w.expect_dns_move => {
            format!("PASS: not served by {drained} before the drill, nor during it")
        }
        (true, true) => "PASS: traffic moved away and came back".to_string(),
        (false, _) => format!("FAIL: traffic did not move away from {drained}"),
        (true, false) => format!("FAIL: traffic did not come back to {drained}"),
    };
    let ms = |d: Option<Duration>| d.map(|d| d.as_millis() as u64);
    DrillReport {
        schema: SCHEMA_VERSION,
        phase: DONE.to_string(),
        error: String::new(),
        interrupted: w.interrupted,
        baseline: base,
        failover: during,
        failback: after,
        dns_expected_to_move: w.expect_dns_move,
        dns_moved_ms: ms(dns_moved),
        traffic_moved_ms: ms(traffic_moved),
        dns_back_ms: ms(dns_back),
        traffic_back_ms: ms(traffic_back),
        passed: failover_ok && failback_ok,
        verdict,
        timeline: events(samples, w),
    }
}

/// What changed, in order: the DNS answer, who answered, the start of a run of failures (with
/// its reason), the drain's start and end. At most [`DRILL_TIMELINE_MAX`] events; the rest are
/// counted in a last one.
pub(crate) fn events(samples: &[Sample], w: &Window) -> Vec<DrillEvent> {
    let at = |d: Duration| d.as_millis() as i64 - w.start.as_millis() as i64;
    let mut out: Vec<(i64, String)> = vec![
        (0, format!("drain of {} began", w.drained)),
        (
            at(w.end),
            format!("drain {}", if w.interrupted { "revoked" } else { "ended" }),
        ),
    ];
    let (mut dns, mut cluster, mut failing) = (None, None, false);
    for s in samples {
        if s.ip.is_some() && s.ip != dns {
            dns = s.ip;
            out.push((
                at(s.at),
                format!("DNS -> {}", s.ip.map_or(String::new(), |i| i.to_string())),
            ));
        }
        if s.ok() {
            failing = false;
            if s.cluster != cluster {
                cluster.clone_from(&s.cluster);
                out.push((
                    at(s.at),
                    format!("answered by {}", s.cluster.as_deref().unwrap_or("?")),
                ));
            }
        } else if !failing {
            failing = true;
            out.push((
                at(s.at),
                format!(
                    "request failed: {}",
                    s.error.as_deref().unwrap_or("no answer")
                ),
            ));
        }
    }
    out.sort_by_key(|(t, _)| *t);
    let extra = out.len().saturating_sub(DRILL_TIMELINE_MAX);
    if extra > 0 {
        out.truncate(DRILL_TIMELINE_MAX - 1);
        let last = out.last().map_or(0, |(t, _)| *t);
        out.push((last, format!("... {} more events", extra + 1)));
    }
    out.into_iter()
        .map(|(at_ms, event)| DrillEvent { at_ms, event })
        .collect()
}

fn secs(ms: Option<u64>) -> String {
    match ms {
        Some(ms) => format!("{:.3} s", ms as f64 / 1000.0),
        None => "never".to_string(),
    }
}

fn clusters(p: &DrillPhase) -> String {
    if p.clusters.is_empty() {
        "nobody".to_string()
    } else {
        p.clusters
            .iter()
            .map(|(c, n)| format!("{c} ({n})"))
            .collect::<Vec<_>>()
            .join(", ")
    }
}

fn ip(ip: Option<IpAddr>) -> String {
    ip.map_or("-".to_string(), |i| i.to_string())
}

/// The lines `causeway drill` prints of one client's report, after its header line; each
/// starts with `indent`. `drained` is the cluster drained, the drain lasted `drained_for`.
pub(crate) fn text(
    r: &DrillReport,
    drained: &str,
    drained_for: Option<Duration>,
    indent: &str,
) -> String {
    let mut t = String::new();
    if !r.error.is_empty() {
        let _ = writeln!(t, "{indent}error:    {}", r.error);
    }
    let base = &r.baseline;
    let _ = writeln!(
        t,
        "{indent}before:   DNS -> {}, answered by {}; {} of {} failed",
        ip(base.dns),
        clusters(base),
        base.failed,
        base.requests
    );
    let _ = writeln!(t, "{indent}failover:");
    if r.dns_expected_to_move {
        let _ = writeln!(
            t,
            "{indent}  DNS moved after        {} (-> {})",
            secs(r.dns_moved_ms),
            ip(r.failover.dns)
        );
    } else {
        // The answer was the ClusterSetIP already, or this client's own cluster's address
        // (it exports the service too): nothing of the drained cluster's to move away from.
        let _ = writeln!(
            t,
            "{indent}  DNS moved after        n/a ({} is not {drained}'s own address)",
            ip(base.dns)
        );
    }
    if base.clusters.contains_key(drained) || r.failover.clusters.contains_key(drained) {
        let _ = writeln!(
            t,
            "{indent}  traffic moved after    {} (answered by {})",
            secs(r.traffic_moved_ms),
            clusters(&r.failover)
        );
    } else {
        let _ = writeln!(
            t,
            "{indent}  traffic                never went to {drained} (answered by {})",
            clusters(&r.failover)
        );
    }
    let _ = writeln!(
        t,
        "{indent}  failed requests        {} of {}",
        r.failover.failed, r.failover.requests
    );
    let how = if r.interrupted {
        "was revoked"
    } else {
        "lease ended"
    };
    match drained_for {
        Some(d) => {
            let _ = writeln!(
                t,
                "{indent}fail back (the drain {how} after {:.1} s):",
                d.as_secs_f64()
            );
        }
        None => {
            let _ = writeln!(t, "{indent}fail back (the drain {how}):");
        }
    }
    if r.dns_expected_to_move {
        let _ = writeln!(
            t,
            "{indent}  DNS back after         {} (-> {})",
            secs(r.dns_back_ms),
            ip(r.failback.dns)
        );
    }
    if r.baseline.clusters.contains_key(drained) {
        let _ = writeln!(
            t,
            "{indent}  traffic back after     {}",
            secs(r.traffic_back_ms)
        );
    }
    let _ = writeln!(
        t,
        "{indent}  failed requests        {} of {} (answered by {})",
        r.failback.failed,
        r.failback.requests,
        clusters(&r.failback)
    );
    t
}
