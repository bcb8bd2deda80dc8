//! `causeway-gateway`: parse the config, set up tracing, run until SIGINT/SIGTERM.

use causeway_gateway::{Args, Gateway, EXIT_CONFIG};
use clap::Parser;

fn main() {
    let config = match Args::parse().into_config() {
        Ok(c) => c,
        Err(e) => {
            eprintln!("causeway-gateway: bad configuration: {e}");
            std::process::exit(EXIT_CONFIG);
        }
    };
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .init();
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(r) => r,
        Err(e) => {
            eprintln!("causeway-gateway: cannot start the runtime: {e}");
            std::process::exit(1);
        }
    };
    let code = runtime.block_on(async {
        let mut gateway = match Gateway::start(config).await {
            Ok(g) => g,
            Err(e) => {
                tracing::error!(error = %e, "cannot start");
                return match e {
                    causeway_gateway::Error::Config(_)
                    | causeway_gateway::Error::ConfigFile { .. } => EXIT_CONFIG,
                    _ => 1,
                };
            }
        };
        tokio::select! {
            _ = shutdown_signal() => tracing::info!("shutting down"),
            _ = gateway.wait() => {
                tracing::error!("a gateway task stopped");
                gateway.shutdown().await;
                return 1;
            }
        }
        gateway.shutdown().await;
        0
    });
    std::process::exit(code);
}

async fn shutdown_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        let mut term =
            match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
                Ok(s) => s,
                Err(_) => {
                    let _ = ctrl_c.await;
                    return;
                }
            };
        tokio::select! {
            _ = ctrl_c => {}
            _ = term.recv() => {}
        }
    }
    #[cfg(not(unix))]
    let _ = ctrl_c.await;
}
