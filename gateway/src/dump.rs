//! `ConfigSnapshot` as JSON for `/config_dump` (the generated types have no serde).

use causeway_api::proto::{self, ConfigSnapshot};
use serde_json::{json, Value};

fn ports(ports: &[proto::Port]) -> Value {
    ports
        .iter()
        .map(|p| {
            json!({
                "name": p.name,
                "protocol": p.protocol().as_str_name(),
                "port": p.port,
                "app_protocol": p.app_protocol().as_str_name(),
                "gateway_port": p.gateway_port,
            })
        })
        .collect()
}

fn rate_limit(r: &Option<proto::RateLimit>) -> Value {
    match r {
        Some(r) => json!({"requests_per_second": r.requests_per_second, "burst": r.burst}),
        None => Value::Null,
    }
}

pub(crate) fn snapshot(s: &ConfigSnapshot) -> Value {
    json!({
        "version": s.version,
        "cluster": s.cluster,
        "certificate_issuer": s.certificate_issuer,
        "peers": s.peers.iter().map(|p| json!({
            "cluster": p.cluster,
            "gateway_addresses": p.gateway_addresses,
            "trust_domain": p.trust_domain,
            "trust_bundle_pem": p.trust_bundle_pem,
            "locality": p.locality,
        })).collect::<Value>(),
        "inbound": s.inbound.iter().map(|i| json!({
            "namespace": i.namespace,
            "name": i.name,
            "ports": ports(&i.ports),
            "endpoints": i.endpoints.iter().map(|e| json!({
                "address": e.address, "ready": e.ready, "hostname": e.hostname,
            })).collect::<Value>(),
            "backend_tls_mode": i.backend_tls_mode().as_str_name(),
            "allowed_source_clusters": i.allowed_source_clusters,
            "allowed_identities": i.allowed_identities,
            "drained": i.drained,
            "rate_limit": rate_limit(&i.rate_limit),
        })).collect::<Value>(),
        "outbound": s.outbound.iter().map(|o| json!({
            "namespace": o.namespace,
            "name": o.name,
            "vip": o.vip,
            "ports": ports(&o.ports),
            "candidates": o.candidates.iter().map(|c| json!({
                "cluster": c.cluster,
                "priority": c.priority,
                "weight": c.weight,
                "healthy": c.healthy,
                "drained": c.drained,
                "ready_endpoints": c.ready_endpoints,
            })).collect::<Value>(),
            "policy": o.policy.as_ref().map(|p| json!({
                "timeout_ms": p.timeout_ms,
                "retry_attempts": p.retry_attempts,
                "retry_budget_percent": p.retry_budget_percent,
                "max_pending": p.max_pending,
                "max_concurrent": p.max_concurrent,
                "outlier_consecutive_errors": p.outlier_consecutive_errors,
                "outlier_base_ejection_ms": p.outlier_base_ejection_ms,
                "rate_limit": rate_limit(&p.rate_limit),
            })),
            "header_routes": o.header_routes.iter().map(|r| json!({
                "header": r.header, "value": r.value, "cluster": r.cluster, "weights": r.weights,
            })).collect::<Value>(),
        })).collect::<Value>(),
    })
}
