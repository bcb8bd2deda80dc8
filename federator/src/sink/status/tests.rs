//! The ServiceExport conditions the status controller writes, from the mesh snapshot.

use causeway_api::snapshot::ServiceView;
use serde_json::json;

use super::*;
use crate::source::kube::export_of;
use crate::source::kube::tests::{se, svc};

/// `demo/echo` exported by west (first) and east; east's export names port `http` `east_port`
/// and, with `east_client_ip`, asks for ClientIP affinity: what differs from west's export
/// (`http` 80, no affinity) is east's conflict, by the MCS rules.
fn snapshot_with(east_port: u16, east_client_ip: bool) -> MeshSnapshot {
    let key: ServiceKey = "demo/echo".parse().unwrap();
    let record = |port: u16, client_ip: bool, created: i64| {
        let affinity = if client_ip { "ClientIP" } else { "None" };
        let s =
            svc(json!({"ports": [{"name": "http", "port": port}], "sessionAffinity": affinity}));
        let (_, mut e) = export_of(&se(json!({})), Some(&s), &[]).unwrap();
        e.record.created_unix_ms = created;
        e.record
    };
    let records = [
        (ClusterId::new("west").unwrap(), record(80, false, 1)),
        (
            ClusterId::new("east").unwrap(),
            record(east_port, east_client_ip, 2),
        ),
    ];
    let view = ServiceView::merged(&key, records).unwrap();
    let mut snap = MeshSnapshot::default();
    // `ServiceView` or `Arc<ServiceView>`, whichever the snapshot holds.
    snap.services.insert(key, view.into());
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

    let ok = desired_conditions(&outcome, &snapshot_with(80, false), &east, Some(3));
    assert_eq!(find(&ok, "Ready").reason, "Exported");
    assert_eq!(find(&ok, "Conflict").status, "False");
    assert_eq!(find(&ok, "Conflict").observed_generation, Some(3));

    let conflict = desired_conditions(&outcome, &snapshot_with(81, true), &east, Some(3));
    let c = find(&conflict, "Conflict");
    assert_eq!(
        (c.status.as_str(), c.reason.as_str()),
        ("True", "PortConflict,SessionAffinityConflict")
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
    let mut first = desired_conditions(&outcome, &snapshot_with(80, false), &east, Some(1));
    first.push(Condition {
        type_: "Other".into(),
        status: "True".into(),
        reason: "Someone".into(),
        message: String::new(),
        observed_generation: None,
        last_transition_time: Time(k8s_openapi::jiff::Timestamp::UNIX_EPOCH),
    });
    let again = desired_conditions(&outcome, &snapshot_with(80, false), &east, Some(1));
    assert!(merge_conditions(&first, again).is_none(), "nothing changed");
    let moved = desired_conditions(&outcome, &snapshot_with(81, false), &east, Some(1));
    let merged = merge_conditions(&first, moved).expect("Conflict changed");
    assert_eq!(merged.len(), 4);
    assert_eq!(
        find(&merged, "Valid").last_transition_time,
        find(&first, "Valid").last_transition_time
    );
    assert_eq!(find(&merged, "Other").reason, "Someone");
}
