use serde_json::json;

use super::*;

/// A ServiceExport `demo/echo` (generation 3) with `annotations`.
pub(crate) fn se(annotations: serde_json::Value) -> ServiceExport {
    serde_json::from_value(json!({
        "apiVersion": "multicluster.x-k8s.io/v1alpha1", "kind": "ServiceExport",
        "metadata": {"name": "echo", "namespace": "demo", "creationTimestamp": "2026-01-01T00:00:00Z",
                     "generation": 3, "annotations": annotations},
    }))
    .unwrap()
}

/// The Service `demo/echo` with `spec`.
pub(crate) fn svc(spec: serde_json::Value) -> Service {
    serde_json::from_value(json!({"metadata": {"name": "echo", "namespace": "demo"}, "spec": spec}))
        .unwrap()
}

fn slice() -> Arc<EndpointSlice> {
    Arc::new(
        serde_json::from_value(json!({
            "metadata": {"name": "echo-abc", "namespace": "demo", "labels": {"kubernetes.io/service-name": "echo"}},
            "addressType": "IPv4",
            "ports": [{"name": "http", "port": 8080}],
            "endpoints": [
                {"addresses": ["10.1.0.5"], "conditions": {"ready": true}},
                {"addresses": ["10.1.0.6"], "conditions": {"ready": false}},
                {"addresses": ["10.1.0.7"]},
            ],
        }))
        .unwrap(),
    )
}

#[test]
fn a_service_export_becomes_the_same_export_as_a_file() {
    let s = svc(
        json!({"clusterIP": "10.96.0.10", "ports": [{"name": "http", "port": 80, "appProtocol": "http"}]}),
    );
    let (key, e) = export_of(
        &se(json!({"causeway.io/weight": "50"})),
        Some(&s),
        &[slice()],
    )
    .unwrap();
    assert_eq!(key.to_string(), "demo/echo");
    assert_eq!(e.record.created_unix_ms, 1_767_225_600_000);
    assert_eq!(e.record.service_type, ServiceType::ClusterSetIP);
    assert_eq!(e.record.ports[0].port, 80);
    assert_eq!(e.record.ports[0].app_protocol.as_deref(), Some("http"));
    assert_eq!(
        e.record.ready_endpoints, 2,
        "a missing ready condition means ready"
    );
    assert_eq!(e.record.service_ip, Some("10.96.0.10".parse().unwrap()));
    assert_eq!(e.record.weight, Some(50));
    assert!(
        e.record.endpoints.is_empty(),
        "ClusterSetIP endpoints stay local"
    );
    assert_eq!(e.endpoints.len(), 3);
    assert_eq!(e.endpoints[0].port, Some(8080));
    assert_eq!(e.origin, "ServiceExport demo/echo");
}

#[test]
fn headless_services_publish_their_endpoints() {
    let s = svc(json!({"clusterIP": "None", "ports": [{"name": "http", "port": 80}]}));
    let (_, e) = export_of(&se(json!({})), Some(&s), &[slice()]).unwrap();
    assert_eq!(e.record.service_type, ServiceType::Headless);
    assert_eq!(e.record.endpoints.len(), 3);
    assert_eq!(e.record.service_ip, None);
}

#[test]
fn invalid_exports_say_why_with_the_upstream_reasons() {
    let err = export_of(&se(json!({})), None, &[]).unwrap_err();
    assert_eq!(err.reason, "NoService");
    let ext = svc(json!({"type": "ExternalName", "externalName": "example.org"}));
    let err = export_of(&se(json!({})), Some(&ext), &[]).unwrap_err();
    assert_eq!(err.reason, "InvalidServiceType");
    assert!(err.message.contains("ExternalName"), "{err:?}");
    let s = svc(json!({"ports": [{"port": 80}]}));
    let err = export_of(
        &se(json!({"causeway.io/backend-tls": "tls13"})),
        Some(&s),
        &[],
    )
    .unwrap_err();
    assert_eq!(err.reason, "InvalidExport");
    assert!(err.message.contains("tls13"), "{err:?}");
    let err = export_of(&se(json!({"causeway.io/timeout": "soon"})), Some(&s), &[]).unwrap_err();
    assert_eq!(err.reason, "InvalidExport");
    assert!(err.message.contains("causeway.io/timeout"), "{err:?}");
}

#[test]
fn traffic_policy_annotations() {
    let s = svc(json!({"ports": [{"port": 80}]}));
    let (_, e) = export_of(
        &se(json!({
            "causeway.io/timeout": "1500ms",
            "causeway.io/retries": "0",
            "causeway.io/max-concurrent": "64",
            "causeway.io/outlier-base-ejection": "10s",
            "causeway.io/rate-limit-rps": "100",
            "causeway.io/rate-limit-burst": "20",
        })),
        Some(&s),
        &[slice()],
    )
    .unwrap();
    let p = &e.record.traffic_policy;
    assert_eq!(p.timeout_ms, Some(1500));
    assert_eq!(p.retry_attempts, Some(0), "0 turns retries off");
    assert_eq!(p.max_concurrent, Some(64));
    assert_eq!(p.max_pending, None);
    assert_eq!(p.outlier_base_ejection_ms, Some(10_000));
    assert_eq!(
        p.rate_limit,
        Some(causeway_api::RateLimit {
            requests_per_second: 100,
            burst: 20
        })
    );
}
