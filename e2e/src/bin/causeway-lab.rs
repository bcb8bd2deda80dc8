//! `causeway-lab`: the local multi-cluster lab (docs/lab.md).
//!
//! ```text
//! causeway-lab up [--clusters 3] [--etcd-members 1|3] [--drill] [--state-dir /tmp/causeway-lab]
//! causeway-lab exec east -- curl http://echo.demo.svc.clusterset.local/
//! causeway-lab status
//! causeway-lab drill [--service demo/echo] [--cluster east] [--from east] [--for 10s]
//! causeway-lab down
//! ```

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{bail, Context as _};
use clap::{Parser, Subcommand};

use causeway_e2e::lab::{self, net, process, Lab, LabSpec, LabState, Mode};

#[derive(Debug, Parser)]
#[command(
    name = "causeway-lab",
    version,
    about = "Causeway's local multi-cluster lab: etcd, clusters as network namespaces, demo services, drills"
)]
struct Cli {
    /// Where the lab keeps lab.json, certificates, export files and logs.
    #[arg(long, global = true, env = "CAUSEWAY_LAB_STATE_DIR", default_value = lab::DEFAULT_STATE_DIR)]
    state_dir: PathBuf,
    /// Prefix of the lab's network namespace names; another prefix lets a second lab run
    /// beside the first (tests do).
    #[arg(long, global = true, env = "CAUSEWAY_LAB_PREFIX", default_value = lab::DEFAULT_PREFIX, hide = true)]
    prefix: String,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Start a lab and leave it running.
    Up(UpArgs),
    /// Run a command inside a cluster's network namespace (its DNS resolves clusterset.local).
    Exec {
        cluster: String,
        #[arg(trailing_var_arg = true, allow_hyphen_values = true, required = true)]
        command: Vec<String>,
    },
    /// Show the lab's processes, and per cluster its federator, gateway, peers and DNS.
    Status,
    /// Run `causeway drill` against the running lab.
    Drill(DrillArgs),
    /// Stop everything the lab started and remove its namespaces and files (idempotent; also
    /// cleans up after a crashed run).
    Down,
}

#[derive(Debug, clap::Args)]
struct UpArgs {
    /// Number of clusters: east, west, north, south, ... (east and west export the demo
    /// services).
    #[arg(long, default_value_t = 3)]
    clusters: usize,
    /// etcd members (1 or 3).
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u8).range(1..=5))]
    etcd_members: u8,
    /// Federator replicas per cluster.
    #[arg(long, default_value_t = 1)]
    federator_replicas: usize,
    /// After start, run a drill (demo/echo drained in east for 10 s, seen from east) and exit
    /// non-zero unless traffic moved away and came back.
    #[arg(long)]
    drill: bool,
    /// Gateways write JSON access logs (to their log files).
    #[arg(long)]
    access_log: bool,
    /// Do not run `cargo build` for the binaries first.
    #[arg(long)]
    no_build: bool,
}

#[derive(Debug, clap::Args)]
struct DrillArgs {
    #[arg(long, default_value = "demo/echo")]
    service: String,
    /// The cluster to drain.
    #[arg(long, default_value = "east")]
    cluster: String,
    /// The cluster the client calls from (default: the drained one).
    #[arg(long)]
    from: Option<String>,
    #[arg(long = "for", default_value = "10s")]
    duration: String,
    /// Print the report as JSON.
    #[arg(long)]
    json: bool,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_target(false)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("CAUSEWAY_LOG")
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .init();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("causeway-lab: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run(cli)) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("causeway-lab: {e:#}");
            ExitCode::FAILURE
        }
    }
}

async fn run(cli: Cli) -> anyhow::Result<ExitCode> {
    match cli.command {
        Command::Up(args) => up(&cli.state_dir, &cli.prefix, args).await,
        Command::Exec { cluster, command } => exec(&cli.state_dir, &cluster, &command),
        Command::Status => status(&cli.state_dir).await,
        Command::Drill(args) => {
            let state = LabState::load(&LabState::path(&cli.state_dir))?;
            drill(&state, &args)
        }
        Command::Down => {
            for line in lab::down(&cli.state_dir, &cli.prefix)? {
                println!("{line}");
            }
            println!("down: done");
            Ok(ExitCode::SUCCESS)
        }
    }
}

// === up ===

async fn up(state_dir: &Path, prefix: &str, args: UpArgs) -> anyhow::Result<ExitCode> {
    let mut spec = LabSpec::new(args.clusters)?;
    spec.etcd_members = usize::from(args.etcd_members);
    spec.federator_replicas = args.federator_replicas;
    spec.state_dir = state_dir.to_path_buf();
    spec.prefix = prefix.to_string();
    spec.gateway_access_log = args.access_log;

    // Binaries: built by the cargo that runs us (cheap when up to date), else they must be
    // next to us.
    if !args.no_build && std::env::var_os("CARGO").is_some() {
        eprintln!("building the lab's binaries: {}", lab::BUILD_COMMAND);
        lab::build_binaries()?;
    }
    let missing = lab::missing_binaries(&spec.bin_dir);
    if !missing.is_empty() {
        if args.no_build || std::env::var_os("CARGO").is_some() {
            bail!(
                "{} missing in {}; build them with `{}`",
                missing.join(", "),
                spec.bin_dir.display(),
                lab::BUILD_COMMAND
            );
        }
        eprintln!(
            "{} missing in {}; building them: {}",
            missing.join(", "),
            spec.bin_dir.display(),
            lab::BUILD_COMMAND
        );
        lab::build_binaries().context(format!(
            "build them yourself with `{}` in the repository",
            lab::BUILD_COMMAND
        ))?;
    }
    ensure_etcd()?;

    // A lab already running is left alone; the leftovers of a crashed one are removed.
    let json = LabState::path(state_dir);
    if json.exists() {
        if let Ok(old) = LabState::load(&json) {
            let alive: Vec<&str> = old
                .processes
                .iter()
                .filter(|p| p.pid.is_some_and(process::is_alive))
                .map(|p| p.name.as_str())
                .collect();
            if !alive.is_empty() {
                bail!(
                    "a lab is already running from {} ({}); `causeway-lab down` stops it",
                    state_dir.display(),
                    alive.join(", ")
                );
            }
        }
    }
    let leftovers = lab::down(state_dir, &spec.prefix)?;
    if !leftovers.is_empty() {
        eprintln!("cleaned up a previous run: {}", leftovers.join("; "));
    }

    match spec.mode {
        Mode::Netns => eprintln!(
            "starting {} clusters ({}) as network namespaces {}<cluster>, a WAN namespace {}wan and {} etcd member(s)",
            spec.clusters.len(),
            spec.clusters.join(", "),
            spec.prefix,
            spec.prefix,
            spec.etcd_members
        ),
        Mode::Loopback => eprintln!(
            "NOTE: not root (or no `ip`): no network namespaces. The lab falls back to loopback \
             addresses (127.0.1x.0/24 per cluster) with distinct ports: the clusters are not \
             isolated, DNS listens on port 10053, and there are no ClusterSetIPs — clients use \
             the gateway's egress port as an HTTP proxy."
        ),
    }
    let prefix = spec.prefix.clone();
    let lab = match Lab::up(spec).await {
        Ok(lab) => lab,
        Err(e) => {
            // The lab removed its processes and namespaces; remove its files too.
            let _ = lab::down(state_dir, &prefix);
            return Err(e);
        }
    };
    let state = lab.detach();
    print_summary(&state);

    if args.drill {
        println!();
        println!("running a drill: demo/echo drained in east for 10 s, seen from east");
        let code = drill(
            &state,
            &DrillArgs {
                service: "demo/echo".into(),
                cluster: "east".into(),
                from: Some("east".into()),
                duration: "10s".into(),
                json: false,
            },
        )?;
        println!("\nthe lab keeps running; `causeway-lab down` removes it");
        return Ok(code);
    }
    Ok(ExitCode::SUCCESS)
}

/// The lab needs an etcd binary; `scripts/lab.sh` (the README's command) runs `scripts/setup.sh`
/// first, which installs or repairs it. Run directly, the lab says what to run instead.
fn ensure_etcd() -> anyhow::Result<()> {
    causeway_e2e::etcd::find_etcd_binary().map(|_| ()).context(
        "etcd is needed: run `bash scripts/lab.sh up --drill`, or `bash scripts/setup.sh` once",
    )
}

fn print_summary(state: &LabState) {
    println!();
    println!(
        "Causeway lab is up ({} mode); state in {}",
        match state.mode {
            Mode::Netns => "netns",
            Mode::Loopback => "loopback",
        },
        LabState::path(&state.state_dir).display()
    );
    println!("  etcd: {}", state.etcd.endpoints.join(", "));
    for c in &state.clusters {
        let mut exports: Vec<String> = c
            .demo
            .iter()
            .map(|d| format!("{}/{}:{}", d.namespace, d.name, d.port))
            .collect();
        if let Some(s) = &c.stateful {
            exports.push(format!(
                "{}/{}:{} (headless, {} replicas)",
                s.namespace,
                s.name,
                s.port,
                s.replicas.len()
            ));
        }
        println!(
            "  {:<6} netns {:<10} DNS {:<16} gateway {} (admin {}) federator admin {}{}",
            c.name,
            c.netns.as_deref().unwrap_or("-"),
            c.dns,
            c.gateway.ingress,
            c.gateway.admin,
            c.federator_admin,
            if exports.is_empty() {
                String::new()
            } else {
                format!("; exports {}", exports.join(", "))
            }
        );
    }
    println!();
    println!("Try it:");
    let me = "bash scripts/lab.sh";
    match state.mode {
        Mode::Netns => {
            println!("  {me} exec east -- curl -s http://echo.demo.svc.clusterset.local/");
            println!("  {me} exec north -- curl -s http://echo.demo.svc.clusterset.local/   # via the gateways");
            println!("  {me} exec north -- dig +short echo.demo.svc.clusterset.local");
            println!("  {me} exec north -- bash -c 'exec 3<>/dev/tcp/tcp-echo.demo.svc.clusterset.local/7000; echo hi >&3; head -1 <&3'");
            if let Some((c, s)) = state
                .clusters
                .iter()
                .find_map(|c| c.stateful.as_ref().map(|s| (c, s)))
            {
                if let Some(r) = s.replicas.first() {
                    println!(
                        "  {me} exec north -- curl -s http://{}/   # one replica, by name",
                        s.replica_name(&r.hostname, &c.name)
                    );
                }
                println!(
                    "  {me} exec north -- dig +short {}   # every replica",
                    s.clusterset_name()
                );
            }
        }
        Mode::Loopback => {
            let north = state.clusters.last().map_or(&state.clusters[0], |c| c);
            println!(
                "  curl -s -x http://{} http://echo.demo.svc.clusterset.local:8080/",
                north.gateway.egress
            );
            println!(
                "  dig +short -p {} @{} echo.demo.svc.clusterset.local",
                north.dns.port(),
                north.dns.ip()
            );
        }
    }
    if let Some(first) = state.clusters.first() {
        // The admin port answers callers on its own host: inside the cluster's namespace.
        let url = format!("http://{}/dashboard", first.federator_admin);
        match state.mode {
            Mode::Netns => println!(
                "  {me} exec {} -- chromium --headless=new --dump-dom {url}   # the dashboard (any browser run there)",
                first.name
            ),
            Mode::Loopback => println!("  open {url}   # the dashboard"),
        }
    }
    println!("  {me} drill --cluster east --for 10s");
    println!("  {me} status");
    println!("  {me} down");
}

// === exec ===

fn exec(state_dir: &Path, cluster: &str, command: &[String]) -> anyhow::Result<ExitCode> {
    let state = LabState::load(&LabState::path(state_dir))?;
    let c = state.cluster(cluster)?;
    let mut cmd = match &c.netns {
        Some(ns) => {
            let mut cmd = std::process::Command::new(net::which("ip").context("no ip command")?);
            cmd.args(["netns", "exec", ns]).args(command);
            cmd
        }
        None => {
            let mut cmd = std::process::Command::new(&command[0]);
            cmd.args(&command[1..]);
            cmd
        }
    };
    let status = cmd
        .status()
        .with_context(|| format!("running {}", command.join(" ")))?;
    Ok(ExitCode::from(
        status.code().unwrap_or(1).clamp(0, 255) as u8
    ))
}

// === drill ===

fn drill(state: &LabState, args: &DrillArgs) -> anyhow::Result<ExitCode> {
    let mut cmd = std::process::Command::new(state.bin_dir.join("causeway"));
    cmd.args(["drill", "--lab"])
        .arg(LabState::path(&state.state_dir))
        .args(["--service", &args.service])
        .args(["--cluster", &args.cluster])
        .args(["--from", args.from.as_deref().unwrap_or(&args.cluster)])
        .args(["--for", &args.duration]);
    if args.json {
        cmd.arg("--json");
    }
    let status = cmd.status().context("running causeway drill")?;
    Ok(if status.success() {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}

// === status ===

async fn status(state_dir: &Path) -> anyhow::Result<ExitCode> {
    let state = LabState::load(&LabState::path(state_dir))?;
    println!("lab in {} ({:?} mode)", state_dir.display(), state.mode);
    println!();
    println!("{:<22} {:>8}  STATE", "PROCESS", "PID");
    let mut down = 0;
    for p in &state.processes {
        let alive = p.pid.is_some_and(process::is_alive);
        if !alive {
            down += 1;
        }
        println!(
            "{:<22} {:>8}  {}",
            p.name,
            p.pid.map_or("-".to_string(), |p| p.to_string()),
            if alive { "running" } else { "STOPPED" }
        );
    }
    println!();
    println!(
        "{:<8} {:<10} {:<10} {:<22} ECHO",
        "CLUSTER", "FEDERATOR", "GATEWAY", "PEERS UP"
    );
    let t = Duration::from_secs(1);
    let echo_port = state
        .clusters
        .iter()
        .flat_map(|c| c.demo.iter())
        .find(|d| d.name == "echo")
        .map_or(80, |d| d.port);
    for c in &state.clusters {
        let ns = c.netns.clone();
        let c2 = c.clone();
        let port = echo_port;
        let row = net::run_in(ns.as_deref(), move || async move {
            use causeway_e2e::lab::probe;
            let get = |addr: std::net::SocketAddr, path: &'static str| async move {
                probe::http_get(addr, &addr.to_string(), path, t).await
            };
            let fed = match get(c2.federator_admin, "/ready").await {
                Ok(a) if a.status.is_success() => "ready".to_string(),
                Ok(a) => a.status.as_u16().to_string(),
                Err(_) => "DOWN".to_string(),
            };
            let gw = match get(c2.gateway.admin, "/ready").await {
                Ok(a) if a.status.is_success() => "ready".to_string(),
                Ok(a) => a.status.as_u16().to_string(),
                Err(_) => "DOWN".to_string(),
            };
            let peers = match get(c2.gateway.admin, "/peers").await {
                Ok(a) => serde_json::from_slice::<Vec<serde_json::Value>>(&a.body)
                    .map(|v| {
                        v.iter()
                            .filter(|p| p["up"].as_bool() == Some(true))
                            .filter_map(|p| p["cluster"].as_str().map(String::from))
                            .collect::<Vec<_>>()
                            .join(",")
                    })
                    .unwrap_or_default(),
                Err(_) => "-".to_string(),
            };
            let name = "echo.demo.svc.clusterset.local";
            let echo = match probe::resolve(&c2.dns_servers, name, t).await {
                Err(e) => format!("DNS: {e:#}"),
                Ok(ips) => {
                    match probe::http_get(std::net::SocketAddr::new(ips[0], port), name, "/", t)
                        .await
                    {
                        Ok(a) => format!(
                            "{} -> {} from {}",
                            ips[0],
                            a.status.as_u16(),
                            a.cluster.as_deref().unwrap_or("?")
                        ),
                        Err(e) => format!("{} -> {e:#}", ips[0]),
                    }
                }
            };
            (fed, gw, peers, echo)
        })
        .await;
        match row {
            Ok((fed, gw, peers, echo)) => {
                println!("{:<8} {:<10} {:<10} {:<22} {echo}", c.name, fed, gw, peers)
            }
            Err(e) => println!("{:<8} cannot look inside: {e:#}", c.name),
        }
    }
    Ok(if down == 0 {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}
