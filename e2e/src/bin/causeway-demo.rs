//! `causeway-demo`: the lab's demo services, each reporting its cluster.
//!
//! ```text
//! causeway-demo http-echo --listen 10.96.1.10:8080 --cluster east [--fail-file F]
//! causeway-demo grpc      --listen 10.96.1.11:8090 --cluster east [--fail-file F]
//! causeway-demo tcp-echo  --listen 10.96.1.12:8070 --cluster east [--fail-file F]
//! causeway-demo http-echo --listen 10.96.1.20:8080 --cluster west --hostname store-0
//! ```
//!
//! While the fail file exists the service fails: HTTP 503, gRPC UNAVAILABLE, TCP connections
//! closed at once. The HTTP echo also has `/fail` and `/heal`.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

use causeway_e2e::lab::demo::{self, Demo};

#[derive(Debug, Parser)]
#[command(name = "causeway-demo", version, about = "Causeway lab demo services")]
struct Cli {
    #[command(subcommand)]
    service: Service,
}

#[derive(Debug, Subcommand)]
enum Service {
    /// HTTP/1.1 and h2c echo: answers {"cluster", "path", "headers", ...} as JSON.
    HttpEcho(Common),
    /// gRPC grpc.health.v1.Health/Check (h2c); the cluster is in x-causeway-cluster.
    Grpc(Common),
    /// TCP line echo: `hello` comes back as `<cluster>: hello`.
    TcpEcho(Common),
}

#[derive(Debug, clap::Args)]
struct Common {
    /// Address to listen on.
    #[arg(long)]
    listen: SocketAddr,
    /// The cluster to report.
    #[arg(long)]
    cluster: String,
    /// Fail while this file exists.
    #[arg(long)]
    fail_file: Option<PathBuf>,
    /// The replica's hostname, named in every answer (one replica of a stateful service).
    #[arg(long)]
    hostname: Option<String>,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
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
            eprintln!("causeway-demo: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run(cli.service)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("causeway-demo: {e:#}");
            ExitCode::FAILURE
        }
    }
}

async fn run(service: Service) -> anyhow::Result<()> {
    let (kind, common) = match &service {
        Service::HttpEcho(c) => ("http-echo", c),
        Service::Grpc(c) => ("grpc", c),
        Service::TcpEcho(c) => ("tcp-echo", c),
    };
    let listener = tokio::net::TcpListener::bind(common.listen)
        .await
        .map_err(|e| anyhow::anyhow!("cannot listen on {}: {e}", common.listen))?;
    let d = Demo::replica(
        common.cluster.clone(),
        common.hostname.clone(),
        common.fail_file.clone(),
    );
    println!(
        "{kind} of {} listening on {}",
        common.cluster,
        listener.local_addr()?
    );
    let served = async {
        match service {
            Service::HttpEcho(_) => demo::serve_http_echo(listener, d).await,
            Service::Grpc(_) => demo::serve_grpc(listener, d).await,
            Service::TcpEcho(_) => demo::serve_tcp_echo(listener, d).await,
        }
    };
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    tokio::select! {
        r = served => r?,
        _ = term.recv() => {}
        _ = tokio::signal::ctrl_c() => {}
    }
    Ok(())
}
