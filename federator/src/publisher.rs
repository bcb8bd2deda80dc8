//! Publisher: writes this cluster's `clusters/<c>`, `exports/.../<c>` and `synced/<c>` under the
//! cluster lease, as the elected leader among the federator replicas of the cluster.
//!
//! Every write is a transaction guarded by the leader key, so a replica that lost its lease
//! (and does not know yet) cannot overwrite the new leader's view.

use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::hash::{Hash, Hasher};
use std::sync::Arc;
use std::time::{Duration, Instant};

use causeway_api::keys;
use causeway_api::{
    ClusterId, ClusterRecord, ExportRecord, MeshSnapshot, ServiceKey, SyncedRecord, VipRecord,
};
use etcd_client::{Client, Compare, CompareOp, PutOptions, Txn, TxnOp};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use crate::config::{EtcdConfig, VipRange};
use crate::config_server::PeerHealthMap;
use crate::etcd;
use crate::metrics::Metrics;
use crate::source::LocalExports;
use causeway_api::backoff::Backoff;
use causeway_api::task::AbortOnDrop;

/// etcd's default limit of operations per transaction is 128.
const MAX_TXN_OPS: usize = 100;

#[derive(Clone)]
pub(crate) struct PublisherConfig {
    pub cluster: ClusterId,
    pub node: String,
    pub etcd: EtcdConfig,
    pub lease_ttl: Duration,
    pub keepalive_interval: Duration,
    /// What `clusters/<c>/info` says; rewritten when it changes (a rotated bundle).
    pub cluster_record: watch::Receiver<ClusterRecord>,
    pub vip_range: Option<VipRange>,
    /// How long a ClusterSetIP outlives its import (or its import turning headless) before it
    /// is freed for another.
    pub vip_release_grace: Duration,
    /// Headless imports get an address per endpoint of another cluster, through the gateway
    /// (pod networks not flat); off: DNS answers the pods' own addresses.
    pub headless_via_gateway: bool,
}

#[derive(Debug, thiserror::Error)]
enum LeadError {
    #[error(transparent)]
    Etcd(#[from] etcd_client::Error),
    #[error("lease {0:x} expired")]
    LeaseLost(i64),
    #[error("leader key {0} is gone")]
    NotLeader(String),
}

/// Runs until `shutdown`: connect, take a lease, campaign, and publish while leader.
pub(crate) async fn run(
    cfg: PublisherConfig,
    mut local: watch::Receiver<LocalExports>,
    mut mesh: watch::Receiver<Arc<MeshSnapshot>>,
    mut health: watch::Receiver<PeerHealthMap>,
    leader: watch::Sender<bool>,
    metrics: Arc<Metrics>,
    shutdown: CancellationToken,
) {
    let mut backoff = Backoff::default();
    loop {
        let client = tokio::select! {
            _ = shutdown.cancelled() => return,
            c = etcd::connect(&cfg.etcd) => c,
        };
        let client = match client {
            Ok(c) => c,
            Err(e) => {
                tracing::warn!(error = %e, "publisher cannot reach etcd; retrying");
                tokio::select! { _ = shutdown.cancelled() => return, _ = backoff.wait() => continue }
            }
        };
        let res = tokio::select! {
            _ = shutdown.cancelled() => return,
            r = lead(&cfg, client.clone(), &mut local, &mut mesh, &mut health, &leader, &metrics, &shutdown, &mut backoff) => r,
        };
        leader.send_replace(false);
        metrics.leader.set(0);
        match res {
            Ok(()) => return,
            Err(e) => {
                tracing::warn!(error = %e, cluster = %cfg.cluster, "publisher lost leadership or etcd; starting over");
                tokio::select! { _ = shutdown.cancelled() => return, _ = backoff.wait() => {} }
            }
        }
    }
}

/// One term: lease, campaign, publish. Returns Ok on shutdown (after revoking the lease).
#[allow(clippy::too_many_arguments)]
async fn lead(
    cfg: &PublisherConfig,
    mut client: Client,
    local: &mut watch::Receiver<LocalExports>,
    mesh: &mut watch::Receiver<Arc<MeshSnapshot>>,
    health: &mut watch::Receiver<PeerHealthMap>,
    leader: &watch::Sender<bool>,
    metrics: &Metrics,
    shutdown: &CancellationToken,
    backoff: &mut Backoff,
) -> Result<(), LeadError> {
    let lease = client
        .lease_grant(cfg.lease_ttl.as_secs().max(2) as i64, None)
        .await?
        .id();
    tracing::info!(lease = format_args!("{lease:x}"), node = %cfg.node, "lease granted; campaigning");
    let lost = CancellationToken::new();
    let keepalive = tokio::spawn(keep_lease_alive(
        client.clone(),
        lease,
        cfg.keepalive_interval,
        cfg.lease_ttl,
        lost.clone(),
    ));
    let _stop_keepalive = AbortOnDrop(keepalive);

    let campaign = tokio::select! {
        _ = lost.cancelled() => return Err(LeadError::LeaseLost(lease)),
        r = client.campaign(keys::election_prefix(&cfg.cluster), cfg.node.clone(), lease) => r?,
    };
    let leader_key = campaign
        .leader()
        .map(|l| l.key().to_vec())
        .unwrap_or_default();
    let leader_key_str = String::from_utf8_lossy(&leader_key).into_owned();
    tracing::info!(cluster = %cfg.cluster, node = %cfg.node, key = %leader_key_str, "elected leader; publishing");
    leader.send_replace(true);
    metrics.leader.set(1);
    metrics.leader_elections.inc();

    let mut w = Writer {
        client: client.clone(),
        lease,
        leader_key,
        published: BTreeMap::new(),
        cluster: cfg.cluster.clone(),
    };
    let mut record = cfg.cluster_record.clone();
    record.borrow_and_update();
    let desired = local.borrow_and_update().clone();
    w.full_sync(cfg, &desired).await?;
    backoff.reset();
    let mut dirty = false;
    let mut health_open = true;
    let mut retry = tokio::time::interval(Duration::from_millis(500));
    retry.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut vips = cfg
        .vip_range
        .map(|range| Vips::new(range, cfg.vip_release_grace, cfg.headless_via_gateway));
    // Frees what outlived its grace even when no snapshot comes; also relists what etcd holds.
    let mut sweep = tokio::time::interval(
        (cfg.vip_release_grace / 4).clamp(Duration::from_millis(250), Duration::from_secs(30)),
    );
    sweep.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        let snapshot = tokio::select! {
            _ = shutdown.cancelled() => {
                // A graceful stop releases the lease: peers see the cluster go stale at once
                // instead of after the TTL, and another replica can take over right away.
                let _ = client.lease_revoke(lease).await;
                return Ok(());
            }
            _ = lost.cancelled() => return Err(LeadError::LeaseLost(lease)),
            r = local.changed() => {
                if r.is_err() { return Ok(()); }
                None
            }
            r = mesh.changed() => {
                if r.is_err() { return Ok(()); }
                Some(mesh.borrow_and_update().clone())
            }
            _ = retry.tick(), if dirty => None,
            _ = sweep.tick(), if vips.is_some() => {
                let snap = mesh.borrow().clone();
                if let Some(v) = vips.as_mut() {
                    v.forget_held();
                    if let Err(e) = v.reconcile(&mut client, &cfg.cluster, &snap).await {
                        tracing::debug!(error = %e, "ClusterSetIP sweep failed; will retry");
                    }
                }
                continue;
            }
            r = record.changed() => {
                if r.is_err() { return Ok(()); }
                let rec = record.borrow_and_update().clone();
                let op = w.put(keys::cluster_key(&cfg.cluster), keys::encode(&rec));
                match w.guarded(vec![op]).await {
                    Ok(_) => tracing::info!(cluster = %cfg.cluster, "cluster record republished (trust bundle or certificate changed)"),
                    Err(LeadError::Etcd(e)) => {
                        // Written again at the next election's full sync at the latest.
                        tracing::warn!(error = %e, "republishing the cluster record failed; retrying");
                        tokio::time::sleep(Duration::from_millis(500)).await;
                        record.mark_changed();
                    }
                    Err(e) => return Err(e),
                }
                continue;
            }
            r = health.changed(), if health_open => {
                if r.is_err() {
                    // No config server (config_listen: null): no gateway reports health.
                    health_open = false;
                    continue;
                }
                let reports = health.borrow_and_update().clone();
                if let Err(e) = w.publish_health(&reports).await {
                    match e {
                        LeadError::Etcd(e) => tracing::warn!(error = %e, "publishing peer health failed"),
                        e => return Err(e),
                    }
                }
                continue;
            }
        };
        if let (Some(v), Some(snap)) = (vips.as_mut(), &snapshot) {
            if let Err(e) = v.reconcile(&mut client, &cfg.cluster, snap).await {
                v.forget_held();
                tracing::debug!(error = %e, "VIP allocation failed; will retry on the next snapshot");
            }
            if !dirty {
                continue;
            }
        }
        let desired = local.borrow().clone();
        // The ClusterSetIP of an import this cluster's export makes new, in the same
        // transaction as the export: DNS has an address the moment the import exists.
        let early = match vips.as_ref() {
            Some(v) => v.for_new_imports(&cfg.cluster, &desired, &w.published, &mesh.borrow()),
            None => Vec::new(),
        };
        let extra = early
            .iter()
            .map(|(owner, _, value)| TxnOp::put(owner.key(&cfg.cluster), value.clone(), None));
        match w.reconcile_with(&desired, extra.collect()).await {
            Ok(()) => {
                dirty = false;
                if let Some(v) = vips.as_mut() {
                    v.record(early);
                }
            }
            Err(LeadError::Etcd(e)) => {
                tracing::warn!(error = %e, "publishing exports failed; will retry");
                dirty = true;
            }
            Err(e) => return Err(e),
        }
    }
}

/// Keeps the lease alive; cancels `lost` when etcd says the lease expired.
///
/// While etcd is unreachable the lease is not given up locally: etcd renews every lease's TTL
/// when it restarts or elects a new leader, so after an outage the same lease usually lives on
/// and nothing needs republishing. A lease that did expire is reported by the next keepalive
/// (TTL 0), and the writes in between fail their leader-key guard.
async fn keep_lease_alive(
    mut client: Client,
    lease: i64,
    every: Duration,
    ttl: Duration,
    lost: CancellationToken,
) {
    let mut last_ok = Instant::now();
    let mut warned = false;
    let mut stream = None;
    let mut tick = tokio::time::interval(every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        if stream.is_none() {
            match client.lease_keep_alive(lease).await {
                Ok(s) => stream = Some(s),
                Err(e) => tracing::debug!(error = %e, "lease keepalive stream failed"),
            }
        }
        if let Some((keeper, responses)) = stream.as_mut() {
            let res = async {
                keeper.keep_alive().await?;
                tokio::time::timeout(every, responses.message())
                    .await
                    .map_err(|_| etcd_client::Error::InvalidArgs("keepalive timed out".into()))?
            }
            .await;
            match res {
                Ok(Some(r)) if r.ttl() > 0 => {
                    if warned {
                        tracing::info!(
                            lease = format_args!("{lease:x}"),
                            "lease keepalive works again"
                        );
                    }
                    last_ok = Instant::now();
                    warned = false;
                }
                Ok(Some(_)) => {
                    tracing::warn!(
                        lease = format_args!("{lease:x}"),
                        "etcd says the lease expired"
                    );
                    lost.cancel();
                    return;
                }
                Ok(None) | Err(_) => stream = None,
            }
        }
        if !warned && last_ok.elapsed() >= ttl {
            tracing::warn!(
                lease = format_args!("{lease:x}"),
                "no lease keepalive for a whole TTL; etcd unreachable?"
            );
            warned = true;
        }
    }
}

// === impl Writer ===

struct Writer {
    client: Client,
    lease: i64,
    leader_key: Vec<u8>,
    cluster: ClusterId,
    /// What etcd holds of this cluster's exports, as far as we know (`None`: present but to be
    /// rewritten).
    published: BTreeMap<ServiceKey, Option<ExportRecord>>,
}

impl Writer {
    /// Runs `ops` in transactions guarded by the leader key.
    async fn guarded(&mut self, ops: Vec<TxnOp>) -> Result<i64, LeadError> {
        let mut revision = 0;
        for chunk in ops.chunks(MAX_TXN_OPS) {
            let txn = Txn::new()
                .when([Compare::create_revision(
                    self.leader_key.clone(),
                    CompareOp::Greater,
                    0,
                )])
                .and_then(chunk.to_vec());
            let resp = self.client.txn(txn).await?;
            if !resp.succeeded() {
                return Err(LeadError::NotLeader(
                    String::from_utf8_lossy(&self.leader_key).into_owned(),
                ));
            }
            revision = resp.header().map(|h| h.revision()).unwrap_or(revision);
        }
        Ok(revision)
    }

    fn put(&self, key: String, value: Vec<u8>) -> TxnOp {
        TxnOp::put(key, value, Some(PutOptions::new().with_lease(self.lease)))
    }

    /// On election: learn what etcd holds for this cluster, then make it match.
    async fn full_sync(
        &mut self,
        cfg: &PublisherConfig,
        desired: &LocalExports,
    ) -> Result<(), LeadError> {
        let record = cfg.cluster_record.borrow().clone();
        let ops = vec![self.put(keys::cluster_key(&cfg.cluster), keys::encode(&record))];
        self.guarded(ops).await?;
        // Exports of this cluster left by a previous leader (same lease gone or not).
        let (kvs, _) = etcd::list_prefix(
            &mut self.client,
            &keys::cluster_exports_prefix(&cfg.cluster),
            false,
        )
        .await?;
        self.published.clear();
        for (key, value, lease) in kvs {
            if let Ok(keys::Key::Export { service, cluster }) = keys::parse_bytes(&key) {
                if cluster == self.cluster {
                    // Only keys under our own lease count as published; others (a previous
                    // leader's) are rewritten under ours, or deleted when no longer exported.
                    let rec =
                        keys::decode::<ExportRecord>(&keys::export_key(&service, &cluster), &value)
                            .ok()
                            .filter(|_| lease == self.lease);
                    self.published.insert(service, rec);
                }
            }
        }
        self.reconcile(desired).await?;
        let revision = self
            .client
            .get(keys::cluster_key(&cfg.cluster), None)
            .await?
            .header()
            .map(|h| h.revision())
            .unwrap_or(0);
        let synced = SyncedRecord {
            schema: causeway_api::SCHEMA_VERSION,
            revision,
        };
        let op = self.put(keys::synced_key(&cfg.cluster), keys::encode(&synced));
        self.guarded(vec![op]).await?;
        tracing::info!(cluster = %cfg.cluster, exports = self.published.len(), revision, "initial sync published");
        Ok(())
    }

    /// Writes what this cluster's gateways see of their peers under `health/<us>/<peer>`.
    async fn publish_health(&mut self, reports: &PeerHealthMap) -> Result<(), LeadError> {
        let ops = reports
            .iter()
            .map(|(peer, rec)| self.put(keys::health_key(&self.cluster, peer), keys::encode(rec)))
            .collect::<Vec<_>>();
        if !ops.is_empty() {
            self.guarded(ops).await?;
        }
        Ok(())
    }

    /// Puts what changed and deletes what is no longer exported.
    async fn reconcile(&mut self, desired: &LocalExports) -> Result<(), LeadError> {
        self.reconcile_with(desired, Vec::new()).await
    }

    /// [`Writer::reconcile`], with `extra` in its first transaction (when it writes anything).
    async fn reconcile_with(
        &mut self,
        desired: &LocalExports,
        extra: Vec<TxnOp>,
    ) -> Result<(), LeadError> {
        if !desired.loaded {
            return Ok(());
        }
        let mut ops = extra;
        let mut puts = Vec::new();
        let mut deletes = Vec::new();
        for (key, export) in &desired.exports {
            if self.published.get(key).and_then(Option::as_ref) != Some(&export.record) {
                ops.push(self.put(
                    keys::export_key(key, &self.cluster),
                    keys::encode(&export.record),
                ));
                puts.push((key.clone(), export.record.clone()));
            }
        }
        for key in self.published.keys() {
            if !desired.exports.contains_key(key) {
                ops.push(TxnOp::delete(keys::export_key(key, &self.cluster), None));
                deletes.push(key.clone());
            }
        }
        if ops.is_empty() {
            return Ok(());
        }
        self.guarded(ops).await?;
        for (k, r) in puts {
            tracing::debug!(service = %k, "export published");
            self.published.insert(k, Some(r));
        }
        for k in deletes {
            tracing::info!(service = %k, "export withdrawn");
            self.published.remove(&k);
        }
        Ok(())
    }
}

// === VIPs ===

/// The first address of `range` no key holds, searched from a start `owner` hashes to (so an
/// owner tends to get the same address again after it was freed).
fn free_address(
    range: VipRange,
    owner: &Owner,
    used: &std::collections::HashSet<std::net::IpAddr>,
) -> Option<std::net::IpAddr> {
    let mut h = std::collections::hash_map::DefaultHasher::new();
    owner.hash(&mut h);
    let start = h.finish() as u32;
    (0..range.size().min(1 << 20))
        .map(|i| range.nth(start.wrapping_add(i)))
        .find(|ip| !used.contains(ip))
}

/// The address schema v1 gave `key`, if its key is there and readable (a role without read on
/// `/causeway/v1/` simply finds none).
async fn v1_vip(client: &mut Client, key: &ServiceKey) -> Option<std::net::IpAddr> {
    let resp = client.get(keys::v1_vip_key(key), None).await.ok()?;
    let kv = resp.kvs().first()?;
    let json: serde_json::Value = serde_json::from_slice(kv.value()).ok()?;
    json.get("ip")?.as_str()?.parse().ok()
}

/// What an address of `clusters/<c>/vips/` belongs to.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
enum Owner {
    /// A ClusterSetIP import: `vips/<ns>/<svc>`.
    Service(ServiceKey),
    /// One endpoint of a headless import in another cluster:
    /// `vips/<ns>/<svc>/<exporter>/<name>`.
    Endpoint(ServiceKey, ClusterId, String),
}

impl Owner {
    fn key(&self, cluster: &ClusterId) -> String {
        match self {
            Owner::Service(s) => keys::vip_key(cluster, s),
            Owner::Endpoint(s, exporter, name) => {
                keys::endpoint_vip_key(cluster, s, exporter, name)
            }
        }
    }
}

impl fmt::Display for Owner {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Owner::Service(s) => write!(f, "{s}"),
            Owner::Endpoint(s, exporter, name) => write!(f, "{s} endpoint {name} of {exporter}"),
        }
    }
}

/// The addresses of `clusters/<c>/vips/` (no other cluster reads or writes it): a ClusterSetIP
/// per ClusterSetIP import, and in gateway mode (`per_endpoint`) one per endpoint of another
/// cluster of each headless import, whose traffic this cluster's gateway sends to exactly that
/// endpoint (DESIGN "Addressing and failover"). An address whose owner is gone (an import
/// unexported or turned headless, an endpoint gone or not ready) is freed after `grace`, and no
/// address is given while a key holds it. Only the leader writes here, so what etcd holds is
/// listed once per sweep and kept up to date with our own writes in between. An import that
/// had an address under schema v1 (`/causeway/v1/vips/<ns>/<svc>`, shared by the federation)
/// keeps it when it is in the range and free, so an upgrade does not move ClusterSetIPs.
struct Vips {
    range: VipRange,
    grace: Duration,
    per_endpoint: bool,
    /// What etcd holds: owner → (address, the value as stored). `None`: list it again.
    held: Option<HashMap<Owner, (std::net::IpAddr, Vec<u8>)>>,
    /// Since when a held address has had no owner.
    orphaned: HashMap<Owner, Instant>,
}

impl Vips {
    fn new(range: VipRange, grace: Duration, per_endpoint: bool) -> Self {
        Self {
            range,
            grace,
            per_endpoint,
            held: None,
            orphaned: HashMap::new(),
        }
    }

    fn forget_held(&mut self) {
        self.held = None;
    }

    /// The ClusterSetIPs to write with the exports `desired` publishes for the first time:
    /// one per ClusterSetIP export of a service the mesh does not import yet, when what etcd
    /// holds is known (listed, and only the leader writes here). Each: (owner, address, value).
    fn for_new_imports(
        &self,
        cluster: &ClusterId,
        desired: &LocalExports,
        published: &BTreeMap<ServiceKey, Option<ExportRecord>>,
        snap: &MeshSnapshot,
    ) -> Vec<(Owner, std::net::IpAddr, Vec<u8>)> {
        let Some(held) = &self.held else {
            return Vec::new();
        };
        let mut used: std::collections::HashSet<std::net::IpAddr> =
            held.values().map(|(ip, _)| *ip).collect();
        let mut out = Vec::new();
        for (key, export) in &desired.exports {
            let owner = Owner::Service(key.clone());
            let new = export.record.service_type == causeway_api::ServiceType::ClusterSetIP
                && !published.contains_key(key)
                && !snap.services.contains_key(key)
                && !held.contains_key(&owner);
            if !new {
                continue;
            }
            let Some(ip) = free_address(self.range, &owner, &used) else {
                continue;
            };
            used.insert(ip);
            let rec = VipRecord {
                schema: causeway_api::SCHEMA_VERSION,
                ip,
            };
            tracing::debug!(owner = %owner, %ip, %cluster, "address allocated with its first export");
            out.push((owner, ip, keys::encode(&rec)));
        }
        out
    }

    /// Addresses written by [`Vips::for_new_imports`]'s transaction.
    fn record(&mut self, written: Vec<(Owner, std::net::IpAddr, Vec<u8>)>) {
        if let Some(held) = self.held.as_mut() {
            for (owner, ip, value) in written {
                tracing::info!(owner = %owner, %ip, from = "allocated with its first export", "address");
                held.insert(owner, (ip, value));
            }
        }
    }

    async fn list(
        client: &mut Client,
        cluster: &ClusterId,
    ) -> Result<HashMap<Owner, (std::net::IpAddr, Vec<u8>)>, etcd_client::Error> {
        let (kvs, _) =
            etcd::list_prefix(client, &keys::cluster_vips_prefix(cluster), false).await?;
        let mut held = HashMap::new();
        for (key, value, _) in kvs {
            let owner = match keys::parse_bytes(&key) {
                Ok(keys::Key::Vip {
                    service,
                    cluster: c,
                }) if &c == cluster => Owner::Service(service),
                Ok(keys::Key::EndpointVip {
                    service,
                    cluster: c,
                    exporter,
                    name,
                }) if &c == cluster => Owner::Endpoint(service, exporter, name),
                _ => continue,
            };
            let key_str = String::from_utf8_lossy(&key).into_owned();
            match keys::decode::<VipRecord>(&key_str, &value) {
                Ok(rec) => {
                    held.insert(owner, (rec.ip, value));
                }
                Err(e) => {
                    tracing::warn!(key = %key_str, error = %e, "unreadable address record; its address stays reserved")
                }
            }
        }
        Ok(held)
    }

    /// Who should hold an address now, in a stable order.
    fn wanted(
        &self,
        cluster: &ClusterId,
        snap: &MeshSnapshot,
    ) -> std::collections::BTreeSet<Owner> {
        let mut out = std::collections::BTreeSet::new();
        for (key, svc) in &snap.services {
            match svc.import.service_type {
                causeway_api::ServiceType::ClusterSetIP => {
                    out.insert(Owner::Service(key.clone()));
                }
                causeway_api::ServiceType::Headless if self.per_endpoint => {
                    for (exporter, export) in &svc.exports {
                        if exporter == cluster {
                            continue;
                        }
                        for e in export.record.endpoints.iter().filter(|e| e.ready) {
                            out.insert(Owner::Endpoint(
                                key.clone(),
                                exporter.clone(),
                                e.dns_label(),
                            ));
                        }
                    }
                }
                causeway_api::ServiceType::Headless => {}
            }
        }
        out
    }

    async fn reconcile(
        &mut self,
        client: &mut Client,
        cluster: &ClusterId,
        snap: &MeshSnapshot,
    ) -> Result<(), etcd_client::Error> {
        if self.held.is_none() {
            self.held = Some(Self::list(client, cluster).await?);
        }
        let wanted = self.wanted(cluster, snap);
        let held = self.held.as_mut().expect("listed above");
        let now = Instant::now();
        // Free what has had no owner for the grace.
        let mut freed = Vec::new();
        for (owner, (ip, raw)) in held.iter() {
            if wanted.contains(owner) {
                self.orphaned.remove(owner);
                continue;
            }
            let since = *self.orphaned.entry(owner.clone()).or_insert(now);
            if now.duration_since(since) < self.grace {
                continue;
            }
            let k = owner.key(cluster);
            // Only the value we saw: a key rewritten meanwhile is left alone.
            let txn = Txn::new()
                .when([Compare::value(k.clone(), CompareOp::Equal, raw.clone())])
                .and_then([TxnOp::delete(k, None)]);
            if client.txn(txn).await?.succeeded() {
                tracing::info!(owner = %owner, %ip, "address freed: its owner is gone");
            }
            freed.push(owner.clone());
        }
        for owner in freed {
            held.remove(&owner);
            self.orphaned.remove(&owner);
        }
        self.orphaned.retain(|k, _| held.contains_key(k));
        // Give every owner without one an address no key holds.
        let mut used: std::collections::HashSet<std::net::IpAddr> =
            held.values().map(|(ip, _)| *ip).collect();
        for owner in wanted {
            if held.contains_key(&owner) {
                continue;
            }
            let range = self.range;
            let adopted = match &owner {
                Owner::Service(key) => v1_vip(client, key)
                    .await
                    .filter(|ip| range.contains(*ip) && !used.contains(ip)),
                Owner::Endpoint(..) => None,
            };
            let Some(ip) = adopted.or_else(|| free_address(range, &owner, &used)) else {
                tracing::warn!(owner = %owner, "VIP range exhausted");
                continue;
            };
            let k = owner.key(cluster);
            let rec = VipRecord {
                schema: causeway_api::SCHEMA_VERSION,
                ip,
            };
            let value = keys::encode(&rec);
            let txn = Txn::new()
                .when([Compare::version(k.clone(), CompareOp::Equal, 0)])
                .and_then([TxnOp::put(k, value.clone(), None)]);
            if client.txn(txn).await?.succeeded() {
                let from = if adopted.is_some() {
                    "kept from schema v1"
                } else {
                    "allocated"
                };
                tracing::info!(owner = %owner, %ip, from, "address");
                held.insert(owner, (ip, value));
            } else {
                // Someone wrote it (a previous leader): learn it at the next list.
                self.held = None;
                return Ok(());
            }
            used.insert(ip);
        }
        Ok(())
    }
}
