//! The ServiceExport conditions the status controller writes, from the mesh snapshot.

use std::collections::BTreeMap;

use causeway_api::snapshot::{ExportView, ServiceView};
use causeway_api::{
    ConflictReason, ExportConditions, Import, ServiceType, SessionAffinity,
};
use serde_json::json;

use super::*;
use crate::source::kube::export_of;
use crate::source::kube::tests::{se, svc};

fn snapshot_with(conflicts: Vec<ConflictReason>) -> MeshSnapshot {
    let key: ServiceKey = "demo/echo".parse().unwrap();
    let s = svc(json!({"ports": [{"port": 80}]}));
    let (_, e) = export_of(&se(json!({})), Some(&s), &[]).unwrap();
    let mut exports = BTreeMap::new();
    for (c, created) in [("east", 2), ("west", 1)] {
        let mut record = e.record.clone();
        record.created_unix_ms = created;
        exports.insert(
            ClusterId::new(c).unwrap(),
            ExportView {
                record,
                conditions: ExportConditions {
                    conflicts: conflicts.clone(),
                },
                stale: false,
                drained: false,
            },
        );
    }
    let mut snap = MeshSnapshot::default();
    snap.services.insert(
        key.clone(),
        ServiceView {
            import: Import {
                key,
                service_type: ServiceType::ClusterSetIP,
                ports: e.record.ports.clone(),
                session_affinity: SessionAffinity::None,
                clusters: exports.keys().cloned().collect(),
                conflict: !conflicts.is_empty(),
                exported: Default::default(),
            },
            vip: None,
            exports,
            endpoint_vips: Default::default(),
        }
        // `ServiceView` or `Arc<ServiceView>`, whichever the snapshot holds.
        .into(),
    );
    snap
}

fn find<'a>(conds: &'a [Condition], t: &str) -> &'a Condition {
    conds.iter().find(|c| c.type_ == t).unwrap()
}

#[test]
fn conditions_follow_the_mesh_snapshot() {
    let east = ClusterId::new("east").unwrap();
    let s = svc(json!({"ports": [{"port": 80}]}));
    let outcome = export_of(&se(json!({})), Some(&s), &[]);

    let pending = desired_conditions(&outcome, &MeshSnapshot::default(), &east, Some(3));
    assert_eq!(find(&pending, "Valid").status, "True");
    assert_eq!(find(&pending, "Ready").reason, "Pending");

    let ok = desired_conditions(&outcome, &snapshot_with(vec![]), &east, Some(3));
    assert_eq!(find(&ok, "Ready").reason, "Exported");
    assert_eq!(find(&ok, "Conflict").status, "False");
    assert_eq!(find(&ok, "Conflict").observed_generation, Some(3));

    let conflict = desired_conditions(
        &outcome,
        &snapshot_with(vec![
            ConflictReason::PortConflict,
            ConflictReason::TypeConflict,
        ]),
        &east,
        Some(3),
    );
    let c = find(&conflict, "Conflict");
    assert_eq!(
        (c.status.as_str(), c.reason.as_str()),
        ("True", "PortConflict,TypeConflict")
    );
    assert!(c.message.contains("of cluster west, wins"), "{}", c.message);

    let invalid = desired_conditions(
        &export_of(&se(json!({})), None, &[]),
        &MeshSnapshot::default(),
        &east,
        None,
    );
    let v = find(&invalid, "Valid");
    assert_eq!(
        (v.status.as_str(), v.reason.as_str()),
        ("False", "NoService")
    );
}

#[test]
fn merging_conditions_keeps_transition_times_and_other_types() {
    let east = ClusterId::new("east").unwrap();
    let s = svc(json!({"ports": [{"port": 80}]}));
    let outcome = export_of(&se(json!({})), Some(&s), &[]);
    let mut first = desired_conditions(&outcome, &snapshot_with(vec![]), &east, Some(1));
    first.push(Condition {
        type_: "Other".into(),
        status: "True".into(),
        reason: "Someone".into(),
        message: String::new(),
        observed_generation: None,
        last_transition_time: Time(k8s_openapi::jiff::Timestamp::UNIX_EPOCH),
    });
    let again = desired_conditions(&outcome, &snapshot_with(vec![]), &east, Some(1));
    assert!(merge_conditions(&first, again).is_none(), "nothing changed");
    let moved = desired_conditions(
        &outcome,
        &snapshot_with(vec![ConflictReason::PortConflict]),
        &east,
        Some(1),
    );
    let merged = merge_conditions(&first, moved).expect("Conflict changed");
    assert_eq!(merged.len(), 4);
    assert_eq!(
        find(&merged, "Valid").last_transition_time,
        find(&first, "Valid").last_transition_time
    );
    assert_eq!(find(&merged, "Other").reason, "Someone");
}
