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

use std::fmt::Write as _;
use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::{anyhow, bail, Context as _};
use causeway_api::keys::drill_key;
use causeway_api::model::{ClusterId, DrillPhase, DrillRecord, ServiceKey, SCHEMA_VERSION};
use causeway_api::net::Cidr;
use causeway_probe::lab::{LabState, Mode};
use causeway_probe::metrics::{gateway_counters, Counters};
use causeway_probe::prober::{ProbeTarget, Prober, Timeline};
use etcd_client::{Client, PutOptions};
use tokio::time::Instant;

use crate::config::parse_duration;
use crate::drill::report;

mod kube;

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
    /// The cluster the client calls from (with --lab; default: the drained cluster). With
    /// --kube, the clusters that observe, comma-separated (default: the drained cluster and
    /// the kubeconfig's).
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
    /// Run the drill as a Drill resource through the Kubernetes API (`KUBECONFIG`, or the
    /// pod's): the federator of that cluster runs it, every cluster of `--from` observes.
    #[arg(long)]
    pub kube: bool,
    /// The kubeconfig to use (implies --kube).
    #[arg(long, value_name = "FILE")]
    pub kubeconfig: Option<PathBuf>,
    /// The kubeconfig context to use (implies --kube).
    #[arg(long, value_name = "NAME")]
    pub context: Option<String>,
}

impl DrillArgs {
    fn is_kube(&self) -> bool {
        self.kube || self.kubeconfig.is_some() || self.context.is_some()
    }
}

/// Runs a drill. Returns the report's text; fails when failover or failback did not happen
/// (after printing the report).
pub(crate) async fn run(args: DrillArgs) -> anyhow::Result<String> {
    if args.is_kube() {
        return kube::run(&args).await;
    }
    let target = Target::resolve(&args)?;
    if let Some(ns) = &target.netns {
        if std::env::var_os(IN_NETNS_ENV).is_none() && !causeway_probe::netns::is_current(ns) {
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
        Some(Prober::start(None, target.probe(&args))?)
    };
    if let Some(c) = &client {
        tokio::time::sleep(BASELINE.saturating_sub(c.now())).await;
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
        Some(a) => gateway_counters(a, &args.service, REQUEST_TIMEOUT)
            .await
            .ok(),
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
        pending: false,
        observers: Vec::new(),
        probe: None,
        origin: String::new(),
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
    let base = report::phase(&client.samples(), Duration::ZERO, start);
    let drained = args.cluster.to_string();
    let mut window = report::Window {
        expect_dns_move: target.dns_must_move(&base, &drained),
        expect_traffic_back: base.clusters.contains_key(&drained),
        drained,
        start,
        end,
        interrupted,
        came_back: false,
    };

    // Fail back: DNS answers what it answered before, traffic reaches the drained cluster.
    window.came_back = {
        let deadline = Instant::now() + args.failback_timeout;
        loop {
            if report::is_back(&client.samples(), &window, base.dns) {
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
        Some(a) => gateway_counters(a, &args.service, REQUEST_TIMEOUT)
            .await
            .ok(),
        None => None,
    };
    // Stopping waits for the request in flight (at most REQUEST_TIMEOUT per step).
    let timeline = tokio::task::spawn_blocking(move || client.stop())
        .await
        .context("stopping the drill's client")?;
    let report = Report::build(
        &args,
        &target,
        &id,
        &timeline,
        &window,
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
            let lab = LabState::load(path).context("is the lab up?")?;
            t.apply_lab(&lab, args)
                .with_context(|| format!("using {}", path.display()))?;
        }
        anyhow::ensure!(
            t.dns.is_some() || t.proxy.is_some() || args.no_client,
            "the client needs --dns (or --proxy, or --lab)"
        );
        Ok(t)
    }

    fn apply_lab(&mut self, lab: &LabState, args: &DrillArgs) -> anyhow::Result<()> {
        if args.etcd.etcd_endpoints.is_empty() {
            if !lab.etcd.endpoints.is_empty() {
                self.etcd.endpoints = lab.etcd.endpoints.clone();
            }
            // The lab's etcd wants the operator's client certificate.
            if let Some(tls) = &lab.etcd.tls {
                if args.etcd.etcd_ca.is_none() {
                    self.etcd.ca_file = Some(tls.ca.clone());
                }
                if args.etcd.etcd_cert.is_none() {
                    self.etcd.cert_file = Some(tls.operator_cert.clone());
                    self.etcd.key_file = Some(tls.operator_key.clone());
                }
            }
        }
        let from = lab
            .clusters
            .iter()
            .find(|c| c.name == self.from)
            .ok_or_else(|| anyhow!("the lab has no cluster {:?}", self.from))?;
        self.netns = from.netns.clone();
        self.dns = self.dns.or(Some(from.dns));
        self.gateway_admin = self.gateway_admin.or(Some(from.gateway.admin));
        if lab.mode == Mode::Loopback && self.proxy.is_none() {
            // No ClusterSetIPs without namespaces: go through the gateway's egress.
            self.proxy = Some(from.gateway.egress);
        }
        if args.port.is_none() {
            let demo = lab
                .clusters
                .iter()
                .flat_map(|c| &c.demo)
                .find(|d| d.name == args.service.name && d.namespace == args.service.namespace);
            if let Some(d) = demo {
                self.port = d.port;
            }
        }
        if self.vip_range.is_none() {
            self.vip_range = lab.vip_range.parse().ok();
        }
        Ok(())
    }

    /// What the drill's client calls, and how often.
    fn probe(&self, args: &DrillArgs) -> ProbeTarget {
        ProbeTarget {
            dns: self.dns.into_iter().collect(),
            name: self.name.clone(),
            port: self.port,
            path: args.path.clone(),
            proxy: self.proxy,
            interval: args.interval,
            timeout: REQUEST_TIMEOUT,
        }
    }

    fn is_vip(&self, ip: IpAddr) -> bool {
        self.vip_range.is_some_and(|r| r.contains(ip))
    }

    /// Whether DNS must move: the answer before the drill was the client cluster's own
    /// address of the service (local-first), not the ClusterSetIP. Unknown without the range.
    fn dns_must_move(&self, base: &DrillPhase, drained: &str) -> bool {
        // Only the drained cluster's own clients were answered its local address: elsewhere
        // the answer is that cluster's own ClusterIP (it exports too) or the ClusterSetIP.
        if self.from != drained {
            return false;
        }
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

// === the report ===

struct Report {
    text: String,
    json: serde_json::Value,
    passed: bool,
    verdict: String,
}

impl Report {
    fn build(
        args: &DrillArgs,
        target: &Target,
        id: &str,
        timeline: &Timeline,
        window: &report::Window,
        counters: Option<(Counters, Counters)>,
    ) -> Report {
        let r = report::analyse(timeline, window);
        let drained = window.drained.as_str();
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
        t.push_str(&report::text(
            &r,
            drained,
            Some(window.end - window.start),
            "  ",
        ));
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
        let _ = writeln!(t, "  result:   {}", r.verdict);

        let json = serde_json::json!({
            "id": id,
            "service": args.service.to_string(),
            "cluster": drained,
            "from": target.from,
            "duration_s": args.duration.as_secs_f64().ceil(),
            "interrupted": r.interrupted,
            "baseline": {"dns": r.baseline.dns, "clusters": r.baseline.clusters, "requests": r.baseline.requests, "failed": r.baseline.failed},
            "failover": {
                "dns_expected_to_move": r.dns_expected_to_move,
                "dns_moved_ms": r.dns_moved_ms,
                "traffic_moved_ms": r.traffic_moved_ms,
                "requests": r.failover.requests,
                "failed": r.failover.failed,
                "clusters": r.failover.clusters,
            },
            "failback": {
                "dns_back_ms": r.dns_back_ms,
                "traffic_back_ms": r.traffic_back_ms,
                "requests": r.failback.requests,
                "failed": r.failback.failed,
                "clusters": r.failback.clusters,
            },
            "timeline": r.timeline,
            "gateway_requests": gateway,
            "passed": r.passed,
            "verdict": r.verdict,
        });
        Report {
            text: t,
            json,
            passed: r.passed,
            verdict: r.verdict,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use causeway_probe::prober::Sample;

    fn s(ms: u64, dns: [u8; 4], cluster: &str) -> Sample {
        Sample {
            at: Duration::from_millis(ms),
            ip: Some(IpAddr::from(dns)),
            status: Some(200),
            cluster: Some(cluster.into()),
            error: None,
            took: Duration::from_millis(1),
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
            kube: false,
            kubeconfig: None,
            context: None,
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
        let window = report::Window {
            drained: "east".into(),
            start: Duration::from_millis(1000),
            end: Duration::from_millis(2000),
            interrupted: false,
            expect_dns_move: true,
            expect_traffic_back: true,
            came_back: true,
        };
        let r = Report::build(&args, &target, "x", &Timeline::new(samples), &window, None);
        assert!(r.passed, "{}", r.text);
        assert_eq!(r.json["failover"]["dns_moved_ms"], 100);
        assert_eq!(r.json["failover"]["traffic_moved_ms"], 100);
        assert_eq!(r.json["failback"]["dns_back_ms"], 100);
        assert_eq!(r.json["failback"]["traffic_back_ms"], 100);
        assert_eq!(r.json["failover"]["failed"], 0);
    }
}
