//! `causeway_dns_queries_total{qtype,rcode}` and `causeway_dns_request_duration_seconds`.

use std::sync::OnceLock;
use std::time::Duration;

use hickory_proto::op::ResponseCode;
use hickory_proto::rr::RecordType;
use prometheus::{Histogram, HistogramOpts, IntCounter, IntCounterVec, Opts, Registry};

/// Query types that get their own label value; anything else is `OTHER`, so a client sending
/// random types cannot blow up the series count.
const QTYPES: &[(RecordType, &str)] = &[
    (RecordType::A, "A"),
    (RecordType::AAAA, "AAAA"),
    (RecordType::SRV, "SRV"),
    (RecordType::TXT, "TXT"),
    (RecordType::SOA, "SOA"),
    (RecordType::NS, "NS"),
    (RecordType::ANY, "ANY"),
    (RecordType::PTR, "PTR"),
    (RecordType::CNAME, "CNAME"),
    (RecordType::MX, "MX"),
    (RecordType::HTTPS, "HTTPS"),
    (RecordType::SVCB, "SVCB"),
    (RecordType::AXFR, "AXFR"),
    (RecordType::IXFR, "IXFR"),
];
const QTYPE_OTHER: usize = QTYPES.len();
/// A request we could not read a single question from (FORMERR, many questions).
const QTYPE_NONE: usize = QTYPES.len() + 1;
const QTYPE_COUNT: usize = QTYPES.len() + 2;

const RCODES: &[(ResponseCode, &str)] = &[
    (ResponseCode::NoError, "NOERROR"),
    (ResponseCode::FormErr, "FORMERR"),
    (ResponseCode::ServFail, "SERVFAIL"),
    (ResponseCode::NXDomain, "NXDOMAIN"),
    (ResponseCode::NotImp, "NOTIMP"),
    (ResponseCode::Refused, "REFUSED"),
    (ResponseCode::BADVERS, "BADVERS"),
];
const RCODE_OTHER: usize = RCODES.len();
const RCODE_COUNT: usize = RCODES.len() + 1;

/// Sub-millisecond buckets: an answer from memory takes tens of microseconds.
const DURATION_BUCKETS: &[f64] = &[
    0.000_05, 0.000_1, 0.000_25, 0.000_5, 0.001, 0.002_5, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25,
];

pub(crate) struct Metrics {
    queries: IntCounterVec,
    /// `queries` children, resolved once per (qtype, rcode) so the hot path skips the label hash.
    children: Box<[OnceLock<IntCounter>]>,
    duration: Histogram,
    tcp_refused: IntCounter,
}

impl Metrics {
    pub(crate) fn register(registry: &Registry) -> Result<Self, prometheus::Error> {
        let queries = IntCounterVec::new(
            Opts::new(
                "causeway_dns_queries_total",
                "DNS queries answered, by query type and response code",
            ),
            &["qtype", "rcode"],
        )?;
        let duration = Histogram::with_opts(
            HistogramOpts::new(
                "causeway_dns_request_duration_seconds",
                "Time from a parsed DNS request to its response handed to the socket",
            )
            .buckets(DURATION_BUCKETS.to_vec()),
        )?;
        let tcp_refused = IntCounter::new(
            "causeway_dns_tcp_refused_total",
            "TCP connections closed at accept because max_tcp_connections were open",
        )?;
        registry.register(Box::new(queries.clone()))?;
        if let Err(e) = registry.register(Box::new(duration.clone())) {
            // Leave the registry as we found it.
            let _ = registry.unregister(Box::new(queries.clone()));
            return Err(e);
        }
        if let Err(e) = registry.register(Box::new(tcp_refused.clone())) {
            let _ = registry.unregister(Box::new(queries.clone()));
            let _ = registry.unregister(Box::new(duration.clone()));
            return Err(e);
        }
        Ok(Self {
            queries,
            children: (0..QTYPE_COUNT * RCODE_COUNT)
                .map(|_| OnceLock::new())
                .collect(),
            duration,
            tcp_refused,
        })
    }

    pub(crate) fn tcp_refused(&self) {
        self.tcp_refused.inc();
    }

    /// Counts one answered request; `qtype` is `None` when it had no single question.
    pub(crate) fn observe(&self, qtype: Option<RecordType>, rcode: ResponseCode, took: Duration) {
        let q = match qtype {
            None => QTYPE_NONE,
            Some(t) => QTYPES
                .iter()
                .position(|(known, _)| *known == t)
                .unwrap_or(QTYPE_OTHER),
        };
        let r = RCODES
            .iter()
            .position(|(known, _)| *known == rcode)
            .unwrap_or(RCODE_OTHER);
        self.children[q * RCODE_COUNT + r]
            .get_or_init(|| {
                self.queries
                    .with_label_values(&[qtype_label(q), rcode_label(r)])
            })
            .inc();
        self.duration.observe(took.as_secs_f64());
    }
}

fn qtype_label(i: usize) -> &'static str {
    match i {
        QTYPE_OTHER => "OTHER",
        QTYPE_NONE => "NONE",
        i => QTYPES[i].1,
    }
}

fn rcode_label(i: usize) -> &'static str {
    RCODES.get(i).map_or("OTHER", |(_, l)| l)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn labels_are_bounded_and_named() {
        let registry = Registry::new();
        let m = Metrics::register(&registry).unwrap();
        m.observe(
            Some(RecordType::A),
            ResponseCode::NoError,
            Duration::from_micros(30),
        );
        m.observe(
            Some(RecordType::Unknown(65000)),
            ResponseCode::NXDomain,
            Duration::ZERO,
        );
        m.observe(None, ResponseCode::FormErr, Duration::ZERO);
        m.observe(Some(RecordType::A), ResponseCode::NoError, Duration::ZERO);
        let text = prometheus::TextEncoder::new()
            .encode_to_string(&registry.gather())
            .unwrap();
        assert!(
            text.contains(r#"causeway_dns_queries_total{qtype="A",rcode="NOERROR"} 2"#),
            "{text}"
        );
        assert!(
            text.contains(r#"causeway_dns_queries_total{qtype="OTHER",rcode="NXDOMAIN"} 1"#),
            "{text}"
        );
        assert!(
            text.contains(r#"causeway_dns_queries_total{qtype="NONE",rcode="FORMERR"} 1"#),
            "{text}"
        );
        assert!(
            text.contains(r#"causeway_dns_request_duration_seconds_bucket{le="0.00005"} 4"#),
            "{text}"
        );
        // A second server on the same registry is refused, not double-counted.
        assert!(Metrics::register(&registry).is_err());
    }
}
