//! In-process integration tests of the gateway: real gateways, backends and peers on
//! 127.0.0.1:0 (STYLE.md "Tests"). One binary, a module per topic.

// Helpers are shared by topic modules, each of which uses a part of them.
#![allow(unreachable_pub, dead_code)]

mod support;

mod backend_tls;
mod binary;
mod caller_identity;
mod config_protocol;
mod expiry;
mod failover;
mod grpc;
mod hostile;
mod http_proxy;
mod limits;
mod peer_auth;
mod pool;
mod routing;
mod tcp;
mod tracing;
