//! Causeway east-west gateway (DESIGN.md "Gateway transport", "Addressing and failover").
//!
//! The data plane between clusters: local clients reach imported services through the egress
//! listener (by Host/:authority or ClusterSetIP); requests cross to the peer cluster's gateway
//! as streams of one pooled mTLS HTTP/2 connection; the ingress side authorises them and
//! re-originates to a ready local endpoint. Everything it routes comes from the federator's
//! config stream ([`federator`]); it keeps serving its last good config when that is away.
//!
//! In-process use (tests, embedding): [`Gateway::start`] returns a [`RunningGateway`] with the
//! bound addresses, `apply_config` and `shutdown`.

mod admin;
mod app;
mod backend;
mod body;
pub mod config;
mod dump;
pub mod error;
mod federator;
mod metrics;
mod peer;
mod proxy;
mod reload;
mod renew;
mod resilience;
mod route;
mod shared;
pub mod state;
mod table;
mod tls;
mod trace;
mod workers;
mod xfcc;

pub use app::{Gateway, RunningGateway};
pub use config::{Args, Config, EXIT_CONFIG};
pub use error::Error;
pub use table::NackReason;

/// `:authority` of the peer probe requests, answered by every ingress.
pub use peer::PROBE_AUTHORITY;
/// Header names the gateway sets.
pub mod headers {
    pub use crate::xfcc::{GATEWAY_ERROR, OVERLOADED, SOURCE_CLUSTER, XFCC};
}
