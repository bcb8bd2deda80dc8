//! The federator's dashboard in a real browser: headless Chromium run inside a cluster's network
//! namespace (as an operator's browser there would be), against a running lab: the clusters and
//! imports, a drill's drain coming and going, a cut WAN link.

use std::time::{Duration, Instant};

use anyhow::Context as _;
use causeway_e2e::lab::{Lab, LabState};

use crate::lab_support::{self, result, secs};

/// The text the page shows after its script ran for a second and a half of virtual time.
async fn page_text(lab: &Lab, cluster: &str) -> anyhow::Result<String> {
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
        .args(["--disable-gpu", "--virtual-time-budget=1500", "--dump-dom"])
        .arg(format!("--user-data-dir={}", profile.path().display()))
        .arg(&url)
        .output()
        .await
        .context("running chromium (scripts/setup.sh installs it)")?;
    anyhow::ensure!(
        out.status.success(),
        "chromium: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let dom = String::from_utf8_lossy(&out.stdout).into_owned();
    Ok(text_of(&dom))
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

    // west's WAN link cut: north's gateway sees it down.
    lab.set_wan_link("west", false).unwrap();
    // North's row of the matrix (columns east, north, west): "north up … · DOWN".
    let down = until(&lab, "north", Duration::from_secs(15), |t| {
        t.contains("· DOWN")
    })
    .await;
    lab.set_wan_link("west", true).unwrap();
    assert!(down.is_some(), "the cut link never showed as down");
    result(
        "dashboard",
        &[
            ("drained_shown_after", secs(drained)),
            ("cleared_after_end", secs(cleared)),
            ("down_shown_after", secs(down)),
        ],
    );
}
