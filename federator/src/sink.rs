//! Sinks consume the federator's [`MeshSnapshot`](causeway_api::MeshSnapshot)s. The DNS zone and the
//! gateway config stream live in their own modules; this one holds the Kubernetes sink.

pub(crate) mod kube;
pub(crate) mod status;
