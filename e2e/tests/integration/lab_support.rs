//! What the lab and failure tests share: starting a lab (or skipping when this machine cannot
//! make network namespaces), and printing measurements in one format.

use std::sync::OnceLock;
use std::time::Duration;

use causeway_e2e::lab::probe::Prober;
use causeway_e2e::lab::{self, Lab, LabSpec};

/// Builds the binaries the lab runs when one is missing or older than the sources, once per
/// test process: `cargo test -p causeway-e2e` builds this crate's binaries but not the
/// federator's or the gateway's, and a stale one would test old code (a workspace-wide
/// `cargo test` has built them all). Set `CAUSEWAY_LAB_NO_BUILD=1` to use what is there.
pub(crate) fn ensure_binaries() -> Result<(), String> {
    static BUILT: OnceLock<Result<(), String>> = OnceLock::new();
    BUILT
        .get_or_init(|| {
            let bin_dir = lab::default_bin_dir().map_err(|e| format!("{e:#}"))?;
            let skip = std::env::var_os("CAUSEWAY_LAB_NO_BUILD").is_some_and(|v| v == "1");
            if !skip && !lab::stale_binaries(&bin_dir).is_empty() {
                lab::build_binaries().map_err(|e| format!("{e:#}"))?;
            }
            let missing = lab::missing_binaries(&bin_dir);
            if missing.is_empty() {
                Ok(())
            } else {
                Err(format!(
                    "{} missing in {}: run `{}`",
                    missing.join(", "),
                    bin_dir.display(),
                    lab::BUILD_COMMAND
                ))
            }
        })
        .clone()
}

/// Starts a lab of `clusters` clusters, adjusted by `adjust`; None (the test is skipped, and
/// says so) when this process cannot create network namespaces.
pub(crate) async fn start(clusters: usize, adjust: impl FnOnce(&mut LabSpec)) -> Option<Lab> {
    if !lab::net::can_use_namespaces() {
        eprintln!("SKIPPED: the lab tests need root and `ip` (network namespaces)");
        return None;
    }
    let built = tokio::task::spawn_blocking(ensure_binaries)
        .await
        .expect("the build task ran");
    if let Err(e) = built {
        panic!("cannot build the lab's binaries: {e}");
    }
    let mut spec = LabSpec::for_test(clusters).expect("a lab spec");
    adjust(&mut spec);
    match Lab::up(spec).await {
        Ok(lab) => Some(lab),
        Err(e) => panic!("the lab did not come up: {e:#}"),
    }
}

/// Seconds with milliseconds, or "never".
pub(crate) fn secs(d: Option<Duration>) -> String {
    d.map_or("never".to_string(), |d| format!("{:.3}s", d.as_secs_f64()))
}

/// Prints one measurement line: `RESULT <test>: key=value ...` (docs/benchmarks.md collects
/// them; run with `-- --nocapture` to see them).
pub(crate) fn result(test: &str, fields: &[(&str, String)]) {
    let fields: Vec<String> = fields.iter().map(|(k, v)| format!("{k}={v}")).collect();
    println!("RESULT {test}: {}", fields.join(" "));
}

/// Waits until `prober` has had `n` successful answers.
pub(crate) async fn warm_up(prober: &Prober, n: usize) {
    causeway_e2e::wait_for(
        "the client to get answers",
        Duration::from_secs(20),
        || async {
            let ok = prober.samples().iter().filter(|s| s.ok()).count();
            (ok >= n).then_some(())
        },
    )
    .await
    .unwrap_or_else(|e| {
        panic!(
            "{e:#}\n{}",
            prober
                .timeline()
                .describe_failures(Duration::ZERO, Duration::MAX)
        )
    });
}

/// Keeps a fault in place for `d`. Not synchronisation (that is `wait_for`'s job): the length
/// of an outage is part of the scenario.
pub(crate) async fn hold(d: Duration) {
    tokio::time::sleep(d).await;
}

/// The sum of the samples of metric `name` whose labels include every `(label, value)` of
/// `labels`, in a Prometheus text exposition; None when there is none.
pub(crate) fn metric(text: &str, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
    causeway_api::prom::sum(text, name, labels)
}

/// Waits until every cluster holds the imports it held in `before`; returns how long it took.
pub(crate) async fn wait_imports_equal(lab: &Lab, before: &Imports, timeout: Duration) -> Duration {
    let started = std::time::Instant::now();
    let r = causeway_e2e::wait_for("the imports to be what they were", timeout, || async {
        let now = lab.all_imports().await.ok()?;
        (&now == before).then_some(())
    })
    .await;
    if let Err(e) = r {
        let now = lab.all_imports().await;
        panic!("{e:#}\nbefore: {before:?}\nnow:    {now:?}");
    }
    started.elapsed()
}

/// Every cluster's imports: service → clusters exporting it.
pub(crate) type Imports = std::collections::BTreeMap<
    String,
    std::collections::BTreeMap<
        causeway_api::ServiceKey,
        std::collections::BTreeSet<causeway_api::ClusterId>,
    >,
>;
