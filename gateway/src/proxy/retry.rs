//! The retry policy of one request, in one place (linkerd2-proxy's `retry.rs` habit): how many
//! attempts it may make, which outcomes may be tried again, and the service's retry budget's
//! permission for each retry. The egress asks it; it never reads a status or an error itself.

use std::sync::Arc;

use crate::body::ReplayBody;
use crate::error::ProxyError;
use crate::resilience::{ActiveGuard, RetryBudget};
use crate::table::Policy;

pub(crate) struct Retries {
    budget: Arc<RetryBudget>,
    budget_percent: u32,
    min_concurrency: u32,
    max_attempts: u32,
    idempotent: bool,
    /// The budget's slot for the retry under way, held until its response ends.
    in_flight: Option<ActiveGuard>,
    /// A retry the budget allowed ahead (when an attempt was given up for a lost path).
    granted: Option<ActiveGuard>,
}

impl Retries {
    pub(crate) fn new(
        policy: &Policy,
        budget: &Arc<RetryBudget>,
        min_concurrency: u32,
        idempotent: bool,
    ) -> Self {
        Self {
            budget: budget.clone(),
            budget_percent: policy.retry_budget_percent,
            min_concurrency,
            max_attempts: max_attempts(policy),
            idempotent,
            in_flight: None,
            granted: None,
        }
    }

    pub(crate) fn max_attempts(&self) -> u32 {
        self.max_attempts
    }

    /// Whether attempt `n` (from 0) may go: the first always; a retry when the budget allows
    /// it (or allowed it ahead). Its slot is held until [`Retries::into_guard`]'s response ends.
    pub(crate) fn begin(&mut self, n: u32) -> bool {
        if n == 0 {
            return true;
        }
        match self.granted.take().or_else(|| self.try_budget()) {
            Some(g) => {
                self.in_flight = Some(g);
                true
            }
            None => false,
        }
    }

    /// A slot of the budget for a retry, if it has one.
    pub(crate) fn try_budget(&self) -> Option<ActiveGuard> {
        self.budget
            .try_retry(self.budget_percent, self.min_concurrency)
    }

    /// Attempt `n` was given up (its path was found dead) with a retry the budget allowed.
    pub(crate) fn grant(&mut self, slot: ActiveGuard) {
        self.granted = Some(slot);
    }

    /// Whether attempt `n` may be sent again elsewhere after any failure, even one that
    /// reached the destination: an idempotent request whose body is kept, with attempts left.
    /// This is what a 5xx answer or a lost path needs.
    pub(crate) fn may_resend(&self, n: u32, body: &ReplayBody) -> bool {
        self.idempotent && body.is_buffered() && n + 1 < self.max_attempts
    }

    /// Whether attempt `n`, failed with `e`, may be tried again: when nothing was sent, any
    /// request whose body can be replayed; else only as [`Retries::may_resend`] says.
    pub(crate) fn after_error(&self, n: u32, e: &ProxyError, body: &ReplayBody) -> bool {
        if e.is_connect() {
            body.replayable() && n + 1 < self.max_attempts
        } else {
            self.may_resend(n, body)
        }
    }

    /// The slot of the retry under way, to hold until the response it got has ended.
    pub(crate) fn into_guard(self) -> Option<ActiveGuard> {
        self.in_flight
    }
}

/// How many attempts the policy allows a request or a tunnel: the first and its retries.
pub(crate) fn max_attempts(policy: &Policy) -> u32 {
    1 + policy.retry_attempts
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy(retry_attempts: u32) -> Policy {
        Policy {
            retry_attempts,
            ..Policy::from_proto(None)
        }
    }

    fn connect_error() -> ProxyError {
        ProxyError::Connect {
            target: "t".into(),
            source: "refused".into(),
        }
    }

    fn request_error() -> ProxyError {
        ProxyError::Request {
            target: "t".into(),
            source: "reset".into(),
        }
    }

    #[test]
    fn the_first_attempt_always_goes_and_each_retry_takes_a_slot_of_the_budget() {
        let budget = Arc::new(RetryBudget::default());
        let _active = budget.start_request();
        // One request active: 20 % of it is less than the minimum of one retry.
        let mut first = Retries::new(&policy(2), &budget, 1, true);
        assert!(first.begin(0));
        assert!(first.begin(1), "the budget's one retry");
        let mut second = Retries::new(&policy(2), &budget, 1, true);
        assert!(second.begin(0));
        assert!(!second.begin(1), "the one slot is taken");
        drop(first.into_guard());
        assert!(
            second.begin(1),
            "the slot is back once the first retry's answer ended"
        );
    }

    #[test]
    fn a_retry_granted_ahead_is_used_before_the_budget_is_asked_again() {
        let budget = Arc::new(RetryBudget::default());
        let mut r = Retries::new(&policy(2), &budget, 1, true);
        let slot = r.try_budget().expect("the minimum allows one");
        assert!(r.try_budget().is_none(), "and only one");
        r.grant(slot);
        assert!(r.begin(1));
    }

    #[test]
    fn what_may_be_sent_again_follows_the_method_the_body_and_the_attempts_left() {
        let budget = Arc::new(RetryBudget::default());
        let buffered = ReplayBody::Buffered(bytes::Bytes::from_static(b"x"));
        let streamed = ReplayBody::Once(Some(crate::body::empty()));
        let spent = ReplayBody::Once(None);
        let get = Retries::new(&policy(2), &budget, 1, true);
        assert_eq!(get.max_attempts(), 3);
        assert!(get.may_resend(0, &buffered));
        assert!(get.may_resend(1, &buffered));
        assert!(!get.may_resend(2, &buffered), "no attempt left");
        assert!(
            !get.may_resend(0, &streamed),
            "a streamed body cannot be sent twice"
        );
        assert!(get.after_error(0, &request_error(), &buffered));
        let post = Retries::new(&policy(2), &budget, 1, false);
        assert!(
            !post.may_resend(0, &buffered),
            "a POST may have been acted on"
        );
        assert!(!post.after_error(0, &request_error(), &buffered));
        assert!(
            post.after_error(0, &connect_error(), &streamed),
            "nothing was sent"
        );
        assert!(
            !post.after_error(0, &connect_error(), &spent),
            "the body is gone"
        );
        assert!(
            !post.after_error(2, &connect_error(), &streamed),
            "no attempt left"
        );
        let none = Retries::new(&policy(0), &budget, 1, true);
        assert!(!none.after_error(0, &connect_error(), &buffered));
    }
}
