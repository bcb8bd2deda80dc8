//! Sources of this cluster's exports. Each publishes a complete [`LocalExports`] through a
//! `watch` channel whenever something changed; the publisher and the gateway-config builder read it.

pub(crate) mod file;
pub(crate) mod kube;

use std::collections::BTreeMap;

use causeway_api::snapshot::InvalidExport;
use causeway_api::{Endpoint, ExportRecord, ServiceKey};

/// One export of this cluster, with what only this cluster needs to know (its endpoints).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct LocalExport {
    /// What is published under `exports/<ns>/<svc>/<cluster>`.
    pub record: ExportRecord,
    /// All endpoints (ready or not); the gateway's inbound side routes to the ready ones.
    pub endpoints: Vec<Endpoint>,
    /// The file or object it came from, for error messages.
    pub origin: String,
}

/// Everything this cluster exports right now, plus what could not be read.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct LocalExports {
    pub exports: BTreeMap<ServiceKey, LocalExport>,
    pub invalid: Vec<InvalidExport>,
    /// False until the source has read its input once.
    pub loaded: bool,
}

/// The endpoints an export publishes mesh-wide: only headless services need theirs (per-endpoint
/// DNS records); ClusterSetIP traffic goes through the gateways, which learn endpoints locally.
pub(crate) fn published_endpoints(
    service_type: causeway_api::ServiceType,
    endpoints: &[Endpoint],
) -> Vec<Endpoint> {
    if service_type == causeway_api::ServiceType::Headless {
        endpoints.to_vec()
    } else {
        Vec::new()
    }
}

/// Milliseconds since the Unix epoch: the clock exports are stamped with and expire by.
pub(crate) fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}
