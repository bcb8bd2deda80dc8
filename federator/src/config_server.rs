//! The federator's side of the gateway config protocol (DESIGN.md "Config protocol"):
//! `Config/Watch` streams full [`proto::ConfigSnapshot`]s on change, `Config/Ack` records each
//! gateway's verdict, `Health/Report` takes what the gateways see of their peers, which the
//! publisher writes under `health/<this cluster>/<peer>`.
//!
//! mTLS: the server presents the federator identity; a client must present this cluster's gateway
//! SPIFFE ID (`spiffe://<trust-domain>/ns/causeway-system/sa/causeway-gateway`).

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use causeway_api::proto::config_server::{Config as ConfigRpc, ConfigServer};
use causeway_api::proto::health_server::{Health as HealthRpc, HealthServer};
use causeway_api::proto::{
    AckRequest, AckResponse, ConfigSnapshot, GatewayHello, PeerHealth, ReportResponse,
};
use causeway_api::spiffe::SpiffeId;
use causeway_api::{ClusterId, HealthRecord, MeshSnapshot, SCHEMA_VERSION};
use futures::Stream;
use prometheus::{IntCounterVec, IntGauge, Opts};
use tokio::sync::watch;
use tokio_stream::wrappers::{TcpListenerStream, WatchStream};
use tokio_stream::StreamExt;
use tokio_util::sync::CancellationToken;
use tonic::{Request, Response, Status, Streaming};

use crate::gwconfig;
use crate::metrics::Metrics;
use crate::source::LocalExports;

/// What gateways of this cluster report of peer clusters.
pub type PeerHealthMap = BTreeMap<ClusterId, HealthRecord>;

#[derive(Debug, Clone)]
pub struct TlsFiles {
    pub cert: PathBuf,
    pub key: PathBuf,
    pub bundle: PathBuf,
}

#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    #[error("reading {path}: {source}")]
    Read {
        path: String,
        source: std::io::Error,
    },
    #[error("binding the config listener {addr}: {source}")]
    Bind {
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error("TLS setup of the config server: {0}")]
    Tls(#[from] tonic::transport::Error),
    #[error("the config server's trust bundle: {0}")]
    Bundle(#[from] causeway_api::tls::TlsError),
}

struct ServerMetrics {
    gateways: IntGauge,
    acks: IntCounterVec,
}

#[derive(Clone)]
struct Svc {
    cluster: ClusterId,
    expected_client: Option<SpiffeId>,
    /// The bundle gateways' chains verify against (empty without TLS).
    trust: Arc<causeway_api::tls::TrustBundle>,
    configs: watch::Receiver<Arc<ConfigSnapshot>>,
    health: watch::Sender<PeerHealthMap>,
    metrics: Arc<ServerMetrics>,
}

impl Svc {
    fn authorise<T>(&self, req: &Request<T>) -> Result<(), Status> {
        let Some(expected) = &self.expected_client else {
            return Ok(());
        };
        let certs = req
            .peer_certs()
            .ok_or_else(|| Status::unauthenticated("a client certificate is required"))?;
        // tonic verified the chain with plain webpki; ours also binds the trust domain to its
        // CA (a gateway ID of this cluster minted by another cluster's CA is refused).
        let id = causeway_api::tls::verify_client_chain(&self.trust, &certs).map_err(|e| {
            tracing::warn!(error = %e, "gateway refused on the config stream");
            Status::unauthenticated(format!("client certificate: {e}"))
        })?;
        if &id != expected {
            return Err(Status::permission_denied(format!("{id} is not {expected}")));
        }
        Ok(())
    }
}

type SnapshotStream = Pin<Box<dyn Stream<Item = Result<ConfigSnapshot, Status>> + Send + 'static>>;

#[tonic::async_trait]
impl ConfigRpc for Svc {
    type WatchStream = SnapshotStream;

    async fn watch(
        &self,
        req: Request<GatewayHello>,
    ) -> Result<Response<Self::WatchStream>, Status> {
        self.authorise(&req)?;
        let hello = req.into_inner();
        if hello.cluster != self.cluster.as_str() {
            return Err(Status::invalid_argument(format!(
                "this federator serves cluster {}, not {:?}",
                self.cluster, hello.cluster
            )));
        }
        tracing::info!(node = %hello.node, last = hello.last_applied_version, "gateway connected");
        let gauge = self.metrics.gateways.clone();
        gauge.inc();
        let guard = GaugeGuard(gauge);
        let stream = WatchStream::new(self.configs.clone()).map(move |c| {
            let _keep = &guard;
            Ok((*c).clone())
        });
        Ok(Response::new(Box::pin(stream)))
    }

    async fn ack(&self, req: Request<AckRequest>) -> Result<Response<AckResponse>, Status> {
        self.authorise(&req)?;
        let ack = req.into_inner();
        if ack.nack_reason.is_empty() {
            tracing::debug!(node = %ack.node, version = ack.version, "gateway ACK");
            self.metrics.acks.with_label_values(&["ack"]).inc();
        } else {
            tracing::warn!(node = %ack.node, version = ack.version, reason = %ack.nack_reason, "gateway NACK: it keeps its last good config");
            self.metrics.acks.with_label_values(&["nack"]).inc();
        }
        Ok(Response::new(AckResponse {}))
    }
}

struct GaugeGuard(IntGauge);

impl Drop for GaugeGuard {
    fn drop(&mut self) {
        self.0.dec();
    }
}

#[tonic::async_trait]
impl HealthRpc for Svc {
    async fn report(
        &self,
        req: Request<Streaming<PeerHealth>>,
    ) -> Result<Response<ReportResponse>, Status> {
        self.authorise(&req)?;
        let mut stream = req.into_inner();
        while let Some(msg) = stream.next().await {
            let h = msg?;
            let Ok(peer) = ClusterId::new(h.cluster.as_str()) else {
                tracing::debug!(cluster = %h.cluster, "ignoring health of an invalid cluster ID");
                continue;
            };
            let rec = HealthRecord {
                schema: SCHEMA_VERSION,
                up: h.up,
                rtt_micros: h.rtt_micros,
                observed_unix_ms: h.observed_at_unix_ms,
            };
            self.health.send_if_modified(|m| {
                let changed = m.get(&peer).is_none_or(|old| old.up != rec.up);
                m.insert(peer, rec);
                changed
            });
        }
        Ok(Response::new(ReportResponse {}))
    }
}

/// What the config builder adds to the mesh snapshot and the local exports.
#[derive(Debug, Clone, Default)]
pub struct BuilderOptions {
    /// Kubernetes mode: the range gateway ports of imports come from (first, count).
    pub gateway_port_range: Option<(u16, u16)>,
    /// This cluster's `import_policies`.
    pub overrides: gwconfig::ImportOverrides,
}

/// Keeps `tx` at the config computed from the latest mesh snapshot and local exports; the version
/// only moves when the content changes.
pub async fn run_builder(
    cluster: ClusterId,
    mut mesh: watch::Receiver<Arc<MeshSnapshot>>,
    mut local: watch::Receiver<LocalExports>,
    tx: watch::Sender<Arc<ConfigSnapshot>>,
    debounce: Duration,
    options: BuilderOptions,
    shutdown: CancellationToken,
) {
    let BuilderOptions {
        gateway_port_range,
        overrides,
    } = options;
    let mut version = 0u64;
    loop {
        let next = {
            let snap = mesh.borrow_and_update().clone();
            let exports = local.borrow_and_update().clone();
            let ports = gateway_port_range
                .map(|(first, count)| gwconfig::gateway_ports(&snap, first, count));
            gwconfig::build(
                &snap,
                &exports,
                &cluster,
                version + 1,
                ports.as_ref(),
                &overrides,
            )
        };
        let unchanged = {
            let cur = tx.borrow();
            version > 0
                && cur.cluster == next.cluster
                && cur.peers == next.peers
                && cur.inbound == next.inbound
                && cur.outbound == next.outbound
        };
        if !unchanged {
            version += 1;
            tx.send_replace(Arc::new(next));
        }
        tokio::select! {
            _ = shutdown.cancelled() => return,
            r = mesh.changed() => if r.is_err() { return },
            r = local.changed() => if r.is_err() { return },
        }
        tokio::time::sleep(debounce).await;
    }
}

/// Where and how the config endpoint listens.
#[derive(Debug, Clone)]
pub struct ServeConfig {
    pub listen: SocketAddr,
    pub tls: Option<TlsFiles>,
    pub cluster: ClusterId,
    pub trust_domain: String,
}

/// Binds and serves until `shutdown`. Returns the bound address.
pub async fn serve(
    cfg: ServeConfig,
    configs: watch::Receiver<Arc<ConfigSnapshot>>,
    health: watch::Sender<PeerHealthMap>,
    metrics: &Metrics,
    shutdown: CancellationToken,
) -> Result<(SocketAddr, tokio::task::JoinHandle<()>), ServeError> {
    let ServeConfig {
        listen,
        tls,
        cluster,
        trust_domain,
    } = cfg;
    let gateways = IntGauge::new(
        "causeway_federator_gateways_connected",
        "Gateways watching this federator's config.",
    )
    .expect("valid metric");
    let acks = IntCounterVec::new(
        Opts::new(
            "causeway_federator_gateway_acks_total",
            "Gateway verdicts on config versions.",
        ),
        &["result"],
    )
    .expect("valid metric");
    let _ = metrics.registry.register(Box::new(gateways.clone()));
    let _ = metrics.registry.register(Box::new(acks.clone()));
    let read = |p: &PathBuf| {
        std::fs::read(p).map_err(|source| ServeError::Read {
            path: p.display().to_string(),
            source,
        })
    };
    let mut builder =
        tonic::transport::Server::builder().http2_keepalive_interval(Some(Duration::from_secs(10)));
    let mut trust = causeway_api::tls::TrustBundle::new(Vec::new());
    let expected_client = match &tls {
        Some(files) => {
            trust = causeway_api::tls::TrustBundle::load(&files.bundle)?;
            let identity =
                tonic::transport::Identity::from_pem(read(&files.cert)?, read(&files.key)?);
            let tls_cfg = tonic::transport::ServerTlsConfig::new()
                .identity(identity)
                .client_ca_root(tonic::transport::Certificate::from_pem(read(
                    &files.bundle,
                )?));
            builder = builder.tls_config(tls_cfg)?;
            SpiffeId::gateway(&trust_domain).ok()
        }
        None => {
            tracing::warn!("config server without TLS: any local process can read gateway configs (lab/dev only)");
            None
        }
    };
    let svc = Svc {
        cluster,
        expected_client,
        trust: Arc::new(trust),
        configs,
        health,
        metrics: Arc::new(ServerMetrics { gateways, acks }),
    };
    let listener = tokio::net::TcpListener::bind(listen)
        .await
        .map_err(|source| ServeError::Bind {
            addr: listen,
            source,
        })?;
    let addr = listener.local_addr().map_err(|source| ServeError::Bind {
        addr: listen,
        source,
    })?;
    let router = builder
        .add_service(ConfigServer::new(svc.clone()))
        .add_service(HealthServer::new(svc));
    let handle = tokio::spawn(async move {
        let res = router
            .serve_with_incoming_shutdown(TcpListenerStream::new(listener), shutdown.cancelled())
            .await;
        if let Err(e) = res {
            tracing::error!(error = %e, "config server died");
        }
    });
    tracing::info!(%addr, "gateway config server listening");
    Ok((addr, handle))
}
