//! File source (universal mode): a directory of YAML export files, rescanned for changes.
//!
//! One export per file; the format follows ServiceExport plus the Service's ports, type and
//! endpoints (see `docs/export-files.md`). A file that fails to parse or validate is reported
//! (log, metric, `causeway status`) with its path and the reason; the other files keep flowing.

use std::collections::{BTreeMap, HashMap};
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use causeway_api::snapshot::InvalidExport;
use causeway_api::{
    BackendTlsMode, ClusterId, Endpoint, ExportRecord, Protocol, ServiceKey, ServicePort,
    ServiceType, SessionAffinity,
};
use serde::Deserialize;
use tokio::sync::watch;

use super::{LocalExport, LocalExports};

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct ExportFile {
    #[serde(default)]
    api_version: Option<String>,
    #[serde(default)]
    kind: Option<String>,
    metadata: Metadata,
    #[serde(default)]
    spec: Spec,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct Metadata {
    name: String,
    namespace: String,
    /// RFC 3339; defaults to the file's creation (or modification) time.
    #[serde(default)]
    creation_timestamp: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct Spec {
    #[serde(default, rename = "type")]
    service_type: Option<String>,
    #[serde(default)]
    session_affinity: Option<String>,
    #[serde(default, rename = "serviceIP")]
    service_ip: Option<IpAddr>,
    #[serde(default)]
    ports: Vec<PortSpec>,
    #[serde(default)]
    endpoints: Vec<EndpointSpec>,
    #[serde(default, rename = "backendTLS")]
    backend_tls: Option<String>,
    #[serde(default)]
    allowed_source_clusters: Vec<String>,
    #[serde(default)]
    allowed_identities: Vec<String>,
    #[serde(default)]
    weight: Option<u32>,
    #[serde(default)]
    traffic_policy: Option<PolicySpec>,
}

/// `spec.trafficPolicy`: what callers' gateways apply (docs/export-files.md).
#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct PolicySpec {
    #[serde(default)]
    timeout: Option<String>,
    #[serde(default)]
    retries: Option<u32>,
    #[serde(default)]
    max_concurrent: Option<u32>,
    #[serde(default)]
    max_pending: Option<u32>,
    #[serde(default)]
    outlier_consecutive_errors: Option<u32>,
    #[serde(default)]
    outlier_base_ejection: Option<String>,
    #[serde(default)]
    rate_limit: Option<RateLimitSpec>,
    #[serde(default)]
    failover: Vec<String>,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct RateLimitSpec {
    requests_per_second: u32,
    #[serde(default)]
    burst: Option<u32>,
}

impl PolicySpec {
    fn parse(self) -> Result<causeway_api::TrafficPolicy, String> {
        use crate::policy::PolicyField as F;
        crate::policy::PolicyValues {
            timeout: self.timeout.as_deref(),
            retries: self.retries,
            max_concurrent: self.max_concurrent,
            max_pending: self.max_pending,
            outlier_consecutive_errors: self.outlier_consecutive_errors,
            outlier_base_ejection: self.outlier_base_ejection.as_deref(),
            failover: &self.failover,
            rate_limit: self
                .rate_limit
                .as_ref()
                .map(|r| (r.requests_per_second, r.burst)),
        }
        .parse(|f| {
            let field = match f {
                F::Timeout => "timeout",
                F::Retries => "retries",
                F::MaxConcurrent => "maxConcurrent",
                F::MaxPending => "maxPending",
                F::OutlierConsecutiveErrors => "outlierConsecutiveErrors",
                F::OutlierBaseEjection => "outlierBaseEjection",
                F::Failover => "failover",
                F::RateLimitRps => "rateLimit.requestsPerSecond",
                F::RateLimitBurst => "rateLimit.burst",
            };
            format!("spec.trafficPolicy.{field}")
        })
    }
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct PortSpec {
    #[serde(default)]
    name: Option<String>,
    #[serde(default)]
    protocol: Option<String>,
    port: u32,
    #[serde(default)]
    app_protocol: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct EndpointSpec {
    address: IpAddr,
    #[serde(default)]
    port: Option<u32>,
    #[serde(default = "yes")]
    ready: bool,
    #[serde(default)]
    hostname: Option<String>,
}

fn yes() -> bool {
    true
}

/// Parses and validates one export file's text. `default_created_ms` is used when the file has no
/// `metadata.creationTimestamp`.
pub(crate) fn parse_export(
    text: &str,
    default_created_ms: i64,
) -> Result<(ServiceKey, LocalExport), String> {
    let file: ExportFile = serde_saphyr::from_str(text).map_err(|e| e.to_string())?;
    if let Some(kind) = &file.kind {
        if kind != "ServiceExport" {
            return Err(format!("kind must be ServiceExport, not {kind:?}"));
        }
    }
    if let Some(v) = &file.api_version {
        if !v.starts_with("causeway.io/") && !v.starts_with("multicluster.x-k8s.io/") {
            return Err(format!(
                "apiVersion {v:?} is not causeway.io/v1 or multicluster.x-k8s.io/v1alpha1"
            ));
        }
    }
    let key = ServiceKey::new(&file.metadata.namespace, &file.metadata.name)
        .map_err(|e| e.to_string())?;
    let created_unix_ms = match &file.metadata.creation_timestamp {
        Some(ts) => parse_rfc3339_ms(ts)
            .ok_or_else(|| format!("metadata.creationTimestamp {ts:?} is not RFC 3339"))?,
        None => default_created_ms,
    };
    let spec = file.spec;
    let service_type = match spec.service_type.as_deref() {
        None | Some("ClusterSetIP") => ServiceType::ClusterSetIP,
        Some("Headless") => ServiceType::Headless,
        Some("ExternalName") => {
            return Err("spec.type ExternalName cannot be exported (InvalidServiceType)".into())
        }
        Some(t) => return Err(format!("spec.type {t:?} must be ClusterSetIP or Headless")),
    };
    let session_affinity = match spec.session_affinity.as_deref() {
        None | Some("None") => SessionAffinity::None,
        Some("ClientIP") => SessionAffinity::ClientIP,
        Some(s) => {
            return Err(format!(
                "spec.sessionAffinity {s:?} must be None or ClientIP"
            ))
        }
    };
    let backend_tls_mode = match spec.backend_tls.as_deref() {
        None | Some("plaintext") => BackendTlsMode::Plaintext,
        Some("mtls") => BackendTlsMode::Mtls,
        Some(s) => return Err(format!("spec.backendTLS {s:?} must be plaintext or mtls")),
    };
    if spec.ports.is_empty() {
        return Err("spec.ports must list at least one port".into());
    }
    let mut ports = Vec::with_capacity(spec.ports.len());
    let mut names = BTreeMap::new();
    for (i, p) in spec.ports.into_iter().enumerate() {
        let port = u16::try_from(p.port)
            .ok()
            .filter(|p| *p != 0)
            .ok_or_else(|| format!("spec.ports[{i}].port {} must be 1..=65535", p.port))?;
        let protocol = match p.protocol.as_deref() {
            None | Some("TCP") => Protocol::Tcp,
            Some("UDP") => Protocol::Udp,
            Some("SCTP") => Protocol::Sctp,
            Some(s) => {
                return Err(format!(
                    "spec.ports[{i}].protocol {s:?} must be TCP, UDP or SCTP"
                ))
            }
        };
        let name = p.name.unwrap_or_default();
        if !name.is_empty() {
            causeway_api::validate_dns_label("port name", &name)
                .map_err(|e| format!("spec.ports[{i}]: {e}"))?;
            if names.insert(name.clone(), i).is_some() {
                return Err(format!("spec.ports[{i}].name {name:?} is used twice"));
            }
        }
        ports.push(ServicePort {
            name,
            protocol,
            port,
            app_protocol: p.app_protocol,
        });
    }
    if ports.len() > 1 && ports.iter().any(|p| p.name.is_empty()) {
        return Err("spec.ports: every port needs a name when there are several".into());
    }
    let mut endpoints = Vec::with_capacity(spec.endpoints.len());
    for (i, e) in spec.endpoints.into_iter().enumerate() {
        let port = match e.port {
            None => None,
            Some(p) => Some(
                u16::try_from(p)
                    .ok()
                    .filter(|p| *p != 0)
                    .ok_or_else(|| format!("spec.endpoints[{i}].port {p} must be 1..=65535"))?,
            ),
        };
        if let Some(h) = &e.hostname {
            causeway_api::validate_dns_label("endpoint hostname", h)
                .map_err(|err| format!("spec.endpoints[{i}]: {err}"))?;
        }
        endpoints.push(Endpoint {
            address: e.address,
            port,
            ready: e.ready,
            hostname: e.hostname,
        });
    }
    let allowed_source_clusters = spec
        .allowed_source_clusters
        .iter()
        .map(|c| ClusterId::new(c.as_str()))
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| format!("spec.allowedSourceClusters: {e}"))?;
    for id in &spec.allowed_identities {
        id.parse::<causeway_api::spiffe::SpiffeId>()
            .map_err(|e| format!("spec.allowedIdentities: {e}"))?;
    }
    let traffic_policy = spec
        .traffic_policy
        .map(PolicySpec::parse)
        .transpose()?
        .unwrap_or_default();
    let ready_endpoints = endpoints.iter().filter(|e| e.ready).count() as u32;
    let record = ExportRecord {
        ports: ports.into(),
        service_type,
        session_affinity,
        created_unix_ms,
        ready_endpoints,
        backend_tls_mode,
        endpoints: super::published_endpoints(service_type, &endpoints),
        allowed_source_clusters,
        allowed_identities: spec.allowed_identities,
        weight: spec.weight,
        service_ip: spec.service_ip,
        traffic_policy: traffic_policy.into(),
        ..ExportRecord::default()
    };
    Ok((
        key,
        LocalExport {
            record,
            endpoints,
            origin: String::new(),
        },
    ))
}

fn parse_rfc3339_ms(ts: &str) -> Option<i64> {
    let t = time::OffsetDateTime::parse(ts, &time::format_description::well_known::Rfc3339).ok()?;
    i64::try_from(t.unix_timestamp_nanos() / 1_000_000).ok()
}

fn unix_ms(t: SystemTime) -> i64 {
    t.duration_since(SystemTime::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

// === impl FileSource ===

type Parsed = Result<(ServiceKey, LocalExport), String>;

#[derive(Debug, Clone, PartialEq, Eq)]
struct Stamp {
    modified: Option<SystemTime>,
    len: u64,
}

/// Scans a directory of export files.
#[derive(Debug)]
pub(crate) struct FileSource {
    dir: PathBuf,
    cache: HashMap<PathBuf, (Stamp, Parsed)>,
    dir_error_logged: bool,
}

impl FileSource {
    pub(crate) fn new(dir: impl Into<PathBuf>) -> Self {
        Self {
            dir: dir.into(),
            cache: HashMap::new(),
            dir_error_logged: false,
        }
    }

    /// Reads what changed since the last scan and returns the complete set.
    pub(crate) fn scan(&mut self) -> LocalExports {
        let mut out = LocalExports {
            loaded: true,
            ..LocalExports::default()
        };
        let entries = match std::fs::read_dir(&self.dir) {
            Ok(e) => {
                self.dir_error_logged = false;
                e
            }
            Err(e) => {
                if !self.dir_error_logged {
                    tracing::warn!(dir = %self.dir.display(), error = %e, "cannot read the exports directory");
                    self.dir_error_logged = true;
                }
                out.invalid.push(InvalidExport {
                    source: self.dir.display().to_string(),
                    reason: format!("cannot read the exports directory: {e}"),
                });
                return out;
            }
        };
        let mut paths: Vec<PathBuf> = entries
            .filter_map(|e| e.ok())
            .map(|e| e.path())
            .filter(|p| is_export_file(p))
            .collect();
        paths.sort();
        self.cache.retain(|p, _| paths.contains(p));
        for path in paths {
            let meta = match std::fs::metadata(&path) {
                Ok(m) => m,
                // Removed between read_dir and now: it is simply gone.
                Err(_) => continue,
            };
            let stamp = Stamp {
                modified: meta.modified().ok(),
                len: meta.len(),
            };
            let fresh = matches!(self.cache.get(&path), Some((s, _)) if *s == stamp);
            if !fresh {
                let created = meta
                    .created()
                    .or_else(|_| meta.modified())
                    .map(unix_ms)
                    .unwrap_or(0);
                let parsed = std::fs::read_to_string(&path)
                    .map_err(|e| format!("cannot read: {e}"))
                    .and_then(|text| parse_export(&text, created))
                    .map(|(k, mut e)| {
                        e.origin = path.display().to_string();
                        (k, e)
                    });
                match &parsed {
                    Ok((key, _)) => {
                        tracing::info!(file = %path.display(), service = %key, "export loaded")
                    }
                    Err(reason) => {
                        tracing::warn!(file = %path.display(), %reason, "invalid export file")
                    }
                }
                self.cache.insert(path.clone(), (stamp, parsed));
            }
            let Some((_, parsed)) = self.cache.get(&path) else {
                continue;
            };
            match parsed {
                Ok((key, export)) => {
                    if let Some(first) = out.exports.get(key) {
                        out.invalid.push(InvalidExport {
                            source: path.display().to_string(),
                            reason: format!("{key} is already exported by {}", first.origin),
                        });
                    } else {
                        out.exports.insert(key.clone(), export.clone());
                    }
                }
                Err(reason) => out.invalid.push(InvalidExport {
                    source: path.display().to_string(),
                    reason: reason.clone(),
                }),
            }
        }
        out
    }

    /// Publishes changes until `tx` has no receivers left. Rescans when the kernel reports a
    /// change in the directory (inotify), and every `interval` anyway: a missed event, a directory
    /// created later or a network file system cannot leave the exports out of date for long.
    pub(crate) async fn run(mut self, interval: Duration, tx: watch::Sender<LocalExports>) {
        let (ev_tx, mut ev_rx) = tokio::sync::mpsc::unbounded_channel::<()>();
        let mut watcher = None;
        let mut tick = tokio::time::interval(interval);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            if watcher.is_none() {
                watcher = self.watch_dir(ev_tx.clone());
            }
            tokio::select! {
                _ = tick.tick() => {}
                Some(()) = ev_rx.recv() => {
                    // Let a burst of events (write, then rename) settle into one scan.
                    tokio::time::sleep(Duration::from_millis(5)).await;
                    while ev_rx.try_recv().is_ok() {}
                }
            }
            let next = self.scan();
            tx.send_if_modified(|cur| {
                if *cur == next {
                    false
                } else {
                    *cur = next;
                    true
                }
            });
            if tx.is_closed() {
                return;
            }
        }
    }

    fn watch_dir(
        &self,
        events: tokio::sync::mpsc::UnboundedSender<()>,
    ) -> Option<notify::RecommendedWatcher> {
        use notify::Watcher;
        let mut w = notify::recommended_watcher(move |res: notify::Result<notify::Event>| {
            if res.is_ok() {
                let _ = events.send(());
            }
        })
        .ok()?;
        match w.watch(&self.dir, notify::RecursiveMode::NonRecursive) {
            Ok(()) => Some(w),
            // The directory may not exist yet: polling covers it until it does.
            Err(_) => None,
        }
    }
}

fn is_export_file(p: &Path) -> bool {
    let name = p.file_name().and_then(|n| n.to_str()).unwrap_or("");
    !name.starts_with('.') && (name.ends_with(".yaml") || name.ends_with(".yml"))
}

#[cfg(test)]
mod tests {
    use super::*;

    const ECHO: &str = r#"
apiVersion: causeway.io/v1
kind: ServiceExport
metadata:
  name: echo
  namespace: demo
  creationTimestamp: "2026-01-01T00:00:00Z"
spec:
  serviceIP: 10.96.0.10
  ports:
    - name: http
      port: 80
      appProtocol: http
  endpoints:
    - address: 10.1.0.5
      port: 8080
    - address: 10.1.0.6
      port: 8080
      ready: false
"#;

    #[test]
    fn parses_an_export() {
        let (key, e) = parse_export(ECHO, 5).unwrap();
        assert_eq!(key.to_string(), "demo/echo");
        assert_eq!(e.record.ready_endpoints, 1);
        assert_eq!(e.record.created_unix_ms, 1_767_225_600_000);
        assert_eq!(e.record.ports[0].port, 80);
        assert_eq!(e.record.service_type, ServiceType::ClusterSetIP);
        assert!(
            e.record.endpoints.is_empty(),
            "ClusterSetIP endpoints stay local"
        );
        assert_eq!(e.endpoints.len(), 2);
    }

    #[test]
    fn parses_a_traffic_policy() {
        let text = ECHO.replace(
            "  serviceIP: 10.96.0.10\n",
            "  serviceIP: 10.96.0.10\n  trafficPolicy:\n    timeout: 2s\n    retries: 1\n    maxPending: 8\n    outlierConsecutiveErrors: 3\n    failover: [north, west]\n    rateLimit: {requestsPerSecond: 10}\n",
        );
        let (_, e) = parse_export(&text, 5).unwrap();
        let p = &e.record.traffic_policy;
        assert_eq!(p.timeout_ms, Some(2000));
        assert_eq!(p.retry_attempts, Some(1));
        assert_eq!(p.max_pending, Some(8));
        assert_eq!(p.outlier_consecutive_errors, Some(3));
        assert_eq!(
            p.failover.iter().map(|c| c.as_str()).collect::<Vec<_>>(),
            ["north", "west"]
        );
        assert_eq!(
            p.rate_limit,
            Some(causeway_api::RateLimit {
                requests_per_second: 10,
                burst: 10
            })
        );
        assert!(parse_export(ECHO, 5)
            .unwrap()
            .1
            .record
            .traffic_policy
            .is_empty());
        let bad = ECHO.replace(
            "  serviceIP: 10.96.0.10\n",
            "  serviceIP: 10.96.0.10\n  trafficPolicy:\n    outlierBaseEjection: forever\n",
        );
        let err = parse_export(&bad, 5).unwrap_err();
        assert!(
            err.contains("spec.trafficPolicy.outlierBaseEjection"),
            "{err}"
        );
        let typo = ECHO.replace(
            "  serviceIP: 10.96.0.10\n",
            "  serviceIP: 10.96.0.10\n  trafficPolicy:\n    timeOut: 2s\n",
        );
        assert!(parse_export(&typo, 5).unwrap_err().contains("timeOut"));
    }

    #[test]
    fn rejects_with_reasons() {
        let cases = [
            (ECHO.replace("name: echo", "name: Echo_1"), "Echo_1"),
            (ECHO.replace("port: 80", "port: 70000"), "70000"),
            (
                ECHO.replace("  serviceIP", "  type: ExternalName\n  serviceIP"),
                "InvalidServiceType",
            ),
            (ECHO.replace("kind: ServiceExport", "kind: Service"), "kind"),
            (
                ECHO.replace("  serviceIP", "  bogus: 1\n  serviceIP"),
                "bogus",
            ),
            ("metadata: [".to_string(), ""),
        ];
        for (text, want) in cases {
            let err = parse_export(&text, 0).unwrap_err();
            assert!(err.contains(want), "{err:?} should mention {want:?}");
        }
    }

    #[test]
    fn one_bad_file_does_not_stop_the_others() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("echo.yaml"), ECHO).unwrap();
        std::fs::write(dir.path().join("bad.yaml"), "metadata: {name: x}\n").unwrap();
        std::fs::write(dir.path().join("dup.yaml"), ECHO).unwrap();
        std::fs::write(dir.path().join("notes.txt"), "ignored").unwrap();
        let mut src = FileSource::new(dir.path());
        let got = src.scan();
        assert_eq!(got.exports.len(), 1);
        assert_eq!(got.invalid.len(), 2, "{:?}", got.invalid);
        assert!(got.invalid.iter().any(|i| i.source.ends_with("bad.yaml")));
        assert!(got
            .invalid
            .iter()
            .any(|i| i.source.ends_with("echo.yaml") && i.reason.contains("dup.yaml")));
        std::fs::remove_file(dir.path().join("dup.yaml")).unwrap();
        std::fs::remove_file(dir.path().join("bad.yaml")).unwrap();
        let got = src.scan();
        assert_eq!(got.exports.len(), 1);
        assert!(got.invalid.is_empty());
    }
}
