//! The running gateway: shared state, applying config snapshots, starting and stopping every
//! task. [`Gateway::start`] is what `main` and the integration tests call.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use arc_swap::{ArcSwap, ArcSwapOption};
use causeway_api::proto::{ConfigSnapshot, PeerHealth};
use tokio::net::TcpListener;
use tokio::sync::{mpsc, watch};
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use crate::backend::Backends;
use crate::config::Config;
use crate::error::Error;
use crate::metrics::Metrics;
use crate::peer::{PeerPool, ProbeContext};
use crate::proxy::{egress, ingress, ConnCounter, Proxy};
use crate::shared::Shared;
use crate::table::{NackReason, StatsRegistry, Tables};
use crate::tls::{TlsFiles, TlsState};
use crate::{admin, federator, reload, renew, state};

// === control: applying snapshots, reloading and installing certificates ===

impl Shared {
    /// Validates and applies a snapshot: builds the tables and the TLS state for its peers,
    /// swaps both, updates the peer pool and persists it. On error nothing changes.
    pub(crate) fn apply(&self, snapshot: ConfigSnapshot) -> Result<(), NackReason> {
        let version = snapshot.version;
        let result = self.try_apply(snapshot);
        match &result {
            Ok(()) => tracing::info!(version, "config applied"),
            Err(reason) => {
                self.proxy.metrics.config_nacks.inc();
                tracing::warn!(version, %reason, "config refused; keeping the last good one");
            }
        }
        result
    }

    fn try_apply(&self, snapshot: ConfigSnapshot) -> Result<(), NackReason> {
        let _serial = self.apply_lock.lock().unwrap_or_else(|e| e.into_inner());
        let issuer = snapshot.certificate_issuer.clone();
        let tables = Tables::build(
            snapshot,
            &self.proxy.config.cluster,
            self.proxy.config.vip_range,
            &self.proxy.registry,
        )?;
        let current = self.proxy.tls.load();
        let tls = TlsState::build(
            current.identity.clone(),
            current.local_bundle.clone(),
            Some(&tables),
            current.federator_identity.clone(),
        )
        .map_err(|e| NackReason(format!("TLS for the snapshot's peers: {e}")))?;
        let tables = Arc::new(tables);
        // TLS first: a peer of the new tables must find its trust state at once.
        self.proxy.tls.store(Arc::new(tls));
        self.proxy.tables.store(Some(tables.clone()));
        self.proxy.peers.update(&tables, &self.probe_ctx);
        self.proxy.metrics.config_version.set(tables.version as i64);
        self.version_tx.send_replace(tables.version);
        self.wanted_issuer
            .send_if_modified(|w| std::mem::replace(w, issuer.clone()) != issuer);
        if let Some(dir) = &self.proxy.config.state_dir {
            if let Err(e) = state::save(dir, &tables.snapshot) {
                tracing::warn!(dir = %dir.display(), error = %e, "cannot persist the config");
            }
        }
        Ok(())
    }

    /// Reloads certificate, key and bundle from disk and rebuilds the TLS state.
    pub(crate) fn reload_tls(&self) -> Result<(), causeway_api::tls::TlsError> {
        let _serial = self.apply_lock.lock().unwrap_or_else(|e| e.into_inner());
        let (files, bundle) = self.tls_files.load()?;
        let issued = self
            .issued
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone();
        // Peers get the certificate the federator issued, even expired (they refuse it: the
        // gateway is out until renewed); the federator gets the file one once that has expired.
        // If the federator no longer names an issuer (it was turned off), an expired issued
        // certificate gives way to the file one everywhere.
        let issuing = !self.wanted_issuer.borrow().is_empty();
        let (identity, federator_identity) = match issued {
            Some(issued) if self.has_issued_identity() => (issued, None),
            Some(issued) if issuing => (issued, Some(files)),
            _ => (files, None),
        };
        let tables = self.proxy.tables.load_full();
        let tls = TlsState::build(identity, bundle, tables.as_deref(), federator_identity)?;
        self.proxy.tls.store(Arc::new(tls));
        Ok(())
    }

    /// The federator-issued certificate, while it has not expired.
    fn issued_identity(&self) -> Option<causeway_api::tls::Identity> {
        let issued = self.issued.lock().unwrap_or_else(|e| e.into_inner());
        issued
            .as_ref()
            .filter(|i| {
                i.validity()
                    .is_ok_and(|v| v.left(crate::tls::unix_now()) > 0)
            })
            .cloned()
    }

    /// What `/config_dump` says of the certificate in use.
    pub(crate) fn certificate_summary(&self) -> serde_json::Value {
        let tls = self.proxy.tls.load();
        serde_json::json!({
            "spiffe_id": tls.own_id.to_string(),
            "not_before": tls.validity.map(|v| v.not_before),
            "not_after": tls.validity.map(|v| v.not_after),
            "issuer": tls.identity.issuer_fingerprint(),
            "source": if self.has_issued_identity() { "federator" } else { "files" },
        })
    }

    /// Whether the federator ever issued this gateway a certificate (valid or not).
    pub(crate) fn holds_issued(&self) -> bool {
        self.issued
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .is_some()
    }

    pub(crate) fn has_issued_identity(&self) -> bool {
        self.issued_identity().is_some()
    }

    /// Swaps in a certificate the federator issued: new handshakes use it at once; pooled peer
    /// connections made with the old one are retired (renew.rs).
    pub(crate) fn install_identity(
        &self,
        identity: causeway_api::tls::Identity,
    ) -> Result<(), causeway_api::tls::TlsError> {
        let _serial = self.apply_lock.lock().unwrap_or_else(|e| e.into_inner());
        let current = self.proxy.tls.load_full();
        let tables = self.proxy.tables.load_full();
        let tls = TlsState::build(
            identity.clone(),
            current.local_bundle.clone(),
            tables.as_deref(),
            None,
        )?;
        self.proxy.tls.store(Arc::new(tls));
        *self.issued.lock().unwrap_or_else(|e| e.into_inner()) = Some(identity);
        let old_expiry = current.validity.map(|v| v.not_after);
        self.proxy.peers.retire_connections(old_expiry);
        Ok(())
    }
}

// === impl Gateway ===

/// Builder of a gateway in this process.
pub struct Gateway;

impl Gateway {
    /// Validates `config`, loads the identity, binds every listener, loads the initial config
    /// (`config_file`, else the state dir's last good one) and starts every task.
    pub async fn start(config: Config) -> Result<RunningGateway, Error> {
        config.validate()?;
        let tls_files = TlsFiles {
            cert: config.cert.clone(),
            key: config.key.clone(),
            bundle: config.trust_bundle.clone(),
        };
        let files_stamp = reload::stamp(&tls_files);
        let (mut identity, bundle) = tls_files.load()?;
        // A certificate the federator issued before a restart, while it is valid.
        let issued = config
            .state_dir
            .as_deref()
            .and_then(|dir| renew::load_persisted(dir, &identity, &bundle));
        if let Some(i) = &issued {
            identity = i.clone();
        }
        let tls = Arc::new(ArcSwap::from_pointee(TlsState::build(
            identity, bundle, None, None,
        )?));

        let bind = |what, addr| async move {
            TcpListener::bind(addr)
                .await
                .map_err(|source| Error::Bind { what, addr, source })
        };
        let egress_listener = bind("egress", config.egress_listen).await?;
        let peer_listener = bind("peer", config.peer_listen).await?;
        let admin_listener = bind("admin", config.admin_listen).await?;
        let local = |l: &TcpListener, what, addr| {
            l.local_addr()
                .map_err(|source| Error::Bind { what, addr, source })
        };
        let egress_addr = local(&egress_listener, "egress", config.egress_listen)?;
        let peer_addr = local(&peer_listener, "peer", config.peer_listen)?;
        let admin_addr = local(&admin_listener, "admin", config.admin_listen)?;
        for (what, addr) in [("egress", egress_addr), ("admin", admin_addr)] {
            if addr.ip().is_unspecified() {
                tracing::warn!(listener = what, %addr, "listening on every interface: only the peer listener may face the WAN; bind a cluster-side address unless a firewall keeps the WAN out (docs/security.md)");
            }
        }

        let shutdown = CancellationToken::new();
        let metrics = Metrics::new();
        let (reports_tx, reports_rx) = mpsc::channel::<PeerHealth>(256);
        let probe_ctx = ProbeContext {
            tls: tls.clone(),
            metrics: metrics.clone(),
            interval: Duration::from_millis(config.probe_interval_ms),
            misses: config.probe_misses,
            connect_timeout: Duration::from_millis(config.connect_timeout_ms),
            observer: config.cluster.clone(),
            reports: reports_tx,
            shutdown: shutdown.clone(),
        };
        let hard_stop = CancellationToken::new();
        let tracer = crate::trace::Tracer::new(
            config.trace_collector.as_deref(),
            config.trace_sample_percent,
            &config.cluster,
            &config.node,
            metrics.spans.clone(),
            hard_stop.clone(),
        );
        let version_tx = watch::channel(0).0;
        let workers = crate::workers::Workers::start(config.data_threads as usize, &hard_stop)
            .map_err(Error::Runtime)?;
        let proxy = Arc::new(Proxy {
            backends: Backends::new(
                tls.clone(),
                Duration::from_millis(config.connect_timeout_ms),
                workers.threads(),
            ),
            tables: ArcSwapOption::empty(),
            tls,
            registry: StatsRegistry::default(),
            metrics,
            peers: PeerPool::default(),
            versions: version_tx.subscribe(),
            shutdown: shutdown.clone(),
            hard_stop,
            conns: ConnCounter::default(),
            tracer,
            workers,
            config,
        });
        let shared = Arc::new(Shared {
            proxy,
            tls_files,
            apply_lock: Mutex::new(()),
            version_tx,
            probe_ctx,
            issued: Mutex::new(issued),
            wanted_issuer: watch::channel(String::new()).0,
        });

        if let Some(file) = &shared.proxy.config.config_file {
            let snapshot = state::load(file).map_err(|reason| Error::ConfigFile {
                path: file.clone(),
                reason,
            })?;
            shared.apply(snapshot).map_err(|r| Error::ConfigFile {
                path: file.clone(),
                reason: r.0,
            })?;
        } else if let Some(dir) = &shared.proxy.config.state_dir {
            let file = state::path(dir);
            if file.exists() {
                match state::load(&file).map(|s| shared.apply(s)) {
                    Ok(Ok(())) => {
                        tracing::info!(file = %file.display(), "started from the last good config")
                    }
                    Ok(Err(reason)) => {
                        tracing::warn!(file = %file.display(), %reason, "last good config refused")
                    }
                    Err(reason) => {
                        tracing::warn!(file = %file.display(), %reason, "cannot load the last good config")
                    }
                }
            }
        }

        let mut tasks = JoinSet::new();
        tasks.spawn(egress::serve(shared.proxy.clone(), egress_listener));
        tasks.spawn(egress::manage_vip_listeners(shared.proxy.clone()));
        tasks.spawn(ingress::serve(shared.proxy.clone(), peer_listener));
        tasks.spawn(admin::serve(shared.clone(), admin_listener));
        tasks.spawn(reload::watch_files(shared.clone(), files_stamp));
        if let Some(url) = shared.proxy.config.federator.clone() {
            if let Ok(parsed) = crate::config::FederatorUrl::parse(&url) {
                tasks.spawn(renew::run(shared.clone(), parsed));
            }
            tasks.spawn(federator::run(shared.clone(), url, reports_rx));
        }
        tracing::info!(
            cluster = %shared.proxy.config.cluster,
            %egress_addr, %peer_addr, %admin_addr,
            "gateway started"
        );
        Ok(RunningGateway {
            egress_addr,
            peer_addr,
            admin_addr,
            shared,
            tasks,
        })
    }
}

/// A started gateway. Dropping it stops every task.
pub struct RunningGateway {
    pub egress_addr: SocketAddr,
    pub peer_addr: SocketAddr,
    pub admin_addr: SocketAddr,
    shared: Arc<Shared>,
    tasks: JoinSet<()>,
}

impl RunningGateway {
    /// Applies a snapshot as if the federator had sent it (tests, embedding).
    pub fn apply_config(&self, snapshot: ConfigSnapshot) -> Result<(), NackReason> {
        self.shared.apply(snapshot)
    }

    /// The version of the config being served (0: none).
    pub fn config_version(&self) -> u64 {
        self.shared.proxy.version()
    }

    /// The Prometheus text of this gateway's metrics.
    pub fn metrics_text(&self) -> String {
        self.shared.proxy.render_metrics()
    }

    /// Waits until a task fails (panics), which is fatal. Tasks with nothing to do (the VIP
    /// listener manager without `--vip-range`) end normally and are not waited for.
    pub async fn wait(&mut self) {
        while let Some(result) = self.tasks.join_next().await {
            if let Err(e) = result {
                tracing::error!(error = %e, "gateway task failed");
                return;
            }
        }
        // Every task ended normally: only happens after shutdown.
    }

    /// Stops listening; lets open connections finish their requests for up to
    /// `drain_timeout_ms` (HTTP/2 peers get a GOAWAY, idle HTTP/1.1 connections close); then
    /// closes whatever is left and stops every task.
    pub async fn shutdown(mut self) {
        self.shared.proxy.shutdown.cancel();
        let drain = Duration::from_millis(self.shared.proxy.config.drain_timeout_ms);
        if tokio::time::timeout(drain, self.shared.proxy.conns.wait_idle())
            .await
            .is_err()
        {
            tracing::warn!(
                ?drain,
                "connections still open after the drain; closing them"
            );
        }
        self.shared.proxy.hard_stop.cancel();
        self.tasks.abort_all();
        while self.tasks.join_next().await.is_some() {}
    }
}

impl Drop for RunningGateway {
    fn drop(&mut self) {
        self.shared.proxy.shutdown.cancel();
        self.shared.proxy.hard_stop.cancel();
    }
}
