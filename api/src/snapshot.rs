//! `MeshSnapshot`: the immutable view of the whole mesh that one federator publishes to its sinks
//! (DNS, gateway config, Kubernetes ServiceImports) through a `tokio::sync::watch` of `Arc`s.

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::sync::Arc;

use serde::{Deserialize, Serialize};

use crate::model::{
    ClusterId, ClusterRecord, DrillRecord, DrillReport, ExportConditions, ExportRecord,
    HealthRecord, Import, ServiceKey,
};

/// Whether a cluster's control plane is present in etcd.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ClusterState {
    /// Its `clusters/` key is live.
    Up,
    /// Its keys vanished (lease lapsed); its exports are kept until the stale grace ends.
    Stale,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ClusterView {
    pub record: ClusterRecord,
    pub state: ClusterState,
    /// When the state last changed (ms since the Unix epoch).
    pub last_change_unix_ms: i64,
    /// Since when it has been stale, when it is.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stale_since_unix_ms: Option<i64>,
    /// Revision of its `synced/` marker, once it finished its initial sync.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub synced_revision: Option<i64>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ExportView {
    /// Shared with the federator's folded etcd state and the snapshots before (one copy of
    /// each export however many snapshots hold it).
    pub record: std::sync::Arc<ExportRecord>,
    pub conditions: ExportConditions,
    /// Kept from a cluster whose keys vanished, within the stale grace.
    pub stale: bool,
    /// Drained by a live drill.
    pub drained: bool,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ServiceView {
    pub import: Import,
    /// The ClusterSetIP of the import in universal mode (`vips/<ns>/<svc>`), once allocated.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub vip: Option<IpAddr>,
    pub exports: BTreeMap<ClusterId, ExportView>,
    /// Headless imports in universal mode: the address this cluster gives each endpoint of
    /// another cluster (`vips/<ns>/<svc>/<exporter>/<name>`), by exporter and
    /// [`crate::Endpoint::dns_label`]. It leads to this cluster's gateway.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub endpoint_vips: BTreeMap<ClusterId, BTreeMap<String, IpAddr>>,
}

impl ExportView {
    /// The record to change (a copy of it when snapshots share it).
    pub fn record_mut(&mut self) -> &mut crate::ExportRecord {
        std::sync::Arc::make_mut(&mut self.record)
    }
}

impl ServiceView {
    /// The view of `key` exported as `records` (by cluster), merged by the MCS rules
    /// ([`crate::merge`]): the import with each export's conflicts; not stale, not drained, no
    /// VIP yet. `None` when no export makes an import. The federator's view and tests build
    /// their views with it, so that no hand-made import disagrees with the rules.
    pub fn merged(
        key: &crate::ServiceKey,
        records: impl IntoIterator<Item = (ClusterId, impl Into<std::sync::Arc<crate::ExportRecord>>)>,
    ) -> Option<Self> {
        let records: BTreeMap<ClusterId, std::sync::Arc<crate::ExportRecord>> =
            records.into_iter().map(|(c, r)| (c, r.into())).collect();
        let mut merged = crate::merge::merge(records.iter().map(|(cluster, export)| {
            crate::merge::ExportInput {
                service: key,
                cluster,
                export,
            }
        }));
        let import = merged.imports.remove(key)?;
        let mut conditions = merged.conditions.remove(key).unwrap_or_default();
        let exports = records
            .into_iter()
            .map(|(c, record)| {
                let view = ExportView {
                    record,
                    conditions: conditions.remove(&c).unwrap_or_default(),
                    stale: false,
                    drained: false,
                };
                (c, view)
            })
            .collect();
        Some(Self {
            import,
            vip: None,
            exports,
            endpoint_vips: BTreeMap::new(),
        })
    }

    /// The traffic policy of the import: the one of its oldest export (the MCS rules' winner,
    /// ordered by creation time, then cluster ID), among the clusters in the import.
    pub fn traffic_policy(&self) -> Option<&crate::TrafficPolicy> {
        self.import
            .clusters
            .iter()
            .filter_map(|c| Some((c, self.exports.get(c)?)))
            .min_by_key(|(c, e)| (e.record.created_unix_ms, *c))
            .map(|(_, e)| &*e.record.traffic_policy)
    }
}

/// An export the local source could not read; the others keep flowing.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct InvalidExport {
    /// The file or object that holds it.
    pub source: String,
    pub reason: String,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct MeshSnapshot {
    /// Increases by one with every snapshot a federator publishes.
    pub version: u64,
    /// etcd revision the snapshot reflects (0 before the initial sync).
    pub revision: i64,
    /// The cluster of the federator that built it.
    pub local_cluster: Option<ClusterId>,
    /// True once the initial list from etcd has been applied.
    pub synced: bool,
    pub clusters: BTreeMap<ClusterId, ClusterView>,
    /// Shared between snapshots while unchanged (`Arc`), so a change costs one service's merge.
    pub services: BTreeMap<ServiceKey, Arc<ServiceView>>,
    /// Live drills: `drills/<id>` by `<id>`, a cluster's `clusters/<c>/drills/<id>` by `<c>/<id>`.
    pub drills: BTreeMap<String, DrillRecord>,
    /// The observers' reports of the cluster drills, by `<creator>/<id>`, then observer.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub drill_reports: BTreeMap<String, BTreeMap<ClusterId, DrillReport>>,
    /// observer -> observed cluster -> what the observer's gateway sees.
    pub health: BTreeMap<ClusterId, BTreeMap<ClusterId, HealthRecord>>,
    /// Whether this cluster reaches other clusters' headless endpoints through its gateway (at
    /// the addresses in each view's `endpoint_vips`) rather than at their pod addresses (a flat
    /// pod network): then an endpoint without an address here yet is not answered at all.
    #[serde(default)]
    pub headless_via_gateway: bool,
    /// Local exports that failed validation.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub invalid_exports: Vec<InvalidExport>,
}

// === impl MeshSnapshot ===

impl MeshSnapshot {
    pub fn service(&self, key: &ServiceKey) -> Option<&ServiceView> {
        self.services.get(key).map(|s| &**s)
    }

    pub fn import(&self, key: &ServiceKey) -> Option<&Import> {
        self.services.get(key).map(|s| &s.import)
    }

    /// Whether `cluster` is drained for `service`: the one rule DNS and the gateway config
    /// (inbound and outbound) ask. A live drill drains it; so does the export's `drained` flag,
    /// which says the same once the service's view was rebuilt.
    pub fn is_drained(&self, service: &ServiceKey, cluster: &ClusterId) -> bool {
        match self
            .services
            .get(service)
            .and_then(|s| s.exports.get(cluster))
        {
            Some(export) => self.export_drained(service, cluster, export),
            None => self.drilled(service, cluster),
        }
    }

    /// [`MeshSnapshot::is_drained`] for an export already at hand (no lookup).
    pub fn export_drained(
        &self,
        service: &ServiceKey,
        cluster: &ClusterId,
        export: &ExportView,
    ) -> bool {
        export.drained || self.drilled(service, cluster)
    }

    /// Whether `cluster` serves `service` with `export`: ready endpoints, and not drained.
    pub fn serves(&self, service: &ServiceKey, cluster: &ClusterId, export: &ExportView) -> bool {
        export.record.ready_endpoints > 0 && !self.export_drained(service, cluster, export)
    }

    fn drilled(&self, service: &ServiceKey, cluster: &ClusterId) -> bool {
        self.drills.values().any(|d| d.drains(service, cluster))
    }

    /// What `observer`'s gateway last reported of `cluster`'s gateway, if anything.
    pub fn health_of(&self, observer: &ClusterId, cluster: &ClusterId) -> Option<&HealthRecord> {
        self.health.get(observer).and_then(|m| m.get(cluster))
    }

    /// The local export of a service when this cluster serves it itself: exported, not drained,
    /// with ready endpoints. DNS `local-first` answers its address.
    pub fn local_ready_export(&self, key: &ServiceKey) -> Option<&ExportView> {
        let local = self.local_cluster.as_ref()?;
        let export = self.services.get(key)?.exports.get(local)?;
        self.serves(key, local, export).then_some(export)
    }

    /// Number of exports per cluster (stale ones included).
    pub fn exports_by_cluster(&self) -> BTreeMap<ClusterId, usize> {
        let mut out: BTreeMap<ClusterId, usize> = BTreeMap::new();
        for c in self.clusters.keys() {
            out.insert(c.clone(), 0);
        }
        for svc in self.services.values() {
            for c in svc.exports.keys() {
                *out.entry(c.clone()).or_default() += 1;
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{ExportConditions, ExportRecord, ServiceType, SessionAffinity};

    fn snapshot(flagged: bool, drilled: bool, ready: u32) -> (MeshSnapshot, ServiceKey, ClusterId) {
        let key = ServiceKey::new("shop", "cart").unwrap();
        let west = ClusterId::new("west").unwrap();
        let export = ExportView {
            record: ExportRecord {
                ready_endpoints: ready,
                ..ExportRecord::default()
            }
            .into(),
            conditions: ExportConditions::default(),
            stale: false,
            drained: flagged,
        };
        let view = ServiceView {
            import: Import {
                key: key.clone(),
                service_type: ServiceType::ClusterSetIP,
                ports: vec![],
                session_affinity: SessionAffinity::None,
                clusters: vec![west.clone()],
                conflict: false,
                exported: Default::default(),
            },
            vip: None,
            exports: BTreeMap::from([(west.clone(), export)]),
            endpoint_vips: BTreeMap::new(),
        };
        let mut s = MeshSnapshot {
            local_cluster: Some(west.clone()),
            services: BTreeMap::from([(key.clone(), Arc::new(view))]),
            ..MeshSnapshot::default()
        };
        if drilled {
            s.drills.insert(
                "d1".into(),
                DrillRecord {
                    schema: 2,
                    service: key.clone(),
                    cluster: west.clone(),
                    start_unix_ms: 0,
                    end_unix_ms: i64::MAX,
                    pending: false,
                    observers: Vec::new(),
                    probe: None,
                    origin: String::new(),
                },
            );
        }
        (s, key, west)
    }

    /// One rule for "is (service, cluster) drained / serving", whichever of the drill and the
    /// export's flag the snapshot has caught up with.
    #[test]
    fn drained_by_a_drill_or_the_exports_flag_and_serving_only_when_ready() {
        for (flagged, drilled) in [(true, false), (false, true), (true, true)] {
            let (s, key, west) = snapshot(flagged, drilled, 2);
            assert!(s.is_drained(&key, &west), "flag {flagged} drill {drilled}");
            let e = &s.services[&key].exports[&west];
            assert!(!s.serves(&key, &west, e));
            assert!(s.local_ready_export(&key).is_none());
        }
        let (s, key, west) = snapshot(false, false, 2);
        assert!(!s.is_drained(&key, &west));
        assert!(s.local_ready_export(&key).is_some());
        let (s, key, west) = snapshot(false, false, 0);
        assert!(
            !s.serves(&key, &west, &s.services[&key].exports[&west]),
            "no ready endpoint"
        );
        let other = ClusterId::new("east").unwrap();
        assert!(
            !s.is_drained(&key, &other),
            "a cluster that does not export it"
        );
    }
}
