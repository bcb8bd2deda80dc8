//! Sources of this cluster's exports. Each publishes a complete [`LocalExports`] through a
//! `watch` channel whenever something changed; the publisher and the gateway-config builder read it.

pub mod file;
pub mod kube;

use std::collections::BTreeMap;

use causeway_api::snapshot::InvalidExport;
use causeway_api::{Endpoint, ExportRecord, ServiceKey};

/// One export of this cluster, with what only this cluster needs to know (its endpoints).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LocalExport {
    /// What is published under `exports/<ns>/<svc>/<cluster>`.
    pub record: ExportRecord,
    /// All endpoints (ready or not); the gateway's inbound side routes to the ready ones.
    pub endpoints: Vec<Endpoint>,
    /// The file or object it came from, for error messages.
    pub origin: String,
}

/// Everything this cluster exports right now, plus what could not be read.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct LocalExports {
    pub exports: BTreeMap<ServiceKey, LocalExport>,
    pub invalid: Vec<InvalidExport>,
    /// False until the source has read its input once.
    pub loaded: bool,
}
