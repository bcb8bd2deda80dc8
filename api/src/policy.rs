//! The traffic-policy defaults, one table for the federator (which sends them in every
//! import's policy) and the gateway (which falls back to them when a snapshot leaves a field
//! at proto3's zero). docs/gateway.md's policy table documents these numbers.

use std::time::Duration;

/// What an import gets for each policy field nobody set.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PolicyDefaults {
    /// Until the response headers arrive, over all attempts.
    pub timeout: Duration,
    /// Retries after the first attempt (idempotent requests).
    pub retry_attempts: u32,
    /// Retries may add at most this share of the requests.
    pub retry_budget_percent: u32,
    pub max_pending: u32,
    pub max_concurrent: u32,
    /// Errors in a row that eject a (service, cluster).
    pub outlier_consecutive_errors: u32,
    /// The first ejection; each further one doubles it up to [`PolicyDefaults::max_ejection`].
    pub outlier_base_ejection: Duration,
    pub max_ejection: Duration,
}

/// The defaults.
pub const DEFAULTS: PolicyDefaults = PolicyDefaults {
    timeout: Duration::from_secs(15),
    retry_attempts: 2,
    retry_budget_percent: 20,
    max_pending: 1024,
    max_concurrent: 1024,
    outlier_consecutive_errors: 5,
    outlier_base_ejection: Duration::from_secs(5),
    max_ejection: Duration::from_secs(300),
};
