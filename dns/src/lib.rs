//! Causeway mesh DNS: the `clusterset.local` zone (KEP-1645), answered from the latest
//! [`MeshSnapshot`](causeway_api::MeshSnapshot) over UDP and TCP.
//!
//! The federator owns a `watch::Receiver<Arc<MeshSnapshot>>` and a `prometheus::Registry`, and
//! serves DNS with:
//!
//! ```no_run
//! # async fn f(rx: tokio::sync::watch::Receiver<std::sync::Arc<causeway_api::MeshSnapshot>>,
//! #            registry: prometheus::Registry) -> Result<(), causeway_dns::DnsError> {
//! use causeway_dns::{DnsConfig, DnsServer};
//! let server = DnsServer::bind(DnsConfig::default(), rx, &registry).await?;
//! server.run(async { let _ = tokio::signal::ctrl_c().await; }).await?;
//! # Ok(()) }
//! ```
//!
//! Every answer is computed from the snapshot current when the query arrives: a drill or a
//! health change alters the very next answer. docs/dns.md describes the records, the answer
//! policies, the metrics and the behaviour under failure.

mod cache;
mod config;
mod error;
mod handler;
mod metrics;
mod server;
mod tcp;
mod udp;
mod zone;

pub use config::{
    AnswerPolicy, DnsConfig, DEFAULT_LISTEN, DEFAULT_MAX_TCP_CONNECTIONS, DEFAULT_TCP_TIMEOUT,
    DEFAULT_TTL,
};
pub use error::DnsError;
pub use handler::{DnsHandler, CLASSIC_UDP_PAYLOAD, MAX_UDP_PAYLOAD};
pub use server::DnsServer;
pub use zone::{DNS_VERSION, NS_NAME, ZONE};
