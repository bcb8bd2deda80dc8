//! Traffic policy as operators write it: the fields of an export's policy (export files and
//! Kubernetes annotations, one parser for both) and this cluster's overrides for its imports
//! (`import_policies`). The defaults are `causeway_api::policy`.

use causeway_api::proto;
use causeway_api::{RateLimit, ServiceKey, TrafficPolicy};

/// What this cluster's operator sets for calls to one import, over what its exporter asks
/// (federator config `import_policies`, docs/federator.md).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ImportOverride {
    /// Fields set here replace the exporter's; `failover` replaces it when not empty.
    pub policy: causeway_api::TrafficPolicy,
    /// A limit on what this cluster sends to the import (the gateway's egress token bucket).
    pub egress_rate_limit: Option<causeway_api::RateLimit>,
    pub header_routes: Vec<proto::HeaderRoute>,
}

/// Import overrides by service.
pub(crate) type ImportOverrides = std::collections::BTreeMap<ServiceKey, ImportOverride>;

/// A field of an export's traffic policy (docs/export-files.md, docs/kubernetes.md).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum PolicyField {
    Timeout,
    Retries,
    MaxConcurrent,
    MaxPending,
    OutlierConsecutiveErrors,
    OutlierBaseEjection,
    RateLimitRps,
    RateLimitBurst,
    /// Cluster IDs, comma-separated.
    Failover,
}

/// Builds a traffic policy from text values, each with the name its source knows it by (a
/// YAML path or an annotation), so that both sources check the same things and name the field
/// that is wrong.
pub(crate) fn traffic_policy<N: AsRef<str>>(
    fields: impl IntoIterator<Item = (PolicyField, N, String)>,
) -> Result<TrafficPolicy, String> {
    let mut p = TrafficPolicy::default();
    let mut rps: Option<(u32, String)> = None;
    let mut burst: Option<(u32, String)> = None;
    for (field, name, text) in fields {
        let name = name.as_ref();
        let text = text.trim();
        let count = || -> Result<u32, String> {
            text.parse::<u32>()
                .map_err(|_| format!("{name} {text:?} is not a whole number"))
        };
        let millis = || -> Result<u64, String> {
            let d =
                causeway_api::duration::parse_duration(text).map_err(|e| format!("{name}: {e}"))?;
            let ms = u64::try_from(d.as_millis()).unwrap_or(u64::MAX);
            if ms == 0 {
                return Err(format!("{name} {text:?} must be at least 1ms"));
            }
            Ok(ms)
        };
        match field {
            PolicyField::Timeout => p.timeout_ms = Some(millis()?),
            PolicyField::Retries => p.retry_attempts = Some(count()?),
            PolicyField::MaxConcurrent => {
                let n = count()?;
                if n == 0 {
                    return Err(format!("{name} must be at least 1"));
                }
                p.max_concurrent = Some(n);
            }
            PolicyField::MaxPending => p.max_pending = Some(count()?),
            PolicyField::OutlierConsecutiveErrors => {
                let n = count()?;
                if n == 0 {
                    return Err(format!("{name} must be at least 1"));
                }
                p.outlier_consecutive_errors = Some(n);
            }
            PolicyField::OutlierBaseEjection => p.outlier_base_ejection_ms = Some(millis()?),
            PolicyField::Failover => {
                for c in text.split(',').map(str::trim).filter(|c| !c.is_empty()) {
                    let id = causeway_api::ClusterId::new(c).map_err(|e| format!("{name}: {e}"))?;
                    if p.failover.contains(&id) {
                        return Err(format!("{name} lists {c} twice"));
                    }
                    p.failover.push(id);
                }
            }
            PolicyField::RateLimitRps => rps = Some((count()?, name.to_string())),
            PolicyField::RateLimitBurst => burst = Some((count()?, name.to_string())),
        }
    }
    match (rps, burst) {
        (None, None) => {}
        (None, Some((_, name))) => return Err(format!("{name} needs a requests-per-second limit")),
        (Some((0, name)), _) => return Err(format!("{name} must be at least 1")),
        (Some((_, _)), Some((0, name))) => return Err(format!("{name} must be at least 1")),
        (Some((r, _)), b) => {
            p.rate_limit = Some(RateLimit {
                requests_per_second: r,
                // Default: one second's worth.
                burst: b.map_or(r, |(b, _)| b),
            })
        }
    }
    Ok(p)
}

/// The traffic policy fields as YAML holds them (an export file's `spec.trafficPolicy`, an
/// entry of the federator's `import_policies`): both go through [`traffic_policy`].
pub(crate) struct PolicyValues<'a> {
    pub(crate) timeout: Option<&'a str>,
    pub(crate) retries: Option<u32>,
    pub(crate) max_concurrent: Option<u32>,
    pub(crate) max_pending: Option<u32>,
    pub(crate) outlier_consecutive_errors: Option<u32>,
    pub(crate) outlier_base_ejection: Option<&'a str>,
    pub(crate) failover: &'a [String],
    /// (requests per second, burst)
    pub(crate) rate_limit: Option<(u32, Option<u32>)>,
}

impl PolicyValues<'_> {
    /// Checks the values; `name` gives each field's name for the errors.
    pub(crate) fn parse(
        self,
        name: impl Fn(PolicyField) -> String,
    ) -> Result<TrafficPolicy, String> {
        use PolicyField as F;
        let n = |v: Option<u32>| v.map(|v| v.to_string());
        let text = |v: Option<&str>| v.map(str::to_string);
        let fields = [
            (F::Timeout, text(self.timeout)),
            (F::Retries, n(self.retries)),
            (F::MaxConcurrent, n(self.max_concurrent)),
            (F::MaxPending, n(self.max_pending)),
            (
                F::OutlierConsecutiveErrors,
                n(self.outlier_consecutive_errors),
            ),
            (F::OutlierBaseEjection, text(self.outlier_base_ejection)),
            (
                F::Failover,
                (!self.failover.is_empty()).then(|| self.failover.join(",")),
            ),
            (F::RateLimitRps, n(self.rate_limit.map(|(r, _)| r))),
            (F::RateLimitBurst, n(self.rate_limit.and_then(|(_, b)| b))),
        ];
        traffic_policy(
            fields
                .into_iter()
                .filter_map(|(f, v)| v.map(|v| (f, name(f), v))),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn traffic_policy_fields_and_errors() {
        use PolicyField::*;
        let p = traffic_policy([
            (Timeout, "timeout", "2s".to_string()),
            (Retries, "retries", "3".to_string()),
            (MaxConcurrent, "maxConcurrent", "100".to_string()),
            (MaxPending, "maxPending", "0".to_string()),
            (OutlierConsecutiveErrors, "outlier", "7".to_string()),
            (OutlierBaseEjection, "ejection", "500ms".to_string()),
            (RateLimitRps, "rps", "50".to_string()),
        ])
        .unwrap();
        assert_eq!(p.timeout_ms, Some(2000));
        assert_eq!(p.retry_attempts, Some(3));
        assert_eq!(p.max_concurrent, Some(100));
        assert_eq!(p.max_pending, Some(0));
        assert_eq!(p.outlier_consecutive_errors, Some(7));
        assert_eq!(p.outlier_base_ejection_ms, Some(500));
        assert_eq!(
            p.rate_limit,
            Some(RateLimit {
                requests_per_second: 50,
                burst: 50
            })
        );
        assert!(traffic_policy::<&str>([]).unwrap().is_empty());
        let p = traffic_policy([(Failover, "f", "west, north".to_string())]).unwrap();
        assert_eq!(p.failover.len(), 2);
        assert_eq!(p.failover[1].as_str(), "north");
        let err = |f, name: &'static str, v: &str| {
            traffic_policy([(f, name, v.to_string())]).unwrap_err()
        };
        assert!(err(Timeout, "spec.trafficPolicy.timeout", "soon")
            .contains("spec.trafficPolicy.timeout"));
        assert!(err(Timeout, "t", "0s").contains("at least 1ms"));
        assert!(err(Retries, "causeway.io/retries", "-1").contains("causeway.io/retries"));
        assert!(err(OutlierConsecutiveErrors, "o", "0").contains("at least 1"));
        assert!(err(RateLimitBurst, "burst", "5").contains("requests-per-second"));
        assert!(err(RateLimitRps, "rps", "0").contains("rps must be at least 1"));
        assert!(err(Failover, "f", "west,West_2").contains("West_2"));
        assert!(err(Failover, "f", "west,west").contains("twice"));
    }
}
