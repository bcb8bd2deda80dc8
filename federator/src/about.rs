//! The cluster's ID from the About API (KEP-2149): the ClusterProperty `cluster.clusterset.k8s.io`.
//!
//! In Kubernetes mode the federator reads it at start. When it exists, it is the cluster's ID: a
//! configured `cluster` (flag or config file) must equal it, else the federator refuses to start
//! naming both (a federator publishing under another cluster's ID would take over that cluster's
//! exports); without a configured `cluster` it is used. When it does not exist (or the CRD is not
//! installed), the configured `cluster` is the ID. When the API cannot be asked (no credentials,
//! unreachable, forbidden), the configured `cluster` is used and a warning says so.

use kube::Api;

use crate::config::Config;
use crate::crds::{ClusterProperty, CLUSTER_ID_PROPERTY};

/// The configured cluster ID disagrees with the cluster's ClusterProperty.
#[derive(Debug, thiserror::Error)]
#[error("the cluster ID is configured as {configured:?}, but this cluster's ClusterProperty {CLUSTER_ID_PROPERTY} says {property:?}: fix one of them (chart value clusterId / --cluster, or the ClusterProperty)")]
pub struct ClusterIdMismatch {
    pub configured: String,
    pub property: String,
}

/// Reads the ClusterProperty and fills in or checks `cfg.cluster`.
pub async fn reconcile_cluster_id(cfg: &mut Config) -> Result<(), ClusterIdMismatch> {
    let client = match kube::Client::try_default().await {
        Ok(c) => c,
        Err(e) => {
            tracing::warn!(error = %e, "no Kubernetes client to read the ClusterProperty {CLUSTER_ID_PROPERTY}; using the configured cluster ID");
            return Ok(());
        }
    };
    let api: Api<ClusterProperty> = Api::all(client);
    let property = match api.get_opt(CLUSTER_ID_PROPERTY).await {
        Ok(Some(p)) => p.spec.value,
        Ok(None) => return Ok(()),
        // No such resource type (the CRD is not installed): the same as no property.
        Err(kube::Error::Api(s)) if s.code == 404 => return Ok(()),
        Err(e) => {
            tracing::warn!(error = %e, "could not read the ClusterProperty {CLUSTER_ID_PROPERTY}; using the configured cluster ID");
            return Ok(());
        }
    };
    match &cfg.cluster {
        Some(c) if *c != property => Err(ClusterIdMismatch {
            configured: c.clone(),
            property,
        }),
        Some(_) => Ok(()),
        None => {
            tracing::info!(cluster = %property, "cluster ID from the ClusterProperty {CLUSTER_ID_PROPERTY}");
            cfg.cluster = Some(property);
            Ok(())
        }
    }
}
