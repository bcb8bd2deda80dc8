//! The hostile-network rows of DESIGN.md's "Behaviour under failure", on the lab: an attacker
//! in a pod namespace of one cluster and one on the WAN reach for what only a cluster's own
//! side may use, while a client beside them calls the echo service and must see nothing.

use std::net::SocketAddr;
use std::time::Duration;

use causeway_e2e::lab::{net, Lab};

use crate::lab_support::{self, result, warm_up};

/// What an attacker tries to open: a name and an address.
type Target = (String, SocketAddr);

/// Everything of `cluster` that must not answer from outside it: the gateway's egress and
/// admin, each federator's admin and config stream, on the cluster-side and the WAN address,
/// and a ClusterSetIP's listener.
fn cluster_side_targets(lab: &Lab, cluster: &str) -> Vec<Target> {
    let c = lab.cluster(cluster);
    let g = &c.gateway;
    let mut t: Vec<Target> = vec![
        ("egress".into(), g.egress),
        ("admin".into(), g.admin),
        (
            "egress on the WAN address".into(),
            SocketAddr::new(c.wan_ip, g.egress.port()),
        ),
        (
            "admin on the WAN address".into(),
            SocketAddr::new(c.wan_ip, g.admin.port()),
        ),
    ];
    for f in &c.federators {
        t.push((format!("{} admin", f.node), f.admin));
        t.push((format!("{} config stream", f.node), f.config));
        t.push((format!("{} DNS over TCP", f.node), f.dns));
    }
    if let Some(d) = c.demo("echo") {
        t.push((
            "its echo's service address".into(),
            SocketAddr::new(d.service_ip, d.port),
        ));
    }
    t
}

/// The targets that accept a TCP connection from the network namespace `from`.
async fn answering(from: &str, targets: Vec<Target>) -> Vec<String> {
    net::run_in(Some(from), move || async move {
        let mut open = Vec::new();
        for (what, addr) in targets {
            let connect = tokio::net::TcpStream::connect(addr);
            if let Ok(Ok(_)) = tokio::time::timeout(Duration::from_millis(400), connect).await {
                open.push(format!("{what} ({addr})"));
            }
        }
        open
    })
    .await
    .expect("a thread in the namespace")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn from_a_pod_and_the_wan_only_peer_ports_answer() {
    let Some(lab) = lab_support::start(3, |_| {}).await else {
        return;
    };
    let north = lab.echo_prober("north").unwrap();
    warm_up(&north, 5).await;
    let wan = lab.state().wan_netns.clone().expect("a WAN namespace");
    let north_ns = lab.netns("north").expect("north's namespace");

    // The attackers route every cluster-side range (service addresses, ClusterSetIPs) of west
    // and east through those clusters' WAN addresses, as a host on the same network can.
    for (ns, via) in [(&wan, "west"), (&north_ns, "west")] {
        let gw = lab.cluster(via).wan_ip.to_string();
        for range in ["10.96.2.0/24", "10.255.0.0/16"] {
            net::ip_in(ns, &["route", "replace", range, "via", &gw]).expect("a route");
        }
    }
    net::ip_in(
        &wan,
        &[
            "route",
            "replace",
            "10.96.1.0/24",
            "via",
            &lab.cluster("east").wan_ip.to_string(),
        ],
    )
    .expect("a route");

    // From north's pod namespace: west's cluster side (ClusterSetIPs there are north's own).
    let from_pod = answering(&north_ns, cluster_side_targets(&lab, "west")).await;
    // From the WAN: both exporting clusters' cluster sides and west's ClusterSetIP listener.
    let mut targets = cluster_side_targets(&lab, "west");
    targets.extend(cluster_side_targets(&lab, "east"));
    let vip = lab.snapshot("north").await.unwrap().services[&"demo/echo".parse().unwrap()]
        .vip
        .expect("echo has a ClusterSetIP");
    targets.push(("a ClusterSetIP listener".into(), SocketAddr::new(vip, 80)));
    let from_wan = answering(&wan, targets.clone()).await;

    // The peer port does answer (the check can see an open port), from both.
    let peer = (
        "west's peer port".to_string(),
        lab.cluster("west").gateway.ingress,
    );
    assert_eq!(answering(&wan, vec![peer.clone()]).await.len(), 1);
    assert_eq!(answering(&north_ns, vec![peer]).await.len(), 1);

    // etcd: no answer without a client certificate (plain HTTP, or TLS without one), and
    // north's own credentials cannot write west's keys or a drill.
    let etcd_refusals = etcd_attempts(&lab, &north_ns).await;
    let etcd_from_wan = etcd_attempts(&lab, &wan).await;

    let timeline = north.stop();
    for (from, attempts) in [("north", &etcd_refusals), ("the WAN", &etcd_from_wan)] {
        for (what, outcome) in attempts.iter() {
            if what.starts_with("control") {
                // The check can see an allowed write: north's own key goes through.
                assert!(outcome.is_ok(), "from {from}, {what} failed: {outcome:?}");
            } else {
                assert!(
                    outcome.is_err(),
                    "from {from}, etcd allowed {what}: {outcome:?}"
                );
            }
        }
    }
    assert!(
        from_pod.is_empty(),
        "from north's pod namespace, west answers on: {from_pod:?}"
    );
    assert!(
        from_wan.is_empty(),
        "from the WAN, clusters answer on: {from_wan:?}"
    );
    let failed = timeline.failures(Duration::ZERO, Duration::MAX);
    assert!(
        failed.is_empty(),
        "north's client saw failures: {}",
        timeline.describe_failures(Duration::ZERO, Duration::MAX)
    );
    result(
        "hostile_listeners_unreachable",
        &[
            ("targets", targets.len().to_string()),
            (
                "etcd_attempts_refused",
                (etcd_refusals.len() + etcd_from_wan.len() - 2).to_string(),
            ),
            ("answering", "0".into()),
            ("requests", timeline.samples.len().to_string()),
            ("failed", "0".into()),
        ],
    );
}

/// What an attacker in `ns` tries against the lab's etcd, each with its outcome (`Ok` when
/// etcd let it through).
async fn etcd_attempts(lab: &Lab, ns: &str) -> Vec<(String, Result<(), String>)> {
    let endpoints = lab.state().etcd.endpoints.clone();
    let plain: Vec<String> = endpoints
        .iter()
        .map(|e| e.replace("https://", "http://"))
        .collect();
    let tls = lab
        .state()
        .etcd
        .tls
        .clone()
        .expect("the lab's etcd has TLS");
    let north = lab.etcd_tls_as("cluster-north").unwrap().expect("TLS");
    let ca_only = etcd_client::TlsOptions::new().ca_certificate(
        etcd_client::Certificate::from_pem(std::fs::read(&tls.ca).unwrap()),
    );
    let west_info = causeway_api::keys::cluster_key(&"west".parse().unwrap());
    let drill = causeway_api::keys::drill_key("forged");
    let (n, w) = ("north".parse().unwrap(), "west".parse().unwrap());
    let own = causeway_api::keys::health_key(&n, &w);
    net::run_in(Some(ns), move || async move {
        let opts = || {
            etcd_client::ConnectOptions::new()
                .with_connect_timeout(Duration::from_secs(1))
                .with_timeout(Duration::from_secs(2))
        };
        let put = |endpoints: Vec<String>, opts: etcd_client::ConnectOptions, key: String| async move {
            let mut c = etcd_client::Client::connect(endpoints, Some(opts))
                .await
                .map_err(|e| e.to_string())?;
            c.put(key, "{}", None).await.map(|_| ()).map_err(|e| e.to_string())
        };
        vec![
            (
                "a plaintext client".to_string(),
                put(plain.clone(), opts(), west_info.clone()).await,
            ),
            (
                "a TLS client without a certificate".to_string(),
                put(endpoints.clone(), opts().with_tls(ca_only), west_info.clone()).await,
            ),
            (
                "north's federator writing west's info".to_string(),
                put(endpoints.clone(), opts().with_tls(north.clone()), west_info).await,
            ),
            (
                "north's federator writing a drill".to_string(),
                put(endpoints.clone(), opts().with_tls(north.clone()), drill).await,
            ),
            (
                "control: north's federator writing its own key".to_string(),
                put(endpoints, opts().with_tls(north), own).await,
            ),
        ]
    })
    .await
    .expect("a thread in the namespace")
}
