//! `causeway status`: the mesh as one federator sees it, as tables.

use std::fmt::Write as _;

use anyhow::Context;
use causeway_api::snapshot::ClusterState;
use causeway_api::MeshSnapshot;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

#[derive(Debug, clap::Args)]
pub struct StatusArgs {
    /// Admin address of a federator (`host:port`).
    #[arg(long, env = "CAUSEWAY_ADMIN", default_value = "127.0.0.1:9090")]
    pub admin: String,
    /// Print the raw snapshot JSON instead of tables.
    #[arg(long)]
    pub json: bool,
}

pub async fn run(args: &StatusArgs) -> anyhow::Result<String> {
    let addr = args
        .admin
        .trim_start_matches("http://")
        .trim_end_matches('/')
        .to_string();
    let body = admin_get(&addr, "/debug/snapshot")
        .await
        .with_context(|| format!("asking the federator at {addr}"))?;
    if args.json {
        return Ok(body);
    }
    #[derive(serde::Deserialize)]
    struct Debug {
        leader: bool,
        snapshot: MeshSnapshot,
    }
    let d: Debug =
        serde_json::from_str(&body).with_context(|| format!("reading {addr}/debug/snapshot"))?;
    Ok(render(&d.snapshot, d.leader))
}

/// `GET <path>` on a federator's admin listener (HTTP/1.0, a new connection): the body of a
/// 200, an error naming the path and the status line otherwise. Small on purpose: `causeway
/// status`, the tests and the benchmarks read two or three endpoints with it.
pub async fn admin_get(addr: &str, path: &str) -> anyhow::Result<String> {
    let mut s = tokio::time::timeout(
        std::time::Duration::from_secs(3),
        tokio::net::TcpStream::connect(addr),
    )
    .await
    .context("connection timed out")??;
    s.write_all(format!("GET {path} HTTP/1.0\r\nHost: {addr}\r\n\r\n").as_bytes())
        .await?;
    let mut buf = Vec::new();
    tokio::time::timeout(std::time::Duration::from_secs(10), s.read_to_end(&mut buf))
        .await
        .context("read timed out")??;
    let text = String::from_utf8(buf).context("response is not UTF-8")?;
    let (head, body) = text
        .split_once("\r\n\r\n")
        .context("malformed HTTP response")?;
    let status = head.lines().next().unwrap_or("");
    anyhow::ensure!(status.contains(" 200 "), "{path}: {status}");
    Ok(body.to_string())
}

fn when(ms: i64) -> String {
    time::OffsetDateTime::from_unix_timestamp_nanos(i128::from(ms) * 1_000_000)
        .ok()
        .and_then(|t| t.replace_nanosecond(0).ok())
        .and_then(|t| {
            t.format(&time::format_description::well_known::Rfc3339)
                .ok()
        })
        .unwrap_or_else(|| ms.to_string())
}

/// Lays out rows in aligned columns.
fn table(out: &mut String, header: &[&str], rows: &[Vec<String>]) {
    let mut widths: Vec<usize> = header.iter().map(|h| h.len()).collect();
    for r in rows {
        for (w, c) in widths.iter_mut().zip(r) {
            *w = (*w).max(c.len());
        }
    }
    let line = |cells: Vec<&str>| {
        let mut l = String::new();
        for (i, (c, w)) in cells.iter().zip(&widths).enumerate() {
            if i + 1 == cells.len() {
                l.push_str(c);
            } else {
                let _ = write!(l, "{c:<w$}  ");
            }
        }
        l.trim_end().to_string()
    };
    let _ = writeln!(out, "{}", line(header.to_vec()));
    for r in rows {
        let _ = writeln!(out, "{}", line(r.iter().map(String::as_str).collect()));
    }
}

/// Who sees whom: a row per observing cluster (its gateways' probes, from `health/`), a column
/// per observed cluster; `up 1.2ms`, `suspect 1.2ms` (a probe missed), `DOWN`, `-` (no report),
/// `.` (itself).
fn health_matrix(out: &mut String, s: &MeshSnapshot) {
    if s.health.is_empty() {
        return;
    }
    let clusters: Vec<&causeway_api::ClusterId> = s.clusters.keys().collect();
    let mut header = vec!["SEEN BY \\ OF"];
    header.extend(clusters.iter().map(|c| c.as_str()));
    let rows: Vec<Vec<String>> = clusters
        .iter()
        .map(|observer| {
            let mut row = vec![observer.to_string()];
            for observed in &clusters {
                row.push(if observer == observed {
                    ".".to_string()
                } else {
                    match s.health.get(*observer).and_then(|m| m.get(*observed)) {
                        Some(h) if h.up => format!(
                            "{} {:.1}ms",
                            if h.suspect { "suspect" } else { "up" },
                            h.rtt_micros as f64 / 1000.0
                        ),
                        Some(_) => "DOWN".to_string(),
                        None => "-".to_string(),
                    }
                });
            }
            row
        })
        .collect();
    let _ = writeln!(out);
    table(out, &header, &rows);
}

pub fn render(s: &MeshSnapshot, leader: bool) -> String {
    let mut out = String::new();
    let local = s
        .local_cluster
        .as_ref()
        .map(|c| c.to_string())
        .unwrap_or_default();
    let _ = writeln!(
        out,
        "federator of {local} ({}), snapshot {} at etcd revision {}{}\n",
        if leader { "leader" } else { "standby" },
        s.version,
        s.revision,
        if s.synced {
            ""
        } else {
            " (initial sync not done)"
        }
    );
    let by_cluster = s.exports_by_cluster();
    let rows: Vec<Vec<String>> = s
        .clusters
        .iter()
        .map(|(c, v)| {
            vec![
                c.to_string(),
                match v.state {
                    ClusterState::Up => "up".to_string(),
                    ClusterState::Stale => "stale".to_string(),
                },
                when(v.last_change_unix_ms),
                by_cluster.get(c).copied().unwrap_or(0).to_string(),
                v.record.gateway_addresses.join(","),
                v.record
                    .certificate_not_after
                    .map_or("-".to_string(), |t| when(t.saturating_mul(1000))),
            ]
        })
        .collect();
    table(
        &mut out,
        &[
            "CLUSTER",
            "STATE",
            "LAST CHANGE",
            "EXPORTS",
            "GATEWAYS",
            "CERT EXPIRES",
        ],
        &rows,
    );
    health_matrix(&mut out, s);
    let _ = writeln!(out);
    let rows: Vec<Vec<String>> = s
        .services
        .iter()
        .map(|(k, v)| {
            let clusters = v
                .exports
                .iter()
                .map(|(c, e)| {
                    let mut c = c.to_string();
                    if e.stale {
                        c.push_str("(stale)");
                    }
                    if e.drained {
                        c.push_str("(drained)");
                    }
                    c
                })
                .collect::<Vec<_>>()
                .join(",");
            let ports = v
                .import
                .ports
                .iter()
                .map(|p| {
                    if p.name.is_empty() {
                        format!("{}/{}", p.port, p.protocol)
                    } else {
                        format!("{}:{}/{}", p.name, p.port, p.protocol)
                    }
                })
                .collect::<Vec<_>>()
                .join(",");
            let conflicts = v
                .exports
                .iter()
                .filter(|(_, e)| e.conditions.conflict())
                .map(|(c, e)| format!("{c}={}", e.conditions.reason()))
                .collect::<Vec<_>>()
                .join(" ");
            vec![
                k.to_string(),
                clusters,
                v.import.service_type.to_string(),
                ports,
                v.vip.map(|ip| ip.to_string()).unwrap_or_else(|| "-".into()),
                if conflicts.is_empty() {
                    "-".into()
                } else {
                    conflicts
                },
            ]
        })
        .collect();
    table(
        &mut out,
        &[
            "SERVICE",
            "CLUSTERS",
            "TYPE",
            "PORTS",
            "CLUSTERSET IP",
            "CONFLICTS",
        ],
        &rows,
    );
    if !s.drills.is_empty() {
        let _ = writeln!(out);
        let rows: Vec<Vec<String>> = s
            .drills
            .iter()
            .map(|(id, d)| {
                vec![
                    id.clone(),
                    d.service.to_string(),
                    d.cluster.to_string(),
                    when(d.end_unix_ms),
                ]
            })
            .collect();
        table(
            &mut out,
            &["DRILL", "SERVICE", "DRAINED CLUSTER", "UNTIL"],
            &rows,
        );
    }
    if !s.invalid_exports.is_empty() {
        let _ = writeln!(out, "\nINVALID LOCAL EXPORTS");
        for i in &s.invalid_exports {
            let _ = writeln!(out, "{}: {}", i.source, i.reason);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use causeway_api::snapshot::{ClusterState, ClusterView};
    use causeway_api::{ClusterId, ClusterRecord};

    #[test]
    fn each_clusters_certificate_expiry_is_shown() {
        let view = |not_after: Option<i64>| ClusterView {
            record: ClusterRecord {
                schema: causeway_api::SCHEMA_VERSION,
                gateway_addresses: vec!["10.100.0.11:15443".into()],
                trust_domain: "east.causeway.mesh".into(),
                trust_bundle_pem: String::new(),
                locality: Default::default(),
                federator_version: String::new(),
                certificate_not_after: not_after,
            },
            state: ClusterState::Up,
            last_change_unix_ms: 0,
            stale_since_unix_ms: None,
            synced_revision: None,
        };
        let snap = MeshSnapshot {
            clusters: [
                (ClusterId::new("east").unwrap(), view(Some(1_800_000_000))),
                (ClusterId::new("west").unwrap(), view(None)),
            ]
            .into(),
            ..Default::default()
        };
        let text = render(&snap, true);
        assert!(text.contains("CERT EXPIRES"), "{text}");
        let east = text.lines().find(|l| l.starts_with("east")).unwrap();
        assert!(east.contains("2027-01-15T08:00:00Z"), "{text}");
        let west = text.lines().find(|l| l.starts_with("west")).unwrap();
        assert!(west.trim_end().ends_with('-'), "{text}");
    }

    #[test]
    fn the_health_matrix_shows_who_sees_whom() {
        let view = ClusterView {
            record: ClusterRecord {
                schema: causeway_api::SCHEMA_VERSION,
                gateway_addresses: vec![],
                trust_domain: String::new(),
                trust_bundle_pem: String::new(),
                locality: Default::default(),
                federator_version: String::new(),
                certificate_not_after: None,
            },
            state: ClusterState::Up,
            last_change_unix_ms: 0,
            stale_since_unix_ms: None,
            synced_revision: None,
        };
        let id = |c: &str| ClusterId::new(c).unwrap();
        let h = |up: bool, rtt_micros: u64| causeway_api::HealthRecord {
            schema: causeway_api::SCHEMA_VERSION,
            up,
            suspect: false,
            rtt_micros,
            observed_unix_ms: 0,
        };
        let snap = MeshSnapshot {
            clusters: ["east", "north", "west"]
                .iter()
                .map(|c| (id(c), view.clone()))
                .collect(),
            health: [
                (
                    id("east"),
                    [(id("west"), h(true, 1200)), (id("north"), h(false, 0))].into(),
                ),
                (
                    id("north"),
                    [(
                        id("west"),
                        causeway_api::HealthRecord {
                            suspect: true,
                            ..h(true, 800)
                        },
                    )]
                    .into(),
                ),
            ]
            .into(),
            ..Default::default()
        };
        let text = render(&snap, true);
        let header = text
            .lines()
            .find(|l| l.starts_with("SEEN BY"))
            .expect(&text);
        assert!(header.contains("east") && header.contains("west"), "{text}");
        // A cluster's row of the matrix (below its header).
        let row = |c: &str| {
            text.lines()
                .skip_while(|l| !l.starts_with("SEEN BY"))
                .find(|l| l.starts_with(c))
                .unwrap()
        };
        let cells: Vec<&str> = row("east")
            .split("  ")
            .map(str::trim)
            .filter(|c| !c.is_empty())
            .collect();
        assert_eq!(cells, ["east", ".", "DOWN", "up 1.2ms"], "{text}");
        assert!(row("west").contains('-'), "no report from west: {text}");
        let north = row("north");
        assert!(north.contains("suspect 0.8ms"), "{text}");
    }
}
