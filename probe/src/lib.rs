//! Clients that see the clusterset as an application in one of its clusters does: a DNS A
//! query ([`dns`]), an HTTP GET straight or through the gateway's egress ([`http`]), a
//! [`prober::Prober`] that calls a service over and over and keeps a [`prober::Timeline`]
//! (failover and failback times, failed requests), a gateway's request counters
//! ([`metrics`]), entering a network namespace ([`netns`]) and the lab's typed state ([`lab`]).
//!
//! One set for `causeway drill` and for the tests and the lab (causeway-e2e), so that what a
//! drill measures is what the failure tests assert.

pub mod dns;
pub mod http;
pub mod lab;
pub mod metrics;
pub mod netns;
pub mod prober;

/// The cluster whose backend answered: the gateway's egress sets it on every proxied response
/// (the demo services set it too).
pub use causeway_api::CLUSTER_HEADER;
/// The header the demo services answer with: the replica (pod hostname) that answered.
pub const HOSTNAME_HEADER: &str = "x-causeway-hostname";
