//! Mesh view: lists, then watches `/causeway/v2/` and folds every cluster's keys into one
//! immutable [`MeshSnapshot`], published through a `watch` channel.
//!
//! [`MeshState`] is the pure part (events in, snapshot out), tested without etcd; [`run`] is the
//! I/O loop around it: list, watch from the list's revision, resume after a disconnect, relist
//! after a compaction, expire stale clusters.

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use causeway_api::keys::{self, Key};
use causeway_api::snapshot::{ClusterState, ClusterView, InvalidExport, ServiceView};
use causeway_api::{
    ClusterId, ClusterRecord, DrillRecord, DrillReport, ExportRecord, HealthRecord, MeshSnapshot,
    ServiceKey, SyncedRecord, VipRecord,
};
use etcd_client::{EventType, WatchOptions};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use crate::etcd;
use crate::etcd::EtcdConfig;
use crate::metrics::Metrics;
use crate::source::{now_ms, LocalExports};
use causeway_api::backoff::Backoff;

/// A change read from etcd.
#[derive(Debug, Clone)]
pub(crate) enum Change {
    Put { key: String, value: Vec<u8> },
    Delete { key: String },
}

#[derive(Debug, Clone)]
struct ClusterEntry {
    record: Option<ClusterRecord>,
    up: bool,
    last_change_ms: i64,
    stale_since_ms: Option<i64>,
    synced_revision: Option<i64>,
}

#[derive(Debug, Clone)]
struct ExportEntry {
    record: std::sync::Arc<ExportRecord>,
    stale_since_ms: Option<i64>,
}

/// The name of a drill in [`MeshSnapshot::drills`]: `<id>` of an operator's `drills/<id>`,
/// `<cluster>/<id>` of a cluster's (no operator's ID has a `/`).
fn drill_name(key: &Key) -> String {
    match key {
        Key::ClusterDrill { cluster, id } => format!("{cluster}/{id}"),
        Key::Drill(id) => id.clone(),
        _ => String::new(),
    }
}

/// The folded content of `/causeway/v2/`, with the stale-grace rules applied.
#[derive(Debug, Clone)]
pub(crate) struct MeshState {
    local: ClusterId,
    stale_grace_ms: i64,
    clusters: BTreeMap<ClusterId, ClusterEntry>,
    exports: BTreeMap<ServiceKey, BTreeMap<ClusterId, ExportEntry>>,
    drills: BTreeMap<String, DrillRecord>,
    drill_reports: BTreeMap<String, BTreeMap<ClusterId, DrillReport>>,
    health: BTreeMap<ClusterId, BTreeMap<ClusterId, HealthRecord>>,
    vips: BTreeMap<ServiceKey, IpAddr>,
    /// This cluster's addresses for other clusters' endpoints of headless imports.
    endpoint_vips: BTreeMap<ServiceKey, BTreeMap<ClusterId, BTreeMap<String, IpAddr>>>,
    revision: i64,
    synced: bool,
    /// Values that could not be decoded, by key (logged once each).
    bad_values: BTreeMap<String, String>,
    /// The merged view of each service, rebuilt only when something of it changed: a change to
    /// one export costs one service's merge, not the whole mesh's, and unchanged views are shared
    /// between snapshots.
    views: BTreeMap<ServiceKey, Arc<ServiceView>>,
    dirty: std::collections::BTreeSet<ServiceKey>,
    all_dirty: bool,
    /// Clusters that may hold stale exports: [`Self::expire`], twice a second, looks at theirs
    /// only, not at every export of the mesh (510,000 at Cilium's scale).
    maybe_stale: std::collections::BTreeSet<ClusterId>,
    /// Stamped on every snapshot ([`MeshSnapshot::headless_via_gateway`]).
    headless_via_gateway: bool,
    /// One copy of each distinct port list among the exports (most clusters export a service
    /// with the same ports).
    port_pool: causeway_api::ports::PortPool,
}

impl MeshState {
    pub(crate) fn new(local: ClusterId, stale_grace: Duration) -> Self {
        Self {
            local,
            stale_grace_ms: stale_grace.as_millis() as i64,
            clusters: BTreeMap::new(),
            exports: BTreeMap::new(),
            drills: BTreeMap::new(),
            drill_reports: BTreeMap::new(),
            health: BTreeMap::new(),
            vips: BTreeMap::new(),
            endpoint_vips: BTreeMap::new(),
            revision: 0,
            synced: false,
            bad_values: BTreeMap::new(),
            views: BTreeMap::new(),
            dirty: Default::default(),
            all_dirty: true,
            maybe_stale: Default::default(),
            headless_via_gateway: false,
            port_pool: Default::default(),
        }
    }

    /// Snapshots say that other clusters' headless endpoints are reached through the gateway.
    pub(crate) fn with_headless_via_gateway(mut self, on: bool) -> Self {
        self.headless_via_gateway = on;
        self
    }

    pub(crate) fn revision(&self) -> i64 {
        self.revision
    }

    /// Replaces the state with a full list taken at `revision`. What vanished since we last
    /// looked is treated as by the watch: a cluster whose key is gone goes stale with its exports;
    /// exports of a live cluster that are gone were unexported.
    #[cfg(test)]
    pub(crate) fn apply_list(&mut self, kvs: Vec<(String, Vec<u8>)>, revision: i64, now_ms: i64) {
        let mut fresh = self.fresh_for_list();
        for (key, value) in &kvs {
            fresh.apply_kv(key, Some(value), now_ms);
        }
        self.take_list(fresh, revision, now_ms);
    }

    /// An empty state to apply a full list to, page by page ([`Self::apply_kv`]), before
    /// [`Self::take_list`] makes it this one. It knows the values already found undecodable,
    /// so that a relist does not log them again, and the port lists already held, so that the
    /// exports it reads share them.
    pub(crate) fn fresh_for_list(&self) -> Self {
        let mut fresh = Self::new(self.local.clone(), Duration::ZERO)
            .with_headless_via_gateway(self.headless_via_gateway);
        fresh.stale_grace_ms = self.stale_grace_ms;
        fresh.bad_values = self.bad_values.clone();
        fresh.port_pool = self.port_pool.clone();
        fresh
    }

    /// Replaces the state with `fresh`, a full list taken at `revision`. What vanished since we
    /// last saw it is kept as stale (within the grace), as after a cluster's keys vanish.
    pub(crate) fn take_list(&mut self, fresh: Self, revision: i64, now_ms: i64) {
        let old_clusters = std::mem::replace(&mut self.clusters, fresh.clusters);
        let old_exports = std::mem::replace(&mut self.exports, fresh.exports);
        self.drills = fresh.drills;
        self.drill_reports = fresh.drill_reports;
        self.health = fresh.health;
        self.vips = fresh.vips;
        self.endpoint_vips = fresh.endpoint_vips;
        self.bad_values = fresh.bad_values;
        self.port_pool = fresh.port_pool;
        self.maybe_stale.extend(fresh.maybe_stale);
        // Carry over what we held of clusters that are not live now.
        for (c, mut entry) in old_clusters {
            match self.clusters.get_mut(&c) {
                Some(new) => {
                    if new.up == entry.up {
                        new.last_change_ms = entry.last_change_ms;
                    }
                    new.synced_revision = new.synced_revision.or(entry.synced_revision);
                }
                None => {
                    if entry.up {
                        entry.up = false;
                        entry.last_change_ms = now_ms;
                        entry.stale_since_ms = Some(now_ms);
                    }
                    self.clusters.insert(c, entry);
                }
            }
        }
        for (svc, by_cluster) in old_exports {
            for (c, mut e) in by_cluster {
                let live = self.clusters.get(&c).is_some_and(|x| x.up);
                let have = self.exports.get(&svc).is_some_and(|m| m.contains_key(&c));
                if !live && !have {
                    e.stale_since_ms.get_or_insert(now_ms);
                    self.maybe_stale.insert(c.clone());
                    self.exports.entry(svc.clone()).or_default().insert(c, e);
                }
            }
        }
        self.revision = revision;
        self.synced = true;
        self.all_dirty = true;
    }

    /// Marks the services that have an export of `cluster` for a rebuild.
    fn touch_cluster(&mut self, cluster: &ClusterId) {
        for (svc, by_cluster) in &self.exports {
            if by_cluster.contains_key(cluster) {
                self.dirty.insert(svc.clone());
            }
        }
    }

    /// Applies the events of one watch response (one or more revisions).
    pub(crate) fn apply_events(&mut self, changes: &[Change], revision: i64, now_ms: i64) {
        // A lapsed lease deletes the cluster key and its exports in one revision, in no promised
        // order: mark the cluster stale first so its export deletes are not taken as unexports.
        for c in changes {
            if let Change::Delete { key } = c {
                if let Ok(Key::Cluster(id)) = Key::parse(key) {
                    self.cluster_gone(&id, now_ms);
                }
            }
        }
        for c in changes {
            self.apply_one(c, now_ms);
        }
        self.revision = self.revision.max(revision);
    }

    fn cluster_gone(&mut self, id: &ClusterId, now_ms: i64) {
        if let Some(entry) = self.clusters.get_mut(id) {
            if entry.up {
                tracing::warn!(cluster = %id, "cluster's keys vanished; keeping its exports as stale");
                entry.up = false;
                entry.last_change_ms = now_ms;
                entry.stale_since_ms = Some(now_ms);
                self.maybe_stale.insert(id.clone());
                for by_cluster in self.exports.values_mut() {
                    if let Some(e) = by_cluster.get_mut(id) {
                        e.stale_since_ms.get_or_insert(now_ms);
                    }
                }
                self.touch_cluster(id);
            }
        }
    }

    fn decode<T: serde::de::DeserializeOwned>(&mut self, key: &str, value: &[u8]) -> Option<T> {
        match keys::decode::<T>(key, value) {
            Ok(v) => {
                self.bad_values.remove(key);
                Some(v)
            }
            Err(e) => {
                if self
                    .bad_values
                    .insert(key.to_string(), e.to_string())
                    .is_none()
                {
                    tracing::warn!(%key, error = %e, "ignoring an undecodable value");
                }
                None
            }
        }
    }

    fn apply_one(&mut self, change: &Change, now_ms: i64) {
        match change {
            Change::Put { key, value } => self.apply_kv(key, Some(value), now_ms),
            Change::Delete { key } => self.apply_kv(key, None, now_ms),
        }
    }

    /// Applies one key's value (`None`: deleted).
    pub(crate) fn apply_kv(&mut self, key_str: &str, value: Option<&[u8]>, now_ms: i64) {
        let key = match Key::parse(key_str) {
            Ok(k) => k,
            Err(e) => {
                if self
                    .bad_values
                    .insert(key_str.to_string(), e.to_string())
                    .is_none()
                {
                    tracing::warn!(error = %e, "ignoring a malformed key");
                }
                return;
            }
        };
        let drill = drill_name(&key);
        match (key, value) {
            (Key::Cluster(id), Some(v)) => {
                let Some(rec) = self.decode::<ClusterRecord>(key_str, v) else {
                    return;
                };
                let entry = self.clusters.entry(id.clone()).or_insert(ClusterEntry {
                    record: None,
                    up: false,
                    last_change_ms: now_ms,
                    stale_since_ms: None,
                    synced_revision: None,
                });
                if !entry.up {
                    tracing::info!(cluster = %id, "cluster is up");
                    entry.up = true;
                    entry.last_change_ms = now_ms;
                    entry.stale_since_ms = None;
                }
                entry.record = Some(rec);
            }
            (Key::Cluster(id), None) => self.cluster_gone(&id, now_ms),
            (Key::Export { service, cluster }, Some(v)) => {
                let Some(mut record) = self.decode::<ExportRecord>(key_str, v) else {
                    return;
                };
                record.ports = self.port_pool.intern(record.ports.clone());
                // One shared ID for all of a cluster's exports, not one per key read.
                let cluster = match self.clusters.get_key_value(&cluster) {
                    Some((id, _)) => id.clone(),
                    None => cluster,
                };
                self.clusters
                    .entry(cluster.clone())
                    .or_insert(ClusterEntry {
                        record: None,
                        up: false,
                        last_change_ms: now_ms,
                        stale_since_ms: None,
                        synced_revision: None,
                    });
                self.dirty.insert(service.clone());
                self.exports.entry(service).or_default().insert(
                    cluster,
                    ExportEntry {
                        record: record.into(),
                        stale_since_ms: None,
                    },
                );
            }
            (Key::Export { service, cluster }, None) => {
                let live = self.clusters.get(&cluster).is_some_and(|c| c.up);
                self.dirty.insert(service.clone());
                let Some(by_cluster) = self.exports.get_mut(&service) else {
                    return;
                };
                if live {
                    by_cluster.remove(&cluster);
                    if by_cluster.is_empty() {
                        self.exports.remove(&service);
                    }
                } else if let Some(e) = by_cluster.get_mut(&cluster) {
                    e.stale_since_ms.get_or_insert(now_ms);
                    self.maybe_stale.insert(cluster);
                }
            }
            (Key::Synced(id), Some(v)) => {
                let Some(rec) = self.decode::<SyncedRecord>(key_str, v) else {
                    return;
                };
                if let Some(entry) = self.clusters.get_mut(&id) {
                    entry.synced_revision = Some(rec.revision);
                }
                // The cluster has republished everything it exports: what is still stale of it
                // was unexported while it was away.
                self.drop_stale_exports_of(&id);
            }
            (Key::Synced(_), None) => {}
            (Key::Health { observer, cluster }, Some(v)) => {
                let Some(rec) = self.decode::<HealthRecord>(key_str, v) else {
                    return;
                };
                self.health
                    .entry(observer)
                    .or_default()
                    .insert(cluster, rec);
            }
            (Key::Health { observer, cluster }, None) => {
                if let Some(m) = self.health.get_mut(&observer) {
                    m.remove(&cluster);
                    if m.is_empty() {
                        self.health.remove(&observer);
                    }
                }
            }
            (Key::Drill(_) | Key::ClusterDrill { .. }, Some(v)) => {
                if let Some(rec) = self.decode::<DrillRecord>(key_str, v) {
                    self.dirty.insert(rec.service.clone());
                    if let Some(old) = self.drills.insert(drill, rec) {
                        self.dirty.insert(old.service);
                    }
                }
            }
            (Key::Drill(_) | Key::ClusterDrill { .. }, None) => {
                if let Some(old) = self.drills.remove(&drill) {
                    self.dirty.insert(old.service);
                }
            }
            (
                Key::DrillReport {
                    observer,
                    creator,
                    id,
                },
                v,
            ) => {
                let name = format!("{creator}/{id}");
                match v.and_then(|v| self.decode::<DrillReport>(key_str, v)) {
                    Some(report) => {
                        self.drill_reports
                            .entry(name)
                            .or_default()
                            .insert(observer, report);
                    }
                    None => {
                        if let Some(m) = self.drill_reports.get_mut(&name) {
                            m.remove(&observer);
                            if m.is_empty() {
                                self.drill_reports.remove(&name);
                            }
                        }
                    }
                }
            }
            // A cluster's ClusterSetIPs are its own: the others' are not read.
            (Key::Vip { cluster, .. }, _) if cluster != self.local => {}
            (Key::Vip { service, .. }, Some(v)) => {
                if let Some(rec) = self.decode::<VipRecord>(key_str, v) {
                    self.dirty.insert(service.clone());
                    self.vips.insert(service, rec.ip);
                }
            }
            (Key::Vip { service, .. }, None) => {
                self.dirty.insert(service.clone());
                self.vips.remove(&service);
            }
            (Key::EndpointVip { cluster, .. }, _) if cluster != self.local => {}
            (
                Key::EndpointVip {
                    service,
                    exporter,
                    name,
                    ..
                },
                value,
            ) => {
                let rec = match value {
                    Some(v) => match self.decode::<VipRecord>(key_str, v) {
                        Some(r) => Some(r),
                        None => return,
                    },
                    None => None,
                };
                self.dirty.insert(service.clone());
                let by_exporter = self.endpoint_vips.entry(service.clone()).or_default();
                match rec {
                    Some(r) => {
                        by_exporter.entry(exporter).or_default().insert(name, r.ip);
                    }
                    None => {
                        if let Some(m) = by_exporter.get_mut(&exporter) {
                            m.remove(&name);
                            if m.is_empty() {
                                by_exporter.remove(&exporter);
                            }
                        }
                        if by_exporter.is_empty() {
                            self.endpoint_vips.remove(&service);
                        }
                    }
                }
            }
            (Key::Election { .. }, _) => {}
        }
    }

    fn drop_stale_exports_of(&mut self, id: &ClusterId) {
        // Only a cluster in `maybe_stale` can hold stale exports. Every cluster's `synced/` key
        // comes after all exports in a full list: without this, a list of 255 clusters walked
        // all 510,000 exports 255 times (a third of the first snapshot's CPU).
        if !self.maybe_stale.remove(id) {
            return;
        }
        let dirty = &mut self.dirty;
        self.exports.retain(|svc, by_cluster| {
            let before = by_cluster.len();
            by_cluster.retain(|c, e| !(c == id && e.stale_since_ms.is_some()));
            if by_cluster.len() != before {
                dirty.insert(svc.clone());
            }
            !by_cluster.is_empty()
        });
    }

    /// Drops stale clusters and exports whose grace has ended, or that the local gateway reports
    /// down. Returns whether anything changed.
    pub(crate) fn expire(&mut self, now_ms: i64) -> bool {
        let grace = self.stale_grace_ms;
        let local_health = self.health.get(&self.local).cloned().unwrap_or_default();
        let expired = |c: &ClusterId, since: i64| {
            now_ms - since >= grace
                || local_health
                    .get(c)
                    .is_some_and(|h| !h.up && h.observed_unix_ms >= since)
        };
        let mut changed = false;
        if !self.maybe_stale.is_empty() {
            let dirty = &mut self.dirty;
            let maybe = std::mem::take(&mut self.maybe_stale);
            let still = &mut self.maybe_stale;
            self.exports.retain(|svc, by_cluster| {
                for c in &maybe {
                    let Some(since) = by_cluster.get(c).and_then(|e| e.stale_since_ms) else {
                        continue;
                    };
                    if expired(c, since) {
                        tracing::info!(service = %svc, cluster = %c, "stale export dropped");
                        by_cluster.remove(c);
                        dirty.insert(svc.clone());
                        changed = true;
                    } else {
                        still.insert(c.clone());
                    }
                }
                !by_cluster.is_empty()
            });
        }
        let exports = &self.exports;
        self.clusters.retain(|c, entry| match entry.stale_since_ms {
            Some(since) if !entry.up && expired(c, since) => {
                let has_exports = exports.values().any(|m| m.contains_key(c));
                if !has_exports {
                    tracing::info!(cluster = %c, "stale cluster dropped");
                    changed = true;
                }
                has_exports
            }
            // A cluster seen only through exports that are all gone.
            None if !entry.up && !exports.values().any(|m| m.contains_key(c)) => {
                changed = true;
                false
            }
            _ => true,
        });
        changed
    }

    /// Re-merges the services marked dirty (all of them after a list).
    fn rebuild_views(&mut self) {
        let keys: Vec<ServiceKey> = if std::mem::take(&mut self.all_dirty) {
            self.dirty.clear();
            self.views
                .keys()
                .chain(self.exports.keys())
                .cloned()
                .collect()
        } else {
            std::mem::take(&mut self.dirty).into_iter().collect()
        };
        for key in keys {
            match self.service_view(&key) {
                Some(view) => {
                    self.views.insert(key, Arc::new(view));
                }
                None => {
                    self.views.remove(&key);
                }
            }
        }
    }

    /// One service's import merged by the MCS rules, with its exports' conditions and drains.
    fn service_view(&self, key: &ServiceKey) -> Option<ServiceView> {
        let by_cluster = self.exports.get(key)?;
        let records = by_cluster
            .iter()
            .map(|(c, e)| (c.clone(), e.record.clone()));
        let mut view = ServiceView::merged(key, records)?;
        for (c, export) in &mut view.exports {
            export.stale = by_cluster
                .get(c)
                .is_some_and(|e| e.stale_since_ms.is_some());
            export.drained = self.drills.values().any(|d| d.drains(key, c));
        }
        view.vip = self.vips.get(key).copied();
        view.endpoint_vips = self.endpoint_vips.get(key).cloned().unwrap_or_default();
        Some(view)
    }

    /// Builds the snapshot: imports merged by the MCS rules, conditions, drains, VIPs.
    pub(crate) fn snapshot(&mut self, version: u64, invalid: Vec<InvalidExport>) -> MeshSnapshot {
        self.rebuild_views();
        let services = self.views.clone();
        let clusters = self
            .clusters
            .iter()
            .filter_map(|(c, e)| {
                let record = e.record.clone()?;
                Some((
                    c.clone(),
                    ClusterView {
                        record,
                        state: if e.up {
                            ClusterState::Up
                        } else {
                            ClusterState::Stale
                        },
                        last_change_unix_ms: e.last_change_ms,
                        stale_since_unix_ms: e.stale_since_ms,
                        synced_revision: e.synced_revision,
                    },
                ))
            })
            .collect();
        MeshSnapshot {
            version,
            revision: self.revision,
            local_cluster: Some(self.local.clone()),
            synced: self.synced,
            clusters,
            services,
            drills: self.drills.clone(),
            drill_reports: self.drill_reports.clone(),
            health: self.health.clone(),
            headless_via_gateway: self.headless_via_gateway,
            invalid_exports: invalid,
        }
    }
}

// === the watch loop ===

pub(crate) struct ViewConfig {
    pub cluster: ClusterId,
    pub etcd: EtcdConfig,
    pub stale_grace: Duration,
    pub debounce: Duration,
    /// [`MeshSnapshot::headless_via_gateway`].
    pub headless_via_gateway: bool,
}

enum WatchEnd {
    /// Disconnected: resume from the last revision if etcd still has it.
    Resume,
    /// The revision was compacted: list again.
    Relist,
}

/// Lists and watches until `shutdown`, publishing snapshots to `tx`.
pub(crate) async fn run(
    cfg: ViewConfig,
    tx: watch::Sender<Arc<MeshSnapshot>>,
    mut local: watch::Receiver<LocalExports>,
    metrics: Arc<Metrics>,
    shutdown: CancellationToken,
) {
    let mut state = MeshState::new(cfg.cluster.clone(), cfg.stale_grace)
        .with_headless_via_gateway(cfg.headless_via_gateway);
    let mut version = tx.borrow().version;
    let mut backoff = Backoff::default();
    let mut need_list = true;
    let mut expire_tick = tokio::time::interval(Duration::from_millis(500));
    expire_tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);

    let mut publish = |state: &mut MeshState, local: &watch::Receiver<LocalExports>| {
        version += 1;
        let invalid = local.borrow().invalid.clone();
        let snap = state.snapshot(version, invalid);
        metrics.observe_snapshot(&snap);
        tx.send_replace(Arc::new(snap));
    };

    'outer: loop {
        let client = tokio::select! {
            _ = shutdown.cancelled() => return,
            c = etcd::connect(&cfg.etcd) => c,
        };
        let mut client = match client {
            Ok(c) => c,
            Err(e) => {
                metrics.etcd_up.set(0);
                tracing::warn!(error = %e, "mesh view cannot reach etcd; serving the last snapshot");
                tokio::select! {
                    _ = shutdown.cancelled() => return,
                    _ = backoff.wait() => continue,
                }
            }
        };
        if need_list {
            // Decoded page by page as they arrive, into a state that replaces this one only
            // when the whole list is in (a failed list leaves the last snapshot's state).
            let mut fresh = state.fresh_for_list();
            let listed = etcd::list_prefix_pages(&mut client, keys::PREFIX, false, |kvs| {
                let now = now_ms();
                for kv in kvs {
                    fresh.apply_kv(&String::from_utf8_lossy(kv.key()), Some(kv.value()), now);
                }
            })
            .await;
            match listed {
                Ok(rev) => {
                    state.take_list(fresh, rev, now_ms());
                    tracing::info!(revision = rev, "mesh view listed");
                    need_list = false;
                    publish(&mut state, &local);
                }
                Err(e) => {
                    metrics.etcd_up.set(0);
                    tracing::warn!(error = %e, "listing the mesh failed");
                    tokio::select! {
                        _ = shutdown.cancelled() => return,
                        _ = backoff.wait() => continue,
                    }
                }
            }
        }
        let opts = WatchOptions::new()
            .with_prefix()
            .with_start_revision(state.revision() + 1)
            .with_progress_notify();
        let mut stream = match client.watch(keys::PREFIX, Some(opts)).await {
            Ok(s) => s,
            Err(e) => {
                metrics.etcd_up.set(0);
                metrics.watch_restarts.inc();
                tracing::warn!(error = %e, "watching the mesh failed");
                tokio::select! {
                    _ = shutdown.cancelled() => return,
                    _ = backoff.wait() => continue,
                }
            }
        };
        metrics.etcd_up.set(1);
        backoff.reset();
        let mut pending: Option<Instant> = None;
        let end = loop {
            let deadline = pending.map(|p| p + cfg.debounce);
            tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = async { tokio::time::sleep_until(deadline.expect("guarded").into()).await }, if deadline.is_some() => {
                    pending = None;
                    publish(&mut state, &local);
                }
                _ = expire_tick.tick() => {
                    if state.expire(now_ms()) {
                        pending.get_or_insert_with(Instant::now);
                    }
                }
                r = local.changed() => {
                    if r.is_err() { return; }
                    // Invalid local exports are part of the snapshot (status, /debug/snapshot).
                    pending.get_or_insert_with(Instant::now);
                }
                msg = stream.message() => match msg {
                    Ok(Some(resp)) => {
                        if resp.canceled() || resp.compact_revision() > 0 {
                            tracing::warn!(compact_revision = resp.compact_revision(), reason = resp.cancel_reason(), "watch cancelled; relisting");
                            break WatchEnd::Relist;
                        }
                        let mut rev = 0;
                        let changes: Vec<Change> = resp.events().iter().filter_map(|ev| {
                            let kv = ev.kv()?;
                            rev = rev.max(kv.mod_revision());
                            let key = String::from_utf8_lossy(kv.key()).into_owned();
                            Some(match ev.event_type() {
                                EventType::Put => Change::Put { key, value: kv.value().to_vec() },
                                EventType::Delete => Change::Delete { key },
                            })
                        }).collect();
                        if changes.is_empty() {
                            // Progress notification: everything up to the header's revision has
                            // been sent, so a resume may start after it.
                            if let Some(h) = resp.header() {
                                state.apply_events(&[], h.revision(), now_ms());
                            }
                            continue;
                        }
                        state.apply_events(&changes, rev, now_ms());
                        pending.get_or_insert_with(Instant::now);
                    }
                    Ok(None) => break WatchEnd::Resume,
                    Err(e) => {
                        tracing::warn!(error = %e, "mesh watch broke");
                        break WatchEnd::Resume;
                    }
                }
            }
        };
        if pending.is_some() {
            publish(&mut state, &local);
        }
        metrics.watch_restarts.inc();
        metrics.etcd_up.set(0);
        if matches!(end, WatchEnd::Relist) {
            need_list = true;
            continue 'outer;
        }
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = backoff.wait() => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use causeway_api::keys;
    use causeway_api::{Protocol, ServicePort};

    use super::*;

    fn c(s: &str) -> ClusterId {
        ClusterId::new(s).unwrap()
    }

    fn svc(name: &str) -> ServiceKey {
        ServiceKey::new("demo", name).unwrap()
    }

    fn cluster_kv(name: &str) -> (String, Vec<u8>) {
        let rec = ClusterRecord {
            schema: causeway_api::SCHEMA_VERSION,
            gateway_addresses: vec![],
            trust_domain: format!("{name}.causeway.mesh"),
            trust_bundle_pem: String::new(),
            locality: Default::default(),
            federator_version: String::new(),
            certificate_not_after: None,
        };
        (keys::cluster_key(&c(name)), keys::encode(&rec))
    }

    fn export_kv(service: &str, cluster: &str) -> (String, Vec<u8>) {
        let rec = ExportRecord {
            ports: vec![ServicePort {
                name: "http".into(),
                protocol: Protocol::Tcp,
                port: 80,
                app_protocol: None,
            }]
            .into(),
            created_unix_ms: 1,
            ready_endpoints: 1,
            ..ExportRecord::default()
        };
        (
            keys::export_key(&svc(service), &c(cluster)),
            keys::encode(&rec),
        )
    }

    fn put((key, value): (String, Vec<u8>)) -> Change {
        Change::Put { key, value }
    }

    fn del((key, _): (String, Vec<u8>)) -> Change {
        Change::Delete { key }
    }

    /// (service, cluster, stale) triples of a snapshot.
    fn exports(s: &mut MeshState) -> Vec<(String, String, bool)> {
        let snap = s.snapshot(1, vec![]);
        snap.services
            .iter()
            .flat_map(|(k, v)| {
                v.exports
                    .iter()
                    .map(move |(c, e)| (k.name.clone(), c.to_string(), e.stale))
            })
            .collect()
    }

    fn state() -> MeshState {
        let mut s = MeshState::new(c("west"), Duration::from_secs(10));
        s.apply_list(
            vec![
                cluster_kv("east"),
                export_kv("a", "east"),
                export_kv("b", "east"),
            ],
            5,
            0,
        );
        s
    }

    #[test]
    fn equal_port_lists_read_from_etcd_are_one_copy_and_a_changed_one_is_its_own() {
        let mut s = state();
        s.apply_events(
            &[put(cluster_kv("north")), put(export_kv("a", "north"))],
            6,
            1,
        );
        let snap = s.snapshot(1, vec![]);
        let ports = |name: &str, cluster: &str| {
            snap.services[&svc(name)].exports[&c(cluster)]
                .record
                .ports
                .clone()
        };
        assert!(ports("a", "east").ptr_eq(&ports("a", "north")));
        assert!(ports("a", "east").ptr_eq(&ports("b", "east")));
        let mut other = ExportRecord::clone(&snap.services[&svc("a")].exports[&c("north")].record);
        other.ports = vec![ServicePort {
            name: "http".into(),
            protocol: Protocol::Tcp,
            port: 8080,
            app_protocol: None,
        }]
        .into();
        let key = keys::export_key(&svc("a"), &c("north"));
        s.apply_events(&[put((key, keys::encode(&other)))], 7, 2);
        let snap = s.snapshot(2, vec![]);
        let north = &snap.services[&svc("a")].exports[&c("north")].record.ports;
        assert_eq!(north[0].port, 8080);
        assert!(!north.ptr_eq(&snap.services[&svc("a")].exports[&c("east")].record.ports));
        assert_eq!(s.port_pool.len(), 2);
    }

    #[test]
    fn unexport_removes_but_a_lapse_keeps_stale() {
        let mut s = state();
        s.apply_events(&[del(export_kv("a", "east"))], 6, 1);
        assert_eq!(exports(&mut s), vec![("b".into(), "east".into(), false)]);
        // The lease lapses: cluster and export deletes in one revision, export first.
        s.apply_events(
            &[del(export_kv("b", "east")), del(cluster_kv("east"))],
            7,
            2,
        );
        assert_eq!(exports(&mut s), vec![("b".into(), "east".into(), true)]);
        assert_eq!(
            s.snapshot(2, vec![]).clusters[&c("east")].state,
            ClusterState::Stale
        );
        assert!(!s.expire(5_000), "within the grace");
        assert!(s.expire(10_002), "grace over");
        assert!(exports(&mut s).is_empty());
        assert!(s.snapshot(3, vec![]).clusters.is_empty());
    }

    #[test]
    fn a_returning_cluster_keeps_what_it_republishes_and_drops_the_rest() {
        let mut s = state();
        s.apply_events(
            &[
                del(cluster_kv("east")),
                del(export_kv("a", "east")),
                del(export_kv("b", "east")),
            ],
            6,
            1,
        );
        assert_eq!(exports(&mut s).iter().filter(|e| e.2).count(), 2);
        // East comes back with only "a" and says it is synced.
        let synced = (
            keys::synced_key(&c("east")),
            keys::encode(&SyncedRecord {
                schema: causeway_api::SCHEMA_VERSION,
                revision: 9,
            }),
        );
        s.apply_events(
            &[put(cluster_kv("east")), put(export_kv("a", "east"))],
            8,
            2,
        );
        assert_eq!(
            exports(&mut s),
            vec![
                ("a".into(), "east".into(), false),
                ("b".into(), "east".into(), true)
            ],
            "until synced, the missing one stays stale"
        );
        s.apply_events(&[put(synced)], 9, 3);
        assert_eq!(exports(&mut s), vec![("a".into(), "east".into(), false)]);
    }

    #[test]
    fn relist_drops_only_what_is_gone() {
        let mut s = state();
        s.apply_list(vec![cluster_kv("west"), export_kv("x", "west")], 20, 0);
        s.apply_list(
            vec![
                cluster_kv("east"),
                export_kv("a", "east"),
                cluster_kv("west"),
                export_kv("x", "west"),
            ],
            30,
            1,
        );
        // b was unexported while we were away (east is still live): gone.
        assert_eq!(
            exports(&mut s),
            vec![
                ("a".into(), "east".into(), false),
                ("x".into(), "west".into(), false)
            ]
        );
        // Relist after west's lease lapsed while we were away: west goes stale, not gone.
        s.apply_list(vec![cluster_kv("east"), export_kv("a", "east")], 40, 2);
        assert_eq!(
            exports(&mut s),
            vec![
                ("a".into(), "east".into(), false),
                ("x".into(), "west".into(), true)
            ]
        );
        assert_eq!(s.revision(), 40);
        // What a relist kept as stale ends with the grace, as after a lapse.
        assert!(!s.expire(5_000), "within the grace");
        assert!(s.expire(10_003), "grace over");
        assert_eq!(exports(&mut s), vec![("a".into(), "east".into(), false)]);
        assert!(!s.expire(20_000), "nothing left to drop");
    }

    #[test]
    fn bad_keys_and_values_are_skipped() {
        let mut s = state();
        s.apply_events(
            &[
                Change::Put {
                    key: "/causeway/v2/clusters/east/exports/Bad_NS/x".into(),
                    value: b"{}".to_vec(),
                },
                Change::Put {
                    key: keys::export_key(&svc("c"), &c("east")),
                    value: b"not json".to_vec(),
                },
                put(export_kv("d", "east")),
            ],
            6,
            1,
        );
        let names: Vec<String> = exports(&mut s).into_iter().map(|e| e.0).collect();
        assert_eq!(names, vec!["a", "b", "d"]);
        assert_eq!(s.bad_values.len(), 2);
    }

    #[test]
    fn drills_drain_and_local_health_can_end_the_grace() {
        let mut s = state();
        let drill = DrillRecord {
            schema: causeway_api::SCHEMA_VERSION,
            service: svc("a"),
            cluster: c("east"),
            start_unix_ms: 0,
            end_unix_ms: 1,
            pending: false,
            observers: Vec::new(),
            probe: None,
            origin: String::new(),
        };
        s.apply_events(
            &[Change::Put {
                key: keys::drill_key("d1"),
                value: keys::encode(&drill),
            }],
            6,
            1,
        );
        let snap = s.snapshot(1, vec![]);
        assert!(snap.services[&svc("a")].exports[&c("east")].drained);
        assert!(!snap.services[&svc("b")].exports[&c("east")].drained);
        s.apply_events(&[del(cluster_kv("east"))], 7, 100);
        let down = HealthRecord {
            schema: causeway_api::SCHEMA_VERSION,
            up: false,
            suspect: false,
            rtt_micros: 0,
            observed_unix_ms: 200,
        };
        s.apply_events(
            &[Change::Put {
                key: keys::health_key(&c("west"), &c("east")),
                value: keys::encode(&down),
            }],
            8,
            200,
        );
        assert!(
            s.expire(300),
            "our gateway sees east's gateway down: stale exports go before the grace"
        );
        assert!(exports(&mut s).is_empty());
    }
}
