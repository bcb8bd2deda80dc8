//! The traffic this cluster's gateways carry to and from each peer cluster, as they report it
//! with their peer health (`Health/Report`): cumulative counters per gateway stream, turned
//! into rates for the dashboard. Kept in memory only; nothing of it goes to etcd.

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use causeway_api::ClusterId;
use serde::Serialize;

/// A stream's counters older than this are left out of the rates (its gateway stopped
/// reporting that peer): five report intervals of the default probe interval.
const STALE: Duration = Duration::from_secs(10);
/// At most this many (stream, peer) entries: a gateway cannot grow the book without bound by
/// reporting made-up peers (valid cluster IDs are checked before, this bounds the count).
const MAX_ENTRIES: usize = 16_384;

/// One report's cumulative counts.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct Counts {
    pub egress_requests: u64,
    pub egress_errors: u64,
    pub ingress_requests: u64,
    pub ingress_errors: u64,
}

#[derive(Debug, Clone, Copy)]
struct Entry {
    prev: Option<(Instant, Counts)>,
    last: (Instant, Counts),
}

/// Requests per second between this cluster and one peer, summed over this cluster's gateways.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub(crate) struct Rates {
    /// Requests this cluster's gateways sent to the peer, and those that failed (5xx, tunnel
    /// errors), per second.
    pub egress_rps: f64,
    pub egress_errors_rps: f64,
    /// Requests they took from the peer, and those that failed.
    pub ingress_rps: f64,
    pub ingress_errors_rps: f64,
    /// Totals since the reporting gateways started.
    pub egress_requests: u64,
    pub ingress_requests: u64,
    /// Gateways reporting this peer.
    pub gateways: usize,
}

#[derive(Debug, Default)]
pub(crate) struct TrafficBook {
    next_stream: AtomicU64,
    entries: Mutex<HashMap<(u64, ClusterId), Entry>>,
}

impl TrafficBook {
    /// A new reporting stream's ID; call [`TrafficBook::forget`] with it when the stream ends.
    pub(crate) fn stream(&self) -> u64 {
        self.next_stream.fetch_add(1, Ordering::Relaxed)
    }

    pub(crate) fn record(&self, stream: u64, peer: ClusterId, counts: Counts, at: Instant) {
        let mut entries = self.entries.lock().unwrap_or_else(|e| e.into_inner());
        let full = entries.len() >= MAX_ENTRIES;
        match entries.get_mut(&(stream, peer.clone())) {
            Some(e) => {
                e.prev = Some(e.last);
                e.last = (at, counts);
            }
            None if !full => {
                entries.insert(
                    (stream, peer),
                    Entry {
                        prev: None,
                        last: (at, counts),
                    },
                );
            }
            None => tracing::debug!(%peer, "traffic book full; report ignored"),
        }
    }

    pub(crate) fn forget(&self, stream: u64) {
        let mut entries = self.entries.lock().unwrap_or_else(|e| e.into_inner());
        entries.retain(|(s, _), _| *s != stream);
    }

    /// Rates per peer as of `now`, from each stream's last two reports.
    pub(crate) fn rates(&self, now: Instant) -> BTreeMap<ClusterId, Rates> {
        let entries = self.entries.lock().unwrap_or_else(|e| e.into_inner());
        let mut out: BTreeMap<ClusterId, Rates> = BTreeMap::new();
        for ((_, peer), e) in entries.iter() {
            if now.saturating_duration_since(e.last.0) > STALE {
                continue;
            }
            let r = out.entry(peer.clone()).or_default();
            r.gateways += 1;
            r.egress_requests += e.last.1.egress_requests;
            r.ingress_requests += e.last.1.ingress_requests;
            let Some((then, before)) = e.prev else {
                continue;
            };
            let secs = e.last.0.saturating_duration_since(then).as_secs_f64();
            if secs <= 0.0 {
                continue;
            }
            // A counter that went down (it cannot within one stream) counts as zero.
            let per_sec = |a: u64, b: u64| a.saturating_sub(b) as f64 / secs;
            let (a, b) = (e.last.1, before);
            r.egress_rps += per_sec(a.egress_requests, b.egress_requests);
            r.egress_errors_rps += per_sec(a.egress_errors, b.egress_errors);
            r.ingress_rps += per_sec(a.ingress_requests, b.ingress_requests);
            r.ingress_errors_rps += per_sec(a.ingress_errors, b.ingress_errors);
        }
        out
    }
}

/// Forgets its stream's counters when dropped (the stream ended, or its handler returned early).
pub(crate) struct StreamGuard<'a> {
    pub book: &'a TrafficBook,
    pub stream: u64,
}

impl Drop for StreamGuard<'_> {
    fn drop(&mut self) {
        self.book.forget(self.stream);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn counts(egress: u64, egress_errors: u64, ingress: u64) -> Counts {
        Counts {
            egress_requests: egress,
            egress_errors,
            ingress_requests: ingress,
            ingress_errors: 0,
        }
    }

    #[test]
    fn rates_are_the_last_two_reports_difference_summed_over_gateways() {
        let book = TrafficBook::default();
        let west = ClusterId::new("west").unwrap();
        let t0 = Instant::now();
        let (a, b) = (book.stream(), book.stream());
        book.record(a, west.clone(), counts(100, 0, 10), t0);
        // One report: totals, no rate yet.
        let r = &book.rates(t0)[&west];
        assert_eq!((r.egress_requests, r.egress_rps, r.gateways), (100, 0.0, 1));
        book.record(
            a,
            west.clone(),
            counts(140, 2, 30),
            t0 + Duration::from_secs(2),
        );
        book.record(b, west.clone(), counts(0, 0, 0), t0);
        book.record(
            b,
            west.clone(),
            counts(20, 0, 0),
            t0 + Duration::from_secs(2),
        );
        let r = &book.rates(t0 + Duration::from_secs(2))[&west];
        assert_eq!(r.gateways, 2);
        assert_eq!(r.egress_rps, 30.0, "(40 + 20) / 2 s");
        assert_eq!(r.egress_errors_rps, 1.0);
        assert_eq!(r.ingress_rps, 10.0);
        assert_eq!(r.egress_requests, 160);

        // A gateway's stream ends: its counters go.
        drop(StreamGuard {
            book: &book,
            stream: b,
        });
        assert_eq!(book.rates(t0 + Duration::from_secs(2))[&west].gateways, 1);
        // Reports that stopped coming are left out.
        assert!(book.rates(t0 + Duration::from_secs(30)).is_empty());
    }

    #[test]
    fn the_book_is_bounded() {
        let book = TrafficBook::default();
        let s = book.stream();
        let now = Instant::now();
        for i in 0..MAX_ENTRIES + 10 {
            let peer = ClusterId::new(format!("c{i}")).unwrap();
            book.record(s, peer, Counts::default(), now);
        }
        assert_eq!(book.rates(now).len(), MAX_ENTRIES);
    }
}
