//! Questions to a running lab: its federators' snapshots and imports, its gateways' peers,
//! dumps and metrics, DNS and calls from inside a cluster, probers.

use std::collections::{BTreeMap, BTreeSet};
use std::net::{IpAddr, SocketAddr};

use anyhow::Context as _;
use causeway_api::snapshot::MeshSnapshot;
use causeway_api::{ClusterId, ServiceKey};

use super::net;
use super::probe;
use super::spec::{DEMO_NAMESPACE, REQUEST_TIMEOUT};
use super::Lab;

impl Lab {
    pub async fn admin_get(
        &self,
        netns: Option<&str>,
        addr: SocketAddr,
        path: &str,
    ) -> anyhow::Result<(u16, String)> {
        let path = path.to_string();
        let a = net::try_run_in(netns, move || async move {
            probe::http_get(addr, &addr.to_string(), &path, REQUEST_TIMEOUT).await
        })
        .await?;
        Ok((
            a.status.as_u16(),
            String::from_utf8_lossy(&a.body).into_owned(),
        ))
    }

    /// The mesh snapshot of a cluster's first federator (`/debug/snapshot`).
    pub async fn snapshot(&self, cluster: &str) -> anyhow::Result<MeshSnapshot> {
        self.snapshot_of(cluster, 0).await.map(|(_, s)| s)
    }

    /// `(leader, snapshot)` of federator replica `replica` of `cluster`.
    pub async fn snapshot_of(
        &self,
        cluster: &str,
        replica: usize,
    ) -> anyhow::Result<(bool, MeshSnapshot)> {
        let c = self.cluster(cluster);
        let f = c
            .federators
            .get(replica)
            .context("no such federator replica")?;
        let (status, body) = self
            .admin_get(c.netns.as_deref(), f.admin, "/debug/snapshot")
            .await?;
        anyhow::ensure!(status == 200, "/debug/snapshot answered {status}: {body}");
        #[derive(serde::Deserialize)]
        struct Debug {
            leader: bool,
            snapshot: MeshSnapshot,
        }
        let d: Debug = serde_json::from_str(&body).context("parsing /debug/snapshot")?;
        Ok((d.leader, d.snapshot))
    }

    /// The imports a cluster's federator holds: each service with the clusters exporting it.
    pub async fn imports(
        &self,
        cluster: &str,
    ) -> anyhow::Result<BTreeMap<ServiceKey, BTreeSet<ClusterId>>> {
        let snap = self.snapshot(cluster).await?;
        Ok(snap
            .services
            .iter()
            .map(|(k, v)| (k.clone(), v.exports.keys().cloned().collect()))
            .collect())
    }

    /// The imports of every cluster, by cluster.
    pub async fn all_imports(
        &self,
    ) -> anyhow::Result<BTreeMap<String, BTreeMap<ServiceKey, BTreeSet<ClusterId>>>> {
        let mut out = BTreeMap::new();
        for c in &self.state.clusters {
            out.insert(c.name.clone(), self.imports(&c.name).await?);
        }
        Ok(out)
    }

    /// The peers a cluster's gateway currently sees up (`/peers`): not marked down by its
    /// probes (a peer is up until enough probes miss, even before the first one).
    pub async fn peers_up(&self, cluster: &str) -> anyhow::Result<BTreeSet<String>> {
        self.peers_where(cluster, |p| p["up"].as_bool() == Some(true))
            .await
    }

    /// The peers whose last probe by a cluster's gateway was answered: probed, up and not
    /// suspect (routed to in their normal order).
    pub async fn peers_answering(&self, cluster: &str) -> anyhow::Result<BTreeSet<String>> {
        self.peers_where(cluster, |p| {
            p["up"].as_bool() == Some(true)
                && p["probed"].as_bool() == Some(true)
                && p["suspect"].as_bool() == Some(false)
        })
        .await
    }

    async fn peers_where(
        &self,
        cluster: &str,
        keep: impl Fn(&serde_json::Value) -> bool,
    ) -> anyhow::Result<BTreeSet<String>> {
        let c = self.cluster(cluster);
        let (status, body) = self
            .admin_get(c.netns.as_deref(), c.gateway.admin, "/peers")
            .await?;
        anyhow::ensure!(status == 200, "/peers answered {status}: {body}");
        let peers: Vec<serde_json::Value> =
            serde_json::from_str(&body).context("parsing /peers")?;
        Ok(peers
            .iter()
            .filter(|p| keep(p))
            .filter_map(|p| p["cluster"].as_str().map(str::to_string))
            .collect())
    }

    /// A cluster's gateway's `/config_dump` (with the certificate it holds).
    pub async fn gateway_dump(&self, cluster: &str) -> anyhow::Result<serde_json::Value> {
        let c = self.cluster(cluster);
        let (status, body) = self
            .admin_get(c.netns.as_deref(), c.gateway.admin, "/config_dump")
            .await?;
        anyhow::ensure!(status == 200, "/config_dump answered {status}: {body}");
        serde_json::from_str(&body).context("parsing /config_dump")
    }

    /// A cluster's gateway's `/peers`, as JSON.
    pub async fn gateway_peers(&self, cluster: &str) -> anyhow::Result<Vec<serde_json::Value>> {
        let c = self.cluster(cluster);
        let (status, body) = self
            .admin_get(c.netns.as_deref(), c.gateway.admin, "/peers")
            .await?;
        anyhow::ensure!(status == 200, "/peers answered {status}: {body}");
        serde_json::from_str(&body).context("parsing /peers")
    }

    /// Runs the lab's `causeway` CLI with `args`; its standard output, or an error with both
    /// outputs.
    pub fn causeway(&self, args: &[&str]) -> anyhow::Result<String> {
        let out = std::process::Command::new(self.bin("causeway"))
            .args(args)
            .stdin(std::process::Stdio::null())
            .output()
            .context("running causeway")?;
        anyhow::ensure!(
            out.status.success(),
            "causeway {}: {}\n{}{}",
            args.join(" "),
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }

    /// The Prometheus text of a cluster's gateway.
    pub async fn gateway_metrics(&self, cluster: &str) -> anyhow::Result<String> {
        let c = self.cluster(cluster);
        let (status, body) = self
            .admin_get(c.netns.as_deref(), c.gateway.admin, "/metrics")
            .await?;
        anyhow::ensure!(status == 200, "gateway /metrics answered {status}");
        Ok(body)
    }

    /// The Prometheus text of a federator replica.
    pub async fn federator_metrics(&self, cluster: &str, replica: usize) -> anyhow::Result<String> {
        let c = self.cluster(cluster);
        let f = c
            .federators
            .get(replica)
            .context("no such federator replica")?;
        let (status, body) = self
            .admin_get(c.netns.as_deref(), f.admin, "/metrics")
            .await?;
        anyhow::ensure!(status == 200, "federator /metrics answered {status}");
        Ok(body)
    }

    /// What a cluster's DNS answers for a name (A records).
    pub async fn resolve(&self, cluster: &str, name: &str) -> anyhow::Result<Vec<IpAddr>> {
        let c = self.cluster(cluster);
        let servers = c.dns_servers.clone();
        let name = name.to_string();
        net::try_run_in(c.netns.as_deref(), move || async move {
            probe::resolve(&servers, &name, REQUEST_TIMEOUT).await
        })
        .await
    }

    /// Calls the demo echo service from inside a cluster the way a client there would: resolve
    /// `echo.demo.svc.clusterset.local` with the cluster's DNS, GET / on the answer.
    pub async fn call_echo(&self, cluster: &str) -> anyhow::Result<probe::HttpAnswer> {
        let c = self.cluster(cluster);
        let servers = c.dns_servers.clone();
        let name = format!("echo.{DEMO_NAMESPACE}.svc.clusterset.local");
        net::try_run_in(c.netns.as_deref(), move || async move {
            let ips = probe::resolve(&servers, &name, REQUEST_TIMEOUT).await?;
            probe::http_get(SocketAddr::new(ips[0], 80), &name, "/", REQUEST_TIMEOUT).await
        })
        .await
    }

    /// A [`probe::Prober`] calling the demo echo service from inside `cluster` every 50 ms.
    pub fn echo_prober(&self, cluster: &str) -> anyhow::Result<probe::Prober> {
        let c = self.cluster(cluster);
        let port = self
            .state
            .clusters
            .iter()
            .flat_map(|c| c.demo.iter())
            .find(|d| d.name == "echo")
            .map_or(80, |d| d.port);
        probe::Prober::start(
            c.netns.clone(),
            probe::ProbeTarget::http(
                c.dns_servers.clone(),
                format!("echo.{DEMO_NAMESPACE}.svc.clusterset.local"),
                port,
            ),
        )
    }
}
