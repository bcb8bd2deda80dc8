//! Integration tests of causeway-dns: a real server on 127.0.0.1:0 queried with the real `dig`
//! (bind9-dnsutils), plus fuzzing of the request path.

mod errors;
mod failover;
mod fuzz;
mod metrics;
mod records;
mod support;
mod transport;
