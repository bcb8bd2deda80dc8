//! The local multi-cluster lab: a real etcd, one network namespace per cluster plus a WAN
//! namespace that joins only the gateways, certificates, a federator (with DNS) and a gateway per
//! cluster, and demo services exported from two clusters. `causeway-lab` drives it from the
//! command line; the end-to-end tests drive it in-process through [`Lab`].
//!
//! Layout (netns mode, cluster `i` = 1, 2, ...):
//!
//! ```text
//!  cw-wan: bridge br0, etcd members 10.100.0.2..4 (:2379)
//!    │ veth                          │ veth
//!  cw-east (wan0 10.100.0.11)       cw-west (wan0 10.100.0.12)   ...
//!    lo: 10.96.1.x/32 service net:    gateway: peer 10.100.0.1i:15443, egress :15001, admin :15000
//!      .1  gateway node address        federator k: admin 10.96.i.(2+k):19090, config :15010,
//!      .10 echo  .11 grpc  .12 tcp                 DNS 10.96.i.(53+k):53
//!    lo: AnyIP 10.255.0.0/16 (ClusterSetIPs → the local gateway)
//!    nftables: service IP:port → backend (kube-proxy's job); from wan0 only :15443 gets in
//!    gateway egress and admin on the node address, federators on theirs: none on the WAN
//! ```
//!
//! A cluster namespace has routes to the WAN only; other clusters' service addresses are
//! unreachable from it except through the gateways.

pub mod demo;
pub mod net;
mod observe;
mod plan;
pub mod probe;
pub mod process;
mod spec;
pub mod state;
mod teardown;

use std::collections::{BTreeMap, BTreeSet};
use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::process::Child;
use std::sync::Mutex;
use std::time::Duration;

use anyhow::{bail, Context as _};
use causeway_api::snapshot::MeshSnapshot;
use causeway_api::{ClusterId, ServiceKey};
use tokio::time::Instant;

pub use state::{
    CertPaths, ClusterInfo, DemoKind, DemoService, EtcdInfo, EtcdMember, EtcdTlsInfo,
    FederatorInfo, GatewayInfo, LabState, Mode, Replica, StatefulDemo, LAB_STATE_SCHEMA,
};

use process::{ProcessRecord, Spawn as _};

use plan::*;
pub use plan::{export_yaml, stateful_export_yaml};
use spec::STEP_TIMEOUT;
pub use spec::{
    build_binaries, cluster_names, default_bin_dir, missing_binaries, stale_binaries, LabSpec,
    BINARIES, BUILD_COMMAND, CLUSTER_NAMES, DEFAULT_PREFIX, DEFAULT_STATE_DIR, DEMO_NAMESPACE,
    VIP_RANGE,
};
pub use teardown::down;
use teardown::{program_name, remove_namespaces, stop_all};

// === Lab ===

/// A running lab. Dropping it stops every process and removes its namespaces and files, unless
/// [`Lab::detach`] was called (what `causeway-lab up` does).
pub struct Lab {
    state: LabState,
    /// What the lab was built from (clusters added later are planned from it).
    spec: LabSpec,
    procs: Mutex<Procs>,
    keep: bool,
    /// The temporary state directory of a test lab.
    _tempdir: Option<tempfile::TempDir>,
}

#[derive(Default)]
struct Procs {
    /// Children of this process, by process name.
    children: BTreeMap<String, Child>,
}

impl Lab {
    /// Builds and starts the lab of `spec` and waits until every cluster resolves and reaches
    /// every demo service. On error everything started so far is removed again.
    pub async fn up(mut spec: LabSpec) -> anyhow::Result<Lab> {
        let tempdir = if spec.state_dir.as_os_str().is_empty() {
            let dir = tempfile::Builder::new().prefix("causeway-lab-").tempdir()?;
            spec.state_dir = dir.path().to_path_buf();
            Some(dir)
        } else {
            None
        };
        anyhow::ensure!(
            spec.etcd_members >= 1 && spec.etcd_members <= 5,
            "etcd members must be 1..=5"
        );
        anyhow::ensure!(
            (1..=8).contains(&spec.federator_replicas),
            "federator replicas must be 1..=8"
        );
        let missing = missing_binaries(&spec.bin_dir);
        if !missing.is_empty() {
            bail!(
                "{} not found in {}; build them with `{BUILD_COMMAND}`",
                missing.join(", "),
                spec.bin_dir.display()
            );
        }
        let etcd_bin = crate::etcd::find_etcd_binary()?;
        if spec.mode == Mode::Netns {
            for ns in spec
                .clusters
                .iter()
                .filter_map(|c| spec.netns_of(c))
                .chain(spec.wan_netns())
            {
                if net::netns_exists(&ns) {
                    bail!("network namespace {ns} already exists: another lab runs with prefix {:?} (stop it with `causeway-lab down`)", spec.prefix);
                }
            }
            if net::which("nft").is_none() {
                bail!("nft (Debian package nftables) is needed for the lab's service addresses; run scripts/setup.sh");
            }
        }
        std::fs::create_dir_all(&spec.state_dir)
            .with_context(|| format!("creating {}", spec.state_dir.display()))?;
        let state_dir = spec
            .state_dir
            .canonicalize()
            .context("resolving the state directory")?;
        spec.state_dir = state_dir.clone();

        let plans: Vec<Plan> = spec
            .clusters
            .iter()
            .enumerate()
            .map(|(i, c)| Plan::new(&spec, i + 1, c))
            .collect::<anyhow::Result<_>>()?;
        let pki_dir = state_dir.join("pki");
        let etcd = etcd_info(&spec);
        let clusters = plans
            .iter()
            .map(|p| cluster_info(p, &spec, &pki_dir))
            .collect();
        let state = LabState {
            schema: LAB_STATE_SCHEMA,
            mode: spec.mode,
            state_dir: state_dir.clone(),
            prefix: spec.prefix.clone(),
            wan_netns: spec.wan_netns(),
            bin_dir: spec.bin_dir.clone(),
            pki_dir,
            vip_range: VIP_RANGE.to_string(),
            etcd,
            clusters,
            processes: Vec::new(),
        };
        let mut lab = Lab {
            state,
            spec: spec.clone(),
            procs: Mutex::new(Procs::default()),
            keep: false,
            _tempdir: tempdir,
        };
        // From here on a failure drops `lab`, which removes what was made.
        lab.state.save()?;
        lab.build(&spec, &plans, &etcd_bin).await?;
        Ok(lab)
    }

    async fn build(
        &mut self,
        spec: &LabSpec,
        plans: &[Plan],
        etcd_bin: &Path,
    ) -> anyhow::Result<()> {
        let started = Instant::now();
        self.certs()?;
        if spec.mode == Mode::Netns {
            self.network(plans)?;
        }
        self.etcd_pki()?;
        self.start_etcd(spec, etcd_bin)?;
        self.wait_etcd().await?;
        self.etcd_auth()?;
        tracing::info!(took = ?started.elapsed(), "etcd is up, with auth");
        for plan in plans {
            self.start_demo(plan)?;
        }
        for plan in plans {
            self.start_federators(spec, plan)?;
        }
        for plan in plans {
            for f in &plan.federators {
                self.wait_http_ok(plan.netns.as_deref(), f.admin, "/ready", &f.process)
                    .await?;
            }
        }
        for plan in plans {
            self.start_gateway(spec, plan)?;
        }
        for plan in plans {
            self.wait_http_ok(
                plan.netns.as_deref(),
                plan.gateway.admin,
                "/ready",
                &plan.gateway.process,
            )
            .await?;
        }
        self.wait_converged().await?;
        tracing::info!(took = ?started.elapsed(), "lab is up");
        Ok(())
    }

    // --- building blocks ---

    fn bin(&self, name: &str) -> PathBuf {
        self.state.bin_dir.join(name)
    }

    fn certs(&self) -> anyhow::Result<()> {
        let clusters = self.cluster_list();
        let mut cmd = std::process::Command::new(self.bin("causeway"));
        cmd.arg("certs")
            .arg("--out")
            .arg(&self.state.pki_dir)
            .arg("--clusters")
            .arg(clusters)
            .arg("--force");
        run_tool(cmd, "causeway certs")
    }

    /// The lab's cluster IDs, comma-separated.
    fn cluster_list(&self) -> String {
        let names: Vec<&str> = self
            .state
            .clusters
            .iter()
            .map(|c| c.name.as_str())
            .collect();
        names.join(",")
    }

    /// etcd's PKI: a server certificate for every member (also its peer identity) and a
    /// client certificate per etcd user.
    fn etcd_pki(&self) -> anyhow::Result<()> {
        let Some(tls) = &self.state.etcd.tls else {
            return Ok(());
        };
        let ips: Vec<IpAddr> = self
            .state
            .etcd
            .members
            .iter()
            .filter_map(|m| {
                let host = m.client_url.split("://").nth(1)?.rsplit_once(':')?.0;
                host.parse().ok()
            })
            .collect();
        let mut users: Vec<String> = self
            .state
            .clusters
            .iter()
            .map(|c| etcd_user(&c.name))
            .collect();
        users.push(causeway_api::keys::OPERATOR_ROLE.to_string());
        let users: Vec<&str> = users.iter().map(String::as_str).collect();
        crate::etcd::EtcdPki::write(&tls.dir, &ips, &users)?;
        Ok(())
    }

    /// TLS options of an etcd client as `user`, when the lab's etcd has TLS.
    pub fn etcd_tls_as(&self, user: &str) -> anyhow::Result<Option<etcd_client::TlsOptions>> {
        let Some(tls) = &self.state.etcd.tls else {
            return Ok(None);
        };
        let (cert, key) = tls.client(user);
        Ok(Some(crate::etcd::client_tls(&tls.ca, &cert, &key)?))
    }

    /// `causeway etcd-auth` as etcd's root, from where etcd is: roles per cluster, auth on.
    fn etcd_auth(&self) -> anyhow::Result<()> {
        let Some(tls) = &self.state.etcd.tls else {
            return Ok(());
        };
        let (cert, key) = tls.client("root");
        let mut cmd = match &self.state.wan_netns {
            Some(ns) => {
                let mut c = std::process::Command::new("ip");
                c.args(["netns", "exec", ns]).arg(self.bin("causeway"));
                c
            }
            None => std::process::Command::new(self.bin("causeway")),
        };
        cmd.arg("etcd-auth")
            .arg("--etcd-endpoints")
            .arg(self.state.etcd.endpoints.join(","))
            .arg("--etcd-ca")
            .arg(&tls.ca)
            .arg("--etcd-cert")
            .arg(&cert)
            .arg("--etcd-key")
            .arg(&key)
            .arg("--clusters")
            .arg(self.cluster_list());
        run_tool(cmd, "causeway etcd-auth")
    }

    fn network(&self, plans: &[Plan]) -> anyhow::Result<()> {
        let wan = self
            .state
            .wan_netns
            .as_deref()
            .context("no WAN namespace")?;
        net::add_netns(wan)?;
        net::ip_in(wan, &["link", "add", "br0", "type", "bridge"])?;
        net::ip_in(wan, &["link", "set", "br0", "up"])?;
        for k in 0..self.state.etcd.members.len() {
            let addr = format!("10.100.0.{}/24", 2 + k);
            net::ip_in(wan, &["addr", "add", &addr, "dev", "br0"])?;
        }
        for plan in plans {
            self.cluster_network(plan)?;
        }
        Ok(())
    }

    /// One cluster's namespace, its link to the WAN, its addresses and nftables rules.
    fn cluster_network(&self, plan: &Plan) -> anyhow::Result<()> {
        let wan = self
            .state
            .wan_netns
            .as_deref()
            .context("no WAN namespace")?;
        {
            let ns = plan.netns.as_deref().context("no cluster namespace")?;
            net::add_netns(ns)?;
            // Created inside the cluster namespace with its peer in the WAN namespace, so the
            // names only need to be unique there (and parallel labs do not collide).
            let peer = format!("veth{}", plan.index);
            net::ip_in(
                ns,
                &[
                    "link", "add", "wan0", "type", "veth", "peer", "name", &peer, "netns", wan,
                ],
            )?;
            net::ip_in(wan, &["link", "set", &peer, "master", "br0", "up"])?;
            net::ip_in(
                ns,
                &["addr", "add", &format!("{}/24", plan.wan_ip), "dev", "wan0"],
            )?;
            net::ip_in(ns, &["link", "set", "wan0", "up"])?;
            let mut octets: BTreeSet<u8> = BTreeSet::from([1]);
            octets.extend(DEMO_SERVICES.iter().map(|d| d.4));
            if plan.stateful {
                octets.extend(STATEFUL_REPLICA_OCTETS);
            }
            for k in 0..plan.federators.len() as u8 {
                octets.insert(2 + k);
                octets.insert(53 + k);
            }
            for o in octets {
                // On loopback (the VM kernels CI uses may lack the dummy driver), as /32s so
                // that the rest of the /24 stays unrouted.
                let addr = format!("{}/32", plan.svc_ip(o));
                net::ip_in(ns, &["addr", "add", &addr, "dev", "lo"])?;
            }
            // AnyIP: every ClusterSetIP is local here, and the gateway's wildcard listeners
            // accept connections to it.
            net::ip_in(ns, &["route", "add", "local", VIP_RANGE, "dev", "lo"])?;
            // What kube-proxy does: service IP:port → the backend.
            let mut rules = String::new();
            for d in self.state.cluster(&plan.name)?.demo.iter() {
                rules.push_str(&format!(
                    "    ip daddr {} tcp dport {} dnat to {}\n",
                    d.service_ip, d.port, d.backend
                ));
            }
            net::nft_in(
                ns,
                &format!(
                    "table ip causeway_lab {{\n  chain services {{\n    type nat hook output priority -100; policy accept;\n{rules}  }}\n}}\n"
                ),
            )?;
            // What a cloud security group does for a gateway host: from the WAN only the peer
            // port (and replies to connections the cluster opened) get in, whatever route a
            // WAN host adds towards the cluster's own addresses.
            net::nft_in(
                ns,
                &format!(
                    "table inet causeway_lab_wan {{\n  chain input {{\n    type filter hook input priority 0; policy accept;\n    iifname \"wan0\" ct state established,related accept\n    iifname \"wan0\" tcp dport {GATEWAY_PEER_PORT} accept\n    iifname \"wan0\" counter drop\n  }}\n}}\n"
                ),
            )?;
            let dns: Vec<IpAddr> = plan.federators.iter().map(|f| f.dns.ip()).collect();
            net::write_resolv_conf(ns, &dns)?;
        }
        Ok(())
    }

    fn add_process(&mut self, mut record: ProcessRecord) -> anyhow::Result<()> {
        let child = record.spawn()?;
        self.procs
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .children
            .insert(record.name.clone(), child);
        self.state.processes.push(record);
        self.state.save()?;
        Ok(())
    }

    fn log_path(&self, process: &str) -> PathBuf {
        self.state
            .state_dir
            .join("logs")
            .join(format!("{}.log", process.replace('/', "-")))
    }

    fn start_etcd(&mut self, spec: &LabSpec, etcd_bin: &Path) -> anyhow::Result<()> {
        let members = self.state.etcd.members.clone();
        let initial_cluster = members
            .iter()
            .map(|m| format!("{}={}", m.name, m.peer_url))
            .collect::<Vec<_>>()
            .join(",");
        for m in members {
            let mut args: Vec<String> = [
                "--name",
                &m.name,
                "--data-dir",
                &m.data_dir.display().to_string(),
                "--listen-client-urls",
                &m.client_url,
                "--advertise-client-urls",
                &m.client_url,
                "--listen-peer-urls",
                &m.peer_url,
                "--initial-advertise-peer-urls",
                &m.peer_url,
                "--initial-cluster",
                &initial_cluster,
                "--initial-cluster-state",
                "new",
                "--initial-cluster-token",
                &format!("{}etcd", spec.prefix),
                "--logger",
                "zap",
                "--log-outputs",
                "stderr",
            ]
            .iter()
            .map(|s| s.to_string())
            .collect();
            // Shorter elections than etcd's defaults (100 ms / 1 s) are not needed on one host,
            // but a member restart must not take long to be noticed either.
            args.extend(["--heartbeat-interval".into(), "100".into()]);
            args.extend(["--election-timeout".into(), "1000".into()]);
            if let Some(tls) = &self.state.etcd.tls {
                // Clients and peers alike need a certificate of the lab's etcd CA; the
                // members' own (server.pem) serves clients and dials peers.
                let (cert, key) = (tls.dir.join("server.pem"), tls.dir.join("server.key"));
                let (cert, key, ca) = (
                    cert.display().to_string(),
                    key.display().to_string(),
                    tls.ca.display().to_string(),
                );
                for (flag, value) in [
                    ("--cert-file", &cert),
                    ("--key-file", &key),
                    ("--trusted-ca-file", &ca),
                    ("--peer-cert-file", &cert),
                    ("--peer-key-file", &key),
                    ("--peer-trusted-ca-file", &ca),
                ] {
                    args.extend([flag.to_string(), value.clone()]);
                }
                args.extend([
                    "--client-cert-auth".into(),
                    "--peer-client-cert-auth".into(),
                ]);
            }
            let mut env = Vec::new();
            if cfg!(target_arch = "aarch64") {
                env.push(("ETCD_UNSUPPORTED_ARCH".to_string(), "arm64".to_string()));
            }
            self.add_process(ProcessRecord {
                name: m.process.clone(),
                netns: self.state.wan_netns.clone(),
                program: etcd_bin.to_path_buf(),
                args,
                env,
                log: self.log_path(&m.process),
                pid: None,
            })?;
        }
        Ok(())
    }

    /// Waits until every etcd member answers a status request.
    pub async fn wait_etcd(&self) -> anyhow::Result<()> {
        let root_tls = self.etcd_tls_as("root")?;
        for m in &self.state.etcd.members {
            let url = m.client_url.clone();
            let what = format!("etcd member {} at {url}", m.name);
            let ns = self.state.wan_netns.clone();
            let proc_name = m.process.clone();
            self.wait_or_explain(&what, &proc_name, STEP_TIMEOUT, || {
                let url = url.clone();
                let ns = ns.clone();
                let tls = root_tls.clone();
                async move {
                    net::run_in(ns.as_deref(), move || async move {
                        let mut opts = etcd_client::ConnectOptions::new()
                            .with_connect_timeout(Duration::from_secs(1))
                            .with_timeout(Duration::from_secs(2));
                        if let Some(tls) = tls {
                            opts = opts.with_tls(tls);
                        }
                        let mut c = etcd_client::Client::connect([url], Some(opts)).await.ok()?;
                        c.status().await.ok().map(|_| ())
                    })
                    .await
                    .ok()
                    .flatten()
                }
            })
            .await?;
        }
        Ok(())
    }

    fn start_demo(&mut self, plan: &Plan) -> anyhow::Result<()> {
        let info = self.state.cluster(&plan.name)?.clone();
        if info.demo.is_empty() && info.stateful.is_none() {
            return Ok(());
        }
        std::fs::create_dir_all(&info.exports_dir)?;
        if let Some(s) = &info.stateful {
            for r in &s.replicas {
                self.add_process(ProcessRecord {
                    name: r.process.clone(),
                    netns: plan.netns.clone(),
                    program: self.bin("causeway-demo"),
                    args: vec![
                        DemoKind::HttpEcho.subcommand().to_string(),
                        "--listen".to_string(),
                        r.address.to_string(),
                        "--cluster".to_string(),
                        plan.name.clone(),
                        "--hostname".to_string(),
                        r.hostname.clone(),
                    ],
                    env: Vec::new(),
                    log: self.log_path(&r.process),
                    pid: None,
                })?;
            }
            write_atomically(&s.export_file, &stateful_export_yaml(s, &BTreeSet::new()))?;
        }
        for d in &info.demo {
            let _ = std::fs::remove_file(&d.fail_file);
            self.add_process(ProcessRecord {
                name: d.process.clone(),
                netns: plan.netns.clone(),
                program: self.bin("causeway-demo"),
                args: vec![
                    d.kind.subcommand().to_string(),
                    "--listen".to_string(),
                    d.backend.to_string(),
                    "--cluster".to_string(),
                    plan.name.clone(),
                    "--fail-file".to_string(),
                    d.fail_file.display().to_string(),
                ],
                env: Vec::new(),
                log: self.log_path(&d.process),
                pid: None,
            })?;
            std::fs::write(&d.export_file, export_yaml(d))
                .with_context(|| format!("writing {}", d.export_file.display()))?;
        }
        Ok(())
    }

    fn start_federators(&mut self, spec: &LabSpec, plan: &Plan) -> anyhow::Result<()> {
        let info = self.state.cluster(&plan.name)?.clone();
        std::fs::create_dir_all(&info.exports_dir)?;
        for f in &plan.federators {
            let mut args: Vec<String> = vec![
                "--cluster".into(),
                plan.name.clone(),
                "--node".into(),
                f.node.clone(),
                "--etcd-endpoints".into(),
                self.state.etcd.endpoints.join(","),
                "--exports-dir".into(),
                info.exports_dir.display().to_string(),
                "--admin-listen".into(),
                f.admin.to_string(),
                "--config-listen".into(),
                f.config.to_string(),
                "--dns-listen".into(),
                f.dns.to_string(),
                // The federator holds its cluster's issuer: it signs its gateways' certificates
                // and its own (federator.pem is the fallback without one).
                "--issuer-cert".into(),
                info.certs.issuer_cert.display().to_string(),
                "--issuer-key".into(),
                info.certs.issuer_key.display().to_string(),
                "--tls-reload-interval".into(),
                "500ms".into(),
                "--trust-bundle".into(),
                info.certs.trust_bundle.display().to_string(),
                "--gateway-address".into(),
                plan.gateway.ingress.to_string(),
                "--vip-range".into(),
                VIP_RANGE.into(),
                "--locality".into(),
                format!("region={}", plan.region),
            ];
            if let Some(tls) = &self.state.etcd.tls {
                let (cert, key) = tls.client(&etcd_user(&plan.name));
                args.extend([
                    "--etcd-ca".into(),
                    tls.ca.display().to_string(),
                    "--etcd-cert".into(),
                    cert.display().to_string(),
                    "--etcd-key".into(),
                    key.display().to_string(),
                ]);
            }
            if let Some(ttl) = spec.lease_ttl {
                args.extend(["--lease-ttl".into(), format!("{}ms", ttl.as_millis())]);
            }
            if let Some(grace) = spec.stale_grace {
                args.extend(["--stale-grace".into(), format!("{}ms", grace.as_millis())]);
            }
            if let Some(life) = spec.certificate_lifetime {
                args.extend([
                    "--certificate-lifetime".into(),
                    format!("{}ms", life.as_millis()),
                ]);
            }
            self.add_process(ProcessRecord {
                name: f.process.clone(),
                netns: plan.netns.clone(),
                program: self.bin("causeway-federator"),
                args,
                env: Vec::new(),
                log: self.log_path(&f.process),
                pid: None,
            })?;
        }
        Ok(())
    }

    fn start_gateway(&mut self, spec: &LabSpec, plan: &Plan) -> anyhow::Result<()> {
        let info = self.state.cluster(&plan.name)?.clone();
        let g = &plan.gateway;
        std::fs::create_dir_all(&g.state_dir)?;
        // Cluster-side addresses only (the node address): only the peer listener is on the WAN.
        let listen = |a: SocketAddr| a.to_string();
        let mut args: Vec<String> = vec![
            "--cluster".into(),
            plan.name.clone(),
            "--node".into(),
            format!("{}-gateway", plan.name),
            "--cert".into(),
            info.certs.gateway_cert.display().to_string(),
            "--key".into(),
            info.certs.gateway_key.display().to_string(),
            "--trust-bundle".into(),
            info.certs.trust_bundle.display().to_string(),
            "--federator".into(),
            format!("https://{}", plan.federators[0].config),
            "--state-dir".into(),
            g.state_dir.display().to_string(),
            "--egress-listen".into(),
            listen(g.egress),
            "--peer-listen".into(),
            g.ingress.to_string(),
            "--admin-listen".into(),
            listen(g.admin),
        ];
        if spec.mode == Mode::Netns {
            args.extend(["--vip-range".into(), VIP_RANGE.into()]);
        }
        if spec.gateway_access_log {
            args.push("--access-log".into());
        }
        self.add_process(ProcessRecord {
            name: g.process.clone(),
            netns: plan.netns.clone(),
            program: self.bin("causeway-gateway"),
            args,
            env: Vec::new(),
            log: self.log_path(&g.process),
            pid: None,
        })
    }

    /// Waits until the mesh is whole: every federator sees every demo service exported by
    /// every exporting cluster with a ClusterSetIP, every gateway sees every peer up, and from
    /// every cluster the echo service resolves and answers.
    pub async fn wait_converged(&self) -> anyhow::Result<()> {
        let expected = self.expected_imports();
        for c in &self.state.clusters {
            let what = format!("{}'s federator to see every demo service", c.name);
            let expected = expected.clone();
            self.wait_or_explain(&what, &c.federators[0].process, STEP_TIMEOUT, || {
                let expected = expected.clone();
                async move {
                    let snap = self.snapshot(&c.name).await.ok()?;
                    let ok = expected.iter().all(|(svc, clusters)| {
                        snap.services.get(svc).is_some_and(|v| {
                            v.vip.is_some()
                                && clusters
                                    .iter()
                                    .all(|c| v.exports.get(c).is_some_and(|e| !e.stale))
                        })
                    });
                    let stateful_ok = self.stateful_seen(&snap, &c.name);
                    (ok && stateful_ok).then_some(())
                }
            })
            .await?;
        }
        for c in &self.state.clusters {
            let peers: Vec<String> = self
                .state
                .clusters
                .iter()
                .filter(|p| p.name != c.name)
                .map(|p| p.name.clone())
                .collect();
            let what = format!("{}'s gateway to see its peers up", c.name);
            self.wait_or_explain(&what, &c.gateway.process, STEP_TIMEOUT, || {
                let peers = peers.clone();
                async move {
                    let up = self.peers_answering(&c.name).await.ok()?;
                    peers.iter().all(|p| up.contains(p)).then_some(())
                }
            })
            .await?;
        }
        if self.state.mode == Mode::Netns && !expected.is_empty() {
            for c in &self.state.clusters {
                let what = format!("the echo service to answer in {}", c.name);
                self.wait_or_explain(&what, &c.gateway.process, STEP_TIMEOUT, || async move {
                    let a = self.call_echo(&c.name).await.ok()?;
                    a.status.is_success().then_some(())
                })
                .await?;
            }
        }
        Ok(())
    }

    /// Whether a cluster's snapshot has the stateful demo's import: exported, and in a cluster
    /// that reaches it through its gateway (netns mode, not the exporter), an address for every
    /// replica.
    fn stateful_seen(&self, snap: &MeshSnapshot, cluster: &str) -> bool {
        self.state.clusters.iter().all(|owner| {
            let Some(s) = &owner.stateful else {
                return true;
            };
            let (Ok(key), Ok(id)) = (
                ServiceKey::new(&s.namespace, &s.name),
                ClusterId::new(&owner.name),
            ) else {
                return false;
            };
            snap.services.get(&key).is_some_and(|v| {
                let exported = v.exports.get(&id).is_some_and(|e| !e.stale);
                let addressed = self.state.mode != Mode::Netns
                    || owner.name == cluster
                    || v.endpoint_vips
                        .get(&id)
                        .is_some_and(|m| s.replicas.iter().all(|r| m.contains_key(&r.hostname)));
                exported && addressed
            })
        })
    }

    /// Marks replicas of the stateful demo of `cluster` not ready (the others ready) by
    /// rewriting its export file, as an EndpointSlice would change when a pod fails its
    /// readiness probe.
    pub fn set_not_ready(&self, cluster: &str, not_ready: &[&str]) -> anyhow::Result<()> {
        let s = self
            .cluster(cluster)
            .stateful
            .as_ref()
            .with_context(|| format!("{cluster} runs no stateful demo"))?;
        let set = not_ready.iter().map(|h| h.to_string()).collect();
        write_atomically(&s.export_file, &stateful_export_yaml(s, &set))
    }

    /// Imports every cluster should see: each demo service with the clusters exporting it.
    pub fn expected_imports(&self) -> BTreeMap<ServiceKey, BTreeSet<ClusterId>> {
        let mut out: BTreeMap<ServiceKey, BTreeSet<ClusterId>> = BTreeMap::new();
        for c in &self.state.clusters {
            for d in &c.demo {
                if let (Ok(k), Ok(id)) = (
                    ServiceKey::new(&d.namespace, &d.name),
                    ClusterId::new(&c.name),
                ) {
                    out.entry(k).or_default().insert(id);
                }
            }
        }
        out
    }

    /// Polls `check` until it returns Some; on timeout the error names what was awaited and
    /// quotes the tail of the log of the process most likely at fault.
    async fn wait_or_explain<F, Fut, T>(
        &self,
        what: &str,
        process: &str,
        timeout: Duration,
        check: F,
    ) -> anyhow::Result<T>
    where
        F: FnMut() -> Fut,
        Fut: std::future::Future<Output = Option<T>>,
    {
        match crate::wait_for(what, timeout, check).await {
            Ok(v) => Ok(v),
            Err(e) => {
                let alive = self.is_running(process);
                let log = self.log_path(process);
                Err(e.context(format!(
                    "{process} is {}; tail of {}:\n{}",
                    if alive { "running" } else { "NOT running" },
                    log.display(),
                    tail(&log, 30)
                )))
            }
        }
    }

    async fn wait_http_ok(
        &self,
        netns: Option<&str>,
        addr: SocketAddr,
        path: &str,
        process: &str,
    ) -> anyhow::Result<()> {
        let what = format!("{process} to answer {path} on {addr}");
        self.wait_or_explain(&what, process, STEP_TIMEOUT, || async move {
            let (status, _) = self.admin_get(netns, addr, path).await.ok()?;
            (status == 200).then_some(())
        })
        .await
    }

    // --- state and processes ---

    /// What lab.json says, with the current pids.
    pub fn state(&self) -> &LabState {
        &self.state
    }

    pub fn cluster(&self, name: &str) -> &ClusterInfo {
        match self.state.cluster(name) {
            Ok(c) => c,
            Err(e) => panic!("{e}"),
        }
    }

    /// Adds a cluster `name` to the running lab, as an operator joins one to a running
    /// federation: its network namespace, a root of its own and certificates (`causeway certs
    /// --add`, touching no other cluster's files), its etcd user and role
    /// (`causeway etcd-auth`, idempotent), its federator and gateway. Returns once both are
    /// ready; it exports nothing. The other clusters learn of it through etcd.
    pub async fn add_cluster(&mut self, name: &str) -> anyhow::Result<()> {
        anyhow::ensure!(
            self.state.clusters.iter().all(|c| c.name != name),
            "cluster {name} is in the lab already"
        );
        let mut spec = self.spec.clone();
        spec.clusters.push(name.to_string());
        let plan = Plan::new(&spec, spec.clusters.len(), name)?;
        let info = cluster_info(&plan, &spec, &self.state.pki_dir);
        self.state.clusters.push(info);
        self.spec = spec.clone();
        self.state.save()?;
        if spec.mode == Mode::Netns {
            self.cluster_network(&plan)?;
        }
        let mut cmd = std::process::Command::new(self.bin("causeway"));
        cmd.arg("certs")
            .arg("--out")
            .arg(&self.state.pki_dir)
            .arg("--clusters")
            .arg(name)
            .arg("--add");
        run_tool(cmd, "causeway certs --add")?;
        if let Some(tls) = &self.state.etcd.tls {
            crate::etcd::EtcdPki::add_user(&tls.dir, &etcd_user(name))?;
        }
        self.etcd_auth()?;
        self.start_federators(&spec, &plan)?;
        for f in &plan.federators {
            self.wait_http_ok(plan.netns.as_deref(), f.admin, "/ready", &f.process)
                .await?;
        }
        self.start_gateway(&spec, &plan)?;
        self.wait_http_ok(
            plan.netns.as_deref(),
            plan.gateway.admin,
            "/ready",
            &plan.gateway.process,
        )
        .await?;
        Ok(())
    }

    /// Leaves the lab running when this handle is dropped (causeway-lab up).
    pub fn detach(mut self) -> LabState {
        self.keep = true;
        // The children go on without us; init reaps them once we exit.
        self.procs
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .children
            .clear();
        self.state.clone()
    }

    /// Whether the named process of the lab is running.
    pub fn is_running(&self, process: &str) -> bool {
        let mut procs = self.procs.lock().unwrap_or_else(|e| e.into_inner());
        match procs.children.get_mut(process) {
            Some(child) => matches!(child.try_wait(), Ok(None)),
            None => self
                .state
                .process(process)
                .ok()
                .and_then(|p| p.pid)
                .is_some_and(process::is_alive),
        }
    }

    /// Stops a process of the lab: SIGKILL when `hard` (a crash), else SIGTERM (a graceful
    /// stop). Returns once it is gone.
    pub fn stop(&mut self, process: &str, hard: bool) -> anyhow::Result<()> {
        let child = self
            .procs
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .children
            .remove(process);
        let record = self.state.process_mut(process)?;
        match child {
            Some(mut child) => process::stop_child(&mut child, hard),
            None => {
                if let Some(pid) = record.pid {
                    let expect = program_name(&record.program);
                    process::stop_pid(pid, &expect);
                }
            }
        }
        record.pid = None;
        self.state.save()?;
        Ok(())
    }

    /// Starts a stopped process of the lab again, with the same command line.
    pub fn start(&mut self, process: &str) -> anyhow::Result<()> {
        anyhow::ensure!(!self.is_running(process), "{process} is already running");
        let record = self.state.process_mut(process)?;
        let child = record.spawn()?;
        self.procs
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .children
            .insert(process.to_string(), child);
        self.state.save()?;
        Ok(())
    }

    /// The namespace of a cluster (None in loopback mode).
    pub fn netns(&self, cluster: &str) -> Option<String> {
        self.cluster(cluster).netns.clone()
    }

    /// Takes a cluster's WAN link down or up (netns mode): the cluster loses every other
    /// cluster and etcd, as when its network path dies.
    pub fn set_wan_link(&self, cluster: &str, up: bool) -> anyhow::Result<()> {
        let c = self.cluster(cluster);
        let ns = c
            .netns
            .as_deref()
            .context("the WAN link needs netns mode")?;
        let link = c.wan_link.as_deref().context("no WAN link")?;
        net::ip_in(ns, &["link", "set", link, if up { "up" } else { "down" }])?;
        Ok(())
    }

    // --- asking the lab ---

    /// GET `path` from an HTTP admin endpoint (federator, gateway) inside `netns`.
    fn teardown(&mut self) {
        let children = std::mem::take(
            &mut self
                .procs
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .children,
        );
        stop_all(&self.state, children);
        remove_namespaces(&self.state);
        for p in &mut self.state.processes {
            p.pid = None;
        }
    }
}

impl Drop for Lab {
    fn drop(&mut self) {
        if !self.keep {
            self.teardown();
        }
    }
}

/// Runs one of our tools to completion; its stderr is the error when it fails.
fn run_tool(mut cmd: std::process::Command, what: &str) -> anyhow::Result<()> {
    let out = cmd
        .stdin(std::process::Stdio::null())
        .output()
        .with_context(|| format!("running {what}"))?;
    if !out.status.success() {
        bail!(
            "{what} failed: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(())
}

/// The etcd user of cluster `c`'s federators (its role writes only `clusters/<c>/`).
fn etcd_user(c: &str) -> String {
    format!("cluster-{c}")
}

/// The last `lines` lines of a log file.
pub fn tail(path: &Path, lines: usize) -> String {
    match std::fs::read_to_string(path) {
        Ok(text) => {
            let all: Vec<&str> = text.lines().collect();
            let from = all.len().saturating_sub(lines);
            if all.is_empty() {
                "(empty)".to_string()
            } else {
                all[from..].join("\n")
            }
        }
        Err(e) => format!("(cannot read: {e})"),
    }
}
