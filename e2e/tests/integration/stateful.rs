//! The lab's stateful demo across networks (issue "Headless and stateful services"): three
//! replicas of `store` in west, exported headless. From north, whose network reaches west only
//! through the gateways, each replica's clusterset name answers an address of north's own that
//! leads to exactly that replica, the service name answers all three, and a replica that stops
//! being ready leaves the answers at once.

use std::collections::BTreeSet;
use std::net::{IpAddr, SocketAddr};
use std::time::{Duration, Instant};

use causeway_e2e::lab::{net, probe, VIP_RANGE};
use hickory_proto::op::ResponseCode;

use crate::lab_support;

const T: Duration = Duration::from_secs(3);
/// How soon a replica made not ready must be gone from the answers (the acceptance).
const LEAVE_WITHIN: Duration = Duration::from_secs(1);
/// How long the test waits for a change before it fails (the measured time is asserted apart).
const WAIT: Duration = Duration::from_secs(10);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_replica_of_a_headless_service_is_reached_by_its_name_across_networks() {
    let Some(lab) = lab_support::start(3, |_| {}).await else {
        return;
    };
    let north = lab.cluster("north").clone();
    let west = lab.cluster("west").clone();
    let store = west.stateful.clone().expect("west runs the stateful demo");
    assert_eq!(store.replicas.len(), 3);
    let in_range = |ip: &IpAddr| match (ip, VIP_RANGE.split_once('/')) {
        (IpAddr::V4(v4), Some(("10.255.0.0", "16"))) => v4.octets()[..2] == [10, 255],
        _ => panic!("the test knows the lab's VIP range as 10.255.0.0/16, not {VIP_RANGE}"),
    };
    let dns = north.dns_servers[0];
    let service = store.clusterset_name();
    let port = store.port;

    // Each replica by name: one address in north's VIP range (not the pod's, which north cannot
    // reach), and a request to it is answered by that replica in west.
    let names: Vec<(String, String)> = store
        .replicas
        .iter()
        .map(|r| (r.hostname.clone(), store.replica_name(&r.hostname, "west")))
        .collect();
    let pods: Vec<SocketAddr> = store.replicas.iter().map(|r| r.address).collect();
    let (by_replica, all) = net::try_run_in(north.netns.as_deref(), {
        let names = names.clone();
        let service = service.clone();
        move || async move {
            let mut by_replica = Vec::new();
            for (hostname, name) in &names {
                let ips = probe::dns_a(dns, name, T).await?;
                anyhow::ensure!(ips.len() == 1, "{name} answered {ips:?}");
                let answer = probe::http_get(SocketAddr::new(ips[0], port), name, "/", T).await?;
                by_replica.push((hostname.clone(), ips[0], answer));
            }
            let all = probe::dns_a(dns, &service, T).await?;
            Ok((by_replica, all))
        }
    })
    .await
    .expect("north resolves and calls every replica");
    let mut addresses = BTreeSet::new();
    for (hostname, ip, answer) in &by_replica {
        assert!(
            in_range(ip),
            "{hostname}: {ip} is not an address of north's gateway"
        );
        assert!(
            !pods.iter().any(|p| p.ip() == *ip),
            "{hostname}: north got the pod address {ip}"
        );
        assert_eq!(answer.status, 200, "{hostname}: {answer:?}");
        assert_eq!(
            answer.hostname.as_deref(),
            Some(hostname.as_str()),
            "{ip} reached another replica: {answer:?}"
        );
        assert_eq!(answer.cluster.as_deref(), Some("west"));
        let body: serde_json::Value = serde_json::from_slice(&answer.body).unwrap();
        assert_eq!(body["hostname"], hostname.as_str(), "{body}");
        assert_eq!(
            body["headers"]["x-causeway-source-cluster"], "north",
            "{body}"
        );
        addresses.insert(*ip);
    }
    assert_eq!(addresses.len(), 3, "three replicas, three addresses");
    let all: BTreeSet<IpAddr> = all.into_iter().collect();
    assert_eq!(all, addresses, "{service} answers every replica");

    // The pods themselves stay out of north's reach: only the gateway leads there.
    let direct = net::run_in(north.netns.as_deref(), move || async move {
        probe::http_get(pods[0], "x", "/", Duration::from_millis(500)).await
    })
    .await
    .unwrap();
    assert!(direct.is_err(), "north reached a pod directly: {direct:?}");

    // store-1 fails its readiness probe: its name is gone (NXDOMAIN) and the service name
    // answers the two others, within a second of the export changing.
    let (gone_host, gone_ip) = (by_replica[1].0.clone(), by_replica[1].1);
    let gone_name = names[1].1.clone();
    let started = Instant::now();
    lab.set_not_ready("west", &[&gone_host]).unwrap();
    let left = net::try_run_in(north.netns.as_deref(), {
        let (service, gone_name) = (service.clone(), gone_name.clone());
        move || async move {
            causeway_e2e::wait_for("the replica to leave the answers", WAIT, || async {
                let (code, _) = probe::dns_query_a(dns, &gone_name, T).await.ok()?;
                let (_, all) = probe::dns_query_a(dns, &service, T).await.ok()?;
                (code == ResponseCode::NXDomain && all.len() == 2 && !all.contains(&gone_ip))
                    .then_some(())
            })
            .await?;
            Ok(started.elapsed())
        }
    })
    .await
    .expect("the not-ready replica leaves north's answers");
    // The others still answer, each itself.
    let others: Vec<(String, IpAddr)> = by_replica
        .iter()
        .filter(|(h, _, _)| *h != gone_host)
        .map(|(h, ip, _)| (h.clone(), *ip))
        .collect();
    let still = net::try_run_in(north.netns.as_deref(), {
        let names = names.clone();
        move || async move {
            let mut out = Vec::new();
            for (hostname, ip) in others {
                let name = &names.iter().find(|(h, _)| *h == hostname).unwrap().1;
                let a = probe::http_get(SocketAddr::new(ip, port), name, "/", T).await?;
                out.push((hostname, a.hostname));
            }
            Ok(out)
        }
    })
    .await
    .expect("the ready replicas still answer");
    for (hostname, answered) in still {
        assert_eq!(answered.as_deref(), Some(hostname.as_str()));
    }

    // Ready again: back in the answers, at the same address (held through the grace).
    let started = Instant::now();
    lab.set_not_ready("west", &[]).unwrap();
    let back = net::try_run_in(north.netns.as_deref(), {
        let service = service.clone();
        move || async move {
            causeway_e2e::wait_for("the replica to be answered again", WAIT, || async {
                let (code, ips) = probe::dns_query_a(dns, &gone_name, T).await.ok()?;
                let (_, all) = probe::dns_query_a(dns, &service, T).await.ok()?;
                (code == ResponseCode::NoError && ips == vec![gone_ip] && all.len() == 3)
                    .then_some(())
            })
            .await?;
            Ok(started.elapsed())
        }
    })
    .await
    .expect("the replica comes back at its address");
    lab_support::result(
        "stateful_across_networks",
        &[
            ("not_ready_left_in", lab_support::secs(Some(left))),
            ("ready_back_in", lab_support::secs(Some(back))),
        ],
    );
    assert!(
        left <= LEAVE_WITHIN,
        "{gone_host} left north's answers after {left:?}, more than {LEAVE_WITHIN:?}"
    );
}
