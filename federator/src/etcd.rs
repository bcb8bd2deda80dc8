//! Connecting to etcd: endpoints, TLS with client certificates, optional user/password, and
//! the settings that say so (`EtcdConfig`); backoff is `causeway_api::backoff`.

use std::path::PathBuf;
use std::time::Duration;

use etcd_client::{Certificate, Client, ConnectOptions, Identity, TlsOptions};
use serde::{Deserialize, Serialize};

/// Where and how to reach the federation etcd.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct EtcdConfig {
    /// `http://host:port` or `https://host:port`.
    pub endpoints: Vec<String>,
    /// CA bundle that verifies etcd's server certificate (enables TLS).
    pub ca_file: Option<PathBuf>,
    /// Client certificate and key for etcd mTLS.
    pub cert_file: Option<PathBuf>,
    pub key_file: Option<PathBuf>,
    pub username: Option<String>,
    pub password: Option<String>,
    #[serde(with = "causeway_api::duration::serde_str")]
    pub connect_timeout: Duration,
    #[serde(with = "causeway_api::duration::serde_str")]
    pub request_timeout: Duration,
}

impl Default for EtcdConfig {
    fn default() -> Self {
        Self {
            endpoints: vec!["http://127.0.0.1:2379".to_string()],
            ca_file: None,
            cert_file: None,
            key_file: None,
            username: None,
            password: None,
            connect_timeout: Duration::from_secs(3),
            request_timeout: Duration::from_secs(5),
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum EtcdError {
    #[error("reading etcd TLS file {path}: {source}")]
    TlsFile {
        path: String,
        source: std::io::Error,
    },
    #[error("connecting to etcd at {endpoints}: {source}")]
    Connect {
        endpoints: String,
        source: etcd_client::Error,
    },
}

pub fn connect_options(cfg: &EtcdConfig) -> Result<ConnectOptions, EtcdError> {
    let read = |p: &std::path::Path| {
        std::fs::read(p).map_err(|source| EtcdError::TlsFile {
            path: p.display().to_string(),
            source,
        })
    };
    let mut opts = ConnectOptions::new()
        .with_connect_timeout(cfg.connect_timeout)
        .with_timeout(cfg.request_timeout)
        .with_keep_alive(Duration::from_secs(5), Duration::from_secs(3))
        .with_keep_alive_while_idle(true);
    if cfg.ca_file.is_some() || cfg.cert_file.is_some() {
        let mut tls = TlsOptions::new();
        if let Some(ca) = &cfg.ca_file {
            tls = tls.ca_certificate(Certificate::from_pem(read(ca)?));
        }
        if let (Some(cert), Some(key)) = (&cfg.cert_file, &cfg.key_file) {
            tls = tls.identity(Identity::from_pem(read(cert)?, read(key)?));
        }
        opts = opts.with_tls(tls);
    }
    if let (Some(u), Some(p)) = (&cfg.username, &cfg.password) {
        opts = opts.with_user(u.clone(), p.clone());
    }
    Ok(opts)
}

// === the operator CLI's connection ===

/// How an operator command reaches etcd (`causeway drill`, `causeway etcd-auth`).
#[derive(Debug, Clone, Default, clap::Args)]
pub struct EtcdArgs {
    /// etcd endpoints, comma-separated (default: the lab's, else http://127.0.0.1:2379).
    #[arg(long, env = "CAUSEWAY_ETCD_ENDPOINTS", value_delimiter = ',')]
    pub etcd_endpoints: Vec<String>,
    /// CA bundle of etcd's server certificate (turns on TLS).
    #[arg(long, env = "CAUSEWAY_ETCD_CA", value_name = "FILE")]
    pub etcd_ca: Option<std::path::PathBuf>,
    /// Client certificate for etcd; its common name is the etcd user (`operator` for drills,
    /// `root` for `etcd-auth`).
    #[arg(
        long,
        env = "CAUSEWAY_ETCD_CERT",
        value_name = "FILE",
        requires = "etcd_key"
    )]
    pub etcd_cert: Option<std::path::PathBuf>,
    #[arg(
        long,
        env = "CAUSEWAY_ETCD_KEY",
        value_name = "FILE",
        requires = "etcd_cert"
    )]
    pub etcd_key: Option<std::path::PathBuf>,
}

impl EtcdArgs {
    /// The connection config; endpoints default to `http://127.0.0.1:2379`.
    pub fn config(&self) -> EtcdConfig {
        let mut c = EtcdConfig::default();
        if !self.etcd_endpoints.is_empty() {
            c.endpoints = self.etcd_endpoints.clone();
        }
        c.ca_file = self.etcd_ca.clone();
        c.cert_file = self.etcd_cert.clone();
        c.key_file = self.etcd_key.clone();
        c
    }
}

/// Arguments of `causeway etcd-auth`.
#[derive(Debug, Clone, clap::Args)]
pub struct EtcdAuthArgs {
    #[command(flatten)]
    pub etcd: EtcdArgs,
    /// Comma-separated cluster IDs of the federation (run again with more to add clusters).
    #[arg(
        long,
        value_name = "CLUSTER,...",
        value_delimiter = ',',
        required = true
    )]
    pub clusters: Vec<causeway_api::ClusterId>,
}

/// `causeway etcd-auth`: [`setup_auth`] as `root`.
pub async fn run_auth(args: &EtcdAuthArgs) -> anyhow::Result<String> {
    use anyhow::Context as _;
    let cfg = args.etcd.config();
    let mut client = connect(&cfg).await?;
    let created = setup_auth(&mut client, &args.clusters)
        .await
        .with_context(|| format!("setting up auth on etcd at {}", cfg.endpoints.join(",")))?;
    let mut out = String::new();
    for c in &created {
        out.push_str(&format!("created {c}\n"));
    }
    out.push_str(&format!(
        "etcd auth on; roles: operator, {}\n",
        args.clusters
            .iter()
            .map(|c| format!("cluster-{c}"))
            .collect::<Vec<_>>()
            .join(", ")
    ));
    Ok(out)
}

// === auth ===

/// Sets up etcd's own auth for a federation of `clusters` (docs/security.md "etcd"), as its
/// `root` user, and turns auth on: the roles and users `cluster-<c>` (write `clusters/<c>/`
/// alone, read the rest) and `operator` (write `drills/`), and `root`. Users have no password:
/// they authenticate with client certificates whose common name is the user (etcd's
/// `--client-cert-auth`). Safe to run again, e.g. to add a cluster. Returns what it created.
pub async fn setup_auth(
    client: &mut Client,
    clusters: &[causeway_api::ClusterId],
) -> Result<Vec<String>, etcd_client::Error> {
    use causeway_api::keys;
    use etcd_client::{Permission, UserAddOptions};

    let existing_roles: Vec<String> = client.role_list().await?.roles().to_vec();
    let existing_users: Vec<String> = client.user_list().await?.users().to_vec();
    let mut created = Vec::new();
    let mut roles = vec![keys::operator_role()];
    roles.extend(clusters.iter().map(keys::cluster_role));
    let no_password = || Some(UserAddOptions::new().with_no_pwd());
    for role in &roles {
        if !existing_roles.contains(&role.name) {
            client.role_add(role.name.as_str()).await?;
            created.push(format!("role {}", role.name));
        }
        for prefix in &role.readwrite {
            let perm = Permission::read_write(prefix.as_str()).with_prefix();
            client
                .role_grant_permission(role.name.as_str(), perm)
                .await?;
        }
        for prefix in &role.read {
            let perm = Permission::read(prefix.as_str()).with_prefix();
            client
                .role_grant_permission(role.name.as_str(), perm)
                .await?;
        }
        if !existing_users.contains(&role.name) {
            client
                .user_add(role.name.as_str(), "", no_password())
                .await?;
            created.push(format!("user {}", role.name));
        }
        client
            .user_grant_role(role.name.as_str(), role.name.as_str())
            .await?;
    }
    if !existing_users.iter().any(|u| u == "root") {
        client.user_add("root", "", no_password()).await?;
        created.push("user root".to_string());
    }
    // The `root` role is etcd's own; granting it to `root` is what auth_enable requires.
    client.user_grant_role("root", "root").await?;
    client.auth_enable().await?;
    Ok(created)
}

/// Connects once, to the endpoints that accept a TCP connection now (all of them when none
/// does, so that the error names them).
///
/// The client balances requests over its endpoints with power-of-two-choices on pending
/// requests, and a dead member fails every request at once: it always looks the least loaded,
/// so a client that includes it sends nearly everything there (seen with one of three members
/// killed: the mesh watch retried against it for 20 s). Leaving it out at connect time, and
/// connecting anew after errors (the view and the publisher do), routes around it.
pub async fn connect(cfg: &EtcdConfig) -> Result<Client, EtcdError> {
    let opts = connect_options(cfg)?;
    let mut endpoints = reachable(&cfg.endpoints, Duration::from_millis(500)).await;
    if endpoints.is_empty() {
        endpoints = cfg.endpoints.clone();
    }
    Client::connect(&endpoints, Some(opts))
        .await
        .map_err(|source| EtcdError::Connect {
            endpoints: endpoints.join(","),
            source,
        })
}

/// The endpoints (`scheme://host:port`) that accept a TCP connection within `wait`, in order.
async fn reachable(endpoints: &[String], wait: Duration) -> Vec<String> {
    let mut probes = tokio::task::JoinSet::new();
    for (i, e) in endpoints.iter().enumerate() {
        let authority = e
            .split_once("://")
            .map_or(e.as_str(), |(_, rest)| rest)
            .split('/')
            .next()
            .unwrap_or_default()
            .to_string();
        probes.spawn(async move {
            let ok = matches!(
                tokio::time::timeout(wait, tokio::net::TcpStream::connect(authority)).await,
                Ok(Ok(_))
            );
            (i, ok)
        });
    }
    let mut up = vec![false; endpoints.len()];
    while let Some(r) = probes.join_next().await {
        if let Ok((i, ok)) = r {
            up[i] = ok;
        }
    }
    endpoints
        .iter()
        .zip(up)
        .filter(|(_, ok)| *ok)
        .map(|(e, _)| e.clone())
        .collect()
}

// === paginated reads ===

/// Keys per page of a prefix list, at first. etcd 3.4 walks its whole index from a page's first
/// key to the range's end for every page, so fewer pages list a large mesh faster (510,000
/// exports: 23.6 s in pages of 2,000, 14.6 s in pages of 8,000); 8,000 exports of the usual size
/// are about 3 MiB. A page too large for gRPC's 4 MiB message limit (large values) is asked for
/// again at half the size, down to one key, so no value size makes a list fail for ever.
pub const LIST_PAGE: i64 = 8_000;

/// Whether `e` says a response was larger than the client takes (gRPC's message limit). Both
/// code and message: etcd also answers OutOfRange for a compacted revision, which smaller pages
/// do not mend.
fn too_large(e: &etcd_client::Error) -> bool {
    match e {
        etcd_client::Error::GRpcStatus(s) => {
            matches!(
                s.code(),
                tonic::Code::OutOfRange | tonic::Code::ResourceExhausted
            ) && s.message().contains("too large")
        }
        _ => false,
    }
}

/// The end of the range of keys that start with `prefix` (etcd's "prefix end").
fn prefix_end(prefix: &[u8]) -> Vec<u8> {
    let mut end = prefix.to_vec();
    while let Some(last) = end.pop() {
        if last < 0xff {
            end.push(last + 1);
            return end;
        }
    }
    vec![0]
}

/// Lists every key under `prefix` at one revision, `LIST_PAGE` keys at a time.
/// Returns the (key, value, lease) triples and the revision of the list.
pub async fn list_prefix(
    client: &mut etcd_client::Client,
    prefix: &str,
    keys_only: bool,
) -> Result<(Vec<(Vec<u8>, Vec<u8>, i64)>, i64), etcd_client::Error> {
    let mut out = Vec::new();
    let revision = list_prefix_pages(client, prefix, keys_only, |kvs| {
        out.extend(
            kvs.iter()
                .map(|kv| (kv.key().to_vec(), kv.value().to_vec(), kv.lease())),
        );
    })
    .await?;
    Ok((out, revision))
}

/// Lists every key under `prefix` at one revision and hands each page of `LIST_PAGE` keys to
/// `on_page` as it arrives; returns the list's revision. The next page is asked for before
/// `on_page` runs, so etcd serves it while the caller decodes this one, and no more than two
/// pages are held at a time (a federator at 510,000 exports does not hold the whole raw list
/// beside what it decodes from it). On an error, pages already handed over are not taken back:
/// the caller discards what it built.
pub async fn list_prefix_pages(
    client: &mut etcd_client::Client,
    prefix: &str,
    keys_only: bool,
    mut on_page: impl FnMut(&[etcd_client::KeyValue]),
) -> Result<i64, etcd_client::Error> {
    let end = prefix_end(prefix.as_bytes());
    let page = |client: &etcd_client::Client, from: Vec<u8>, revision: i64, limit: i64| {
        let mut client = client.clone();
        let mut opts = etcd_client::GetOptions::new()
            .with_range(end.clone())
            .with_limit(limit);
        if revision > 0 {
            opts = opts.with_revision(revision);
        }
        if keys_only {
            opts = opts.with_keys_only();
        }
        async move { client.get(from, Some(opts)).await }
    };
    let mut limit = LIST_PAGE;
    let mut from = prefix.as_bytes().to_vec();
    let mut revision = 0;
    // The page asked for ahead, from `from`.
    let mut ahead: Option<tokio::task::JoinHandle<_>> = None;
    loop {
        let got = match ahead.take() {
            Some(task) => task.await.unwrap_or_else(|e| {
                Err(etcd_client::Error::IoError(std::io::Error::other(format!(
                    "listing {prefix}: the page task ended: {e}"
                ))))
            }),
            None => page(client, from.clone(), revision, limit).await,
        };
        let resp = match got {
            Ok(r) => r,
            Err(e) if too_large(&e) && limit > 1 => {
                limit = (limit / 2).max(1);
                tracing::warn!(%prefix, limit, error = %e, "a list page was too large; asking for smaller ones");
                continue;
            }
            Err(e) => return Err(e),
        };
        if revision == 0 {
            revision = resp.header().map(|h| h.revision()).unwrap_or(0);
        }
        let more = match resp.kvs().last() {
            Some(last) if resp.more() => {
                from = last.key().to_vec();
                from.push(0);
                // Spawned, so that etcd serves it while this page is handed over.
                ahead = Some(tokio::spawn(page(client, from.clone(), revision, limit)));
                true
            }
            _ => false,
        };
        on_page(resp.kvs());
        if !more {
            return Ok(revision);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn only_endpoints_that_accept_connections_are_kept() {
        let live = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let dead = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let dead_addr = dead.local_addr().unwrap();
        drop(dead);
        let eps = vec![
            format!("https://{dead_addr}"),
            format!("http://{}", live.local_addr().unwrap()),
        ];
        assert_eq!(
            reachable(&eps, Duration::from_millis(500)).await,
            vec![eps[1].clone()]
        );
    }

    #[test]
    fn prefix_ends() {
        assert_eq!(prefix_end(b"/a/"), b"/a0".to_vec());
        assert_eq!(prefix_end(b"a\xff"), b"b".to_vec());
    }

    #[test]
    fn tls_file_errors_name_the_file() {
        let cfg = EtcdConfig {
            ca_file: Some("/nonexistent/ca.pem".into()),
            ..EtcdConfig::default()
        };
        let err = connect_options(&cfg).unwrap_err().to_string();
        assert!(err.contains("/nonexistent/ca.pem"), "{err}");
    }
}
