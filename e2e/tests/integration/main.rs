//! The integration tests of causeway-e2e, one binary (STYLE.md "Tests"), a module per topic.
//!
//! They run against a real etcd: see docs/testing.md for how it is found.

mod dashboard;
mod drills;
mod etcd;
mod failures;
mod hostile;
mod kubeapi;
mod lab;
mod lab_support;
mod stateful;
mod trust;
