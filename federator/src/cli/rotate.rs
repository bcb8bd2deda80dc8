//! `causeway rotate-root`: one cluster's root replaced without a failed request
//! (docs/certificates.md "Rotating a cluster's root"), on the files of `causeway certs`
//! (a root per cluster), in three steps:
//!
//! 1. `begin`: a new root and a new issuing CA under it go to `<c>/next/`, and `<c>/bundle.pem`
//!    holds both roots. The federators publish the bundle in `clusters/<c>/info`; every peer
//!    then accepts certificates of either root.
//! 2. `switch`: the new CA becomes `<c>/ca.pem` (the old one moves to `<c>/previous/`), and the
//!    bootstrap certificates `gateway.pem` and `federator.pem` are reissued from it. The
//!    federators load the new issuer; their snapshot names it, and each gateway asks for a
//!    certificate from it at once.
//! 3. `finish`: `<c>/bundle.pem` holds the new root only and `<c>/previous/` (with the old
//!    root's key) is deleted. Run it once every gateway holds a certificate of the new CA
//!    (`causeway status`, CERT EXPIRES; or the gateways' renewal counters).
//!
//! Each step checks that the one before it was done and refuses otherwise; nothing is written
//! unless every file could be made.

use std::path::{Path, PathBuf};

use causeway_api::spiffe::SpiffeId;
use causeway_api::ClusterId;

use crate::certs::{self, CertsError, ClusterIdentities, Layout, Secrecy, Validity};

/// Arguments of `causeway rotate-root`.
#[derive(Debug, Clone, clap::Args)]
pub struct RotateArgs {
    /// Which step: begin, switch or finish.
    #[arg(value_enum)]
    pub step: Step,
    /// The directory `causeway certs` wrote (a root per cluster, its default).
    #[arg(long, value_name = "DIR")]
    pub out: PathBuf,
    /// The cluster whose root is rotated.
    #[arg(long, value_name = "CLUSTER")]
    pub cluster: ClusterId,
    /// Validity of the new root and CA (and the reissued bootstrap certificates), in days.
    #[arg(long, value_name = "DAYS", default_value_t = 365,
          value_parser = clap::value_parser!(u32).range(1..=36500))]
    pub validity_days: u32,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Step {
    Begin,
    Switch,
    Finish,
}

#[derive(Debug, thiserror::Error)]
pub(crate) enum RotateError {
    #[error(transparent)]
    Certs(#[from] CertsError),
    #[error("{what}: {reason}")]
    State { what: String, reason: String },
    #[error("{}: {source}", path.display())]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
}

fn state(what: impl Into<String>, reason: impl Into<String>) -> RotateError {
    RotateError::State {
        what: what.into(),
        reason: reason.into(),
    }
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> RotateError + '_ {
    move |source| RotateError::Io {
        path: path.to_path_buf(),
        source,
    }
}

fn next_dir(layout: &Layout, c: &ClusterId) -> PathBuf {
    layout.cluster_dir(c).join("next")
}

fn previous_dir(layout: &Layout, c: &ClusterId) -> PathBuf {
    layout.cluster_dir(c).join("previous")
}

/// The four files a rotation moves: root and issuing CA, certificate and key.
fn ca_files(dir: &Path) -> [PathBuf; 4] {
    ["root-ca.pem", "root-ca.key", "ca.pem", "ca.key"].map(|f| dir.join(f))
}

/// Runs one step; returns what it did, for the operator.
pub(crate) fn rotate(args: &RotateArgs) -> Result<String, RotateError> {
    let layout = Layout::new(&args.out);
    let c = &args.cluster;
    let root_path = layout.cluster_root_cert(c);
    let root_pem = std::fs::read_to_string(&root_path).map_err(|e| {
        state(
            format!("cluster {c}"),
            format!(
                "cannot read its root {}: {e} (rotate-root works on a root per cluster, what `causeway certs` makes unless --shared-root)",
                root_path.display()
            ),
        )
    })?;
    let td = certs::ca_pem_trust_domain(&root_pem).ok_or_else(|| {
        state(
            root_path.display().to_string(),
            "names no trust domain: a shared federation root is rotated by re-rooting every cluster, not with rotate-root",
        )
    })?;
    let (next, previous) = (next_dir(&layout, c), previous_dir(&layout, c));
    let now = time::OffsetDateTime::now_utc();
    let validity = Validity {
        not_before: now - certs::BACKDATE,
        not_after: now + time::Duration::days(i64::from(args.validity_days)),
    };
    let ids = ClusterIdentities {
        cluster: c.clone(),
        gateway: SpiffeId::gateway(&td).map_err(|e| state("trust domain", e.to_string()))?,
        federator: SpiffeId::federator(&td).map_err(|e| state("trust domain", e.to_string()))?,
        trust_domain: td.clone(),
    };
    let bundle = layout.cluster_bundle(c);
    match args.step {
        Step::Begin => {
            if next.exists() {
                return Err(state(
                    format!("cluster {c}"),
                    format!(
                        "a rotation is under way ({} exists): run switch",
                        next.display()
                    ),
                ));
            }
            if previous.exists() {
                return Err(state(
                    format!("cluster {c}"),
                    format!(
                        "the last rotation was not finished ({} exists): run finish",
                        previous.display()
                    ),
                ));
            }
            let root = certs::own_root_ca(&ids, &validity)?;
            let ca = certs::cluster_ca(c, &td, &root.issuer, &validity)?;
            let old_bundle = std::fs::read_to_string(&bundle).map_err(io(&bundle))?;
            let [root_cert, root_key, ca_cert, ca_key] = ca_files(&next);
            let files = [
                (root_cert, root.cert_pem.clone(), Secrecy::Public),
                (root_key, root.issuer.key().serialize_pem(), Secrecy::Secret),
                (ca_cert, ca.cert_pem.clone(), Secrecy::Public),
                (ca_key, ca.issuer.key().serialize_pem(), Secrecy::Secret),
            ];
            for (path, text, secrecy) in &files {
                certs::write_file(path, text.as_bytes(), *secrecy)?;
            }
            let mut both = old_bundle;
            if !both.ends_with('\n') {
                both.push('\n');
            }
            both.push_str(&root.cert_pem);
            certs::write_file(&bundle, both.as_bytes(), Secrecy::Public)?;
            Ok(format!(
                "cluster {c}: new root and CA in {}; {} holds the old and the new root.\n\
                 Next: once every peer has the new bundle (the federators publish it within seconds; `causeway status`), run `causeway rotate-root switch --out {} --cluster {c}`.",
                next.display(),
                bundle.display(),
                args.out.display()
            ))
        }
        Step::Switch => {
            if !next.exists() {
                return Err(state(
                    format!("cluster {c}"),
                    format!(
                        "no rotation under way ({} is missing): run begin",
                        next.display()
                    ),
                ));
            }
            let cluster_dir = layout.cluster_dir(c);
            let new_ca_pem = std::fs::read_to_string(next.join("ca.pem")).map_err(io(&next))?;
            let new_ca_key = std::fs::read_to_string(next.join("ca.key")).map_err(io(&next))?;
            let key = rcgen::KeyPair::from_pem(&new_ca_key)
                .map_err(|e| state(next.join("ca.key").display().to_string(), e.to_string()))?;
            let issuer = rcgen::Issuer::from_ca_cert_pem(&new_ca_pem, key)
                .map_err(|e| state(next.join("ca.pem").display().to_string(), e.to_string()))?;
            // The bootstrap certificates, reissued first: made in memory, written below.
            let mut leaves = Vec::new();
            for (id, cert, key) in [
                (&ids.gateway, layout.gateway_cert(c), layout.gateway_key(c)),
                (
                    &ids.federator,
                    layout.federator_cert(c),
                    layout.federator_key(c),
                ),
            ] {
                let (leaf, leaf_key) = certs::svid(id, c, &issuer, &validity)?;
                leaves.push((cert, format!("{leaf}{new_ca_pem}"), key, leaf_key));
            }
            std::fs::create_dir_all(&previous).map_err(io(&previous))?;
            for (from, to) in ca_files(&cluster_dir).iter().zip(ca_files(&previous)) {
                std::fs::rename(from, &to).map_err(io(from))?;
            }
            // Key before certificate: a federator that reads in between sees a key that does
            // not match its certificate, refuses the pair and reads again.
            let [nr, nrk, nc, nck] = ca_files(&next);
            let [r, rk, ca, cak] = ca_files(&cluster_dir);
            for (from, to) in [(nrk, rk), (nr, r), (nck, cak), (nc, ca)] {
                std::fs::rename(&from, &to).map_err(io(&from))?;
            }
            std::fs::remove_dir(&next).map_err(io(&next))?;
            for (cert, cert_pem, key, key_pem) in &leaves {
                certs::write_file(key, key_pem.as_bytes(), Secrecy::Secret)?;
                certs::write_file(cert, cert_pem.as_bytes(), Secrecy::Public)?;
            }
            Ok(format!(
                "cluster {c}: the new CA issues now ({}); the old one is in {}. The federators load it within their reload interval and each gateway renews from it at once.\n\
                 Next: once every gateway of {c} holds a certificate of the new CA, run `causeway rotate-root finish --out {} --cluster {c}`.",
                layout.ca_cert(c).display(),
                previous.display(),
                args.out.display()
            ))
        }
        Step::Finish => {
            if next.exists() {
                return Err(state(
                    format!("cluster {c}"),
                    format!(
                        "the rotation is not switched yet ({} exists): run switch",
                        next.display()
                    ),
                ));
            }
            if !previous.exists() {
                return Err(state(
                    format!("cluster {c}"),
                    format!(
                        "no switched rotation to finish ({} is missing)",
                        previous.display()
                    ),
                ));
            }
            certs::write_file(&bundle, root_pem.as_bytes(), Secrecy::Public)?;
            std::fs::remove_dir_all(&previous).map_err(io(&previous))?;
            Ok(format!(
                "cluster {c}: {} holds the new root only; the old root and its key are deleted.",
                bundle.display()
            ))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use causeway_api::tls::TrustBundle;

    #[test]
    fn three_steps_in_order_each_refusing_out_of_turn() {
        let dir = tempfile::tempdir().unwrap();
        let c = ClusterId::new("east").unwrap();
        certs::generate(&certs::CertsArgs {
            out: dir.path().into(),
            clusters: vec![c.clone(), ClusterId::new("west").unwrap()],
            trust_domain_suffix: "causeway.mesh".into(),
            validity_days: 1,
            force: false,
            add: false,
            own_roots: false,
            shared_root: false,
        })
        .unwrap();
        let layout = Layout::new(dir.path());
        let west = std::fs::read(layout.cluster_bundle(&ClusterId::new("west").unwrap())).unwrap();
        let args = |step| RotateArgs {
            step,
            out: dir.path().into(),
            cluster: c.clone(),
            validity_days: 1,
        };
        let old_root = std::fs::read(layout.cluster_root_cert(&c)).unwrap();
        assert!(rotate(&args(Step::Switch)).is_err(), "switch before begin");
        assert!(rotate(&args(Step::Finish)).is_err(), "finish before begin");

        rotate(&args(Step::Begin)).unwrap();
        let both = TrustBundle::load(layout.cluster_bundle(&c)).unwrap();
        assert_eq!(both.roots.len(), 2);
        assert_eq!(
            both.trust_domains(),
            vec![Some("east.causeway.mesh".to_string()); 2]
        );
        assert!(rotate(&args(Step::Begin)).is_err(), "begin twice");
        assert!(rotate(&args(Step::Finish)).is_err(), "finish before switch");

        rotate(&args(Step::Switch)).unwrap();
        let new_root = std::fs::read(layout.cluster_root_cert(&c)).unwrap();
        assert_ne!(new_root, old_root);
        // The bootstrap gateway certificate now verifies through the new root alone.
        let new_only = TrustBundle::from_pem(&new_root, "new root").unwrap();
        let gw = causeway_api::tls::Identity::load(layout.gateway_cert(&c), layout.gateway_key(&c))
            .unwrap();
        let id = causeway_api::tls::verify_client_chain(&new_only, &gw.cert_chain).unwrap();
        assert_eq!(id, SpiffeId::gateway("east.causeway.mesh").unwrap());
        assert!(rotate(&args(Step::Begin)).is_err(), "begin before finish");

        rotate(&args(Step::Finish)).unwrap();
        assert_eq!(std::fs::read(layout.cluster_bundle(&c)).unwrap(), new_root);
        assert!(!previous_dir(&layout, &c).exists(), "old root key deleted");
        // Another cluster's trust is untouched.
        assert_eq!(
            std::fs::read(layout.cluster_bundle(&ClusterId::new("west").unwrap())).unwrap(),
            west
        );
        // And the next rotation may begin.
        rotate(&args(Step::Begin)).unwrap();
    }
}
