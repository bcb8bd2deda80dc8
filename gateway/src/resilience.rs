//! Per-(service, cluster) outlier detection and circuit breaking, per-service retry budgets and
//! per-(source cluster, service) token buckets. All lock-free on the hot path except the token
//! bucket map, whose lock is held for a few arithmetic operations.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU32, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use tokio::sync::Notify;

/// Milliseconds since the first call in this process (monotonic).
pub(crate) fn now_ms() -> u64 {
    static BASE: OnceLock<Instant> = OnceLock::new();
    BASE.get_or_init(Instant::now).elapsed().as_millis() as u64
}

/// Longest ejection, whatever the multiplier.
const MAX_EJECTION: Duration = causeway_api::policy::DEFAULTS.max_ejection;

// === impl ClusterStats ===

/// What the gateway remembers about one (service, cluster): outlier state and the breaker.
/// Kept across config versions for as long as the pair is configured.
#[derive(Debug, Default)]
pub(crate) struct ClusterStats {
    consecutive_failures: AtomicU32,
    /// How many ejections in a row (no success between); the backoff exponent.
    ejections: AtomicU32,
    ejected_until_ms: AtomicU64,
    active: AtomicUsize,
    pending: AtomicUsize,
    released: Notify,
}

/// What an outlier observation did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Outlier {
    Nothing,
    Ejected(Duration),
}

impl ClusterStats {
    /// Requests holding a breaker slot.
    pub(crate) fn active(&self) -> usize {
        self.active.load(Ordering::Relaxed)
    }

    /// Requests waiting for a breaker slot.
    pub(crate) fn pending(&self) -> usize {
        self.pending.load(Ordering::Relaxed)
    }

    pub(crate) fn is_ejected(&self) -> bool {
        self.ejected_until_ms.load(Ordering::Relaxed) > now_ms()
    }

    pub(crate) fn record_success(&self) {
        self.consecutive_failures.store(0, Ordering::Relaxed);
        if !self.is_ejected() {
            self.ejections.store(0, Ordering::Relaxed);
        }
    }

    /// A 5xx or connect failure; ejects after `threshold` in a row, for `base * 2^n`.
    pub(crate) fn record_failure(&self, threshold: u32, base: Duration) -> Outlier {
        let n = self.consecutive_failures.fetch_add(1, Ordering::Relaxed) + 1;
        if n < threshold.max(1) || self.is_ejected() {
            return Outlier::Nothing;
        }
        self.consecutive_failures.store(0, Ordering::Relaxed);
        let exp = self.ejections.fetch_add(1, Ordering::Relaxed).min(16);
        let length = base.saturating_mul(1 << exp).min(MAX_EJECTION);
        self.ejected_until_ms
            .store(now_ms() + length.as_millis() as u64, Ordering::Relaxed);
        Outlier::Ejected(length)
    }

    fn try_acquire(&self, max_concurrent: usize) -> bool {
        self.active
            .fetch_update(Ordering::AcqRel, Ordering::Relaxed, |n| {
                (n < max_concurrent).then_some(n + 1)
            })
            .is_ok()
    }

    /// A slot for one request, waiting while at most `max_pending` others wait too;
    /// `None` = overloaded (the breaker is open). `max_concurrent` 0 = unlimited.
    pub(crate) async fn acquire(
        self: &Arc<Self>,
        max_concurrent: u32,
        max_pending: u32,
    ) -> Option<BreakerPermit> {
        let permit = || BreakerPermit {
            stats: self.clone(),
        };
        if max_concurrent == 0 {
            self.active.fetch_add(1, Ordering::AcqRel);
            return Some(permit());
        }
        let max_concurrent = max_concurrent as usize;
        if self.try_acquire(max_concurrent) {
            return Some(permit());
        }
        if self.pending.fetch_add(1, Ordering::AcqRel) >= max_pending as usize {
            self.pending.fetch_sub(1, Ordering::AcqRel);
            return None;
        }
        let _pending = PendingGuard(&self.pending);
        loop {
            let released = self.released.notified();
            if self.try_acquire(max_concurrent) {
                return Some(permit());
            }
            released.await;
        }
    }
}

struct PendingGuard<'a>(&'a AtomicUsize);

impl Drop for PendingGuard<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
}

/// One active request to a (service, cluster); released on drop.
#[derive(Debug)]
pub(crate) struct BreakerPermit {
    stats: Arc<ClusterStats>,
}

impl Drop for BreakerPermit {
    fn drop(&mut self) {
        self.stats.active.fetch_sub(1, Ordering::AcqRel);
        self.stats.released.notify_one();
    }
}

// === impl RetryBudget ===

/// Retries may be at most `percent` of active requests of a service, but at least
/// `min_concurrency` retries may always be in flight (so that a lone client can retry).
#[derive(Debug, Default)]
pub(crate) struct RetryBudget {
    active_requests: AtomicUsize,
    active_retries: AtomicUsize,
}

impl RetryBudget {
    pub(crate) fn start_request(self: &Arc<Self>) -> ActiveGuard {
        self.active_requests.fetch_add(1, Ordering::AcqRel);
        ActiveGuard {
            budget: self.clone(),
            retry: false,
        }
    }

    /// A retry slot, or `None` when the budget is spent.
    pub(crate) fn try_retry(
        self: &Arc<Self>,
        percent: u32,
        min_concurrency: u32,
    ) -> Option<ActiveGuard> {
        let active = self.active_requests.load(Ordering::Acquire);
        let allowed = (active * percent as usize / 100).max(min_concurrency as usize);
        self.active_retries
            .fetch_update(Ordering::AcqRel, Ordering::Relaxed, |n| {
                (n < allowed).then_some(n + 1)
            })
            .ok()
            .map(|_| ActiveGuard {
                budget: self.clone(),
                retry: true,
            })
    }
}

/// An active request or retry of a service; counted until dropped.
#[derive(Debug)]
pub(crate) struct ActiveGuard {
    budget: Arc<RetryBudget>,
    retry: bool,
}

impl Drop for ActiveGuard {
    fn drop(&mut self) {
        let counter = if self.retry {
            &self.budget.active_retries
        } else {
            &self.budget.active_requests
        };
        counter.fetch_sub(1, Ordering::AcqRel);
    }
}

// === impl RateLimiter ===

/// Token buckets per source cluster for one inbound service.
#[derive(Debug, Default)]
pub(crate) struct RateLimiter {
    buckets: Mutex<HashMap<String, Bucket>>,
}

#[derive(Debug)]
struct Bucket {
    tokens: f64,
    last_ms: u64,
}

impl RateLimiter {
    /// Takes a token for `source`; `false` = limited. `rps` 0 disables the limit.
    pub(crate) fn allow(&self, source: &str, rps: u32, burst: u32) -> bool {
        if rps == 0 {
            return true;
        }
        let capacity = f64::from(burst.max(1));
        let now = now_ms();
        let mut buckets = self.buckets.lock().unwrap_or_else(|e| e.into_inner());
        let bucket = buckets.entry(source.to_string()).or_insert(Bucket {
            tokens: capacity,
            last_ms: now,
        });
        let elapsed = now.saturating_sub(bucket.last_ms) as f64 / 1000.0;
        bucket.tokens = (bucket.tokens + elapsed * f64::from(rps)).min(capacity);
        bucket.last_ms = now;
        if bucket.tokens >= 1.0 {
            bucket.tokens -= 1.0;
            true
        } else {
            false
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ejects_after_consecutive_failures_with_backoff() {
        let s = ClusterStats::default();
        let base = Duration::from_millis(100);
        assert_eq!(s.record_failure(3, base), Outlier::Nothing);
        assert_eq!(s.record_failure(3, base), Outlier::Nothing);
        s.record_success();
        assert_eq!(s.record_failure(3, base), Outlier::Nothing);
        assert_eq!(s.record_failure(3, base), Outlier::Nothing);
        assert_eq!(s.record_failure(3, base), Outlier::Ejected(base));
        assert!(s.is_ejected());
        // While ejected, failures do not extend it.
        assert_eq!(s.record_failure(1, base), Outlier::Nothing);
        s.ejected_until_ms.store(0, Ordering::Relaxed);
        assert_eq!(s.record_failure(1, base), Outlier::Ejected(base * 2));
        s.ejected_until_ms.store(0, Ordering::Relaxed);
        s.record_success();
        assert_eq!(s.record_failure(1, base), Outlier::Ejected(base));
    }

    #[tokio::test]
    async fn breaker_limits_concurrent_and_pending() {
        let s = Arc::new(ClusterStats::default());
        let a = s.acquire(1, 0).await.unwrap();
        assert!(s.acquire(1, 0).await.is_none());
        drop(a);
        let a = s.acquire(1, 1).await.unwrap();
        let s2 = &s;
        let waiter = async move { s2.acquire(1, 1).await.is_some() };
        let (got, _) = tokio::join!(waiter, async move {
            tokio::task::yield_now().await;
            assert!(s2.acquire(1, 1).await.is_none(), "one already pending");
            drop(a);
        });
        assert!(got);
        assert_eq!(s.active(), 0);
    }

    #[test]
    fn retry_budget_has_a_floor() {
        let b = Arc::new(RetryBudget::default());
        let _r = b.start_request();
        let r1 = b.try_retry(20, 1).unwrap();
        assert!(b.try_retry(20, 1).is_none());
        drop(r1);
        assert!(b.try_retry(20, 1).is_some());
    }

    #[test]
    fn token_bucket() {
        let l = RateLimiter::default();
        assert!(l.allow("east", 1, 2));
        assert!(l.allow("east", 1, 2));
        assert!(!l.allow("east", 1, 2));
        assert!(l.allow("west", 1, 2));
        assert!(l.allow("east", 0, 0));
    }
}
