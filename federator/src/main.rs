use causeway_federator::app::Federator;
use causeway_federator::args::Args;
use causeway_federator::config::Config;
use clap::Parser;

#[tokio::main]
async fn main() {
    let args = Args::parse();
    init_tracing(args.log_json);
    let base = match &args.config {
        Some(path) => match Config::from_yaml_file(path) {
            Ok(c) => c,
            Err(e) => exit_config(e),
        },
        None => Config::default(),
    };
    let mut raw = args.apply(base);
    if raw.source == causeway_federator::config::SourceKind::Kube || raw.kube_sink {
        if let Err(e) = causeway_federator::about::reconcile_cluster_id(&mut raw).await {
            eprintln!("causeway-federator: {e}");
            std::process::exit(64);
        }
    }
    let cfg = match raw.validate() {
        Ok(c) => c,
        Err(e) => exit_config(e),
    };
    let fed = match Federator::start(cfg).await {
        Ok(f) => f,
        Err(e) => {
            eprintln!("causeway-federator: {e}");
            std::process::exit(1);
        }
    };
    // Tests and the lab read this line to learn the bound address (port 0 allowed).
    println!("admin listening on {}", fed.admin_addr);
    if let Some(addr) = fed.config_addr {
        println!("config listening on {addr}");
    }
    if let Some(addr) = fed.dns_addr {
        println!("dns listening on {addr}");
    }
    let died = tokio::select! {
        _ = wait_for_signal() => None,
        task = fed.died() => Some(task),
    };
    tracing::info!("shutting down");
    fed.shutdown().await;
    if let Some(task) = died {
        eprintln!("causeway-federator: its task {task} ended; exiting to be restarted");
        std::process::exit(70);
    }
}

fn exit_config(e: causeway_federator::config::ConfigError) -> ! {
    eprintln!("causeway-federator: {e}");
    std::process::exit(64);
}

fn init_tracing(json: bool) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| {
        tracing_subscriber::EnvFilter::new(
            // kube_client logs every failed connection at ERROR (55 a minute in an API server
            // outage); our watchers log the failure themselves, once per streak.
            "info,hickory_server=warn,hickory_proto=warn,kube_client::client::builder=off",
        )
    });
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    if json {
        builder.json().init();
    } else {
        builder.init();
    }
}

async fn wait_for_signal() {
    use tokio::signal::unix::{signal, SignalKind};
    let mut term = match signal(SignalKind::terminate()) {
        Ok(s) => s,
        Err(_) => return std::future::pending().await,
    };
    tokio::select! {
        _ = term.recv() => {}
        _ = tokio::signal::ctrl_c() => {}
    }
}
