//! `causeway_federator_*` metrics on the admin `/metrics` endpoint.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

use causeway_api::snapshot::{ClusterState, ServiceView};
use causeway_api::{ClusterId, MeshSnapshot, ServiceKey};
use prometheus::{IntCounter, IntCounterVec, IntGauge, IntGaugeVec, Opts, Registry};

pub struct Metrics {
    pub registry: Registry,
    pub etcd_up: IntGauge,
    pub exports: IntGaugeVec,
    pub imports: IntGauge,
    pub conflicts: IntGauge,
    pub stale_clusters: IntGauge,
    pub snapshot_version: IntGauge,
    pub snapshot_revision: IntGauge,
    pub watch_restarts: IntCounter,
    pub invalid_exports: IntGauge,
    pub local_exports: IntGauge,
    pub leader: IntGauge,
    pub leader_elections: IntCounter,
    pub admin_refused: IntCounter,
    pub cert_expiry: IntGaugeVec,
    /// `causeway_federator_task_exits_total{task}`: tasks that ended before shutdown (each ends
    /// the federator, for its supervisor to restart it).
    pub task_exits: IntCounterVec,
    /// `causeway_federator_drills_total{result}`: Drill resources this federator ran, by how
    /// they ended (`rejected`, `passed`, `failed`, `deleted`, `interrupted`).
    pub drills: IntCounterVec,
    /// `causeway_federator_drill_observations_total{result}`: drills this cluster observed, by
    /// result (`passed`, `failed`, `error`; `refused`: over `drills.max_concurrent`).
    pub drill_observations: IntCounterVec,
    /// What `exports` was counted from, to count only what changed.
    export_tally: Mutex<ExportTally>,
}

/// Exports by cluster, kept up to date from the services that changed between snapshots (a
/// view is the same `Arc` while unchanged): counting all exports per snapshot was three
/// quarters of the federator's CPU per change at 510,000 exports (docs/benchmarks.md).
#[derive(Debug, Default)]
struct ExportTally {
    services: BTreeMap<ServiceKey, Arc<ServiceView>>,
    by_cluster: BTreeMap<ClusterId, usize>,
    /// What the gauge was last set to.
    published: BTreeMap<ClusterId, usize>,
}

impl ExportTally {
    /// Moves the tally to `snap`; returns the count of each of its clusters and of each other
    /// cluster that still exports something.
    fn update(&mut self, snap: &MeshSnapshot) -> BTreeMap<ClusterId, usize> {
        for (key, old) in &self.services {
            if snap
                .services
                .get(key)
                .is_some_and(|new| Arc::ptr_eq(old, new))
            {
                continue;
            }
            for cluster in old.exports.keys() {
                if let Some(n) = self.by_cluster.get_mut(cluster) {
                    *n = n.saturating_sub(1);
                }
            }
        }
        for (key, new) in &snap.services {
            if self
                .services
                .get(key)
                .is_some_and(|old| Arc::ptr_eq(old, new))
            {
                continue;
            }
            for cluster in new.exports.keys() {
                *self.by_cluster.entry(cluster.clone()).or_default() += 1;
            }
        }
        self.by_cluster.retain(|_, n| *n > 0);
        self.services = snap.services.clone();
        let mut out = self.by_cluster.clone();
        for c in snap.clusters.keys() {
            out.entry(c.clone()).or_default();
        }
        out
    }
}

impl Metrics {
    pub fn new() -> Self {
        let registry = Registry::new();
        let gauge = |name: &str, help: &str| {
            let g =
                IntGauge::new(format!("causeway_federator_{name}"), help).expect("valid metric");
            registry
                .register(Box::new(g.clone()))
                .expect("unique metric");
            g
        };
        let counter = |name: &str, help: &str| {
            let c =
                IntCounter::new(format!("causeway_federator_{name}"), help).expect("valid metric");
            registry
                .register(Box::new(c.clone()))
                .expect("unique metric");
            c
        };
        let exports = IntGaugeVec::new(
            Opts::new(
                "causeway_federator_exports",
                "Exports in the mesh view, by exporting cluster (stale ones included).",
            ),
            &["cluster"],
        )
        .expect("valid metric");
        registry
            .register(Box::new(exports.clone()))
            .expect("unique metric");
        let cert_expiry = IntGaugeVec::new(
            Opts::new(
                "causeway_certificate_expiry_timestamp_seconds",
                "When the federator's own certificate (the config stream's) expires, Unix seconds.",
            ),
            &["component", "cluster"],
        )
        .expect("valid metric");
        registry
            .register(Box::new(cert_expiry.clone()))
            .expect("unique metric");
        let task_exits = IntCounterVec::new(
            Opts::new(
                "causeway_federator_task_exits_total",
                "Tasks that ended (returned or panicked) before shutdown, by task; each stops the federator.",
            ),
            &["task"],
        )
        .expect("valid metric");
        registry
            .register(Box::new(task_exits.clone()))
            .expect("unique metric");
        let counter_vec = |name: &str, help: &str, label: &str| {
            let c = IntCounterVec::new(
                Opts::new(format!("causeway_federator_{name}"), help),
                &[label],
            )
            .expect("valid metric");
            registry
                .register(Box::new(c.clone()))
                .expect("unique metric");
            c
        };
        let drills = counter_vec(
            "drills_total",
            "Drill resources this federator ran, by how they ended (rejected, passed, failed, deleted, interrupted).",
            "result",
        );
        let drill_observations = counter_vec(
            "drill_observations_total",
            "Drills this cluster's federator observed as a client, by result (passed, failed, error, refused).",
            "result",
        );
        Self {
            drills,
            drill_observations,
            export_tally: Mutex::default(),
            task_exits,
            cert_expiry,
            etcd_up: gauge(
                "etcd_up",
                "1 while the mesh view's watch on etcd is established.",
            ),
            exports,
            imports: gauge(
                "imports",
                "Imports (services exported by at least one cluster).",
            ),
            conflicts: gauge(
                "conflicting_imports",
                "Imports with an MCS Conflict condition.",
            ),
            stale_clusters: gauge(
                "stale_clusters",
                "Clusters whose keys vanished and whose exports are kept within the stale grace.",
            ),
            snapshot_version: gauge(
                "snapshot_version",
                "Version of the last MeshSnapshot published.",
            ),
            snapshot_revision: gauge(
                "snapshot_revision",
                "etcd revision the last MeshSnapshot reflects.",
            ),
            watch_restarts: counter(
                "watch_restarts_total",
                "Times the etcd watch ended and was restarted or relisted.",
            ),
            invalid_exports: gauge(
                "invalid_exports",
                "Local exports that failed to parse or validate.",
            ),
            local_exports: gauge(
                "local_exports",
                "Valid exports read from this cluster's source.",
            ),
            leader: gauge(
                "leader",
                "1 while this replica holds the cluster lease and publishes.",
            ),
            leader_elections: counter(
                "leader_elections_total",
                "Times this replica became leader.",
            ),
            admin_refused: counter(
                "admin_refused_total",
                "Requests for /debug/snapshot or /dashboard from callers not on this host, refused with 403.",
            ),
            registry,
        }
    }

    /// Sets the gauges from `snap`; the revision last, so that a scrape that sees it sees the
    /// rest of that snapshot too.
    pub fn observe_snapshot(&self, snap: &MeshSnapshot) {
        self.snapshot_version.set(snap.version as i64);
        self.imports.set(snap.services.len() as i64);
        self.conflicts
            .set(snap.services.values().filter(|s| s.import.conflict).count() as i64);
        self.stale_clusters.set(
            snap.clusters
                .values()
                .filter(|c| c.state == ClusterState::Stale)
                .count() as i64,
        );
        self.invalid_exports.set(snap.invalid_exports.len() as i64);
        let mut tally = self.export_tally.lock().unwrap_or_else(|e| e.into_inner());
        let counts = tally.update(snap);
        // Gone clusters lose their series; the others are set in place (a reset first would let
        // a scrape in between see no exports at all).
        for c in tally.published.keys().filter(|c| !counts.contains_key(*c)) {
            let _ = self.exports.remove_label_values(&[c.as_str()]);
        }
        for (cluster, n) in &counts {
            self.exports
                .with_label_values(&[cluster.as_str()])
                .set(*n as i64);
        }
        tally.published = counts;
        self.snapshot_revision.set(snap.revision);
    }

    pub fn encode(&self) -> String {
        use prometheus::Encoder;
        let mut buf = Vec::new();
        let _ = prometheus::TextEncoder::new().encode(&self.registry.gather(), &mut buf);
        String::from_utf8(buf).unwrap_or_default()
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

#[cfg(test)]
mod tests {
    use causeway_api::ExportRecord;

    use super::*;

    fn view(clusters: &[&str]) -> Arc<ServiceView> {
        let key = ServiceKey::new("demo", "any").unwrap();
        let records = clusters
            .iter()
            .map(|c| (ClusterId::new(*c).unwrap(), ExportRecord::default()));
        Arc::new(ServiceView::merged(&key, records).expect("an import"))
    }

    fn series(m: &Metrics) -> Vec<String> {
        m.encode()
            .lines()
            .filter(|l| l.starts_with("causeway_federator_exports{"))
            .map(str::to_owned)
            .collect()
    }

    /// The counts follow added, changed and removed services as a full count would, and a
    /// cluster that exports nothing any more loses its series.
    #[test]
    fn exports_by_cluster_are_counted_from_what_changed() {
        let m = Metrics::new();
        let mut snap = MeshSnapshot::default();
        for (i, clusters) in [&["a", "b"][..], &["a"], &["b", "c"]].iter().enumerate() {
            snap.services.insert(
                ServiceKey::new("demo", format!("s{i}")).unwrap(),
                view(clusters),
            );
        }
        let check = |m: &Metrics, snap: &MeshSnapshot| {
            let want: Vec<String> = snap
                .exports_by_cluster()
                .iter()
                .map(|(c, n)| format!("causeway_federator_exports{{cluster=\"{c}\"}} {n}"))
                .collect();
            m.observe_snapshot(snap);
            assert_eq!(series(m), want);
        };
        check(&m, &snap);
        // Unchanged: the same counts again, not twice.
        check(&m, &snap);
        let s1 = ServiceKey::new("demo", "s1").unwrap();
        snap.services.insert(s1.clone(), view(&["a", "c"]));
        check(&m, &snap);
        snap.services
            .remove(&ServiceKey::new("demo", "s2").unwrap());
        check(&m, &snap);
        snap.services
            .remove(&ServiceKey::new("demo", "s0").unwrap());
        snap.services.insert(s1, view(&["a"]));
        check(&m, &snap);
        assert_eq!(series(&m), ["causeway_federator_exports{cluster=\"a\"} 1"]);
    }
}
