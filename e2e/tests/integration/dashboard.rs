//! The federator's dashboard in a real browser: headless Chromium run inside a cluster's network
//! namespace (as an operator's browser there would be), against a running lab: the clusters and
//! imports, a drill's drain coming and going, a cut WAN link.

use std::time::{Duration, Instant};

use anyhow::Context as _;
use causeway_e2e::lab::{Lab, LabState};

use crate::lab_support::{self, result, secs};

/// Headless Chromium inside `cluster`'s namespace on its federator's dashboard, after the
/// page's script ran for a second and a half of virtual time, with `what` (`--dump-dom`,
/// `--screenshot=...`): its stdout.
async fn chromium(lab: &Lab, cluster: &str, what: &[String]) -> anyhow::Result<Vec<u8>> {
    let url = format!("http://{}/dashboard", lab.cluster(cluster).federator_admin);
    let ns = lab.netns(cluster).context("the lab runs in namespaces")?;
    let profile = tempfile::tempdir()?;
    let out = tokio::process::Command::new("ip")
        .args([
            "netns",
            "exec",
            &ns,
            "chromium",
            "--headless=new",
            "--no-sandbox",
        ])
        .args(["--disable-gpu", "--virtual-time-budget=1500"])
        .args(what)
        .arg(format!("--user-data-dir={}", profile.path().display()))
        .arg(&url)
        .output()
        .await
        .context("running chromium (scripts/setup.sh installs it)")?;
    anyhow::ensure!(
        out.status.success(),
        "chromium {what:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(out.stdout)
}

/// The text the page shows.
async fn page_text(lab: &Lab, cluster: &str) -> anyhow::Result<String> {
    let dom = chromium(lab, cluster, &["--dump-dom".to_string()]).await?;
    Ok(text_of(&String::from_utf8_lossy(&dom)))
}

/// With `CAUSEWAY_DASHBOARD_SCREENSHOTS=<dir>`, a PNG of `cluster`'s page as `<dir>/<name>.png`
/// (docs/ holds the ones of a run: `dashboard-drill.png`, `dashboard-down.png`).
async fn screenshot(lab: &Lab, cluster: &str, name: &str) -> anyhow::Result<()> {
    let Some(dir) = std::env::var_os("CAUSEWAY_DASHBOARD_SCREENSHOTS") else {
        return Ok(());
    };
    let path = std::path::Path::new(&dir).join(format!("{name}.png"));
    let what = [
        "--hide-scrollbars".to_string(),
        "--window-size=1100,1500".to_string(),
        format!("--screenshot={}", path.display()),
    ];
    chromium(lab, cluster, &what).await?;
    anyhow::ensure!(path.is_file(), "chromium wrote no {}", path.display());
    Ok(())
}

/// The visible text of a DOM: no scripts, styles or tags; runs of white space as one space.
fn text_of(dom: &str) -> String {
    let mut s = dom.to_string();
    for hidden in ["script", "style"] {
        let (open, close) = (format!("<{hidden}"), format!("</{hidden}>"));
        while let Some(i) = s.find(&open) {
            let end = s[i..].find(&close).map_or(s.len(), |j| i + j + close.len());
            s.replace_range(i..end, " ");
        }
    }
    let mut text = String::new();
    let mut in_tag = false;
    for c in s.chars() {
        match c {
            '<' => in_tag = true,
            '>' => {
                in_tag = false;
                text.push(' ');
            }
            c if !in_tag => text.push(c),
            _ => {}
        }
    }
    text.replace("&amp;", "&")
        .split_whitespace()
        .collect::<Vec<_>>()
        .join(" ")
}

/// The traffic table's "sent to it" rate per peer, from the page's text: after its header, rows
/// of six cells (peer, sent, failed, taken, failed, gateways).
fn sent_rates(text: &str) -> Vec<(String, f64)> {
    let Some(i) = text.find("gateways reporting") else {
        return Vec::new();
    };
    let rest = &text[i + "gateways reporting".len()..];
    let end = rest.find("Imports").unwrap_or(rest.len());
    let cells: Vec<&str> = rest[..end].split_whitespace().collect();
    cells
        .chunks(6)
        .filter(|c| c.len() == 6)
        .filter_map(|c| Some((c[0].to_string(), c[1].parse().ok()?)))
        .collect()
}

/// Asks the page until `want` holds of its text; the time it took, or None after `limit`.
async fn until(
    lab: &Lab,
    cluster: &str,
    limit: Duration,
    want: impl Fn(&str) -> bool,
) -> Option<Duration> {
    let start = Instant::now();
    while start.elapsed() < limit {
        if let Ok(text) = page_text(lab, cluster).await {
            if want(&text) {
                return Some(start.elapsed());
            }
        }
    }
    None
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_dashboard_shows_the_clusterset_a_drill_and_a_cut_wan_link() {
    let Some(lab) = lab_support::start(3, |_| {}).await else {
        return;
    };
    let text = page_text(&lab, "north").await.expect("the page renders");
    for shown in [
        "east",
        "west",
        "north",
        "demo/echo",
        "demo/grpc",
        "demo/tcp-echo",
    ] {
        assert!(text.contains(shown), "{shown} not on the page: {text}");
    }
    assert!(text.contains("federator of north"), "{text}");

    // A drill of demo/echo in east, from the CLI, for 4 s.
    let lab_json = LabState::path(&lab.state().state_dir);
    let drill = {
        let (bin, json) = (lab.state().bin_dir.join("causeway"), lab_json.clone());
        std::thread::spawn(move || {
            std::process::Command::new(bin)
                .args([
                    "drill",
                    "--service",
                    "demo/echo",
                    "--cluster",
                    "east",
                    "--for",
                    "4s",
                ])
                .arg("--lab")
                .arg(json)
                .arg("--no-client")
                .output()
        })
    };
    // Bounds with room for the browser's own start on a loaded machine; the figures are printed
    // (a quiet run: shown 0.5 s after the drill began, cleared 0.5 s after it ended, a cut link
    // shown down after 2.3 s).
    let drained = until(&lab, "north", Duration::from_secs(5), |t| {
        t.contains("east (drained)")
    })
    .await;
    assert!(drained.is_some(), "the drain never showed");
    screenshot(&lab, "north", "dashboard-drill").await.unwrap();
    let out = drill
        .join()
        .expect("the drill ran")
        .expect("causeway drill started");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let cleared = until(&lab, "north", Duration::from_secs(5), |t| {
        !t.contains("(drained)")
    })
    .await;
    assert!(cleared.is_some(), "the drain never cleared");

    // Traffic: a client in north calls echo (served by east and west); the page shows north's
    // gateway sending to them, from its health reports.
    let ns = lab.netns("north").expect("the lab runs in namespaces");
    let mut client = tokio::process::Command::new("ip")
        .args(["netns", "exec", &ns, "sh", "-c"])
        .arg("for i in $(seq 1 300); do curl -s -o /dev/null -m 2 http://echo.demo.svc.clusterset.local/; sleep 0.05; done")
        .kill_on_drop(true)
        .spawn()
        .expect("curl in north");
    let sending = until(&lab, "north", Duration::from_secs(15), |t| {
        sent_rates(t)
            .iter()
            .any(|(peer, rps)| (peer == "east" || peer == "west") && *rps > 0.0)
    })
    .await;
    assert!(sending.is_some(), "no traffic from north shown");

    // west's WAN link cut: north's gateway sees it down.
    lab.set_wan_link("west", false).unwrap();
    // North's row of the matrix (columns east, north, west): "north up … · DOWN".
    let down = until(&lab, "north", Duration::from_secs(15), |t| {
        t.contains("· DOWN")
    })
    .await;
    if down.is_some() {
        screenshot(&lab, "north", "dashboard-down").await.unwrap();
    }
    lab.set_wan_link("west", true).unwrap();
    let _ = client.kill().await;
    assert!(down.is_some(), "the cut link never showed as down");
    result(
        "dashboard",
        &[
            ("drained_shown_after", secs(drained)),
            ("cleared_after_end", secs(cleared)),
            ("down_shown_after", secs(down)),
            ("traffic_shown_after", secs(sending)),
        ],
    );
}
