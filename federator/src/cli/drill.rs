//! `causeway drill`: drain a service in one cluster for a while and measure how the mesh moves
//! (DESIGN.md "Drills").
//!
//! The drill writes `drills/<id>` under a lease of its own whose TTL is the drill's length, so
//! the drain ends by itself even if this process dies. While the key lives every federator
//! treats `(service, cluster)` as drained: DNS stops answering that cluster's local address and
//! gateways stop routing to it. Meanwhile a client calls the service the way an application in
//! the client's cluster would: ask the cluster's DNS, connect to the answer. The report says
//! when DNS and traffic moved away, how many requests failed, and when both came back after the
//! lease ended (or Ctrl-C revoked it).
//!
//! With `--lab <state-dir>/lab.json` (a running `causeway-lab`) the etcd endpoints, the
//! client's DNS server, its gateway and its network namespace come from the lab; the drill
//! re-runs itself inside that namespace.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::PathBuf;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::{anyhow, bail, Context as _};
use causeway_api::keys::drill_key;
use causeway_api::model::{ClusterId, DrillRecord, ServiceKey, SCHEMA_VERSION};
use causeway_api::net::Cidr;
use etcd_client::{Client, PutOptions};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpStream, UdpSocket};
use tokio::time::{timeout, Instant};

use crate::config::parse_duration;

/// Response header of the lab's demo services naming the cluster that answered.
pub(crate) const CLUSTER_HEADER: &str = "x-causeway-cluster";
/// Set when the drill re-ran itself inside the client's network namespace.
const IN_NETNS_ENV: &str = "CAUSEWAY_DRILL_IN_NETNS";
/// How long the client calls the service before the drill starts.
const BASELINE: Duration = Duration::from_secs(1);
/// Bound of one DNS query and of one request.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(1);
/// etcd leases have whole seconds and etcd refuses very short ones.
const MIN_DRILL: Duration = Duration::from_secs(2);

#[derive(Debug, Clone, clap::Args)]
pub struct DrillArgs {
    /// The service to drain, `<namespace>/<name>`.
    #[arg(long, value_name = "NS/NAME")]
    pub service: ServiceKey,
    /// The cluster to drain it in.
    #[arg(long)]
    pub cluster: ClusterId,
    /// How long the drain lasts (the TTL of its lease, whole seconds, at least 2 s).
    #[arg(long = "for", value_name = "DURATION", value_parser = parse_duration, default_value = "60s")]
    pub duration: Duration,
    /// etcd, as the `operator` user (the lab's, with --lab).
    #[command(flatten)]
    pub etcd: crate::etcd::EtcdArgs,
    /// lab.json of a running causeway-lab: etcd, and the client cluster's DNS, gateway and
    /// network namespace.
    #[arg(long, value_name = "FILE")]
    pub lab: Option<PathBuf>,
    /// The cluster the client calls from (with --lab; default: the drained cluster).
    #[arg(long, value_name = "CLUSTER")]
    pub from: Option<String>,
    /// The client cluster's DNS server, `ip:port` (the lab's, with --lab).
    #[arg(long, value_name = "ADDR")]
    pub dns: Option<SocketAddr>,
    /// The service port to call (default: the lab demo's, else 80).
    #[arg(long)]
    pub port: Option<u16>,
    /// The path to GET.
    #[arg(long, default_value = "/")]
    pub path: String,
    /// Send the requests through this HTTP proxy (a gateway's egress port) instead of
    /// connecting to the DNS answer.
    #[arg(long, value_name = "ADDR")]
    pub proxy: Option<SocketAddr>,
    /// The client cluster's gateway admin address, whose request counters the report shows
    /// (the lab's, with --lab).
    #[arg(long, value_name = "ADDR")]
    pub gateway_admin: Option<SocketAddr>,
    /// The ClusterSetIP range, e.g. 10.255.0.0/16 (the lab's, with --lab). With it the drill
    /// knows whether the client's DNS answer before the drill was the cluster's own address,
    /// which must move, or already the ClusterSetIP.
    #[arg(long, value_name = "CIDR")]
    pub vip_range: Option<String>,
    /// Pause between requests.
    #[arg(long, value_parser = parse_duration, default_value = "50ms")]
    pub interval: Duration,
    /// How long to wait for DNS and traffic to come back after the drain ends.
    #[arg(long, value_parser = parse_duration, default_value = "30s")]
    pub failback_timeout: Duration,
    /// Only drain, with no client and no measurements.
    #[arg(long)]
    pub no_client: bool,
    /// Print the report as JSON.
    #[arg(long)]
    pub json: bool,
}

/// Runs a drill. Returns the report's text; fails when failover or failback did not happen
/// (after printing the report).
pub(crate) async fn run(args: DrillArgs) -> anyhow::Result<String> {
    let target = Target::resolve(&args)?;
    if let Some(ns) = &target.netns {
        if std::env::var_os(IN_NETNS_ENV).is_none() && !in_netns(ns) {
            return rerun_in_netns(ns);
        }
    }
    anyhow::ensure!(
        args.duration >= MIN_DRILL,
        "--for must be at least {MIN_DRILL:?}"
    );
    let ttl = args.duration.as_secs_f64().ceil() as i64;

    let mut etcd = crate::etcd::connect(&target.etcd).await?;

    let client = if args.no_client {
        None
    } else {
        Some(Caller::start(&args, &target))
    };
    if let Some(c) = &client {
        c.wait_until(BASELINE).await;
        let base = c.samples();
        anyhow::ensure!(
            base.iter().any(|s| s.ok()),
            "the service does not answer before the drill: {}",
            base.last()
                .and_then(|s| s.error.clone())
                .unwrap_or_else(|| "no request made".to_string())
        );
    }
    let metrics_before = match args.gateway_admin.or(target.gateway_admin) {
        Some(a) => gateway_counters(a, &args.service).await.ok(),
        None => None,
    };

    // === the drill ===
    let now_ms = unix_ms();
    let id = drill_id(&args.service, &args.cluster, now_ms);
    let record = DrillRecord {
        schema: SCHEMA_VERSION,
        service: args.service.clone(),
        cluster: args.cluster.clone(),
        start_unix_ms: now_ms,
        end_unix_ms: now_ms + ttl * 1000,
    };
    let lease = etcd
        .lease_grant(ttl, None)
        .await
        .context("granting the drill's lease")?
        .id();
    let key = drill_key(&id);
    etcd.put(
        key.clone(),
        serde_json::to_vec(&record)?,
        Some(PutOptions::new().with_lease(lease)),
    )
    .await
    .with_context(|| format!("writing {key}"))?;
    let start = client.as_ref().map(|c| c.now());
    eprintln!(
        "drill {id}: {} drained in {} for {ttl}s (Ctrl-C ends it early)",
        args.service, args.cluster
    );

    let interrupted = tokio::select! {
        _ = tokio::time::sleep(Duration::from_secs(ttl as u64)) => false,
        _ = tokio::signal::ctrl_c() => true,
    };
    if interrupted {
        etcd.lease_revoke(lease)
            .await
            .context("revoking the drill's lease")?;
        eprintln!("drill {id}: interrupted, lease revoked");
    }
    let end = client.as_ref().map(|c| c.now());
    // The lease ends at etcd's own pace (it checks expiries every half second or so); from
    // the client's point of view the drain ends when the key is gone.
    wait_key_gone(&mut etcd, &key, Duration::from_secs(10)).await;

    let Some(client) = client else {
        return Ok(format!("drill {id}: done (no client)\n"));
    };
    let (start, end) = (start.unwrap_or_default(), end.unwrap_or_default());
    let base = Phase::of(&client.samples(), Duration::ZERO, start);
    let drained = args.cluster.to_string();
    let expect_dns_move = target.dns_must_move(&base);
    let expect_traffic_back = base.clusters.contains_key(&drained);

    // Fail back: DNS answers what it answered before, traffic reaches the drained cluster.
    let back = {
        let deadline = Instant::now() + args.failback_timeout;
        loop {
            let s = client.samples();
            let after = Phase::of(&s, end, Duration::MAX);
            let dns_ok = !expect_dns_move || after.dns_back_after(&s, end, base.dns).is_some();
            let traffic_ok = !expect_traffic_back || after.first_from(&s, end, &drained).is_some();
            if dns_ok && traffic_ok {
                // Take a few more requests after failing back: failures right after count.
                tokio::time::sleep(args.interval * 10).await;
                break true;
            }
            if Instant::now() >= deadline {
                break false;
            }
            tokio::time::sleep(args.interval).await;
        }
    };
    let metrics_after = match args.gateway_admin.or(target.gateway_admin) {
        Some(a) => gateway_counters(a, &args.service).await.ok(),
        None => None,
    };
    let samples = client.stop().await;
    let report = Report::build(
        &args,
        &target,
        &id,
        &samples,
        start,
        end,
        interrupted,
        expect_dns_move,
        expect_traffic_back,
        back,
        metrics_before.zip(metrics_after),
    );
    let text = if args.json {
        serde_json::to_string_pretty(&report.json)? + "\n"
    } else {
        report.text.clone()
    };
    if report.passed {
        Ok(text)
    } else {
        print!("{text}");
        bail!("{}", report.verdict)
    }
}

fn unix_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64)
}

/// `<svc>-<ns>-<cluster>-<ms>`, cut to an RFC 1123 label (63 characters).
fn drill_id(service: &ServiceKey, cluster: &ClusterId, now_ms: i64) -> String {
    let suffix = format!("-{now_ms}");
    let mut head = format!("{}-{}-{cluster}", service.name, service.namespace);
    head.truncate(63 - suffix.len());
    let head = head.trim_end_matches('-');
    format!("{head}{suffix}")
}

async fn wait_key_gone(etcd: &mut Client, key: &str, wait: Duration) {
    let deadline = Instant::now() + wait;
    while Instant::now() < deadline {
        match etcd.get(key, None).await {
            Ok(r) if r.kvs().is_empty() => return,
            _ => tokio::time::sleep(Duration::from_millis(50)).await,
        }
    }
}

// === where to call from ===

/// Everything the client needs, from flags and lab.json.
#[derive(Debug, Clone)]
struct Target {
    etcd: crate::config::EtcdConfig,
    dns: Option<SocketAddr>,
    /// The name to resolve and the Host header.
    name: String,
    port: u16,
    proxy: Option<SocketAddr>,
    gateway_admin: Option<SocketAddr>,
    netns: Option<String>,
    from: String,
    /// ClusterSetIP range of the lab (to tell a local answer from a ClusterSetIP).
    vip_range: Option<Cidr>,
}

impl Target {
    fn resolve(args: &DrillArgs) -> anyhow::Result<Target> {
        let name = format!(
            "{}.{}.svc.clusterset.local",
            args.service.name, args.service.namespace
        );
        let mut t = Target {
            etcd: args.etcd.config(),
            dns: args.dns,
            name,
            port: args.port.unwrap_or(80),
            proxy: args.proxy,
            gateway_admin: args.gateway_admin,
            netns: None,
            from: args
                .from
                .clone()
                .unwrap_or_else(|| args.cluster.to_string()),
            vip_range: None,
        };
        if let Some(range) = &args.vip_range {
            t.vip_range = Some(
                range
                    .parse::<Cidr>()
                    .map_err(anyhow::Error::msg)
                    .with_context(|| format!("--vip-range {range}"))?,
            );
        }
        if let Some(path) = &args.lab {
            let text = std::fs::read_to_string(path)
                .with_context(|| format!("reading {} (is the lab up?)", path.display()))?;
            let lab: serde_json::Value = serde_json::from_str(&text)
                .with_context(|| format!("parsing {}", path.display()))?;
            t.apply_lab(&lab, args)
                .with_context(|| format!("using {}", path.display()))?;
        }
        anyhow::ensure!(
            t.dns.is_some() || t.proxy.is_some() || args.no_client,
            "the client needs --dns (or --proxy, or --lab)"
        );
        Ok(t)
    }

    fn apply_lab(&mut self, lab: &serde_json::Value, args: &DrillArgs) -> anyhow::Result<()> {
        let addr = |v: &serde_json::Value| v.as_str().and_then(|s| s.parse::<SocketAddr>().ok());
        if args.etcd.etcd_endpoints.is_empty() {
            let endpoints: Vec<String> = lab["etcd"]["endpoints"]
                .as_array()
                .map(|a| {
                    a.iter()
                        .filter_map(|e| e.as_str().map(String::from))
                        .collect()
                })
                .unwrap_or_default();
            if !endpoints.is_empty() {
                self.etcd.endpoints = endpoints;
            }
            // The lab's etcd wants the operator's client certificate.
            let path = |v: &serde_json::Value| v.as_str().map(PathBuf::from);
            let tls = &lab["etcd"]["tls"];
            if args.etcd.etcd_ca.is_none() {
                self.etcd.ca_file = path(&tls["ca"]);
            }
            if args.etcd.etcd_cert.is_none() {
                self.etcd.cert_file = path(&tls["operator_cert"]);
                self.etcd.key_file = path(&tls["operator_key"]);
            }
        }
        let clusters = lab["clusters"].as_array().context("no clusters")?;
        let from = clusters
            .iter()
            .find(|c| c["name"].as_str() == Some(self.from.as_str()))
            .ok_or_else(|| anyhow!("the lab has no cluster {:?}", self.from))?;
        self.netns = from["netns"].as_str().map(String::from);
        if self.dns.is_none() {
            self.dns = addr(&from["dns"]);
        }
        if self.gateway_admin.is_none() {
            self.gateway_admin = addr(&from["gateway"]["admin"]);
        }
        let loopback = lab["mode"].as_str() == Some("loopback");
        if loopback && self.proxy.is_none() {
            // No ClusterSetIPs without namespaces: go through the gateway's egress.
            self.proxy = addr(&from["gateway"]["egress"]);
        }
        if args.port.is_none() {
            let port = clusters
                .iter()
                .flat_map(|c| c["demo"].as_array().cloned().unwrap_or_default())
                .find(|d| {
                    d["name"].as_str() == Some(args.service.name.as_str())
                        && d["namespace"].as_str() == Some(args.service.namespace.as_str())
                })
                .and_then(|d| d["port"].as_u64())
                .and_then(|p| u16::try_from(p).ok());
            if let Some(p) = port {
                self.port = p;
            }
        }
        if self.vip_range.is_none() {
            self.vip_range = lab["vip_range"].as_str().and_then(|r| r.parse().ok());
        }
        Ok(())
    }

    fn is_vip(&self, ip: IpAddr) -> bool {
        self.vip_range.is_some_and(|r| r.contains(ip))
    }

    /// Whether DNS must move: the answer before the drill was the client cluster's own
    /// address of the service (local-first), not the ClusterSetIP. Unknown without the range.
    fn dns_must_move(&self, base: &Phase) -> bool {
        match base.dns {
            Some(ip) => self.vip_range.is_some() && !self.is_vip(ip),
            None => false,
        }
    }

    fn authority(&self) -> String {
        if self.port == 80 {
            self.name.clone()
        } else {
            format!("{}:{}", self.name, self.port)
        }
    }
}

/// Whether this process already runs in the network namespace `ns` (`ip netns` name).
fn in_netns(ns: &str) -> bool {
    use std::os::unix::fs::MetadataExt as _;
    let mine = std::fs::metadata("/proc/self/ns/net");
    let theirs = std::fs::metadata(format!("/run/netns/{ns}"));
    match (mine, theirs) {
        (Ok(a), Ok(b)) => a.dev() == b.dev() && a.ino() == b.ino(),
        _ => false,
    }
}

/// Runs this very command again inside `ns` (`ip netns exec`), so that the client asks the
/// cluster's DNS and connects from the cluster, as an application there would.
fn rerun_in_netns(ns: &str) -> anyhow::Result<String> {
    let exe = std::env::current_exe().context("locating the causeway binary")?;
    let status = std::process::Command::new("ip")
        .args(["netns", "exec", ns])
        .arg(exe)
        .args(std::env::args_os().skip(1))
        .env(IN_NETNS_ENV, ns)
        .status()
        .with_context(|| {
            format!("running the drill inside network namespace {ns} (ip netns exec; needs root)")
        })?;
    if status.success() {
        Ok(String::new())
    } else {
        bail!("the drill in {ns} failed ({status})")
    }
}

// === the client ===

/// One request of the drill's client.
#[derive(Debug, Clone)]
struct Sample {
    at: Duration,
    dns: Option<IpAddr>,
    status: Option<u16>,
    cluster: Option<String>,
    error: Option<String>,
}

impl Sample {
    fn ok(&self) -> bool {
        self.status.is_some_and(|s| (200..300).contains(&s))
    }
}

/// The client task: resolves and calls the service every interval until stopped.
struct Caller {
    started: Instant,
    samples: std::sync::Arc<std::sync::Mutex<Vec<Sample>>>,
    stop: tokio::sync::watch::Sender<bool>,
    task: tokio::task::JoinHandle<()>,
}

impl Caller {
    fn start(args: &DrillArgs, target: &Target) -> Caller {
        let started = Instant::now();
        let samples = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let (stop, mut stopped) = tokio::sync::watch::channel(false);
        let (t, s, interval, path) = (
            target.clone(),
            samples.clone(),
            args.interval,
            args.path.clone(),
        );
        let task = tokio::spawn(async move {
            loop {
                let begun = Instant::now();
                let sample = call_once(&t, &path, begun - started).await;
                s.lock().unwrap_or_else(|e| e.into_inner()).push(sample);
                tokio::select! {
                    _ = tokio::time::sleep_until(begun + interval) => {}
                    _ = stopped.changed() => return,
                }
            }
        });
        Caller {
            started,
            samples,
            stop,
            task,
        }
    }

    fn now(&self) -> Duration {
        self.started.elapsed()
    }

    async fn wait_until(&self, at: Duration) {
        tokio::time::sleep_until(self.started + at).await;
    }

    fn samples(&self) -> Vec<Sample> {
        self.samples
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    async fn stop(self) -> Vec<Sample> {
        let _ = self.stop.send(true);
        let _ = self.task.await;
        let samples = self.samples.lock().unwrap_or_else(|e| e.into_inner());
        samples.clone()
    }
}

async fn call_once(t: &Target, path: &str, at: Duration) -> Sample {
    let mut s = Sample {
        at,
        dns: None,
        status: None,
        cluster: None,
        error: None,
    };
    if let Some(server) = t.dns {
        match dns_a(server, &t.name).await {
            Ok(ip) => s.dns = Some(ip),
            Err(e) => {
                s.error = Some(format!("DNS: {e:#}"));
                if t.proxy.is_none() {
                    return s;
                }
            }
        }
    }
    let (connect, absolute) = match (t.proxy, s.dns) {
        (Some(proxy), _) => (proxy, true),
        (None, Some(ip)) => (SocketAddr::new(ip, t.port), false),
        (None, None) => return s,
    };
    match http_get(connect, &t.authority(), path, absolute).await {
        Ok((status, cluster)) => {
            s.status = Some(status);
            s.cluster = cluster;
            if !(200..300).contains(&status) {
                s.error = Some(format!("HTTP {status}"));
            }
        }
        Err(e) => s.error = Some(format!("{e:#}")),
    }
    s
}

/// One A query over UDP; returns the first address.
async fn dns_a(server: SocketAddr, name: &str) -> anyhow::Result<IpAddr> {
    let id: u16 = rand::random();
    let mut q = Vec::with_capacity(64);
    q.extend_from_slice(&id.to_be_bytes());
    q.extend_from_slice(&[0x01, 0x00, 0, 1, 0, 0, 0, 0, 0, 0]); // RD; one question
    for label in name.trim_end_matches('.').split('.') {
        anyhow::ensure!(!label.is_empty() && label.len() < 64, "bad name {name:?}");
        q.push(label.len() as u8);
        q.extend_from_slice(label.as_bytes());
    }
    q.extend_from_slice(&[0, 0, 1, 0, 1]); // root, type A, class IN
    let local: SocketAddr = if server.is_ipv4() {
        (Ipv4Addr::UNSPECIFIED, 0).into()
    } else {
        (std::net::Ipv6Addr::UNSPECIFIED, 0).into()
    };
    let sock = UdpSocket::bind(local).await?;
    sock.connect(server).await?;
    sock.send(&q).await?;
    let mut buf = [0u8; 1500];
    let n = timeout(REQUEST_TIMEOUT, async {
        loop {
            let n = sock.recv(&mut buf).await?;
            if n >= 12 && buf[..2] == id.to_be_bytes() {
                return Ok::<_, std::io::Error>(n);
            }
        }
    })
    .await
    .map_err(|_| anyhow!("no answer from {server}"))??;
    parse_a(&buf[..n]).with_context(|| format!("answer of {server} for {name}"))
}

/// The first A record of a DNS response.
fn parse_a(m: &[u8]) -> anyhow::Result<IpAddr> {
    let rcode = m.get(3).context("short message")? & 0x0f;
    anyhow::ensure!(rcode == 0, "rcode {rcode}");
    let qd = u16::from_be_bytes([m[4], m[5]]) as usize;
    let an = u16::from_be_bytes([m[6], m[7]]) as usize;
    let mut i = 12;
    let skip_name = |mut i: usize| -> anyhow::Result<usize> {
        loop {
            let len = *m.get(i).context("truncated name")? as usize;
            if len == 0 {
                return Ok(i + 1);
            }
            if len & 0xc0 == 0xc0 {
                return Ok(i + 2);
            }
            i += 1 + len;
        }
    };
    for _ in 0..qd {
        i = skip_name(i)? + 4;
    }
    for _ in 0..an {
        i = skip_name(i)?;
        let h = m.get(i..i + 10).context("truncated record")?;
        let (rtype, rdlen) = (
            u16::from_be_bytes([h[0], h[1]]),
            u16::from_be_bytes([h[8], h[9]]) as usize,
        );
        i += 10;
        let data = m.get(i..i + rdlen).context("truncated record data")?;
        if rtype == 1 && rdlen == 4 {
            return Ok(IpAddr::V4(Ipv4Addr::new(
                data[0], data[1], data[2], data[3],
            )));
        }
        i += rdlen;
    }
    bail!("no A record (NODATA)")
}

/// One HTTP/1.1 GET on a new connection; returns the status and the cluster header. With
/// `absolute`, the request line carries the full URL (an HTTP proxy request).
async fn http_get(
    addr: SocketAddr,
    authority: &str,
    path: &str,
    absolute: bool,
) -> anyhow::Result<(u16, Option<String>)> {
    let (status, headers, _) = timeout(REQUEST_TIMEOUT, async {
        let mut stream = TcpStream::connect(addr)
            .await
            .with_context(|| format!("connecting to {addr}"))?;
        let target = if absolute {
            format!("http://{authority}{path}")
        } else {
            path.to_string()
        };
        let req = format!(
            "GET {target} HTTP/1.1\r\nHost: {authority}\r\nUser-Agent: causeway-drill\r\nConnection: close\r\n\r\n"
        );
        stream.write_all(req.as_bytes()).await?;
        read_response(&mut stream).await
    })
    .await
    .map_err(|_| anyhow!("no answer from {addr} within {REQUEST_TIMEOUT:?}"))??;
    Ok((status, headers.get(CLUSTER_HEADER).cloned()))
}

/// Reads a `Connection: close` response: status, headers (lower-case names), body.
async fn read_response(
    stream: &mut TcpStream,
) -> anyhow::Result<(u16, BTreeMap<String, String>, Vec<u8>)> {
    let mut raw = Vec::new();
    stream
        .read_to_end(&mut raw)
        .await
        .context("reading the response")?;
    let end = raw
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .context("no end of headers in the response")?;
    let head = String::from_utf8_lossy(&raw[..end]);
    let mut lines = head.split("\r\n");
    let status_line = lines.next().unwrap_or_default();
    let status: u16 = status_line
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .with_context(|| format!("bad status line {status_line:?}"))?;
    let headers = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_string()))
        .collect();
    Ok((status, headers, raw[end + 4..].to_vec()))
}

/// Request counts by (direction, destination cluster, code).
type Counters = BTreeMap<(String, String, String), f64>;

/// `causeway_gateway_requests_total` of one service by (direction, destination cluster, code).
async fn gateway_counters(admin: SocketAddr, service: &ServiceKey) -> anyhow::Result<Counters> {
    let (status, body) = timeout(REQUEST_TIMEOUT, async {
        let mut stream = TcpStream::connect(admin).await?;
        let req = format!("GET /metrics HTTP/1.1\r\nHost: {admin}\r\nConnection: close\r\n\r\n");
        stream.write_all(req.as_bytes()).await?;
        let (status, _, body) = read_response(&mut stream).await?;
        Ok::<_, anyhow::Error>((status, body))
    })
    .await
    .map_err(|_| anyhow!("no answer from {admin}"))??;
    anyhow::ensure!(status == 200, "{admin}/metrics answered {status}");
    let wanted = service.to_string();
    let mut out = BTreeMap::new();
    let text = String::from_utf8_lossy(&body);
    for s in causeway_api::prom::samples(&text)
        .filter(|s| s.name == "causeway_gateway_requests_total")
        .filter(|s| s.has(&[("service", &wanted)]))
    {
        let label = |k| s.label(k).unwrap_or_default().to_string();
        let key = (
            label("direction"),
            label("destination_cluster"),
            label("code"),
        );
        *out.entry(key).or_insert(0.0) += s.value;
    }
    Ok(out)
}

// === the report ===

/// The samples of one phase, summarised.
#[derive(Debug, Default)]
struct Phase {
    total: usize,
    failed: usize,
    /// The last DNS answer of the phase.
    dns: Option<IpAddr>,
    /// Successful answers by cluster.
    clusters: BTreeMap<String, usize>,
}

impl Phase {
    fn of(samples: &[Sample], from: Duration, to: Duration) -> Phase {
        let mut p = Phase::default();
        for s in samples.iter().filter(|s| s.at >= from && s.at < to) {
            p.total += 1;
            if !s.ok() {
                p.failed += 1;
            }
            if s.dns.is_some() {
                p.dns = s.dns;
            }
            if let (true, Some(c)) = (s.ok(), &s.cluster) {
                *p.clusters.entry(c.clone()).or_insert(0) += 1;
            }
        }
        p
    }

    /// Time after `from` of the first request answered by `cluster`.
    fn first_from(&self, samples: &[Sample], from: Duration, cluster: &str) -> Option<Duration> {
        samples
            .iter()
            .find(|s| s.at >= from && s.ok() && s.cluster.as_deref() == Some(cluster))
            .map(|s| s.at - from)
    }

    /// Time after `from` from which every DNS answer was `answer` again.
    fn dns_back_after(
        &self,
        samples: &[Sample],
        from: Duration,
        answer: Option<IpAddr>,
    ) -> Option<Duration> {
        settled(samples, from, Duration::MAX, |s| s.dns == answer)
    }
}

/// How long after `from` the samples in `[from, to)` settled on `pred`: the start of the first
/// sample from which all until `to` satisfy it. None when the last one does not.
fn settled(
    samples: &[Sample],
    from: Duration,
    to: Duration,
    pred: impl Fn(&Sample) -> bool,
) -> Option<Duration> {
    let window: Vec<&Sample> = samples
        .iter()
        .filter(|s| s.at >= from && s.at < to)
        .collect();
    let first_good = match window.iter().rposition(|s| !pred(s)) {
        None => 0,
        Some(i) => i + 1,
    };
    window.get(first_good).map(|s| s.at - from)
}

struct Report {
    text: String,
    json: serde_json::Value,
    passed: bool,
    verdict: String,
}

fn secs(d: Option<Duration>) -> String {
    match d {
        Some(d) => format!("{:.3} s", d.as_secs_f64()),
        None => "never".to_string(),
    }
}

impl Report {
    #[allow(clippy::too_many_arguments)]
    fn build(
        args: &DrillArgs,
        target: &Target,
        id: &str,
        samples: &[Sample],
        start: Duration,
        end: Duration,
        interrupted: bool,
        expect_dns_move: bool,
        expect_traffic_back: bool,
        came_back: bool,
        counters: Option<(Counters, Counters)>,
    ) -> Report {
        let drained = args.cluster.to_string();
        let base = Phase::of(samples, Duration::ZERO, start);
        let during = Phase::of(samples, start, end);
        let after = Phase::of(samples, end, Duration::MAX);

        let dns_moved = expect_dns_move
            .then(|| {
                settled(samples, start, end, |s| {
                    s.dns.is_some() && s.dns != base.dns
                })
            })
            .flatten();
        let traffic_moved = settled(samples, start, end, |s| {
            s.ok() && s.cluster.as_deref() != Some(drained.as_str())
        });
        let dns_back = expect_dns_move
            .then(|| after.dns_back_after(samples, end, base.dns))
            .flatten();
        let traffic_back = after.first_from(samples, end, &drained);

        let failover_ok = traffic_moved.is_some() && (!expect_dns_move || dns_moved.is_some());
        let failback_ok = came_back
            && (!expect_dns_move || dns_back.is_some())
            && (!expect_traffic_back || traffic_back.is_some());
        let passed = failover_ok && failback_ok;
        let verdict = match (failover_ok, failback_ok) {
            (true, true) => "PASS: traffic moved away and came back".to_string(),
            (false, _) => format!("FAIL: traffic did not move away from {drained}"),
            (true, false) => format!("FAIL: traffic did not come back to {drained}"),
        };

        let clusters = |p: &Phase| {
            if p.clusters.is_empty() {
                "nobody".to_string()
            } else {
                p.clusters
                    .iter()
                    .map(|(c, n)| format!("{c} ({n})"))
                    .collect::<Vec<_>>()
                    .join(", ")
            }
        };
        let ip = |ip: Option<IpAddr>| ip.map_or("-".to_string(), |i| i.to_string());
        let mut t = String::new();
        let _ = writeln!(
            t,
            "drill {id}: drain {} in {} for {}s, client in {} calling {}",
            args.service,
            drained,
            args.duration.as_secs_f64().ceil(),
            target.from,
            target.authority()
        );
        let _ = writeln!(
            t,
            "  before:   DNS -> {}, answered by {}; {} of {} failed",
            ip(base.dns),
            clusters(&base),
            base.failed,
            base.total
        );
        let _ = writeln!(t, "  failover:");
        if expect_dns_move {
            let _ = writeln!(
                t,
                "    DNS moved after        {} (-> {})",
                secs(dns_moved),
                ip(during.dns)
            );
        } else {
            let _ = writeln!(
                t,
                "    DNS moved after        n/a (the answer was already the ClusterSetIP)"
            );
        }
        let _ = writeln!(
            t,
            "    traffic moved after    {} (answered by {})",
            secs(traffic_moved),
            clusters(&during)
        );
        let _ = writeln!(
            t,
            "    failed requests        {} of {}",
            during.failed, during.total
        );
        let _ = writeln!(
            t,
            "  fail back (the drain {} after {:.1} s):",
            if interrupted {
                "was revoked"
            } else {
                "lease ended"
            },
            (end - start).as_secs_f64()
        );
        if expect_dns_move {
            let _ = writeln!(
                t,
                "    DNS back after         {} (-> {})",
                secs(dns_back),
                ip(after.dns)
            );
        }
        if expect_traffic_back {
            let _ = writeln!(t, "    traffic back after     {}", secs(traffic_back));
        }
        let _ = writeln!(
            t,
            "    failed requests        {} of {} (answered by {})",
            after.failed,
            after.total,
            clusters(&after)
        );
        let mut gateway = serde_json::Map::new();
        if let Some((before, after)) = &counters {
            let mut lines = Vec::new();
            for (k, v) in after {
                let delta = v - before.get(k).copied().unwrap_or(0.0);
                if delta > 0.0 {
                    lines.push(format!("{} -> {} {}: {delta}", k.0, k.1, k.2));
                    gateway.insert(format!("{}/{}/{}", k.0, k.1, k.2), delta.into());
                }
            }
            let _ = writeln!(
                t,
                "  {}'s gateway, {} during the drill: {}",
                target.from,
                args.service,
                if lines.is_empty() {
                    "no requests".to_string()
                } else {
                    lines.join("; ")
                }
            );
        }
        let _ = writeln!(t, "  result:   {verdict}");

        let ms = |d: Option<Duration>| d.map(|d| d.as_millis() as u64);
        let json = serde_json::json!({
            "id": id,
            "service": args.service.to_string(),
            "cluster": drained,
            "from": target.from,
            "duration_s": args.duration.as_secs_f64().ceil(),
            "interrupted": interrupted,
            "baseline": {"dns": base.dns, "clusters": base.clusters, "requests": base.total, "failed": base.failed},
            "failover": {
                "dns_expected_to_move": expect_dns_move,
                "dns_moved_ms": ms(dns_moved),
                "traffic_moved_ms": ms(traffic_moved),
                "requests": during.total,
                "failed": during.failed,
                "clusters": during.clusters,
            },
            "failback": {
                "dns_back_ms": ms(dns_back),
                "traffic_back_ms": ms(traffic_back),
                "requests": after.total,
                "failed": after.failed,
                "clusters": after.clusters,
            },
            "gateway_requests": gateway,
            "passed": passed,
            "verdict": verdict,
        });
        Report {
            text: t,
            json,
            passed,
            verdict,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn s(ms: u64, dns: [u8; 4], cluster: &str) -> Sample {
        Sample {
            at: Duration::from_millis(ms),
            dns: Some(IpAddr::from(dns)),
            status: Some(200),
            cluster: Some(cluster.into()),
            error: None,
        }
    }

    #[test]
    fn drill_ids_are_labels() {
        let svc: ServiceKey = "demo/echo".parse().unwrap();
        let c = ClusterId::new("east").unwrap();
        assert_eq!(drill_id(&svc, &c, 17), "echo-demo-east-17");
        let long: ServiceKey = format!("{}/{}", "n".repeat(60), "s".repeat(60))
            .parse()
            .unwrap();
        let id = drill_id(&long, &c, 1_732_000_000_000);
        assert!(id.len() <= 63, "{id}");
        causeway_api::keys::Key::parse(&drill_key(&id)).unwrap();
    }

    #[test]
    fn parses_a_records_with_compression() {
        // Header (id 1, response, 1 question, 1 answer), question, answer with a pointer.
        let mut m = vec![0, 1, 0x81, 0x80, 0, 1, 0, 1, 0, 0, 0, 0];
        m.extend_from_slice(&[4, b'e', b'c', b'h', b'o', 0, 0, 1, 0, 1]);
        m.extend_from_slice(&[0xc0, 12, 0, 1, 0, 1, 0, 0, 0, 5, 0, 4, 10, 255, 0, 7]);
        assert_eq!(parse_a(&m).unwrap(), IpAddr::from([10, 255, 0, 7]));
        let mut nx = m.clone();
        nx[3] = 0x83;
        assert!(parse_a(&nx).unwrap_err().to_string().contains("rcode 3"));
    }

    #[test]
    fn report_measures_failover_and_failback() {
        let local = [10, 96, 1, 10];
        let vip = [10, 255, 0, 7];
        let samples = vec![
            s(0, local, "east"),
            s(500, local, "east"),
            // drill starts at 1000
            s(1000, local, "east"),
            s(1100, vip, "west"),
            s(1200, vip, "west"),
            // drill ends at 2000
            s(2000, vip, "west"),
            s(2100, local, "east"),
            s(2200, local, "east"),
        ];
        let args = DrillArgs {
            service: "demo/echo".parse().unwrap(),
            cluster: ClusterId::new("east").unwrap(),
            duration: Duration::from_secs(1),
            etcd: Default::default(),
            lab: None,
            from: None,
            dns: None,
            port: None,
            path: "/".into(),
            proxy: None,
            gateway_admin: None,
            vip_range: None,
            interval: Duration::from_millis(100),
            failback_timeout: Duration::from_secs(1),
            no_client: false,
            json: false,
        };
        let target = Target {
            etcd: Default::default(),
            dns: None,
            name: "echo.demo.svc.clusterset.local".into(),
            port: 80,
            proxy: None,
            gateway_admin: None,
            netns: None,
            from: "east".into(),
            vip_range: Some("10.255.0.0/16".parse().unwrap()),
        };
        let r = Report::build(
            &args,
            &target,
            "x",
            &samples,
            Duration::from_millis(1000),
            Duration::from_millis(2000),
            false,
            true,
            true,
            true,
            None,
        );
        assert!(r.passed, "{}", r.text);
        assert_eq!(r.json["failover"]["dns_moved_ms"], 100);
        assert_eq!(r.json["failover"]["traffic_moved_ms"], 100);
        assert_eq!(r.json["failback"]["dns_back_ms"], 100);
        assert_eq!(r.json["failback"]["traffic_back_ms"], 100);
        assert_eq!(r.json["failover"]["failed"], 0);
    }
}
