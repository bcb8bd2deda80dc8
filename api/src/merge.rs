//! Merging exports into imports (DESIGN.md "Merging exports into imports (MCS rules)"), as a
//! pure function of the exports read from etcd.
//!
//! Rules, after the Kubernetes MCS API (KEP-1645):
//!
//! - An import exists for a service when at least one cluster exports it.
//! - The exports of a service are ordered by `(created_unix_ms, cluster ID)`; the first, the
//!   oldest, is the winner: it defines the import's type and session affinity.
//! - An export whose type differs from the winner's is a `TypeConflict` on both; it is left out
//!   of the import entirely (not in `clusters`, no ports).
//! - An export whose session affinity differs from the winner's is a `SessionAffinityConflict`
//!   on both; it stays in the import.
//! - Ports are the union. A named port matches the port of the same name; an unnamed port
//!   matches the port with the same protocol and number. Two definitions collide when they have
//!   the same name but a different protocol or number, or the same protocol and number under two
//!   different names (the import could not tell them apart by port, and Kubernetes would reject a
//!   derived Service holding both). A collision is a `PortConflict` on the export that defined
//!   the port first and on the younger one; the older definition stays. `app_protocol` is not
//!   compared: the older export's wins silently.
//!
//! The result does not depend on the order of the input.

use std::collections::{BTreeMap, BTreeSet};

use crate::model::{
    ClusterId, ConflictReason, ExportConditions, ExportRecord, Import, ServiceKey, ServicePort,
};

/// One cluster's export of one service, as read from `exports/<ns>/<svc>/<cluster>`.
#[derive(Debug, Clone, Copy)]
pub struct ExportInput<'a> {
    pub service: &'a ServiceKey,
    pub cluster: &'a ClusterId,
    pub export: &'a ExportRecord,
}

/// The imports, and the conflict state of every export that went into them.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Merged {
    pub imports: BTreeMap<ServiceKey, Import>,
    /// One entry per input export (per service and cluster).
    pub conditions: BTreeMap<ServiceKey, BTreeMap<ClusterId, ExportConditions>>,
}

/// Merges exports into imports.
///
/// The input is meant to be a key-value set, so one export per service and cluster. Should a
/// pair come twice anyway, one of them is kept, chosen by content rather than position so that
/// the result still does not depend on the input order.
pub fn merge<'a>(exports: impl IntoIterator<Item = ExportInput<'a>>) -> Merged {
    let mut by_service: BTreeMap<&ServiceKey, Vec<(&ClusterId, &ExportRecord)>> = BTreeMap::new();
    for e in exports {
        by_service
            .entry(e.service)
            .or_default()
            .push((e.cluster, e.export));
    }

    let mut merged = Merged::default();
    for (service, mut exports) in by_service {
        exports.sort_by(|(ca, a), (cb, b)| {
            (a.created_unix_ms, ca)
                .cmp(&(b.created_unix_ms, cb))
                // Only duplicates of one cluster get here; any total order on content will do.
                .then_with(|| format!("{a:?}").cmp(&format!("{b:?}")))
        });
        // Keeps the first of each run of equal clusters; duplicates of a cluster with different
        // creation times are not adjacent, hence the set.
        let mut seen = BTreeSet::new();
        exports.retain(|(cluster, _)| seen.insert(*cluster));

        if let Some((import, conditions)) = merge_service(service, &exports) {
            merged.imports.insert(service.clone(), import);
            merged.conditions.insert(service.clone(), conditions);
        }
    }
    merged
}

/// Merges the exports of one service, ordered oldest first and one per cluster. `None` when
/// there are none.
fn merge_service(
    service: &ServiceKey,
    exports: &[(&ClusterId, &ExportRecord)],
) -> Option<(Import, BTreeMap<ClusterId, ExportConditions>)> {
    let (_, winner) = *exports.first()?;
    let mut reasons = vec![BTreeSet::new(); exports.len()];
    // The import's ports, each with the index of the export that defined it.
    let mut ports: Vec<(&ServicePort, usize)> = Vec::new();
    let mut clusters = Vec::new();

    for (i, (cluster, export)) in exports.iter().enumerate() {
        if export.service_type != winner.service_type {
            reasons[0].insert(ConflictReason::TypeConflict);
            reasons[i].insert(ConflictReason::TypeConflict);
            continue;
        }
        clusters.push((*cluster).clone());
        if export.session_affinity != winner.session_affinity {
            reasons[0].insert(ConflictReason::SessionAffinityConflict);
            reasons[i].insert(ConflictReason::SessionAffinityConflict);
        }
        // What the import carries (MCS API v0.5.0): the oldest export's; a differing one is a
        // conflict on both, as for session affinity.
        let (e, w) = (&export.exported, &winner.exported);
        for (differs, reason) in [
            (e.labels != w.labels, ConflictReason::LabelsConflict),
            (
                e.annotations != w.annotations,
                ConflictReason::AnnotationsConflict,
            ),
            (
                e.internal_traffic_policy != w.internal_traffic_policy,
                ConflictReason::InternalTrafficPolicyConflict,
            ),
            (
                e.traffic_distribution != w.traffic_distribution,
                ConflictReason::TrafficDistributionConflict,
            ),
        ] {
            if differs {
                reasons[0].insert(reason);
                reasons[i].insert(reason);
            }
        }
        for port in &export.ports {
            match match_port(&ports, port) {
                PortMatch::Same => {}
                PortMatch::Conflict { definer } => {
                    reasons[definer].insert(ConflictReason::PortConflict);
                    reasons[i].insert(ConflictReason::PortConflict);
                }
                PortMatch::New => ports.push((port, i)),
            }
        }
    }

    let mut ports: Vec<ServicePort> = ports.into_iter().map(|(p, _)| p.clone()).collect();
    // Derived `Ord` of `ServicePort`: name, then protocol, then port.
    ports.sort();
    clusters.sort();
    let conflict = reasons.iter().any(|r| !r.is_empty());
    let import = Import {
        key: service.clone(),
        service_type: winner.service_type,
        ports,
        session_affinity: winner.session_affinity,
        clusters,
        conflict,
        exported: (*winner.exported).clone(),
    };
    let conditions = exports
        .iter()
        .zip(reasons)
        .map(|((cluster, _), reasons)| {
            let conflicts = reasons.into_iter().collect();
            ((*cluster).clone(), ExportConditions { conflicts })
        })
        .collect();
    Some((import, conditions))
}

enum PortMatch {
    /// The port is already in the import.
    Same,
    /// The port collides with one defined by export `definer`.
    Conflict { definer: usize },
    /// The port is new to the import.
    New,
}

fn match_port(defined: &[(&ServicePort, usize)], port: &ServicePort) -> PortMatch {
    let same_number = |d: &ServicePort| d.protocol == port.protocol && d.port == port.port;
    if !port.name.is_empty() {
        if let Some((d, definer)) = defined.iter().find(|(d, _)| d.name == port.name) {
            return if same_number(d) {
                PortMatch::Same
            } else {
                PortMatch::Conflict { definer: *definer }
            };
        }
    }
    // The ports of the import have distinct numbers, so there is at most one.
    match defined.iter().find(|(d, _)| same_number(d)) {
        // Unnamed on either side: the same port, named or not.
        Some((d, _)) if d.name.is_empty() || port.name.is_empty() => PortMatch::Same,
        Some((_, definer)) => PortMatch::Conflict { definer: *definer },
        None => PortMatch::New,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{Protocol, ServiceType, SessionAffinity};
    use ConflictReason::*;

    fn c(id: &str) -> ClusterId {
        ClusterId::new(id).unwrap()
    }

    fn svc(ns: &str, name: &str) -> ServiceKey {
        ServiceKey::new(ns, name).unwrap()
    }

    fn port(name: &str, protocol: Protocol, number: u16) -> ServicePort {
        ServicePort {
            name: name.to_string(),
            protocol,
            port: number,
            app_protocol: None,
        }
    }

    fn tcp(name: &str, number: u16) -> ServicePort {
        port(name, Protocol::Tcp, number)
    }

    fn export(created_unix_ms: i64, ports: Vec<ServicePort>) -> ExportRecord {
        ExportRecord {
            schema: crate::SCHEMA_VERSION,
            ports: ports.into(),
            created_unix_ms,
            ready_endpoints: 1,
            ..ExportRecord::default()
        }
    }

    fn headless(mut e: ExportRecord) -> ExportRecord {
        e.service_type = ServiceType::Headless;
        e
    }

    fn client_ip(mut e: ExportRecord) -> ExportRecord {
        e.session_affinity = SessionAffinity::ClientIP;
        e
    }

    /// Owned rows `(service, cluster, export)` to borrow `ExportInput`s from.
    type Rows = Vec<(ServiceKey, ClusterId, ExportRecord)>;

    fn rows(service: &ServiceKey, exports: Vec<(&str, ExportRecord)>) -> Rows {
        exports
            .into_iter()
            .map(|(cluster, e)| (service.clone(), c(cluster), e))
            .collect()
    }

    fn run<'a>(
        rows: impl IntoIterator<Item = &'a (ServiceKey, ClusterId, ExportRecord)>,
    ) -> Merged {
        merge(
            rows.into_iter()
                .map(|(service, cluster, export)| ExportInput {
                    service,
                    cluster,
                    export,
                }),
        )
    }

    /// Merges in the given order, reversed, and in every rotation; all must agree.
    fn merge_every_order(rows: &Rows) -> Merged {
        let merged = run(rows);
        assert_eq!(run(rows.iter().rev()), merged, "reversed input");
        for k in 1..rows.len() {
            let rotated = rows[k..].iter().chain(&rows[..k]);
            assert_eq!(run(rotated), merged, "input rotated by {k}");
        }
        merged
    }

    /// `cluster -> reason()` of one service.
    fn reasons(merged: &Merged, service: &ServiceKey) -> Vec<(String, String)> {
        merged.conditions[service]
            .iter()
            .map(|(cluster, cond)| (cluster.to_string(), cond.reason()))
            .collect()
    }

    fn expect_reasons(merged: &Merged, service: &ServiceKey, expected: &[(&str, &str)]) {
        let expected: Vec<(String, String)> = expected
            .iter()
            .map(|(c, r)| (c.to_string(), r.to_string()))
            .collect();
        assert_eq!(reasons(merged, service), expected);
    }

    fn clusters(import: &Import) -> Vec<&str> {
        import.clusters.iter().map(ClusterId::as_str).collect()
    }

    #[test]
    fn nothing_exported_nothing_imported() {
        assert_eq!(run(&Rows::new()), Merged::default());
    }

    #[test]
    fn single_export() {
        let web = svc("shop", "web");
        let merged = merge_every_order(&rows(
            &web,
            vec![("east", export(10, vec![tcp("http", 80)]))],
        ));
        let import = &merged.imports[&web];
        assert_eq!(import.key, web);
        assert_eq!(import.service_type, ServiceType::ClusterSetIP);
        assert_eq!(import.ports, [tcp("http", 80)]);
        assert_eq!(clusters(import), ["east"]);
        assert!(!import.conflict);
        expect_reasons(&merged, &web, &[("east", "NoConflicts")]);
    }

    #[test]
    fn ports_of_two_clusters_are_united_without_conflict() {
        let web = svc("shop", "web");
        let mut grpc = port("grpc", Protocol::Tcp, 9090);
        grpc.app_protocol = Some("grpc".to_string());
        let merged = merge_every_order(&rows(
            &web,
            vec![
                (
                    "east",
                    export(10, vec![tcp("http", 80), tcp("metrics", 9100)]),
                ),
                ("west", export(20, vec![tcp("http", 80), grpc.clone()])),
            ],
        ));
        let import = &merged.imports[&web];
        assert_eq!(import.ports, [grpc, tcp("http", 80), tcp("metrics", 9100)]);
        assert_eq!(clusters(import), ["east", "west"]);
        assert!(!import.conflict);
        expect_reasons(
            &merged,
            &web,
            &[("east", "NoConflicts"), ("west", "NoConflicts")],
        );
    }

    #[test]
    fn unnamed_ports_match_by_protocol_and_number() {
        let dns = svc("kube-system", "dns");
        let merged = merge_every_order(&rows(
            &dns,
            vec![
                ("east", export(10, vec![port("", Protocol::Udp, 53)])),
                // Same number, other protocol: another port, not a conflict.
                (
                    "west",
                    export(
                        20,
                        vec![port("", Protocol::Udp, 53), port("", Protocol::Tcp, 53)],
                    ),
                ),
                // Named on one side, unnamed on the other: the same port; the older form stays.
                ("north", export(30, vec![port("dns", Protocol::Udp, 53)])),
            ],
        ));
        let import = &merged.imports[&dns];
        assert_eq!(
            import.ports,
            [port("", Protocol::Tcp, 53), port("", Protocol::Udp, 53)]
        );
        assert!(!import.conflict);
        expect_reasons(
            &merged,
            &dns,
            &[
                ("east", "NoConflicts"),
                ("north", "NoConflicts"),
                ("west", "NoConflicts"),
            ],
        );
    }

    #[test]
    fn exported_labels_and_policies_come_from_the_oldest_and_differences_conflict() {
        let web = svc("prod", "web");
        let mut east = export(1, vec![tcp("http", 80)]);
        east.exported.labels.insert("team".into(), "a".into());
        east.exported.internal_traffic_policy = Some("Local".into());
        let mut west = export(2, vec![tcp("http", 80)]);
        west.exported.labels.insert("team".into(), "b".into());
        west.exported.internal_traffic_policy = Some("Local".into());
        west.exported.annotations.insert("note".into(), "x".into());
        let merged = merge_every_order(&rows(&web, vec![("east", east), ("west", west)]));
        let import = &merged.imports[&web];
        assert_eq!(import.exported.labels["team"], "a", "the oldest export's");
        assert!(import.exported.annotations.is_empty());
        assert!(import.conflict);
        assert_eq!(
            merged.conditions[&web][&c("west")].conflicts,
            [LabelsConflict, AnnotationsConflict]
        );
        assert_eq!(
            merged.conditions[&web][&c("east")].conflicts,
            [LabelsConflict, AnnotationsConflict]
        );
    }

    #[test]
    fn port_conflict_same_name_other_number() {
        let web = svc("shop", "web");
        let merged = merge_every_order(&rows(
            &web,
            vec![
                ("east", export(10, vec![tcp("http", 80)])),
                (
                    "west",
                    export(20, vec![tcp("http", 8080), tcp("admin", 9000)]),
                ),
            ],
        ));
        let import = &merged.imports[&web];
        // The older definition wins; the loser's other ports still count.
        assert_eq!(import.ports, [tcp("admin", 9000), tcp("http", 80)]);
        assert_eq!(clusters(import), ["east", "west"]);
        assert!(import.conflict);
        expect_reasons(
            &merged,
            &web,
            &[("east", "PortConflict"), ("west", "PortConflict")],
        );
        assert_eq!(
            merged.conditions[&web][&c("west")].conflicts,
            [PortConflict]
        );
    }

    #[test]
    fn port_conflict_same_name_other_protocol() {
        let web = svc("shop", "web");
        let merged = merge_every_order(&rows(
            &web,
            vec![
                ("east", export(10, vec![tcp("dns", 53)])),
                ("west", export(20, vec![port("dns", Protocol::Udp, 53)])),
            ],
        ));
        assert_eq!(merged.imports[&web].ports, [tcp("dns", 53)]);
        expect_reasons(
            &merged,
            &web,
            &[("east", "PortConflict"), ("west", "PortConflict")],
        );
    }

    #[test]
    fn port_conflict_same_number_other_name() {
        let web = svc("shop", "web");
        let merged = merge_every_order(&rows(
            &web,
            vec![
                ("east", export(10, vec![tcp("http", 80)])),
                ("west", export(20, vec![tcp("web", 80)])),
            ],
        ));
        assert_eq!(merged.imports[&web].ports, [tcp("http", 80)]);
        expect_reasons(
            &merged,
            &web,
            &[("east", "PortConflict"), ("west", "PortConflict")],
        );
    }

    #[test]
    fn app_protocol_is_not_compared() {
        let web = svc("shop", "web");
        let mut h1 = tcp("http", 80);
        h1.app_protocol = Some("http".to_string());
        let mut h2 = tcp("http", 80);
        h2.app_protocol = Some("http2".to_string());
        let merged = merge_every_order(&rows(
            &web,
            vec![
                ("east", export(10, vec![h1.clone()])),
                ("west", export(20, vec![h2])),
            ],
        ));
        assert_eq!(merged.imports[&web].ports, [h1]);
        assert!(!merged.imports[&web].conflict);
    }

    #[test]
    fn port_conflict_marks_the_definer_not_the_winner() {
        // `west` defines `grpc` (east has no such port); `north` redefines it.
        let web = svc("shop", "web");
        let merged = merge_every_order(&rows(
            &web,
            vec![
                ("east", export(10, vec![tcp("http", 80)])),
                ("west", export(20, vec![tcp("http", 80), tcp("grpc", 9090)])),
                ("north", export(30, vec![tcp("grpc", 9091)])),
            ],
        ));
        assert_eq!(
            merged.imports[&web].ports,
            [tcp("grpc", 9090), tcp("http", 80)]
        );
        expect_reasons(
            &merged,
            &web,
            &[
                ("east", "NoConflicts"),
                ("north", "PortConflict"),
                ("west", "PortConflict"),
            ],
        );
    }

    #[test]
    fn type_conflict() {
        let web = svc("shop", "web");
        let merged = merge_every_order(&rows(
            &web,
            vec![
                ("east", export(10, vec![tcp("http", 80)])),
                // The loser's ports, even conflicting ones, do not count.
                (
                    "west",
                    headless(export(20, vec![tcp("http", 8080), tcp("extra", 81)])),
                ),
            ],
        ));
        let import = &merged.imports[&web];
        assert_eq!(import.service_type, ServiceType::ClusterSetIP);
        assert_eq!(import.ports, [tcp("http", 80)]);
        assert_eq!(clusters(import), ["east"]);
        assert!(import.conflict);
        expect_reasons(
            &merged,
            &web,
            &[("east", "TypeConflict"), ("west", "TypeConflict")],
        );
    }

    #[test]
    fn type_conflict_the_oldest_defines_the_type() {
        let web = svc("shop", "web");
        let merged = merge_every_order(&rows(
            &web,
            vec![
                ("east", export(20, vec![tcp("http", 80)])),
                ("west", headless(export(10, vec![tcp("http", 80)]))),
            ],
        ));
        let import = &merged.imports[&web];
        assert_eq!(import.service_type, ServiceType::Headless);
        assert_eq!(clusters(import), ["west"]);
        expect_reasons(
            &merged,
            &web,
            &[("east", "TypeConflict"), ("west", "TypeConflict")],
        );
    }

    #[test]
    fn session_affinity_conflict() {
        let web = svc("shop", "web");
        let merged = merge_every_order(&rows(
            &web,
            vec![
                ("east", export(10, vec![tcp("http", 80)])),
                ("west", client_ip(export(20, vec![tcp("http", 80)]))),
            ],
        ));
        let import = &merged.imports[&web];
        assert_eq!(import.session_affinity, SessionAffinity::None);
        // The loser stays in the import.
        assert_eq!(clusters(import), ["east", "west"]);
        assert!(import.conflict);
        expect_reasons(
            &merged,
            &web,
            &[
                ("east", "SessionAffinityConflict"),
                ("west", "SessionAffinityConflict"),
            ],
        );
    }

    #[test]
    fn port_and_session_affinity_conflict_combined() {
        let web = svc("shop", "web");
        let merged = merge_every_order(&rows(
            &web,
            vec![
                ("east", client_ip(export(10, vec![tcp("http", 80)]))),
                ("west", export(20, vec![tcp("http", 8080)])),
            ],
        ));
        let import = &merged.imports[&web];
        assert_eq!(import.session_affinity, SessionAffinity::ClientIP);
        assert_eq!(import.ports, [tcp("http", 80)]);
        assert_eq!(clusters(import), ["east", "west"]);
        expect_reasons(
            &merged,
            &web,
            &[
                ("east", "PortConflict,SessionAffinityConflict"),
                ("west", "PortConflict,SessionAffinityConflict"),
            ],
        );
        assert_eq!(
            merged.conditions[&web][&c("east")].conflicts,
            [PortConflict, SessionAffinityConflict]
        );
    }

    #[test]
    fn reasons_are_deduplicated() {
        // Two port conflicts and a session affinity conflict between the same two exports.
        let web = svc("shop", "web");
        let merged = merge_every_order(&rows(
            &web,
            vec![
                ("east", export(10, vec![tcp("http", 80), tcp("grpc", 90)])),
                (
                    "west",
                    client_ip(export(20, vec![tcp("http", 81), tcp("grpc", 91)])),
                ),
            ],
        ));
        assert_eq!(
            merged.conditions[&web][&c("west")].conflicts,
            [PortConflict, SessionAffinityConflict]
        );
    }

    #[test]
    fn equal_creation_times_are_ordered_by_cluster_id() {
        let web = svc("shop", "web");
        let merged = merge_every_order(&rows(
            &web,
            vec![
                ("west", client_ip(export(10, vec![tcp("http", 8080)]))),
                ("east", export(10, vec![tcp("http", 80)])),
            ],
        ));
        let import = &merged.imports[&web];
        // `east` < `west`: east's port and affinity win.
        assert_eq!(import.ports, [tcp("http", 80)]);
        assert_eq!(import.session_affinity, SessionAffinity::None);
        expect_reasons(
            &merged,
            &web,
            &[
                ("east", "PortConflict,SessionAffinityConflict"),
                ("west", "PortConflict,SessionAffinityConflict"),
            ],
        );
    }

    #[test]
    fn three_clusters_only_one_conflicts() {
        let web = svc("shop", "web");
        let merged = merge_every_order(&rows(
            &web,
            vec![
                ("east", export(10, vec![tcp("http", 80)])),
                ("north", export(20, vec![tcp("http", 80)])),
                ("west", headless(export(30, vec![tcp("http", 80)]))),
            ],
        ));
        let import = &merged.imports[&web];
        assert_eq!(clusters(import), ["east", "north"]);
        assert!(import.conflict);
        expect_reasons(
            &merged,
            &web,
            &[
                ("east", "TypeConflict"),
                ("north", "NoConflicts"),
                ("west", "TypeConflict"),
            ],
        );
    }

    #[test]
    fn services_are_merged_independently() {
        let (web, db) = (svc("shop", "web"), svc("shop", "db"));
        let mut all = rows(
            &web,
            vec![
                ("east", export(10, vec![tcp("http", 80)])),
                ("west", export(20, vec![tcp("http", 81)])),
            ],
        );
        all.extend(rows(
            &db,
            vec![
                ("west", export(5, vec![tcp("pg", 5432)])),
                ("east", export(6, vec![tcp("pg", 5432)])),
            ],
        ));
        let merged = merge_every_order(&all);
        assert_eq!(merged.imports.keys().collect::<Vec<_>>(), [&db, &web]);
        assert!(merged.imports[&web].conflict);
        assert!(!merged.imports[&db].conflict);
        assert_eq!(clusters(&merged.imports[&db]), ["east", "west"]);
        expect_reasons(
            &merged,
            &db,
            &[("east", "NoConflicts"), ("west", "NoConflicts")],
        );
    }

    #[test]
    fn input_order_does_not_matter() {
        // Every kind of conflict at once, five clusters, two services; every permutation of
        // the first service's exports must give the same result.
        let (web, db) = (svc("shop", "web"), svc("shop", "db"));
        let mut all = rows(
            &web,
            vec![
                ("c1", export(30, vec![tcp("http", 80), tcp("grpc", 9090)])),
                (
                    "c2",
                    client_ip(export(30, vec![tcp("http", 80), tcp("metrics", 9100)])),
                ),
                ("c3", headless(export(20, vec![tcp("http", 80)]))),
                ("c4", export(10, vec![tcp("http", 80)])),
                (
                    "c5",
                    export(40, vec![tcp("grpc", 9091), tcp("metrics", 9100)]),
                ),
            ],
        );
        all.extend(rows(&db, vec![("c1", export(1, vec![tcp("pg", 5432)]))]));
        let expected = run(&all);

        let web_rows: Vec<_> = all.iter().filter(|r| r.0 == web).collect();
        let db_row = all.iter().find(|r| r.0 == db).unwrap();
        let mut permutation = web_rows.clone();
        let mut count = 0;
        permute(&mut permutation, 0, &mut |order| {
            let input = order.iter().copied().chain(std::iter::once(db_row));
            assert_eq!(run(input), expected, "order {order:?}");
            count += 1;
        });
        assert_eq!(count, 120);

        let import = &expected.imports[&web];
        assert_eq!(import.service_type, ServiceType::ClusterSetIP);
        assert_eq!(clusters(import), ["c1", "c2", "c4", "c5"]);
        assert_eq!(
            import.ports,
            [tcp("grpc", 9090), tcp("http", 80), tcp("metrics", 9100)]
        );
        expect_reasons(
            &expected,
            &web,
            &[
                ("c1", "PortConflict"),
                ("c2", "SessionAffinityConflict"),
                ("c3", "TypeConflict"),
                ("c4", "TypeConflict,SessionAffinityConflict"),
                ("c5", "PortConflict"),
            ],
        );
    }

    fn permute<T: Copy>(items: &mut [T], k: usize, visit: &mut impl FnMut(&[T])) {
        if k == items.len() {
            visit(items);
            return;
        }
        for i in k..items.len() {
            items.swap(k, i);
            permute(items, k + 1, visit);
            items.swap(k, i);
        }
    }

    #[test]
    fn duplicate_exports_of_a_cluster_are_resolved_by_content() {
        let web = svc("shop", "web");
        let all = rows(
            &web,
            vec![
                ("east", export(10, vec![tcp("http", 80)])),
                ("east", export(5, vec![tcp("http", 81)])),
                ("east", export(10, vec![tcp("http", 82)])),
            ],
        );
        let merged = merge_every_order(&all);
        assert_eq!(merged.imports[&web].ports, [tcp("http", 81)]);
        expect_reasons(&merged, &web, &[("east", "NoConflicts")]);
    }
}
