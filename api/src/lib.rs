//! What the Causeway crates share: the federation model, the etcd key schema, the MCS merge,
//! the gateway config protocol, SPIFFE identities and rustls mTLS helpers, and the small pieces
//! every crate needs once (CIDRs, durations, backoff, task guards).
//!
//! No I/O beyond loading files and timers.

/// Response header naming the cluster whose backend answered: set by the gateway's egress on
/// every proxied HTTP response (overwriting a backend's), read by drills and tests.
pub const CLUSTER_HEADER: &str = "x-causeway-cluster";

pub mod authority;
pub mod backoff;
pub mod duration;
pub mod file;
pub mod keys;
pub mod merge;
pub mod model;
pub mod net;
pub mod pem;
pub mod policy;
pub mod ports;
pub mod prom;
pub mod rare;
pub mod snapshot;
pub mod spiffe;
pub mod task;
#[cfg(any(test, feature = "testing"))]
pub mod testing;
pub mod tls;

pub mod proto {
    //! Generated code of `causeway.gateway.v1` (DESIGN.md "Config protocol").
    #![allow(unreachable_pub, clippy::all, missing_docs)]
    tonic::include_proto!("causeway.gateway.v1");
}

pub use model::*;
pub use snapshot::MeshSnapshot;
