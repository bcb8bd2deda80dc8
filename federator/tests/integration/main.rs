//! The federator's integration tests: one binary, a module per topic (STYLE.md "Tests").

mod certs;
mod dashboard;
mod etcd;
mod federation;
mod harness;
mod issuer;
mod kube;
mod vips;
