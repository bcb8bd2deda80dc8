//! Wires the federator together: source → publisher, etcd → mesh view → snapshot → sinks, admin.

use std::net::SocketAddr;
use std::sync::Arc;

use causeway_api::{ClusterRecord, MeshSnapshot, SCHEMA_VERSION};
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::admin::{self, AdminState};
use crate::config::Validated;
use crate::config_server::{self, PeerHealthMap, ServeConfig};
use crate::metrics::Metrics;
use crate::publisher::{self, PublisherConfig};
use crate::source::file::FileSource;
use crate::source::LocalExports;
use crate::view::{self, ViewConfig};

#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error(transparent)]
    Tls(#[from] crate::issuer::LoadError),
    #[error("mesh DNS: {0}")]
    Dns(#[from] causeway_dns::DnsError),
    #[error(transparent)]
    ConfigServer(#[from] crate::config_server::ServeError),
    #[error("Kubernetes client (KUBECONFIG or in-cluster config): {0}")]
    Kube(#[from] kube::Error),
    #[error("binding admin listener {addr}: {source}")]
    Admin {
        addr: SocketAddr,
        source: std::io::Error,
    },
}

/// A running federator.
pub struct Federator {
    pub admin_addr: SocketAddr,
    /// The gateway config endpoint, when enabled.
    pub config_addr: Option<SocketAddr>,
    /// The mesh DNS server (UDP and TCP), when enabled.
    pub dns_addr: Option<SocketAddr>,
    pub snapshots: watch::Receiver<Arc<MeshSnapshot>>,
    pub leader: watch::Receiver<bool>,
    pub metrics: Arc<Metrics>,
    shutdown: CancellationToken,
    tasks: Vec<(&'static str, JoinHandle<()>)>,
    /// The first task that ended before shutdown ([`Federator::died`]).
    died: watch::Receiver<Option<&'static str>>,
}

impl Federator {
    pub async fn start(cfg: Validated) -> Result<Federator, StartError> {
        let shutdown = CancellationToken::new();
        let metrics = Arc::new(Metrics::new());
        let c = &cfg.config;
        // The trust bundle, issuer and own certificate, reloaded on change (issuer.rs).
        let (tls_watcher, tls_now) = crate::issuer::TlsWatcher::start(
            crate::issuer::TlsSources {
                cluster: cfg.cluster.clone(),
                trust_domain: cfg.trust_domain.clone(),
                bundle: c.trust_bundle_file.clone(),
                cert: c.cert_file.clone().zip(c.key_file.clone()),
                issuer: c.issuer.clone(),
                interval: c.tls_reload_interval,
            },
            &metrics.registry,
        )?;
        let cluster_record = ClusterRecord {
            schema: SCHEMA_VERSION,
            gateway_addresses: c.gateway_addresses.clone(),
            trust_domain: cfg.trust_domain.clone(),
            trust_bundle_pem: tls_now.bundle_pem.clone(),
            locality: c.locality.clone(),
            federator_version: env!("CARGO_PKG_VERSION").to_string(),
            certificate_not_after: tls_now.own.map(|v| v.not_after),
        };
        let (tls_tx, tls_rx) = watch::channel(Arc::new(tls_now));
        let (record_tx, record_rx) = watch::channel(cluster_record);

        let mut tasks = vec![(
            "tls-reload",
            tokio::spawn(tls_watcher.run(tls_tx, shutdown.clone())),
        )];
        {
            // What a TLS change alters in `clusters/<c>/info` and the expiry metric.
            let mut tls = tls_rx.clone();
            let metrics = metrics.clone();
            let cluster = cfg.cluster.clone();
            tasks.push((
                "tls-record",
                tokio::spawn(async move {
                    loop {
                        let now = tls.borrow_and_update().clone();
                        if let Some(v) = now.own {
                            metrics
                                .cert_expiry
                                .with_label_values(&["federator", cluster.as_str()])
                                .set(v.not_after);
                        }
                        record_tx.send_if_modified(|r| {
                            let not_after = now.own.map(|v| v.not_after);
                            let changed = r.trust_bundle_pem != now.bundle_pem
                                || r.certificate_not_after != not_after;
                            r.trust_bundle_pem.clone_from(&now.bundle_pem);
                            r.certificate_not_after = not_after;
                            changed
                        });
                        if tls.changed().await.is_err() {
                            return;
                        }
                    }
                }),
            ));
        }
        let (local_tx, local_rx) = watch::channel(LocalExports::default());
        // The Kubernetes source starts below, once the snapshots and the leader flag exist.
        let mut kube_local_tx = None;
        match &c.exports_dir {
            _ if c.source == crate::config::SourceKind::Kube => kube_local_tx = Some(local_tx),
            Some(dir) => {
                let src = FileSource::new(dir.clone());
                let interval = c.exports_poll_interval;
                tasks.push(("file-source", tokio::spawn(src.run(interval, local_tx))));
            }
            None => {
                // No source: this cluster imports only.
                local_tx.send_replace(LocalExports {
                    loaded: true,
                    ..LocalExports::default()
                });
                std::mem::forget(local_tx);
            }
        }
        {
            let metrics = metrics.clone();
            let mut rx = local_rx.clone();
            tasks.push((
                "local-metrics",
                tokio::spawn(async move {
                    loop {
                        let n = rx.borrow_and_update().exports.len();
                        metrics.local_exports.set(n as i64);
                        if rx.changed().await.is_err() {
                            return;
                        }
                    }
                }),
            ));
        }

        let (snap_tx, snap_rx) = watch::channel(Arc::new(MeshSnapshot {
            local_cluster: Some(cfg.cluster.clone()),
            ..MeshSnapshot::default()
        }));
        let (leader_tx, leader_rx) = watch::channel(false);
        let (health_tx, health_rx) = watch::channel(PeerHealthMap::new());
        let traffic = Arc::new(crate::traffic::TrafficBook::default());

        let view_cfg = ViewConfig {
            cluster: cfg.cluster.clone(),
            etcd: c.etcd.clone(),
            stale_grace: c.stale_grace,
            debounce: c.debounce,
            // Addresses for other clusters' endpoints come from the VIP range (universal mode)
            // or from the derived Services the Kubernetes sink writes; with neither (and on a
            // flat pod network) DNS answers the pods' own addresses.
            headless_via_gateway: !c.flat_pod_network && (cfg.vip_range.is_some() || c.kube_sink),
        };
        tasks.push((
            "mesh-view",
            tokio::spawn(view::run(
                view_cfg,
                snap_tx,
                local_rx.clone(),
                metrics.clone(),
                shutdown.clone(),
            )),
        ));

        let pub_cfg = PublisherConfig {
            cluster: cfg.cluster.clone(),
            node: cfg.node.clone(),
            etcd: c.etcd.clone(),
            lease_ttl: c.lease_ttl,
            keepalive_interval: c.keepalive_interval,
            cluster_record: record_rx,
            vip_range: cfg.vip_range,
            vip_release_grace: c.vip_release_grace,
            headless_via_gateway: !c.flat_pod_network,
        };
        tasks.push((
            "publisher",
            tokio::spawn(publisher::run(
                pub_cfg,
                local_rx.clone(),
                snap_rx.clone(),
                health_rx.clone(),
                leader_tx,
                metrics.clone(),
                shutdown.clone(),
            )),
        ));

        // What DNS answers from: the mesh snapshot, or in Kubernetes mode its view with the
        // addresses the derived Services hold.
        let mut dns_snapshots = snap_rx.clone();
        if kube_local_tx.is_some() || c.kube_sink {
            let client = kube::Client::try_default().await?;
            let kube_metrics = crate::kubewatch::KubeMetrics::new(&metrics.registry);
            if let Some(tx) = kube_local_tx {
                let (stores, writers) = crate::source::kube::stores();
                tasks.push((
                    "kube-source",
                    tokio::spawn(crate::source::kube::run(
                        client.clone(),
                        kube_metrics.clone(),
                        stores.clone(),
                        writers,
                        tx,
                        shutdown.clone(),
                    )),
                ));
                tasks.push((
                    "kube-export-status",
                    tokio::spawn(crate::sink::status::run(
                        client.clone(),
                        kube_metrics.clone(),
                        stores,
                        snap_rx.clone(),
                        leader_rx.clone(),
                        cfg.cluster.clone(),
                        shutdown.clone(),
                    )),
                ));
            }
            tasks.push((
                "drill-controller",
                tokio::spawn(crate::drill::controller::run(
                    client.clone(),
                    crate::drill::controller::ControllerConfig {
                        cluster: cfg.cluster.clone(),
                        etcd: c.etcd.clone(),
                        options: c.drills.clone(),
                    },
                    snap_rx.clone(),
                    leader_rx.clone(),
                    metrics.clone(),
                    shutdown.clone(),
                )),
            ));
            if c.kube_sink {
                let (held_tx, held_rx) = watch::channel(Arc::new(Default::default()));
                tasks.push((
                    "kube-sink",
                    tokio::spawn(crate::sink::kube::run(
                        client,
                        c.kube.clone(),
                        kube_metrics,
                        cfg.vip_range.is_some(),
                        snap_rx.clone(),
                        leader_rx.clone(),
                        held_tx,
                        shutdown.clone(),
                    )),
                ));
                // DNS answers only the addresses the derived Services hold here.
                let (tx, rx) = watch::channel(snap_rx.borrow().clone());
                tasks.push((
                    "kube-dns-view",
                    tokio::spawn(dns_view_task(
                        snap_rx.clone(),
                        held_rx,
                        cfg.vip_range.is_some(),
                        tx,
                        shutdown.clone(),
                    )),
                ));
                dns_snapshots = rx;
            }
        }

        let mut dns_addr = None;
        if let Some(dns_cfg) = cfg.dns() {
            let server =
                causeway_dns::DnsServer::bind(dns_cfg, dns_snapshots, &metrics.registry).await?;
            dns_addr = Some(server.local_addr());
            let stop = shutdown.clone();
            tasks.push((
                "dns",
                tokio::spawn(async move {
                    if let Err(e) = server.run(stop.cancelled_owned()).await {
                        tracing::error!(error = %e, "mesh DNS server died");
                    }
                }),
            ));
        }

        tasks.push((
            "drill-observer",
            tokio::spawn(crate::drill::observer::run(
                crate::drill::observer::ObserverConfig {
                    cluster: cfg.cluster.clone(),
                    etcd: c.etcd.clone(),
                    dns: dns_addr,
                    vip_range: c.vip_range.as_deref().and_then(|r| r.parse().ok()),
                    options: c.drills.clone(),
                },
                snap_rx.clone(),
                leader_rx.clone(),
                metrics.clone(),
                shutdown.clone(),
            )),
        ));

        let mut config_addr = None;
        if let Some(listen) = c.config_listen {
            let (cfg_tx, cfg_rx) =
                watch::channel(Arc::new(crate::gwconfig::GatewayConfig::default()));
            tasks.push((
                "gateway-config-builder",
                tokio::spawn(config_server::run_builder(
                    cfg.cluster.clone(),
                    snap_rx.clone(),
                    local_rx.clone(),
                    tls_rx.clone(),
                    cfg_tx,
                    c.debounce,
                    config_server::BuilderOptions {
                        gateway_port_range: c
                            .kube_sink
                            .then_some((c.kube.gateway_port_first, c.kube.gateway_port_count)),
                        overrides: cfg.import_overrides.clone(),
                    },
                    shutdown.clone(),
                )),
            ));
            let serve_cfg = ServeConfig {
                listen,
                cluster: cfg.cluster.clone(),
                trust_domain: cfg.trust_domain.clone(),
            };
            let (addr, task) = config_server::serve(
                serve_cfg,
                tls_rx.clone(),
                cfg_rx,
                health_tx,
                traffic.clone(),
                &metrics,
                shutdown.clone(),
            )
            .await?;
            config_addr = Some(addr);
            tasks.push(("gateway-config-server", task));
        }

        let listener = tokio::net::TcpListener::bind(c.admin_listen)
            .await
            .map_err(|source| StartError::Admin {
                addr: c.admin_listen,
                source,
            })?;
        let admin_addr = listener.local_addr().map_err(|source| StartError::Admin {
            addr: c.admin_listen,
            source,
        })?;
        let binds = [
            ("admin", Some(admin_addr)),
            ("config", config_addr),
            ("dns", dns_addr),
        ];
        for (what, addr) in binds {
            if let Some(addr) = addr.filter(|a| a.ip().is_unspecified()) {
                tracing::warn!(listener = what, %addr, "listening on every interface: only gateway peer listeners may face the WAN; bind a cluster-side address unless a firewall keeps the WAN out (docs/security.md)");
            }
        }
        let app = admin::router(AdminState {
            snapshots: snap_rx.clone(),
            local: local_rx,
            leader: leader_rx.clone(),
            metrics: metrics.clone(),
            traffic,
            health: health_rx,
        });
        let stop = shutdown.clone();
        tasks.push((
            "admin",
            tokio::spawn(async move {
                let app = app.into_make_service_with_connect_info::<admin::Caller>();
                let res = axum::serve(listener, app)
                    .with_graceful_shutdown(async move { stop.cancelled().await })
                    .await;
                if let Err(e) = res {
                    tracing::error!(error = %e, "admin server died");
                }
            }),
        ));
        let (died_tx, died) = watch::channel(None);
        let tasks = supervise(tasks, &shutdown, &metrics, &died_tx);
        tracing::info!(cluster = %cfg.cluster, node = %cfg.node, %admin_addr, "federator started");
        Ok(Federator {
            died,
            admin_addr,
            config_addr,
            dns_addr,
            snapshots: snap_rx,
            leader: leader_rx,
            metrics,
            shutdown,
            tasks,
        })
    }

    /// Resolves with the name of the first task that ended before shutdown; the federator is
    /// stopping then (see [`supervise`]). Pending while every task runs.
    pub async fn died(&self) -> &'static str {
        let mut died = self.died.clone();
        let name = match died.wait_for(Option::is_some).await {
            Ok(name) => name.unwrap_or("unknown"),
            Err(_) => return std::future::pending().await,
        };
        name
    }

    /// Stops gracefully: the leader revokes its lease, tasks end.
    pub async fn shutdown(self) {
        self.shutdown.cancel();
        for (name, task) in self.tasks {
            match tokio::time::timeout(std::time::Duration::from_secs(5), task).await {
                Ok(Ok(())) => {}
                Ok(Err(e)) if e.is_cancelled() => {}
                Ok(Err(e)) => tracing::error!(task = name, error = %e, "task panicked"),
                Err(_) => tracing::warn!(task = name, "task did not stop within 5s"),
            }
        }
    }
}

/// Watches the named tasks. One that ends before `shutdown` (returns or panics) is logged with
/// its name, counted (`causeway_federator_task_exits_total{task}`), named by `died`, and stops the
/// whole federator: a federator without its view, publisher or config server would go on
/// answering as if it were whole, while one that exits is restarted by what runs it (the
/// Deployment, systemd) and its replicas take over meanwhile.
fn supervise(
    tasks: Vec<(&'static str, JoinHandle<()>)>,
    shutdown: &CancellationToken,
    metrics: &Metrics,
    died: &watch::Sender<Option<&'static str>>,
) -> Vec<(&'static str, JoinHandle<()>)> {
    tasks
        .into_iter()
        .map(|(name, task)| {
            let shutdown = shutdown.clone();
            let exits = metrics.task_exits.clone();
            let died = died.clone();
            let watcher = tokio::spawn(async move {
                let result = task.await;
                if shutdown.is_cancelled() {
                    if let Some(e) = result.as_ref().err().filter(|e| e.is_panic()) {
                        tracing::error!(task = name, error = %e, "task panicked while stopping");
                    }
                    return;
                }
                match result {
                    Ok(()) => {
                        tracing::error!(task = name, "task ended before shutdown; stopping the federator")
                    }
                    Err(e) => {
                        tracing::error!(task = name, error = %e, "task died; stopping the federator")
                    }
                }
                exits.with_label_values(&[name]).inc();
                died.send_if_modified(|d| d.is_none() && d.replace(name).is_none());
                shutdown.cancel();
            });
            (name, watcher)
        })
        .collect()
}

/// Keeps `tx` at [`crate::sink::kube::dns_view`] of the latest snapshot and held addresses.
async fn dns_view_task(
    mut snapshots: watch::Receiver<Arc<MeshSnapshot>>,
    mut held: watch::Receiver<Arc<crate::sink::kube::HeldAddresses>>,
    vips: bool,
    tx: watch::Sender<Arc<MeshSnapshot>>,
    shutdown: CancellationToken,
) {
    loop {
        let snap = snapshots.borrow_and_update().clone();
        let h = held.borrow_and_update().clone();
        tx.send_replace(Arc::new(crate::sink::kube::dns_view(&snap, &h, vips)));
        tokio::select! {
            r = snapshots.changed() => if r.is_err() { return },
            r = held.changed() => if r.is_err() { return },
            _ = shutdown.cancelled() => return,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_task_that_ends_early_is_counted_named_and_stops_the_rest() {
        let shutdown = CancellationToken::new();
        let metrics = Metrics::new();
        let (died_tx, mut died) = watch::channel(None);
        let stop = shutdown.clone();
        let tasks = vec![
            (
                "steady",
                tokio::spawn(async move { stop.cancelled().await }),
            ),
            ("short", tokio::spawn(async {})),
            ("broken", tokio::spawn(async { panic!("boom") })),
        ];
        let tasks = supervise(tasks, &shutdown, &metrics, &died_tx);
        let first = *died.wait_for(Option::is_some).await.unwrap();
        assert!(matches!(first, Some("short" | "broken")), "{first:?}");
        tokio::time::timeout(std::time::Duration::from_secs(5), shutdown.cancelled())
            .await
            .expect("the federator is told to stop");
        for (_, t) in tasks {
            t.await.unwrap();
        }
        let exits = |task: &str| metrics.task_exits.with_label_values(&[task]).get();
        // Whichever of the two came second found shutdown under way: only the first counts.
        assert_eq!(exits("short") + exits("broken"), 1);
        assert_eq!(
            exits("steady"),
            0,
            "a task that ends at shutdown is not an exit"
        );
    }

    #[tokio::test]
    async fn tasks_that_end_at_shutdown_are_not_exits() {
        let shutdown = CancellationToken::new();
        let metrics = Metrics::new();
        let (died_tx, died) = watch::channel(None);
        let stop = shutdown.clone();
        let tasks = supervise(
            vec![(
                "steady",
                tokio::spawn(async move { stop.cancelled().await }),
            )],
            &shutdown,
            &metrics,
            &died_tx,
        );
        shutdown.cancel();
        for (_, t) in tasks {
            t.await.unwrap();
        }
        assert_eq!(*died.borrow(), None);
        assert_eq!(metrics.task_exits.with_label_values(&["steady"]).get(), 0);
    }
}
