//! `causeway certs`: a federation PKI for gateways and federators (docs/certificates.md).
//!
//! One federation root CA; per cluster an intermediate CA and two X.509-SVIDs, the gateway's and
//! the federator's, each with one SPIFFE URI SAN and both serverAuth and clientAuth EKUs (a
//! gateway dials its peers and accepts them). All keys are ECDSA P-256.
//!
//! Nothing is written unless every target path is free (or `--force` is given), so a mistaken
//! rerun cannot replace a deployed CA.

use std::fmt;
use std::io::{self, Write};
use std::path::{Path, PathBuf};

use causeway_api::spiffe::{self, InvalidSpiffeId, SpiffeId};
use causeway_api::ClusterId;
use rcgen::{
    BasicConstraints, CertificateParams, CertifiedIssuer, DistinguishedName, DnType,
    ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair, KeyUsagePurpose, SanType,
};

/// Clock skew we tolerate between the machine that issues and the peers that verify.
pub(crate) const BACKDATE: time::Duration = time::Duration::minutes(5);
const ORGANIZATION: &str = "Causeway";

/// Arguments of `causeway certs`.
#[derive(Debug, Clone, clap::Args)]
pub struct CertsArgs {
    /// Directory to write into (created if missing).
    #[arg(long, value_name = "DIR")]
    pub out: PathBuf,

    /// Comma-separated cluster IDs (RFC 1123 labels), e.g. `east,west`.
    #[arg(
        long,
        value_name = "CLUSTER,...",
        value_delimiter = ',',
        required = true
    )]
    pub clusters: Vec<ClusterId>,

    /// Trust domain of cluster `c` is `<c>.<suffix>`.
    #[arg(long, value_name = "SUFFIX", default_value = spiffe::DEFAULT_TRUST_DOMAIN_SUFFIX)]
    pub trust_domain_suffix: String,

    /// Validity of every certificate written, CAs included, in days.
    #[arg(long, value_name = "DAYS", default_value_t = 365,
          value_parser = clap::value_parser!(u32).range(1..=36500))]
    pub validity_days: u32,

    /// Overwrite files that already exist.
    #[arg(long)]
    pub force: bool,

    /// Add the clusters to the federation already in `--out`: their CAs are signed by its
    /// `root-ca.pem` / `root-ca.key`, and only their own files are written (the root, the
    /// bundle and every other cluster's files stay as they are).
    #[arg(long)]
    pub add: bool,

    /// Each cluster gets a root CA of its own (`<cluster>/root-ca.pem`, naming its trust
    /// domain): its bundle, `<cluster>/bundle.pem`, travels to the peers through etcd, and no
    /// other cluster's key can vouch for it (docs/certificates.md). The default; kept as a flag
    /// for scripts written before it was.
    #[arg(long, conflicts_with = "shared_root", hide = true)]
    pub own_roots: bool,

    /// One federation root (`root-ca.pem`) signing every cluster's CA instead of a root per
    /// cluster: simpler, but whoever holds that root's key can vouch for every cluster.
    #[arg(long)]
    pub shared_root: bool,
}

impl CertsArgs {
    /// Whether each cluster gets a root of its own (everything but `--shared-root`).
    pub fn own_roots(&self) -> bool {
        !self.shared_root
    }
}

/// Why `causeway certs` wrote nothing, or stopped.
#[derive(Debug, thiserror::Error)]
pub(crate) enum CertsError {
    #[error("no clusters given")]
    NoClusters,
    #[error("cluster {0} is given more than once")]
    DuplicateCluster(ClusterId),
    #[error("cluster {cluster}: invalid trust domain: {source}")]
    TrustDomain {
        cluster: ClusterId,
        #[source]
        source: InvalidSpiffeId,
    },
    #[error("{} already exists; pass --force to overwrite it", path.display())]
    Exists { path: PathBuf },
    #[error("cannot read the federation's root CA {}: {reason} (--add needs the root-ca.pem and root-ca.key of an earlier run)", path.display())]
    Root { path: PathBuf, reason: String },
    #[error("cannot generate {what}: {source}")]
    Generate {
        what: String,
        #[source]
        source: rcgen::Error,
    },
    #[error("cannot write {}: {source}", path.display())]
    Write {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
}

// === impl Layout ===

/// Where `causeway certs` puts each file under its output directory.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Layout {
    dir: PathBuf,
}

impl Layout {
    pub(crate) fn new(dir: impl Into<PathBuf>) -> Self {
        Self { dir: dir.into() }
    }

    /// `DIR/root-ca.pem`: the federation root CA certificate.
    pub(crate) fn root_ca_cert(&self) -> PathBuf {
        self.dir.join("root-ca.pem")
    }

    /// `DIR/root-ca.key`: its key. Keep it offline; no running component needs it.
    pub(crate) fn root_ca_key(&self) -> PathBuf {
        self.dir.join("root-ca.key")
    }

    /// `DIR/bundle.pem`: the trust bundle every gateway and federator loads.
    pub(crate) fn bundle(&self) -> PathBuf {
        self.dir.join("bundle.pem")
    }

    /// `DIR/<cluster>/`
    pub(crate) fn cluster_dir(&self, cluster: &ClusterId) -> PathBuf {
        self.dir.join(cluster.as_str())
    }

    /// `DIR/<cluster>/ca.pem`: the cluster's intermediate CA certificate.
    pub(crate) fn ca_cert(&self, cluster: &ClusterId) -> PathBuf {
        self.cluster_dir(cluster).join("ca.pem")
    }

    pub(crate) fn ca_key(&self, cluster: &ClusterId) -> PathBuf {
        self.cluster_dir(cluster).join("ca.key")
    }

    /// `DIR/<cluster>/gateway.pem`: the gateway's leaf, then the cluster CA.
    pub(crate) fn gateway_cert(&self, cluster: &ClusterId) -> PathBuf {
        self.cluster_dir(cluster).join("gateway.pem")
    }

    pub(crate) fn gateway_key(&self, cluster: &ClusterId) -> PathBuf {
        self.cluster_dir(cluster).join("gateway.key")
    }

    /// `DIR/<cluster>/federator.pem`: the federator's leaf, then the cluster CA.
    pub(crate) fn federator_cert(&self, cluster: &ClusterId) -> PathBuf {
        self.cluster_dir(cluster).join("federator.pem")
    }

    pub(crate) fn federator_key(&self, cluster: &ClusterId) -> PathBuf {
        self.cluster_dir(cluster).join("federator.key")
    }

    /// Every file written for `clusters`, in writing order.
    pub(crate) fn files(&self, clusters: &[ClusterId]) -> Vec<PathBuf> {
        let mut files = vec![self.root_ca_cert(), self.root_ca_key(), self.bundle()];
        files.extend(clusters.iter().flat_map(|c| self.cluster_files(c)));
        files
    }

    /// `DIR/<cluster>/root-ca.pem`, without `--shared-root`: the cluster's own root.
    pub(crate) fn cluster_root_cert(&self, c: &ClusterId) -> PathBuf {
        self.cluster_dir(c).join("root-ca.pem")
    }

    pub(crate) fn cluster_root_key(&self, c: &ClusterId) -> PathBuf {
        self.cluster_dir(c).join("root-ca.key")
    }

    /// `DIR/<cluster>/bundle.pem`, without `--shared-root`: the cluster's trust bundle (its root).
    pub(crate) fn cluster_bundle(&self, c: &ClusterId) -> PathBuf {
        self.cluster_dir(c).join("bundle.pem")
    }

    /// The files of one cluster: what `--add` writes.
    pub(crate) fn cluster_files(&self, c: &ClusterId) -> [PathBuf; 6] {
        [
            self.ca_cert(c),
            self.ca_key(c),
            self.gateway_cert(c),
            self.gateway_key(c),
            self.federator_cert(c),
            self.federator_key(c),
        ]
    }
}

// === report ===

/// What `causeway certs` wrote.
#[derive(Debug, Clone)]
pub(crate) struct Generated {
    pub layout: Layout,
    pub clusters: Vec<ClusterIdentities>,
    pub not_after: time::OffsetDateTime,
}

/// The identities issued for one cluster.
#[derive(Debug, Clone)]
pub(crate) struct ClusterIdentities {
    pub cluster: ClusterId,
    pub trust_domain: String,
    pub gateway: SpiffeId,
    pub federator: SpiffeId,
}

impl fmt::Display for Generated {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let l = &self.layout;
        writeln!(f, "federation root CA: {}", l.root_ca_cert().display())?;
        writeln!(f, "trust bundle:       {}", l.bundle().display())?;
        for c in &self.clusters {
            writeln!(
                f,
                "cluster {} (trust domain {}): {}",
                c.cluster,
                c.trust_domain,
                l.cluster_dir(&c.cluster).display()
            )?;
            writeln!(f, "  gateway.pem    {}", c.gateway)?;
            writeln!(f, "  federator.pem  {}", c.federator)?;
        }
        let date = self.not_after.date();
        write!(f, "valid until {date} (UTC); rotate before then")
    }
}

// === generate ===

/// Validates the arguments, checks that no target exists (unless `force`), then writes the CA
/// hierarchy and every cluster's certificates and keys.
pub(crate) fn generate(args: &CertsArgs) -> Result<Generated, CertsError> {
    let clusters = identities(args)?;
    let layout = Layout::new(&args.out);
    let ids: Vec<ClusterId> = clusters.iter().map(|c| c.cluster.clone()).collect();

    let mut targets: Vec<PathBuf> = if args.add {
        ids.iter().flat_map(|c| layout.cluster_files(c)).collect()
    } else {
        layout.files(&ids)
    };
    if args.own_roots() {
        // No federation root: each cluster's own, and its bundle.
        targets.retain(|p| *p != layout.root_ca_cert() && *p != layout.root_ca_key());
        for c in &ids {
            targets.extend([
                layout.cluster_root_cert(c),
                layout.cluster_root_key(c),
                layout.cluster_bundle(c),
            ]);
        }
    }
    if !args.force {
        for path in targets {
            // symlink_metadata: a dangling link is still something we would overwrite.
            if path.symlink_metadata().is_ok() {
                return Err(CertsError::Exists { path });
            }
        }
    }

    let now = time::OffsetDateTime::now_utc();
    let validity = Validity {
        not_before: now - BACKDATE,
        not_after: now + time::Duration::days(i64::from(args.validity_days)),
    };

    // Everything is generated in memory first, so a failure leaves nothing half-written.
    let mut files: Vec<(PathBuf, String, Secrecy)> = Vec::new();
    if args.own_roots() {
        let mut roots = String::new();
        for c in &clusters {
            let root = own_root_ca(c, &validity)?;
            files.push((
                layout.cluster_root_cert(&c.cluster),
                root.cert_pem.clone(),
                Secrecy::Public,
            ));
            files.push((
                layout.cluster_root_key(&c.cluster),
                root.issuer.key().serialize_pem(),
                Secrecy::Secret,
            ));
            files.push((
                layout.cluster_bundle(&c.cluster),
                root.cert_pem.clone(),
                Secrecy::Public,
            ));
            roots.push_str(&root.cert_pem);
            push_cluster(&mut files, &layout, c, &root.issuer, &validity)?;
        }
        if !args.add {
            // Every root, for tools that look at the whole federation; components use their
            // cluster's bundle and learn the others' through etcd.
            files.push((layout.bundle(), roots, Secrecy::Public));
        }
        for (path, contents, secrecy) in &files {
            write_file(path, contents.as_bytes(), *secrecy)?;
        }
        return Ok(Generated {
            layout,
            clusters,
            not_after: validity.not_after,
        });
    }
    let loaded;
    let generated;
    let root: &Issuer<'static, KeyPair> = if args.add {
        loaded = load_root(&layout)?;
        &loaded
    } else {
        generated = root_ca(&validity)?;
        files.push((
            layout.root_ca_cert(),
            generated.cert_pem.clone(),
            Secrecy::Public,
        ));
        files.push((
            layout.root_ca_key(),
            generated.issuer.key().serialize_pem(),
            Secrecy::Secret,
        ));
        files.push((layout.bundle(), generated.cert_pem.clone(), Secrecy::Public));
        &generated.issuer
    };

    for c in &clusters {
        push_cluster(&mut files, &layout, c, root, &validity)?;
    }

    for (path, contents, secrecy) in &files {
        write_file(path, contents.as_bytes(), *secrecy)?;
    }
    Ok(Generated {
        layout,
        clusters,
        not_after: validity.not_after,
    })
}

/// A cluster's CA (signed by `root`) and its gateway and federator SVIDs, as files to write.
fn push_cluster(
    files: &mut Vec<(PathBuf, String, Secrecy)>,
    layout: &Layout,
    c: &ClusterIdentities,
    root: &Issuer<'static, KeyPair>,
    validity: &Validity,
) -> Result<(), CertsError> {
    let ca = cluster_ca(&c.cluster, &c.trust_domain, root, validity)?;
    files.push((
        layout.ca_cert(&c.cluster),
        ca.cert_pem.clone(),
        Secrecy::Public,
    ));
    files.push((
        layout.ca_key(&c.cluster),
        ca.issuer.key().serialize_pem(),
        Secrecy::Secret,
    ));
    for (id, cert_path, key_path) in [
        (
            &c.gateway,
            layout.gateway_cert(&c.cluster),
            layout.gateway_key(&c.cluster),
        ),
        (
            &c.federator,
            layout.federator_cert(&c.cluster),
            layout.federator_key(&c.cluster),
        ),
    ] {
        let (leaf_pem, key_pem) = svid(id, &c.cluster, &ca.issuer, validity)?;
        // Leaf first, then the intermediate: the chain a TLS peer needs to reach the root.
        files.push((
            cert_path,
            format!("{leaf_pem}{}", ca.cert_pem),
            Secrecy::Public,
        ));
        files.push((key_path, key_pem, Secrecy::Secret));
    }
    Ok(())
}

/// A root of one trust domain alone: it names `spiffe://<td>`, so verifiers accept through it
/// identities of that trust domain only.
pub(crate) fn own_root_ca(c: &ClusterIdentities, validity: &Validity) -> Result<Ca, CertsError> {
    let what = format!("root CA of cluster {}", c.cluster);
    let mut p = params(&format!("Causeway cluster {} root CA", c.cluster), validity);
    p.is_ca = IsCa::Ca(BasicConstraints::Constrained(1));
    p.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    let td_id = format!("spiffe://{}", c.trust_domain);
    p.subject_alt_names = vec![SanType::URI(
        td_id.try_into().map_err(generate_error(what.as_str()))?,
    )];
    let key = KeyPair::generate().map_err(generate_error(format!("{what} key")))?;
    let issuer = CertifiedIssuer::self_signed(p, key).map_err(generate_error(what))?;
    Ok(Ca {
        cert_pem: issuer.pem(),
        issuer,
    })
}

fn identities(args: &CertsArgs) -> Result<Vec<ClusterIdentities>, CertsError> {
    if args.clusters.is_empty() {
        return Err(CertsError::NoClusters);
    }
    let mut out: Vec<ClusterIdentities> = Vec::with_capacity(args.clusters.len());
    for cluster in &args.clusters {
        if out.iter().any(|c| &c.cluster == cluster) {
            return Err(CertsError::DuplicateCluster(cluster.clone()));
        }
        let trust_domain = spiffe::cluster_trust_domain(cluster, &args.trust_domain_suffix);
        let invalid = |source| CertsError::TrustDomain {
            cluster: cluster.clone(),
            source,
        };
        out.push(ClusterIdentities {
            gateway: SpiffeId::gateway(&trust_domain).map_err(invalid)?,
            federator: SpiffeId::federator(&trust_domain).map_err(invalid)?,
            cluster: cluster.clone(),
            trust_domain,
        });
    }
    Ok(out)
}

pub(crate) struct Validity {
    pub(crate) not_before: time::OffsetDateTime,
    pub(crate) not_after: time::OffsetDateTime,
}

pub(crate) struct Ca {
    pub(crate) issuer: CertifiedIssuer<'static, KeyPair>,
    pub(crate) cert_pem: String,
}

fn params(common_name: &str, validity: &Validity) -> CertificateParams {
    let mut params = CertificateParams::default();
    let mut dn = DistinguishedName::new();
    dn.push(DnType::OrganizationName, ORGANIZATION);
    dn.push(DnType::CommonName, common_name);
    params.distinguished_name = dn;
    params.not_before = validity.not_before;
    params.not_after = validity.not_after;
    params
}

pub(crate) fn generate_error(what: impl Into<String>) -> impl FnOnce(rcgen::Error) -> CertsError {
    let what = what.into();
    move |source| CertsError::Generate { what, source }
}

fn root_ca(validity: &Validity) -> Result<Ca, CertsError> {
    let mut p = params("Causeway federation root CA", validity);
    // Root -> cluster CA -> leaf: one CA may sit below the root.
    p.is_ca = IsCa::Ca(BasicConstraints::Constrained(1));
    p.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    let key = KeyPair::generate().map_err(generate_error("root CA key"))?;
    let issuer = CertifiedIssuer::self_signed(p, key).map_err(generate_error("root CA"))?;
    Ok(Ca {
        cert_pem: issuer.pem(),
        issuer,
    })
}

/// The root of an earlier run, to sign new clusters' CAs with (`--add`).
fn load_root(layout: &Layout) -> Result<Issuer<'static, KeyPair>, CertsError> {
    let read = |path: PathBuf| {
        std::fs::read_to_string(&path).map_err(|e| CertsError::Root {
            path: path.clone(),
            reason: e.to_string(),
        })
    };
    let cert = read(layout.root_ca_cert())?;
    let key = read(layout.root_ca_key())?;
    let key = KeyPair::from_pem(&key).map_err(|e| CertsError::Root {
        path: layout.root_ca_key(),
        reason: e.to_string(),
    })?;
    Issuer::from_ca_cert_pem(&cert, key).map_err(|e| CertsError::Root {
        path: layout.root_ca_cert(),
        reason: e.to_string(),
    })
}

/// The CA of trust domain `trust_domain` (cluster `cluster`), signed by `root`.
pub(crate) fn cluster_ca(
    cluster: &ClusterId,
    trust_domain: &str,
    root: &Issuer<'static, KeyPair>,
    validity: &Validity,
) -> Result<Ca, CertsError> {
    let what = format!("CA of cluster {cluster}");
    let mut p = params(&format!("Causeway cluster {cluster} CA"), validity);
    p.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    p.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    p.use_authority_key_identifier_extension = true;
    // X.509-SVID: a signing certificate may carry the SPIFFE ID of its trust domain.
    let td_id = SpiffeId::new(trust_domain, "")
        .map_err(|source| CertsError::TrustDomain {
            cluster: cluster.clone(),
            source,
        })?
        .to_string();
    p.subject_alt_names = vec![SanType::URI(
        td_id.try_into().map_err(generate_error(what.as_str()))?,
    )];
    let key = KeyPair::generate().map_err(generate_error(format!("{what} key")))?;
    let issuer = CertifiedIssuer::signed_by(p, key, root).map_err(generate_error(what))?;
    Ok(Ca {
        cert_pem: issuer.pem(),
        issuer,
    })
}

/// An X.509-SVID for `id` signed by the cluster CA: (certificate PEM, key PEM).
pub(crate) fn svid(
    id: &SpiffeId,
    cluster: &ClusterId,
    ca: &Issuer<'static, KeyPair>,
    validity: &Validity,
) -> Result<(String, String), CertsError> {
    let what = format!("certificate for {id}");
    let p = svid_params(id, cluster, validity)?;
    let key = KeyPair::generate().map_err(generate_error(format!("key for {id}")))?;
    let cert = p.signed_by(&key, ca).map_err(generate_error(what))?;
    Ok((cert.pem(), key.serialize_pem()))
}

/// What every X.509-SVID we issue says: one SPIFFE URI SAN, no CA, digital signature, both
/// serverAuth and clientAuth (a gateway dials its peers and accepts them). The federator's
/// issuer signs these for its gateways' public keys.
pub(crate) fn svid_params(
    id: &SpiffeId,
    cluster: &ClusterId,
    validity: &Validity,
) -> Result<CertificateParams, CertsError> {
    let what = format!("certificate for {id}");
    let sa = id.sa().unwrap_or("workload");
    let mut p = params(&format!("{sa}.{cluster}"), validity);
    p.is_ca = IsCa::ExplicitNoCa;
    p.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    p.extended_key_usages = vec![
        ExtendedKeyUsagePurpose::ServerAuth,
        ExtendedKeyUsagePurpose::ClientAuth,
    ];
    p.use_authority_key_identifier_extension = true;
    p.subject_alt_names = vec![SanType::URI(
        id.to_string().try_into().map_err(generate_error(what))?,
    )];
    Ok(p)
}

// === issue ===

/// Arguments of `causeway issue`: one certificate from an existing CA.
#[derive(Debug, Clone, clap::Args)]
pub struct IssueArgs {
    /// The issuing CA's certificate (a cluster's `ca.pem`, or a root).
    #[arg(long, value_name = "FILE")]
    pub ca_cert: PathBuf,
    /// Its private key.
    #[arg(long, value_name = "FILE")]
    pub ca_key: PathBuf,
    /// The SPIFFE ID to issue: a workload's (`spiffe://<td>/ns/<ns>/sa/<sa>`), or with `--ca` a
    /// trust domain's own (`spiffe://<td>`).
    #[arg(long, value_name = "SPIFFE-ID")]
    pub spiffe_id: SpiffeId,
    /// Issue an intermediate CA (path length 0) for the trust domain instead of a leaf.
    #[arg(long)]
    pub ca: bool,
    /// Where the certificate goes (for a leaf: the leaf, then the issuing CA).
    #[arg(long, value_name = "FILE")]
    pub cert_out: PathBuf,
    /// Where its private key goes.
    #[arg(long, value_name = "FILE")]
    pub key_out: PathBuf,
    /// Validity in days.
    #[arg(long, value_name = "DAYS", default_value_t = 365,
          value_parser = clap::value_parser!(u32).range(1..=36500))]
    pub validity_days: u32,
    /// Overwrite the output files if they exist.
    #[arg(long)]
    pub force: bool,
}

/// `causeway issue`: refuses existing outputs (unless `force`) and a CA whose own SPIFFE ID
/// names another trust domain (its certificates would be refused everywhere); writes the
/// certificate and its key.
pub(crate) fn issue(args: &IssueArgs) -> Result<String, CertsError> {
    if !args.force {
        for path in [&args.cert_out, &args.key_out] {
            if path.symlink_metadata().is_ok() {
                return Err(CertsError::Exists { path: path.clone() });
            }
        }
    }
    let read = |path: &PathBuf| {
        std::fs::read_to_string(path).map_err(|e| CertsError::Root {
            path: path.clone(),
            reason: e.to_string(),
        })
    };
    let ca_pem = read(&args.ca_cert)?;
    let key = KeyPair::from_pem(&read(&args.ca_key)?).map_err(|e| CertsError::Root {
        path: args.ca_key.clone(),
        reason: e.to_string(),
    })?;
    let issuer = Issuer::from_ca_cert_pem(&ca_pem, key).map_err(|e| CertsError::Root {
        path: args.ca_cert.clone(),
        reason: e.to_string(),
    })?;
    let td = args.spiffe_id.trust_domain().to_string();
    if let Some(ca_td) = ca_pem_trust_domain(&ca_pem) {
        if ca_td != td {
            return Err(CertsError::Root {
                path: args.ca_cert.clone(),
                reason: format!(
                    "this CA is trust domain {ca_td}'s; it cannot issue {} (peers would refuse it)",
                    args.spiffe_id
                ),
            });
        }
    }
    let now = time::OffsetDateTime::now_utc();
    let validity = Validity {
        not_before: now - BACKDATE,
        not_after: now + time::Duration::days(i64::from(args.validity_days)),
    };
    let cluster = ClusterId::new(td.split('.').next().unwrap_or("cluster"))
        .unwrap_or_else(|_| ClusterId::new("cluster").expect("a valid label"));
    let (cert_pem, key_pem) = if args.ca {
        if !args.spiffe_id.path().is_empty() {
            return Err(CertsError::TrustDomain {
                cluster,
                source: InvalidSpiffeId {
                    input: args.spiffe_id.to_string(),
                    reason:
                        "a CA's SPIFFE ID is its trust domain's own, spiffe://<td> with no path",
                },
            });
        }
        let ca = cluster_ca(&cluster, &td, &issuer, &validity)?;
        (ca.cert_pem.clone(), ca.issuer.key().serialize_pem())
    } else {
        let (leaf, key) = svid(&args.spiffe_id, &cluster, &issuer, &validity)?;
        (format!("{leaf}{ca_pem}"), key)
    };
    write_file(&args.cert_out, cert_pem.as_bytes(), Secrecy::Public)?;
    write_file(&args.key_out, key_pem.as_bytes(), Secrecy::Secret)?;
    let what = if args.ca { "CA" } else { "certificate" };
    Ok(format!(
        "{what} for {} written to {} (key {}), valid until {} (UTC)",
        args.spiffe_id,
        args.cert_out.display(),
        args.key_out.display(),
        validity.not_after.date()
    ))
}

/// The trust domain a PEM CA certificate names (`spiffe://<td>` URI SAN), if any.
pub(crate) fn ca_pem_trust_domain(pem_text: &str) -> Option<String> {
    let der = causeway_api::pem::trust_bundle_from_pem(pem_text.as_bytes(), "CA")
        .ok()?
        .into_iter()
        .next()?;
    causeway_api::tls::ca_trust_domain(&der)
}

// === writing ===

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Secrecy {
    Public,
    Secret,
}

/// Writes through a temporary file in the same directory and renames it into place, so a reader
/// never sees half a file and a key is never readable by others, even briefly.
pub(crate) fn write_file(path: &Path, contents: &[u8], secrecy: Secrecy) -> Result<(), CertsError> {
    let err = |source| CertsError::Write {
        path: path.to_path_buf(),
        source,
    };
    let dir = path.parent().unwrap_or(Path::new("."));
    std::fs::create_dir_all(dir).map_err(err)?;
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let tmp = dir.join(format!(".{name}.tmp-{}", std::process::id()));

    let mut opts = std::fs::OpenOptions::new();
    opts.write(true).create(true).truncate(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        opts.mode(match secrecy {
            Secrecy::Secret => 0o600,
            Secrecy::Public => 0o644,
        });
    }
    #[cfg(not(unix))]
    let _ = secrecy;

    let result = (|| {
        let mut file = opts.open(&tmp)?;
        file.write_all(contents)?;
        file.sync_all()?;
        std::fs::rename(&tmp, path)
    })();
    if result.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    result.map_err(err)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(dir: &Path, clusters: &[&str]) -> CertsArgs {
        CertsArgs {
            out: dir.to_path_buf(),
            clusters: clusters
                .iter()
                .map(|c| ClusterId::new(*c).unwrap())
                .collect(),
            trust_domain_suffix: spiffe::DEFAULT_TRUST_DOMAIN_SUFFIX.to_string(),
            validity_days: 30,
            force: false,
            add: false,
            own_roots: false,
            shared_root: true,
        }
    }

    #[test]
    fn add_joins_a_cluster_under_the_existing_root_touching_nothing_else() {
        let dir = tempfile::tempdir().unwrap();
        generate(&args(dir.path(), &["east", "west"])).unwrap();
        let layout = Layout::new(dir.path());
        let east = ClusterId::new("east").unwrap();
        let north = ClusterId::new("north").unwrap();
        let before: Vec<(PathBuf, Vec<u8>)> = layout
            .files(std::slice::from_ref(&east))
            .into_iter()
            .map(|p| {
                let b = std::fs::read(&p).unwrap();
                (p, b)
            })
            .collect();
        let add = CertsArgs {
            add: true,
            ..args(dir.path(), &["north"])
        };
        let generated = generate(&add).unwrap();
        assert_eq!(generated.clusters[0].cluster, north);
        for (path, bytes) in &before {
            assert_eq!(
                &std::fs::read(path).unwrap(),
                bytes,
                "{} changed",
                path.display()
            );
        }
        // north's gateway verifies through the federation's bundle, bound to north's CA.
        let bundle = causeway_api::tls::TrustBundle::load(layout.bundle()).unwrap();
        let id = causeway_api::tls::Identity::load(
            layout.gateway_cert(&north),
            layout.gateway_key(&north),
        )
        .unwrap();
        assert_eq!(
            causeway_api::tls::verify_client_chain(&bundle, &id.cert_chain).unwrap(),
            generated.clusters[0].gateway
        );
        // Again: north's files exist, nothing is written.
        let err = generate(&add).unwrap_err();
        assert!(
            matches!(&err, CertsError::Exists { path } if path.starts_with(layout.cluster_dir(&north))),
            "{err}"
        );
        // Without a root to add to, it says what is missing.
        let empty = tempfile::tempdir().unwrap();
        let err = generate(&CertsArgs {
            add: true,
            ..args(empty.path(), &["north"])
        })
        .unwrap_err();
        assert!(err.to_string().contains("root-ca.pem"), "{err}");
        assert!(!empty.path().join("north").exists());
    }

    #[test]
    fn writes_layout_with_private_keys() {
        let dir = tempfile::tempdir().unwrap();
        let out = dir.path().join("pki");
        let generated = generate(&args(&out, &["east", "west"])).unwrap();
        let layout = Layout::new(&out);
        let ids: Vec<_> = ["east", "west"]
            .iter()
            .map(|c| ClusterId::new(*c).unwrap())
            .collect();
        for path in layout.files(&ids) {
            let meta = std::fs::metadata(&path).unwrap();
            #[cfg(unix)]
            {
                use std::os::unix::fs::PermissionsExt;
                let mode = meta.permissions().mode() & 0o777;
                let is_key = path.extension().is_some_and(|e| e == "key");
                assert_eq!(
                    mode,
                    if is_key { 0o600 } else { 0o644 },
                    "{}",
                    path.display()
                );
            }
            assert!(meta.len() > 0);
        }
        // No temporary files left behind.
        for entry in std::fs::read_dir(layout.cluster_dir(&ids[0])).unwrap() {
            let name = entry.unwrap().file_name();
            assert!(!name.to_string_lossy().starts_with('.'), "{name:?}");
        }
        assert_eq!(
            std::fs::read(layout.bundle()).unwrap(),
            std::fs::read(layout.root_ca_cert()).unwrap()
        );
        assert_eq!(
            generated.clusters[1].gateway.to_string(),
            "spiffe://west.causeway.mesh/ns/causeway-system/sa/causeway-gateway"
        );
        let shown = generated.to_string();
        assert!(
            shown.contains("cluster west (trust domain west.causeway.mesh)"),
            "{shown}"
        );

        let id = causeway_api::tls::Identity::load(
            layout.federator_cert(&ids[0]),
            layout.federator_key(&ids[0]),
        )
        .unwrap();
        assert_eq!(id.cert_chain.len(), 2);
        assert_eq!(id.spiffe_id().unwrap(), generated.clusters[0].federator);
    }

    #[test]
    fn issue_makes_leaves_and_intermediates_of_the_cas_own_trust_domain_only() {
        let dir = tempfile::tempdir().unwrap();
        generate(&args(dir.path(), &["east"])).unwrap();
        let layout = Layout::new(dir.path());
        let east = ClusterId::new("east").unwrap();
        let bundle = causeway_api::tls::TrustBundle::load(layout.bundle()).unwrap();
        let out = dir.path().join("out");
        let issue_args =
            |ca: PathBuf, ca_key: PathBuf, id: &str, is_ca: bool, name: &str| IssueArgs {
                ca_cert: ca,
                ca_key,
                spiffe_id: id.parse().unwrap(),
                ca: is_ca,
                cert_out: out.join(format!("{name}.pem")),
                key_out: out.join(format!("{name}.key")),
                validity_days: 1,
                force: false,
            };
        std::fs::create_dir_all(&out).unwrap();
        // A workload leaf from east's CA verifies, bound to east.
        let cart = "spiffe://east.causeway.mesh/ns/shop/sa/cart";
        let a = issue_args(
            layout.ca_cert(&east),
            layout.ca_key(&east),
            cart,
            false,
            "cart",
        );
        issue(&a).unwrap();
        let id = causeway_api::tls::Identity::load(&a.cert_out, &a.key_out).unwrap();
        assert_eq!(
            causeway_api::tls::verify_client_chain(&bundle, &id.cert_chain)
                .unwrap()
                .to_string(),
            cart
        );
        // Again: refused, the files are there.
        assert!(matches!(issue(&a), Err(CertsError::Exists { .. })));
        // east's CA cannot issue west's identities.
        let west = "spiffe://west.causeway.mesh/ns/shop/sa/cart";
        let err = issue(&issue_args(
            layout.ca_cert(&east),
            layout.ca_key(&east),
            west,
            false,
            "w",
        ))
        .unwrap_err();
        assert!(
            err.to_string()
                .contains("trust domain east.causeway.mesh's"),
            "{err}"
        );
        // An intermediate for a new trust domain, from the root, then a leaf from it.
        let td = "spiffe://south.causeway.mesh";
        let c = issue_args(
            layout.root_ca_cert(),
            layout.root_ca_key(),
            td,
            true,
            "south-ca",
        );
        issue(&c).unwrap();
        let gw = "spiffe://south.causeway.mesh/ns/causeway-system/sa/causeway-gateway";
        let l = issue_args(c.cert_out.clone(), c.key_out.clone(), gw, false, "south-gw");
        issue(&l).unwrap();
        let id = causeway_api::tls::Identity::load(&l.cert_out, &l.key_out).unwrap();
        assert_eq!(
            causeway_api::tls::verify_client_chain(&bundle, &id.cert_chain)
                .unwrap()
                .to_string(),
            gw
        );
        // A CA's ID has no path.
        let err = issue(&issue_args(
            layout.root_ca_cert(),
            layout.root_ca_key(),
            gw,
            true,
            "x",
        ))
        .unwrap_err();
        assert!(err.to_string().contains("no path"), "{err}");
    }

    #[test]
    fn own_roots_give_each_cluster_a_trust_of_its_own() {
        let dir = tempfile::tempdir().unwrap();
        let own = |clusters: &[&str], add: bool| CertsArgs {
            own_roots: true,
            shared_root: false,
            add,
            ..args(dir.path(), clusters)
        };
        generate(&own(&["east", "west"], false)).unwrap();
        let layout = Layout::new(dir.path());
        assert!(!layout.root_ca_key().exists(), "no federation root");
        let [east, west, north] = ["east", "west", "north"].map(|c| ClusterId::new(c).unwrap());
        let load = |c: &ClusterId| {
            causeway_api::tls::Identity::load(layout.gateway_cert(c), layout.gateway_key(c))
                .unwrap()
        };
        let bundle_of =
            |c: &ClusterId| causeway_api::tls::TrustBundle::load(layout.cluster_bundle(c)).unwrap();
        // east's gateway verifies through east's bundle, not through west's.
        assert!(
            causeway_api::tls::verify_client_chain(&bundle_of(&east), &load(&east).cert_chain)
                .is_ok()
        );
        assert!(
            causeway_api::tls::verify_client_chain(&bundle_of(&west), &load(&east).cert_chain)
                .is_err()
        );
        // The federation's bundle holds every root, each naming its trust domain.
        let all = causeway_api::tls::TrustBundle::load(layout.bundle()).unwrap();
        assert_eq!(
            all.trust_domains(),
            vec![
                Some("east.causeway.mesh".to_string()),
                Some("west.causeway.mesh".to_string())
            ]
        );
        // A cluster joins with a root of its own; nothing else is written.
        let before = std::fs::read(layout.bundle()).unwrap();
        generate(&own(&["north"], true)).unwrap();
        assert_eq!(std::fs::read(layout.bundle()).unwrap(), before);
        assert!(causeway_api::tls::verify_client_chain(
            &bundle_of(&north),
            &load(&north).cert_chain
        )
        .is_ok());
    }

    #[test]
    fn refuses_to_overwrite_without_force() {
        let dir = tempfile::tempdir().unwrap();
        let a = args(dir.path(), &["east"]);
        generate(&a).unwrap();
        let before = std::fs::read(Layout::new(dir.path()).ca_key(&a.clusters[0])).unwrap();

        let err = generate(&a).unwrap_err();
        assert!(matches!(&err, CertsError::Exists { path } if path.ends_with("root-ca.pem")));
        assert!(err.to_string().contains("--force"), "{err}");

        // A new cluster alongside an existing one is refused too: the root would be replaced.
        let err = generate(&args(dir.path(), &["north"])).unwrap_err();
        assert!(matches!(err, CertsError::Exists { .. }));
        assert!(!dir.path().join("north").exists());

        let forced = CertsArgs { force: true, ..a };
        generate(&forced).unwrap();
        let after = std::fs::read(Layout::new(dir.path()).ca_key(&forced.clusters[0])).unwrap();
        assert_ne!(before, after);
    }

    #[test]
    fn rejects_duplicate_cluster_and_bad_suffix() {
        let dir = tempfile::tempdir().unwrap();
        let err = generate(&args(dir.path(), &["east", "west", "east"])).unwrap_err();
        assert_eq!(err.to_string(), "cluster east is given more than once");

        let bad = CertsArgs {
            trust_domain_suffix: "Mesh.Example".into(),
            ..args(dir.path(), &["east"])
        };
        let err = generate(&bad).unwrap_err();
        assert!(err.to_string().contains("east.Mesh.Example"), "{err}");

        let none = args(dir.path(), &[]);
        assert!(matches!(generate(&none), Err(CertsError::NoClusters)));
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 0);
    }
}
