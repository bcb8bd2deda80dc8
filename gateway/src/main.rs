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
        // Installed before anything is served, so that a SIGTERM sent as soon as the gateway
        // answers is not lost to the default action.
        let mut signals = match Signals::install() {
            Ok(s) => s,
            Err(e) => {
                tracing::error!(error = %e, "cannot install signal handlers");
                return 1;
            }
        };
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
            _ = signals.recv() => tracing::info!("shutting down"),
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

/// SIGINT and SIGTERM.
struct Signals {
    #[cfg(unix)]
    term: tokio::signal::unix::Signal,
    #[cfg(unix)]
    int: tokio::signal::unix::Signal,
}

impl Signals {
    fn install() -> std::io::Result<Self> {
        #[cfg(unix)]
        {
            use tokio::signal::unix::{signal, SignalKind};
            Ok(Self {
                term: signal(SignalKind::terminate())?,
                int: signal(SignalKind::interrupt())?,
            })
        }
        #[cfg(not(unix))]
        Ok(Self {})
    }

    async fn recv(&mut self) {
        #[cfg(unix)]
        tokio::select! {
            _ = self.term.recv() => {}
            _ = self.int.recv() => {}
        }
        #[cfg(not(unix))]
        let _ = tokio::signal::ctrl_c().await;
    }
}
