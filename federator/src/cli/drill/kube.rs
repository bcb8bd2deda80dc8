//! `causeway drill --kube`: create a Drill resource, follow its status, print its report.
//! Ctrl-C deletes the Drill, which ends the drain at once.

use std::time::Duration;

use anyhow::{bail, Context as _};
use kube::api::{Api, DeleteParams, PostParams};
use kube::config::{KubeConfigOptions, Kubeconfig};
use kube::ResourceExt;

use super::DrillArgs;
use crate::crds::{Drill, DrillSpec, DrillStatus};
use crate::drill::controller::phase;

/// How often the Drill's status is read.
const POLL: Duration = Duration::from_millis(250);
/// How long after its drain's end a Drill may take to report, beyond the failback timeout.
const GRACE: Duration = Duration::from_secs(60);

async fn client(args: &DrillArgs) -> anyhow::Result<kube::Client> {
    let options = KubeConfigOptions {
        context: args.context.clone(),
        ..KubeConfigOptions::default()
    };
    let config = match &args.kubeconfig {
        Some(path) => {
            let kc = Kubeconfig::read_from(path)
                .with_context(|| format!("reading {}", path.display()))?;
            kube::Config::from_custom_kubeconfig(kc, &options).await?
        }
        None if args.context.is_some() => kube::Config::from_kubeconfig(&options).await?,
        None => kube::Config::infer().await?,
    };
    Ok(kube::Client::try_from(config)?)
}

fn spec(args: &DrillArgs) -> DrillSpec {
    DrillSpec {
        service: args.service.name.clone(),
        cluster: args.cluster.to_string(),
        duration: Some(format!("{}s", args.duration.as_secs_f64().ceil())),
        observe_from: args
            .from
            .iter()
            .flat_map(|f| f.split(','))
            .map(|c| c.trim().to_string())
            .filter(|c| !c.is_empty())
            .collect(),
        port: args.port,
        path: Some(args.path.clone()),
        interval: Some(format!("{}ms", args.interval.as_millis().max(10))),
    }
}

/// One line of what changed in a Drill's status, or None.
fn progress(status: &DrillStatus) -> String {
    let observers: Vec<String> = status
        .observers
        .iter()
        .map(|o| format!("{} {}", o.cluster, o.phase))
        .collect();
    format!(
        "{}{}",
        status.phase.as_deref().unwrap_or("Pending"),
        if observers.is_empty() {
            String::new()
        } else {
            format!(" (observers: {})", observers.join(", "))
        }
    )
}

pub(super) async fn run(args: &DrillArgs) -> anyhow::Result<String> {
    anyhow::ensure!(
        args.duration >= super::MIN_DRILL,
        "--for must be at least {:?}",
        super::MIN_DRILL
    );
    let client = client(args).await?;
    let ns = args.service.namespace.clone();
    let api: Api<Drill> = Api::namespaced(client, &ns);
    let mut drill = Drill::new("", spec(args));
    drill.metadata.name = None;
    let mut prefix: String = args.service.name.chars().take(40).collect();
    prefix.push_str("-drill-");
    drill.metadata.generate_name = Some(prefix);
    // Listen before creating: a Ctrl-C (or SIGTERM) from then on deletes the Drill.
    use tokio::signal::unix::{signal, SignalKind};
    let mut interrupt = signal(SignalKind::interrupt()).context("listening for SIGINT")?;
    let mut terminate = signal(SignalKind::terminate()).context("listening for SIGTERM")?;
    let created = api
        .create(&PostParams::default(), &drill)
        .await
        .with_context(|| format!("creating a Drill in namespace {ns}"))?;
    let name = created.name_any();
    eprintln!(
        "Drill {ns}/{name}: drain {} in {} for {}s (Ctrl-C deletes it)",
        args.service,
        args.cluster,
        args.duration.as_secs_f64().ceil()
    );
    let deadline = tokio::time::Instant::now() + args.duration + args.failback_timeout + GRACE;
    let mut shown = String::new();
    let status = loop {
        let stop = tokio::select! {
            _ = tokio::time::sleep(POLL) => false,
            _ = interrupt.recv() => true,
            _ = terminate.recv() => true,
        };
        if stop {
            api.delete(&name, &DeleteParams::default())
                .await
                .with_context(|| format!("deleting Drill {ns}/{name}"))?;
            bail!("interrupted: Drill {ns}/{name} deleted, the drain ended");
        }
        let now = match api.get_opt(&name).await {
            Ok(Some(d)) => d,
            Ok(None) => bail!("Drill {ns}/{name} was deleted before it finished"),
            Err(e) => {
                eprintln!("Drill {ns}/{name}: reading its status: {e}");
                continue;
            }
        };
        let status = now.status.unwrap_or_default();
        let line = progress(&status);
        if line != shown {
            eprintln!("Drill {ns}/{name}: {line}");
            shown = line;
        }
        if status.phase.as_deref().is_some_and(phase::is_terminal) {
            break status;
        }
        if tokio::time::Instant::now() >= deadline {
            let _ = api.delete(&name, &DeleteParams::default()).await;
            bail!("Drill {ns}/{name} did not finish in time (is a federator running Drills in this cluster?); deleted it");
        }
    };
    if args.json {
        println!("{}", serde_json::to_string_pretty(&status)?);
    }
    let phase_now = status.phase.as_deref().unwrap_or_default();
    if phase_now == phase::REJECTED {
        let why = status
            .conditions
            .iter()
            .find(|c| c.type_ == "Accepted")
            .map(|c| format!("{}: {}", c.reason, c.message))
            .unwrap_or_default();
        bail!("Drill {ns}/{name} rejected: {why}");
    }
    let text = status.report.clone().unwrap_or_default();
    let text = if args.json { String::new() } else { text };
    if phase_now == phase::SUCCEEDED {
        Ok(text)
    } else {
        print!("{text}");
        let why = status
            .conditions
            .iter()
            .find(|c| c.type_ == "Passed")
            .map(|c| format!("{}: {}", c.reason, c.message))
            .unwrap_or_else(|| phase_now.to_string());
        bail!("Drill {ns}/{name} failed: {why}")
    }
}
