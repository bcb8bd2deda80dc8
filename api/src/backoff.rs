//! One exponential backoff for every retry loop (the gateway's federator session, the
//! federator's etcd loops and Kubernetes watches).

use std::time::Duration;

use rand::Rng as _;

/// Exponential backoff with jitter: the `n`-th wait is `base · 2ⁿ`, capped at `max`, times a
/// random 50–100 % (never zero, never in lockstep with other replicas). [`Backoff::reset`]
/// starts over after a success.
#[derive(Debug, Clone)]
pub struct Backoff {
    base: Duration,
    max: Duration,
    attempt: u32,
}

impl Backoff {
    pub fn new(base: Duration, max: Duration) -> Self {
        Self {
            base: base.min(max),
            max,
            attempt: 0,
        }
    }

    pub fn reset(&mut self) {
        self.attempt = 0;
    }

    /// The next wait; the step doubles up to `max`.
    pub fn next_wait(&mut self) -> Duration {
        let step = self
            .base
            .saturating_mul(1u32 << self.attempt.min(16))
            .min(self.max);
        self.attempt = self.attempt.saturating_add(1);
        step.mul_f64(rand::rng().random_range(0.5..=1.0))
    }

    /// Sleeps for [`Backoff::next_wait`].
    pub async fn wait(&mut self) {
        tokio::time::sleep(self.next_wait()).await;
    }
}

/// 100 ms doubling to 5 s.
impl Default for Backoff {
    fn default() -> Self {
        Self::new(Duration::from_millis(100), Duration::from_secs(5))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_grows_and_caps() {
        let mut b = Backoff::default();
        let first = b.next_wait();
        assert!(first >= Duration::from_millis(50) && first <= Duration::from_millis(100));
        for _ in 0..20 {
            let d = b.next_wait();
            assert!(d <= Duration::from_secs(5));
        }
        assert!(b.next_wait() >= Duration::from_millis(2500));
        b.reset();
        assert!(b.next_wait() <= Duration::from_millis(100));
    }

    #[test]
    fn backoff_doubles_to_its_bound_and_resets() {
        let mut b = Backoff::new(Duration::from_millis(200), Duration::from_secs(3));
        let waits: Vec<Duration> = (0..8).map(|_| b.next_wait()).collect();
        assert!(waits[0] <= Duration::from_millis(300), "{waits:?}");
        assert!(
            waits.iter().all(|w| *w <= Duration::from_secs(3)),
            "{waits:?}"
        );
        assert!(waits[7] >= Duration::from_millis(1500), "{waits:?}");
        b.reset();
        assert!(b.next_wait() <= Duration::from_millis(300));
    }

    #[test]
    fn a_base_over_the_bound_waits_the_bound() {
        let mut b = Backoff::new(Duration::from_secs(10), Duration::from_secs(1));
        assert!(b.next_wait() <= Duration::from_secs(1));
    }
}
