//! Connecting to etcd: endpoints, TLS with client certificates, optional user/password, and
//! reconnect backoff with jitter.

use std::time::Duration;

use etcd_client::{Certificate, Client, ConnectOptions, Identity, TlsOptions};
use rand::Rng;

use crate::config::EtcdConfig;

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

/// Connects once.
pub async fn connect(cfg: &EtcdConfig) -> Result<Client, EtcdError> {
    let opts = connect_options(cfg)?;
    Client::connect(&cfg.endpoints, Some(opts))
        .await
        .map_err(|source| EtcdError::Connect {
            endpoints: cfg.endpoints.join(","),
            source,
        })
}

// === paginated reads ===

/// Keys per page of a prefix list: a page stays far below gRPC's 4 MiB message limit even with
/// large values, so a mesh of 100k exports lists in pages instead of failing.
pub const LIST_PAGE: i64 = 2_000;

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
    let end = prefix_end(prefix.as_bytes());
    let mut out = Vec::new();
    let mut from = prefix.as_bytes().to_vec();
    let mut revision = 0;
    loop {
        let mut opts = etcd_client::GetOptions::new()
            .with_range(end.clone())
            .with_limit(LIST_PAGE);
        if revision > 0 {
            opts = opts.with_revision(revision);
        }
        if keys_only {
            opts = opts.with_keys_only();
        }
        let resp = client.get(from.clone(), Some(opts)).await?;
        if revision == 0 {
            revision = resp.header().map(|h| h.revision()).unwrap_or(0);
        }
        for kv in resp.kvs() {
            out.push((kv.key().to_vec(), kv.value().to_vec(), kv.lease()));
        }
        match resp.kvs().last() {
            Some(last) if resp.more() => {
                from = last.key().to_vec();
                from.push(0);
            }
            _ => return Ok((out, revision)),
        }
    }
}

// === impl Backoff ===

/// Exponential backoff with full jitter, 100 ms .. 5 s.
#[derive(Debug, Clone)]
pub struct Backoff {
    attempt: u32,
    base: Duration,
    max: Duration,
}

impl Default for Backoff {
    fn default() -> Self {
        Self {
            attempt: 0,
            base: Duration::from_millis(100),
            max: Duration::from_secs(5),
        }
    }
}

impl Backoff {
    pub fn reset(&mut self) {
        self.attempt = 0;
    }

    pub fn next_delay(&mut self) -> Duration {
        let exp = self.base.saturating_mul(1u32 << self.attempt.min(16));
        self.attempt = self.attempt.saturating_add(1);
        let cap = exp.min(self.max);
        // Half fixed, half jitter: never zero, never in lockstep with other replicas.
        let half = cap / 2;
        half + Duration::from_millis(rand::rng().random_range(0..=half.as_millis() as u64))
    }

    pub async fn wait(&mut self) {
        tokio::time::sleep(self.next_delay()).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prefix_ends() {
        assert_eq!(prefix_end(b"/a/"), b"/a0".to_vec());
        assert_eq!(prefix_end(b"a\xff"), b"b".to_vec());
    }

    #[test]
    fn backoff_grows_and_caps() {
        let mut b = Backoff::default();
        let first = b.next_delay();
        assert!(first >= Duration::from_millis(50) && first <= Duration::from_millis(100));
        for _ in 0..20 {
            let d = b.next_delay();
            assert!(d <= Duration::from_secs(5));
        }
        assert!(b.next_delay() >= Duration::from_millis(2500));
        b.reset();
        assert!(b.next_delay() <= Duration::from_millis(100));
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
