//! What the egress's protocols share: the planner's view of the live state, what the egress
//! says of its caller, and an outlier failure's count.

use http::header::HeaderValue;

use crate::proxy::Proxy;
use crate::resilience::Outlier;
use crate::route::Availability;
use crate::table::{Candidate, Outbound, Tables};
use crate::xfcc;
use causeway_api::ServiceKey;

/// Planner inputs from the live state.
pub(super) struct World<'a> {
    pub(super) proxy: &'a Proxy,
    pub(super) tables: &'a Tables,
    pub(super) svc: &'a ServiceKey,
}

impl Availability for World<'_> {
    fn peer_up(&self, cluster: &str) -> bool {
        self.proxy.peers.get(cluster).is_some_and(|p| p.is_up())
    }

    fn peer_suspect(&self, cluster: &str) -> bool {
        self.proxy
            .peers
            .get(cluster)
            .is_some_and(|p| p.is_suspect())
    }

    fn local_ready(&self) -> bool {
        self.tables
            .inbound
            .get(self.svc)
            .is_some_and(|i| !i.endpoints.is_empty() && !i.drained)
    }
}

/// What the egress says of the caller, replacing whatever the caller said of itself: the
/// source cluster, and for an mTLS caller the first XFCC element.
pub(super) fn vouch_for_caller(proxy: &Proxy, headers: &mut http::HeaderMap, caller: Option<&str>) {
    xfcc::strip_gateway_headers(headers);
    if let Ok(v) = HeaderValue::from_str(&proxy.config.cluster) {
        headers.insert(xfcc::SOURCE_CLUSTER, v);
    }
    if let Some(caller) = caller {
        let by = proxy.tls.load().own_id.to_string();
        xfcc::append(headers, &xfcc::element(&by, caller));
    }
}

pub(super) fn outlier_failure(proxy: &Proxy, svc: &Outbound, cand: &Candidate) {
    let p = &svc.policy;
    if let Outlier::Ejected(length) = cand.stats.record_failure(p.outlier_errors, p.outlier_base) {
        proxy.metrics.ejections.inc();
        tracing::warn!(service = %svc.name, cluster = %cand.cluster, ?length, "ejected by outlier detection");
    }
}
