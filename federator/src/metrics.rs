//! `causeway_federator_*` metrics on the admin `/metrics` endpoint.

use causeway_api::snapshot::ClusterState;
use causeway_api::MeshSnapshot;
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

    pub fn observe_snapshot(&self, snap: &MeshSnapshot) {
        self.snapshot_version.set(snap.version as i64);
        self.snapshot_revision.set(snap.revision);
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
        self.exports.reset();
        for (cluster, n) in snap.exports_by_cluster() {
            self.exports
                .with_label_values(&[cluster.as_str()])
                .set(n as i64);
        }
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
