//! The gateway's Prometheus metrics (DESIGN.md "Names": `causeway_gateway_*`).
//!
//! One registry per gateway instance, so that several in-process gateways (tests) do not mix.

use prometheus::{
    Encoder, Histogram, HistogramOpts, IntCounter, IntCounterVec, IntGauge, IntGaugeVec, Opts,
    Registry, TextEncoder,
};

#[derive(Clone)]
pub(crate) struct Metrics {
    registry: Registry,
    pub requests: IntCounterVec,
    pub request_duration: Histogram,
    pub peer_up: IntGaugeVec,
    pub config_version: IntGauge,
    pub config_nacks: IntCounter,
    pub handshake_failures: IntCounterVec,
    pub client_handshake_failures: IntCounterVec,
    pub retries: IntCounter,
    pub path_lost: IntCounter,
    pub path_checks: IntCounterVec,
    pub spans: IntCounterVec,
    pub ejections: IntCounter,
    pub rate_limited: IntCounter,
    pub circuit_open: IntCounter,
    pub cert_reloads: IntCounterVec,
    pub cert_renewals: IntCounterVec,
    pub refused: IntCounterVec,
    /// Open tunnels closed because an applied config no longer allows them, by reason.
    pub tunnels_closed: IntCounterVec,
    pub cert_expiry: IntGaugeVec,
    /// Set from the breakers' state when scraped ([`crate::table::StatsRegistry::observe`]).
    pub active_requests: IntGaugeVec,
    pub pending_requests: IntGaugeVec,
    /// [`Metrics::traffic_with`]'s last pass, shared by the peers' probers.
    traffic: std::sync::Arc<std::sync::Mutex<Option<TrafficPass>>>,
}

/// When a pass over the request series was made, and what it found per peer.
type TrafficPass = (
    std::time::Instant,
    std::sync::Arc<std::collections::HashMap<String, PeerTraffic>>,
);

/// How long one pass over the request series serves the peers' probers.
const TRAFFIC_FRESH: std::time::Duration = std::time::Duration::from_secs(1);

/// Requests to and from one peer cluster, cumulative ([`Metrics::traffic_with`]).
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub(crate) struct PeerTraffic {
    pub egress_requests: u64,
    pub egress_errors: u64,
    pub ingress_requests: u64,
    pub ingress_errors: u64,
}

impl Metrics {
    pub(crate) fn new() -> Self {
        let registry = Registry::new();
        macro_rules! reg {
            ($m:expr) => {{
                let m = $m.expect("metric definition is valid");
                registry
                    .register(Box::new(m.clone()))
                    .expect("metric registered once");
                m
            }};
        }
        let requests = reg!(IntCounterVec::new(
            Opts::new(
                "causeway_gateway_requests_total",
                "Requests (and TCP connections) proxied, by direction and outcome"
            ),
            &[
                "direction",
                "service",
                "source_cluster",
                "destination_cluster",
                "code"
            ]
        ));
        let request_duration = reg!(Histogram::with_opts(
            HistogramOpts::new(
                "causeway_gateway_request_duration_seconds",
                "Time from request to response headers"
            )
            .buckets(vec![
                0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0,
                10.0
            ])
        ));
        let peer_up = reg!(IntGaugeVec::new(
            Opts::new(
                "causeway_gateway_peer_up",
                "1 when active probes reach the peer cluster's gateway"
            ),
            &["cluster"]
        ));
        let config_version = reg!(IntGauge::new(
            "causeway_gateway_config_version",
            "Version of the config snapshot being served (0: none)"
        ));
        let config_nacks = reg!(IntCounter::new(
            "causeway_gateway_config_nacks_total",
            "Config snapshots refused"
        ));
        let client_handshake_failures = reg!(IntCounterVec::new(
            Opts::new(
                "causeway_gateway_client_handshake_failures_total",
                "TLS connections of local callers to the egress refused, by reason"
            ),
            &["reason"]
        ));
        let handshake_failures = reg!(IntCounterVec::new(
            Opts::new(
                "causeway_gateway_peer_handshake_failures_total",
                "Peer connections refused at the mTLS listener, by reason"
            ),
            &["reason"]
        ));
        let retries = reg!(IntCounter::new(
            "causeway_gateway_retries_total",
            "Requests retried on another candidate cluster"
        ));
        let path_lost = reg!(IntCounter::new(
            "causeway_gateway_path_lost_total",
            "Attempts given up because their peer stopped answering probes (then retried elsewhere)"
        ));
        let path_checks = reg!(IntCounterVec::new(
            Opts::new(
                "causeway_gateway_path_checks_total",
                "Probes sent at once because a request to the peer waited long, by peer and result (answered, missed)"
            ),
            &["cluster", "result"]
        ));
        let spans = reg!(IntCounterVec::new(
            Opts::new(
                "causeway_gateway_spans_total",
                "Sampled spans, by what became of them (ok: exported, error: the collector failed, dropped: the queue was full)"
            ),
            &["result"]
        ));
        let ejections = reg!(IntCounter::new(
            "causeway_gateway_ejections_total",
            "Outlier ejections of a (service, cluster)"
        ));
        let rate_limited = reg!(IntCounter::new(
            "causeway_gateway_rate_limited_total",
            "Requests refused with 429 by the local rate limit"
        ));
        let circuit_open = reg!(IntCounter::new(
            "causeway_gateway_circuit_open_total",
            "Requests refused with 503 by the circuit breaker"
        ));
        let cert_reloads = reg!(IntCounterVec::new(
            Opts::new(
                "causeway_gateway_cert_reloads_total",
                "Reloads of the certificate, key and bundle files, by result"
            ),
            &["result"]
        ));
        let refused = reg!(IntCounterVec::new(
            Opts::new(
                "causeway_gateway_refused_total",
                "Connections, requests and header elements refused or stripped before any cluster was tried, by listener and reason"
            ),
            &["listener", "reason"]
        ));
        let tunnels_closed = reg!(IntCounterVec::new(
            Opts::new(
                "causeway_gateway_tunnels_closed_total",
                "Open CONNECT tunnels at ingress closed because an applied config no longer allows them, by reason"
            ),
            &["reason"]
        ));
        let cert_renewals = reg!(IntCounterVec::new(
            Opts::new(
                "causeway_gateway_certificate_renewals_total",
                "Certificates asked of the federator's issuer, by result (ok, unreachable, refused, unusable, error)"
            ),
            &["result"]
        ));
        let cert_expiry = reg!(IntGaugeVec::new(
            Opts::new(
                "causeway_certificate_expiry_timestamp_seconds",
                "When a certificate expires (Unix seconds): this gateway's own (component gateway), and each peer gateway's as last seen in a handshake (component peer_gateway)"
            ),
            &["component", "cluster"]
        ));
        let active_requests = reg!(IntGaugeVec::new(
            Opts::new(
                "causeway_gateway_active_requests",
                "Requests (and TCP connections) in flight to a service in a cluster, as its circuit breaker counts them against max_concurrent"
            ),
            &["service", "destination_cluster"]
        ));
        let pending_requests = reg!(IntGaugeVec::new(
            Opts::new(
                "causeway_gateway_pending_requests",
                "Requests waiting for a circuit-breaker slot of a service in a cluster (max_concurrent reached; at most max_pending wait)"
            ),
            &["service", "destination_cluster"]
        ));
        Self {
            tunnels_closed,
            registry,
            requests,
            request_duration,
            peer_up,
            config_version,
            config_nacks,
            handshake_failures,
            client_handshake_failures,
            retries,
            path_lost,
            path_checks,
            spans,
            ejections,
            rate_limited,
            circuit_open,
            cert_reloads,
            cert_renewals,
            refused,
            cert_expiry,
            active_requests,
            pending_requests,
            traffic: Default::default(),
        }
    }

    /// Counts one refusal (`causeway_gateway_refused_total`).
    /// What this gateway carried to `peer` (egress, by destination cluster) and from it
    /// (ingress, by source cluster) since it started, summed from
    /// `causeway_gateway_requests_total`: a failure is a 5xx or `tcp_error`. Read every few
    /// seconds by each peer's prober for its health report, never on a request's path: one
    /// pass over the series serves every peer for [`TRAFFIC_FRESH`].
    pub(crate) fn traffic_with(&self, peer: &str) -> PeerTraffic {
        let mut cache = self.traffic.lock().unwrap_or_else(|e| e.into_inner());
        let fresh = cache
            .as_ref()
            .filter(|(at, _)| at.elapsed() < TRAFFIC_FRESH)
            .map(|(_, by_peer)| by_peer.clone());
        let by_peer = fresh.unwrap_or_else(|| {
            let by_peer = std::sync::Arc::new(self.traffic_by_peer());
            *cache = Some((std::time::Instant::now(), by_peer.clone()));
            by_peer
        });
        by_peer.get(peer).copied().unwrap_or_default()
    }

    /// [`Metrics::traffic_with`] of every cluster named in the series, in one pass.
    fn traffic_by_peer(&self) -> std::collections::HashMap<String, PeerTraffic> {
        use prometheus::core::Collector;
        let mut by_peer: std::collections::HashMap<String, PeerTraffic> = Default::default();
        for family in self.requests.collect() {
            for m in family.get_metric() {
                let (mut direction, mut source, mut destination, mut code) = ("", "", "", "");
                for l in m.get_label() {
                    match l.name() {
                        "direction" => direction = l.value(),
                        "source_cluster" => source = l.value(),
                        "destination_cluster" => destination = l.value(),
                        "code" => code = l.value(),
                        _ => {}
                    }
                }
                let n = m.get_counter().get_value() as u64;
                let failed = if code == "tcp_error" || code.starts_with('5') {
                    n
                } else {
                    0
                };
                match direction {
                    "egress" => {
                        let t = by_peer.entry(destination.to_string()).or_default();
                        t.egress_requests += n;
                        t.egress_errors += failed;
                    }
                    "ingress" => {
                        let t = by_peer.entry(source.to_string()).or_default();
                        t.ingress_requests += n;
                        t.ingress_errors += failed;
                    }
                    _ => {}
                }
            }
        }
        by_peer
    }

    pub(crate) fn refuse(&self, listener: &str, reason: &str) {
        self.refused.with_label_values(&[listener, reason]).inc();
    }

    /// The text exposition format.
    pub(crate) fn render(&self) -> String {
        let mut buf = Vec::new();
        // Encoding into a Vec cannot fail for well-formed metrics.
        let _ = TextEncoder::new().encode(&self.registry.gather(), &mut buf);
        String::from_utf8(buf).unwrap_or_default()
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

#[cfg(test)]
mod traffic_tests {
    use super::*;

    #[test]
    fn traffic_with_a_peer_sums_its_egress_and_ingress_and_their_failures() {
        let m = Metrics::new();
        let count = |labels: [&str; 5], n: u64| m.requests.with_label_values(&labels).inc_by(n);
        count(["egress", "shop/cart", "", "west", "200"], 7);
        count(["egress", "shop/cart", "", "west", "503"], 2);
        count(["egress", "shop/db", "", "west", "tcp"], 1);
        count(["egress", "shop/db", "", "west", "tcp_error"], 1);
        count(["egress", "shop/cart", "", "north", "200"], 5);
        count(["ingress", "shop/cart", "west", "east", "200"], 4);
        count(["ingress", "shop/cart", "west", "east", "500"], 1);
        count(["ingress", "shop/cart", "north", "east", "200"], 9);
        assert_eq!(
            m.traffic_with("west"),
            PeerTraffic {
                egress_requests: 11,
                egress_errors: 3,
                ingress_requests: 5,
                ingress_errors: 1,
            }
        );
        assert_eq!(m.traffic_with("south"), PeerTraffic::default());
    }
}
