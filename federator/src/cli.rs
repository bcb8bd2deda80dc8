//! The operator CLI, `causeway` (bin `causeway`).
//!
//! One subcommand per operator task; `main` parses [`Cli`], sets up tracing and calls [`run`].
//! The larger commands have a module each here: `drill`, `status`, `rotate` (`certs` and
//! `etcd-auth` live with the code the federator shares with them: `certs`, `etcd`).

pub(crate) mod drill;
pub(crate) mod rotate;
pub mod status;

use clap::{Parser, Subcommand};

use crate::certs::{self, CertsArgs};

/// Operate a Causeway federation.
#[derive(Debug, Parser)]
#[command(name = "causeway", version, about, propagate_version = true)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Write a federation root CA and, per cluster, a CA, gateway and federator certificates.
    Certs(CertsArgs),
    /// Show clusters (up / stale), imports and their conflicts as one federator sees them.
    Status(status::StatusArgs),
    /// Drain a service in one cluster for a while and report how DNS and traffic moved.
    Drill(Box<drill::DrillArgs>),
    /// Issue one certificate (a leaf, or with --ca an intermediate) from an existing CA.
    Issue(certs::IssueArgs),
    /// Rotate one cluster's root in three steps (begin, switch, finish) with both roots trusted
    /// in between (docs/certificates.md).
    RotateRoot(rotate::RotateArgs),
    /// Turn on etcd's auth for a federation: per-cluster roles that write only their own
    /// prefix, an operator role for drills (run as etcd's root, with its client certificate).
    EtcdAuth(crate::etcd::EtcdAuthArgs),
    /// Print the ServiceExport and ServiceImport CRDs (multicluster.x-k8s.io/v1alpha1) as YAML.
    Crds,
}

/// Runs one subcommand. Async so that subcommands that talk to etcd or gateways fit here too.
pub async fn run(cli: Cli) -> anyhow::Result<()> {
    match cli.command {
        Command::Certs(args) => {
            let generated = certs::generate(&args)?;
            println!("{generated}");
            Ok(())
        }
        Command::Status(args) => {
            print!("{}", status::run(&args).await?);
            Ok(())
        }
        Command::Drill(args) => {
            print!("{}", drill::run(*args).await?);
            Ok(())
        }
        Command::Issue(args) => {
            println!("{}", certs::issue(&args)?);
            Ok(())
        }
        Command::RotateRoot(args) => {
            println!("{}", rotate::rotate(&args)?);
            Ok(())
        }
        Command::EtcdAuth(args) => {
            print!("{}", crate::etcd::run_auth(&args).await?);
            Ok(())
        }
        Command::Crds => {
            print!("{}", crate::crds::yaml()?);
            Ok(())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn cli_is_consistent() {
        Cli::command().debug_assert();
    }

    #[test]
    fn parses_certs() {
        let cli = Cli::try_parse_from([
            "causeway",
            "certs",
            "--out",
            "/tmp/x",
            "--clusters",
            "east,west",
        ])
        .unwrap();
        let Command::Certs(args) = cli.command else {
            panic!("expected certs");
        };
        assert_eq!(args.clusters.len(), 2);
        assert_eq!(args.trust_domain_suffix, "causeway.mesh");
        assert_eq!(args.validity_days, 365);
        assert!(!args.force);

        let err = Cli::try_parse_from([
            "causeway",
            "certs",
            "--out",
            "/tmp/x",
            "--clusters",
            "east,East_1",
        ])
        .unwrap_err();
        assert!(err.to_string().contains("East_1"), "{err}");
    }
}
