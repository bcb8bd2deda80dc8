//! Clients the lab and the tests call services with: a DNS A query, an HTTP GET, a gRPC health
//! check, a TCP echo; and [`Prober`], a client that calls a service over and over (resolving its
//! name every time) and keeps a timeline of what happened, from which failover and failback
//! times and failed requests are read.
//!
//! Every function runs in the network namespace of the thread that calls it: see
//! [`super::net::run_in`].

use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::{anyhow, bail, Context as _};
use bytes::Bytes;
use hickory_proto::op::{Message, Query, ResponseCode};
use hickory_proto::rr::{Name, RData, RecordType};
use http::{Request, StatusCode};
use http_body_util::{BodyExt, Empty, Full};
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::{TcpStream, UdpSocket};
use tokio::time::{timeout, Instant};

use super::demo::{grpc_frame, CLUSTER_HEADER, GRPC_HEALTH_CHECK, HOSTNAME_HEADER};

// === DNS ===

/// Asks `server` for the A records of `name` over UDP, once. NXDOMAIN and NODATA are errors.
pub async fn dns_a(server: SocketAddr, name: &str, wait: Duration) -> anyhow::Result<Vec<IpAddr>> {
    let (code, ips) = dns_query_a(server, name, wait).await?;
    if code != ResponseCode::NoError {
        bail!("{server} answered {code} for {name}");
    }
    if ips.is_empty() {
        bail!("{server} has no A record for {name}");
    }
    Ok(ips)
}

/// One A query to `server`: its response code and the addresses answered (empty for NXDOMAIN
/// and NODATA), for tests that tell those apart.
pub async fn dns_query_a(
    server: SocketAddr,
    name: &str,
    wait: Duration,
) -> anyhow::Result<(ResponseCode, Vec<IpAddr>)> {
    let fqdn = Name::from_ascii(name).with_context(|| format!("{name:?} is not a DNS name"))?;
    let mut query = Message::query();
    query.add_query(Query::query(fqdn, RecordType::A));
    query.metadata.recursion_desired = true;
    let id = query.metadata.id;
    let bytes = query.to_vec().context("encoding the DNS query")?;

    let bind: SocketAddr = if server.is_ipv4() {
        "0.0.0.0:0".parse()?
    } else {
        "[::]:0".parse()?
    };
    let socket = UdpSocket::bind(bind)
        .await
        .context("binding a UDP socket")?;
    socket
        .connect(server)
        .await
        .with_context(|| format!("connecting to {server}"))?;
    socket
        .send(&bytes)
        .await
        .with_context(|| format!("sending to {server}"))?;
    let mut buf = vec![0u8; 4096];
    let answer = timeout(wait, async {
        loop {
            let n = socket.recv(&mut buf).await?;
            match Message::from_vec(&buf[..n]) {
                Ok(m) if m.metadata.id == id => return Ok::<_, std::io::Error>(m),
                _ => continue,
            }
        }
    })
    .await
    .map_err(|_| anyhow!("no DNS answer from {server} within {wait:?}"))?
    .with_context(|| format!("receiving from {server}"))?;
    let ips: Vec<IpAddr> = answer
        .answers
        .iter()
        .filter_map(|r| match &r.data {
            RData::A(a) => Some(IpAddr::V4(a.0)),
            _ => None,
        })
        .collect();
    Ok((answer.metadata.response_code, ips))
}

/// [`dns_a`] against each server in turn, the way a stub resolver walks `resolv.conf`.
pub async fn resolve(
    servers: &[SocketAddr],
    name: &str,
    wait: Duration,
) -> anyhow::Result<Vec<IpAddr>> {
    let mut errors = Vec::new();
    for server in servers {
        match dns_a(*server, name, wait).await {
            Ok(ips) => return Ok(ips),
            Err(e) => errors.push(format!("{e:#}")),
        }
    }
    bail!("cannot resolve {name}: {}", errors.join("; "))
}

// === HTTP ===

/// What an HTTP echo answered.
#[derive(Debug, Clone)]
pub struct HttpAnswer {
    pub status: StatusCode,
    /// The [`CLUSTER_HEADER`] of the response (the cluster whose backend answered).
    pub cluster: Option<String>,
    /// The [`HOSTNAME_HEADER`] of the response (the replica that answered, if it has one).
    pub hostname: Option<String>,
    pub body: Bytes,
}

/// One HTTP/1.1 GET on a new connection to `addr`, with `Host: authority`, bounded by `wait`.
pub async fn http_get(
    addr: SocketAddr,
    authority: &str,
    path: &str,
    wait: Duration,
) -> anyhow::Result<HttpAnswer> {
    timeout(wait, async {
        let stream = TcpStream::connect(addr)
            .await
            .with_context(|| format!("connecting to {addr}"))?;
        let _ = stream.set_nodelay(true);
        let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
            .await
            .context("HTTP/1.1 handshake")?;
        tokio::spawn(conn);
        let req = Request::get(path)
            .header(http::header::HOST, authority)
            .body(Empty::<Bytes>::new())?;
        let resp = sender
            .send_request(req)
            .await
            .context("sending the request")?;
        let status = resp.status();
        let cluster = resp
            .headers()
            .get(CLUSTER_HEADER)
            .and_then(|v| v.to_str().ok())
            .map(str::to_string);
        let hostname = resp
            .headers()
            .get(HOSTNAME_HEADER)
            .and_then(|v| v.to_str().ok())
            .map(str::to_string);
        let body = resp
            .into_body()
            .collect()
            .await
            .context("reading the body")?
            .to_bytes();
        Ok(HttpAnswer {
            status,
            cluster,
            hostname,
            body,
        })
    })
    .await
    .map_err(|_| anyhow!("GET http://{authority}{path} via {addr}: no answer within {wait:?}"))?
}

// === gRPC ===

/// What the demo gRPC service answered.
#[derive(Debug, Clone)]
pub struct GrpcAnswer {
    /// `grpc-status` (0 = OK).
    pub grpc_status: u32,
    pub cluster: Option<String>,
    /// The response message bytes (without the 5-byte frame header).
    pub message: Bytes,
}

/// Calls `grpc.health.v1.Health/Check` over h2c (prior knowledge) on a new connection.
pub async fn grpc_health(
    addr: SocketAddr,
    authority: &str,
    wait: Duration,
) -> anyhow::Result<GrpcAnswer> {
    timeout(wait, async {
        let stream = TcpStream::connect(addr)
            .await
            .with_context(|| format!("connecting to {addr}"))?;
        let _ = stream.set_nodelay(true);
        let (mut sender, conn) =
            hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(stream))
                .await
                .context("HTTP/2 handshake")?;
        tokio::spawn(conn);
        let req = Request::post(format!("http://{authority}{GRPC_HEALTH_CHECK}"))
            .header(http::header::CONTENT_TYPE, "application/grpc")
            .header("te", "trailers")
            // HealthCheckRequest { service: "" } is the empty message.
            .body(Full::new(grpc_frame(&[])))?;
        let resp = sender
            .send_request(req)
            .await
            .context("sending the request")?;
        let header_cluster = resp
            .headers()
            .get(CLUSTER_HEADER)
            .and_then(|v| v.to_str().ok())
            .map(str::to_string);
        // A trailers-only answer carries grpc-status in the headers.
        let header_status = resp
            .headers()
            .get("grpc-status")
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse().ok());
        let collected = resp
            .into_body()
            .collect()
            .await
            .context("reading the body")?;
        let trailers = collected.trailers().cloned();
        let data = collected.to_bytes();
        let grpc_status = trailers
            .as_ref()
            .and_then(|t| t.get("grpc-status"))
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse().ok())
            .or(header_status)
            .ok_or_else(|| anyhow!("no grpc-status in the answer"))?;
        let cluster = header_cluster.or_else(|| {
            trailers
                .as_ref()
                .and_then(|t| t.get(CLUSTER_HEADER))
                .and_then(|v| v.to_str().ok())
                .map(str::to_string)
        });
        let message = if data.len() >= 5 {
            data.slice(5..)
        } else {
            Bytes::new()
        };
        Ok(GrpcAnswer {
            grpc_status,
            cluster,
            message,
        })
    })
    .await
    .map_err(|_| {
        anyhow!("gRPC health check of {authority} via {addr}: no answer within {wait:?}")
    })?
}

// === TCP ===

/// Sends one line to a TCP echo and returns the line it sends back (without the newline).
pub async fn tcp_echo(addr: SocketAddr, line: &str, wait: Duration) -> anyhow::Result<String> {
    timeout(wait, async {
        let mut stream = TcpStream::connect(addr)
            .await
            .with_context(|| format!("connecting to {addr}"))?;
        stream.write_all(format!("{line}\n").as_bytes()).await?;
        let mut reader = BufReader::new(stream);
        let mut reply = String::new();
        let n = reader.read_line(&mut reply).await?;
        if n == 0 {
            bail!("{addr} closed the connection without answering");
        }
        Ok(reply.trim_end().to_string())
    })
    .await
    .map_err(|_| anyhow!("TCP echo via {addr}: no answer within {wait:?}"))?
}

// === Prober ===

/// What a [`Prober`] calls.
#[derive(Debug, Clone)]
pub struct ProbeTarget {
    /// DNS servers to resolve `name` with, in order.
    pub dns: Vec<SocketAddr>,
    /// e.g. `echo.demo.svc.clusterset.local`
    pub name: String,
    pub port: u16,
    pub path: String,
    /// Pause between the end of one request and the start of the next.
    pub interval: Duration,
    /// Bound of the DNS query and of the HTTP request each.
    pub timeout: Duration,
}

impl ProbeTarget {
    /// An HTTP GET of `/` on `name:port` every 50 ms, each step bounded by 1 s.
    pub fn http(dns: Vec<SocketAddr>, name: impl Into<String>, port: u16) -> Self {
        Self {
            dns,
            name: name.into(),
            port,
            path: "/".to_string(),
            interval: Duration::from_millis(50),
            timeout: Duration::from_secs(1),
        }
    }
}

/// One request of a [`Prober`].
#[derive(Debug, Clone)]
pub struct Sample {
    /// When the request started, since the prober started.
    pub at: Duration,
    /// The address DNS answered (None: resolution failed).
    pub ip: Option<IpAddr>,
    /// HTTP status (None: no answer).
    pub status: Option<u16>,
    /// The cluster that answered.
    pub cluster: Option<String>,
    /// Why the request failed, when it did.
    pub error: Option<String>,
    /// How long resolution and request took together.
    pub took: Duration,
}

impl Sample {
    pub fn ok(&self) -> bool {
        self.status == Some(200)
    }
}

/// Calls a service over and over from a thread of its own (in a network namespace when asked),
/// until stopped. Each request resolves the name again and uses a new connection, as a
/// client honouring a short DNS TTL would.
pub struct Prober {
    samples: Arc<Mutex<Vec<Sample>>>,
    stop: Arc<AtomicBool>,
    started: std::time::Instant,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Prober {
    /// Starts probing `target` from the network namespace `netns` (None: this one).
    pub fn start(netns: Option<String>, target: ProbeTarget) -> anyhow::Result<Prober> {
        let samples = Arc::new(Mutex::new(Vec::new()));
        let stop = Arc::new(AtomicBool::new(false));
        let started = std::time::Instant::now();
        let (s, st) = (samples.clone(), stop.clone());
        let thread = std::thread::Builder::new()
            .name(format!("prober-{}", target.name))
            .spawn(move || {
                let run = || -> anyhow::Result<()> {
                    if let Some(ns) = &netns {
                        super::net::enter_netns(ns)?;
                    }
                    let rt = tokio::runtime::Builder::new_current_thread()
                        .enable_all()
                        .build()?;
                    rt.block_on(probe_loop(target, s, st, started));
                    Ok(())
                };
                if let Err(e) = run() {
                    tracing::error!(error = %e, "prober could not start");
                }
            })
            .context("spawning the prober thread")?;
        Ok(Prober {
            samples,
            stop,
            started,
            thread: Some(thread),
        })
    }

    /// Time since the prober started: the clock of [`Sample::at`].
    pub fn now(&self) -> Duration {
        self.started.elapsed()
    }

    /// A copy of the samples so far.
    pub fn samples(&self) -> Vec<Sample> {
        self.samples
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// A [`Timeline`] of the samples so far.
    pub fn timeline(&self) -> Timeline {
        Timeline::new(self.samples())
    }

    /// Stops probing (after the request in flight) and returns every sample.
    pub fn stop(mut self) -> Timeline {
        self.stop_thread();
        self.timeline()
    }

    fn stop_thread(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

impl Drop for Prober {
    fn drop(&mut self) {
        self.stop_thread();
    }
}

async fn probe_loop(
    target: ProbeTarget,
    samples: Arc<Mutex<Vec<Sample>>>,
    stop: Arc<AtomicBool>,
    started: std::time::Instant,
) {
    let authority = if target.port == 80 {
        target.name.clone()
    } else {
        format!("{}:{}", target.name, target.port)
    };
    while !stop.load(Ordering::Relaxed) {
        let at = started.elapsed();
        let begun = Instant::now();
        let mut sample = Sample {
            at,
            ip: None,
            status: None,
            cluster: None,
            error: None,
            took: Duration::ZERO,
        };
        match resolve(&target.dns, &target.name, target.timeout).await {
            Err(e) => sample.error = Some(format!("{e:#}")),
            Ok(ips) => {
                let ip = ips[0];
                sample.ip = Some(ip);
                let addr = SocketAddr::new(ip, target.port);
                match http_get(addr, &authority, &target.path, target.timeout).await {
                    Ok(a) => {
                        sample.status = Some(a.status.as_u16());
                        sample.cluster = a.cluster;
                        if !a.status.is_success() {
                            sample.error = Some(format!(
                                "HTTP {}: {}",
                                a.status,
                                String::from_utf8_lossy(&a.body).trim()
                            ));
                        }
                    }
                    Err(e) => sample.error = Some(format!("{e:#}")),
                }
            }
        }
        sample.took = begun.elapsed();
        samples
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(sample);
        tokio::time::sleep_until(begun + target.interval).await;
    }
}

// === Timeline ===

/// The samples of a [`Prober`], and the questions the failure tests and benchmarks ask them.
#[derive(Debug, Clone)]
pub struct Timeline {
    pub samples: Vec<Sample>,
}

impl Timeline {
    pub fn new(samples: Vec<Sample>) -> Self {
        Self { samples }
    }

    /// Samples that started in `[from, to)`.
    pub fn between(&self, from: Duration, to: Duration) -> impl Iterator<Item = &Sample> {
        self.samples
            .iter()
            .filter(move |s| s.at >= from && s.at < to)
    }

    /// Failed requests that started in `[from, to)`.
    /// The longest time a successful request between `from` and `to` took.
    pub fn slowest_ok(&self, from: Duration, to: Duration) -> Option<Duration> {
        self.between(from, to)
            .filter(|s| s.ok())
            .map(|s| s.took)
            .max()
    }

    pub fn failures(&self, from: Duration, to: Duration) -> Vec<&Sample> {
        self.between(from, to).filter(|s| !s.ok()).collect()
    }

    /// Requests that started in `[from, to)`.
    pub fn count(&self, from: Duration, to: Duration) -> usize {
        self.between(from, to).count()
    }

    /// How long after `from` the samples settled on `pred`: the start of the first sample at or
    /// after `from` from which every sample until `to` satisfies it, minus `from`. None when the
    /// last sample before `to` does not satisfy it (or there is none).
    pub fn settled(
        &self,
        from: Duration,
        to: Duration,
        pred: impl Fn(&Sample) -> bool,
    ) -> Option<Duration> {
        let window: Vec<&Sample> = self.between(from, to).collect();
        let last_bad = window.iter().rposition(|s| !pred(s));
        let first_good = match last_bad {
            None => 0,
            Some(i) => i + 1,
        };
        window.get(first_good).map(|s| s.at.saturating_sub(from))
    }

    /// The clusters that answered in `[from, to)`, with how many answers each.
    pub fn clusters(
        &self,
        from: Duration,
        to: Duration,
    ) -> std::collections::BTreeMap<String, usize> {
        let mut out = std::collections::BTreeMap::new();
        for s in self.between(from, to) {
            if let (true, Some(c)) = (s.ok(), &s.cluster) {
                *out.entry(c.clone()).or_insert(0) += 1;
            }
        }
        out
    }

    /// A short text of the failed samples in `[from, to)` for assertion messages.
    pub fn describe_failures(&self, from: Duration, to: Duration) -> String {
        let failures = self.failures(from, to);
        let mut out = format!("{} of {} failed", failures.len(), self.count(from, to));
        for s in failures.iter().take(10) {
            out.push_str(&format!(
                "\n  at {:>8.3}s ip={:?} status={:?}: {}",
                s.at.as_secs_f64(),
                s.ip,
                s.status,
                s.error.as_deref().unwrap_or("")
            ));
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn s(ms: u64, cluster: &str, ok: bool) -> Sample {
        Sample {
            at: Duration::from_millis(ms),
            ip: None,
            status: Some(if ok { 200 } else { 503 }),
            cluster: Some(cluster.to_string()),
            took: Duration::from_millis(1),
            error: None,
        }
    }

    #[test]
    fn settled_finds_the_start_of_the_last_good_run() {
        let t = Timeline::new(vec![
            s(0, "east", true),
            s(100, "east", true),
            s(200, "west", true),
            s(300, "east", true),
            s(400, "west", false),
            s(500, "west", true),
            s(600, "west", true),
        ]);
        let from = Duration::from_millis(50);
        let to = Duration::from_secs(1);
        let moved = t.settled(from, to, |s| s.ok() && s.cluster.as_deref() == Some("west"));
        assert_eq!(moved, Some(Duration::from_millis(450)));
        assert_eq!(t.failures(from, to).len(), 1);
        assert_eq!(t.clusters(Duration::ZERO, to)["east"], 3);
        let never = t.settled(from, Duration::from_millis(450), |s| s.ok());
        assert_eq!(never, None);
    }
}
