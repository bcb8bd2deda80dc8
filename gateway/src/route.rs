//! Which clusters a request to an imported service tries, in order (DESIGN.md "Addressing and
//! failover"): a matching header route first; otherwise candidates by priority, weighted within
//! a priority, minus drained, unhealthy, probe-down and ejected clusters. When that leaves
//! nothing, every non-drained candidate is tried by priority (better a suspect cluster than
//! certain failure: this is Envoy's "panic routing").
//!
//! Peers whose last probe went unanswered (suspect, not yet down) keep their place relative to
//! each other but come after every other available cluster: a request tries them only when
//! nothing else can serve it.

use http::HeaderMap;
use rand::Rng;

use crate::table::{Candidate, HeaderTarget, Outbound};

/// What the planner needs to know about the world beyond the service.
pub(crate) trait Availability {
    /// Whether a peer cluster's gateway is up (active probes).
    fn peer_up(&self, cluster: &str) -> bool;
    /// Whether a peer cluster's gateway missed its last probe (up, but tried last).
    fn peer_suspect(&self, cluster: &str) -> bool;
    /// Whether this cluster has ready endpoints for the service.
    fn local_ready(&self) -> bool;
}

fn available(c: &Candidate, world: &impl Availability) -> bool {
    if c.drained || c.stats.is_ejected() {
        return false;
    }
    if c.local {
        world.local_ready()
    } else {
        c.healthy && c.ready_endpoints > 0 && world.peer_up(&c.cluster)
    }
}

/// Orders `items` by weighted random choice without replacement.
fn weighted_order<T: Clone>(items: &[(T, u32)], rng: &mut impl Rng) -> Vec<T> {
    let mut pool: Vec<(T, u64)> = items
        .iter()
        .map(|(t, w)| (t.clone(), u64::from(*w)))
        .collect();
    if pool.iter().all(|(_, w)| *w == 0) {
        for (_, w) in &mut pool {
            *w = 1;
        }
    }
    let mut out = Vec::with_capacity(pool.len());
    while !pool.is_empty() {
        let total: u64 = pool.iter().map(|(_, w)| *w).sum();
        let i = if total == 0 {
            0
        } else {
            let mut pick = rng.random_range(0..total);
            pool.iter()
                .position(|(_, w)| {
                    if pick < *w {
                        true
                    } else {
                        pick -= *w;
                        false
                    }
                })
                .unwrap_or(0)
        };
        out.push(pool.remove(i).0);
    }
    out
}

/// The clusters to try for one request, best first. Empty: no route.
pub(crate) fn plan(
    svc: &Outbound,
    headers: &HeaderMap,
    world: &impl Availability,
) -> Vec<Candidate> {
    let mut rng = rand::rng();
    for route in &svc.header_routes {
        let matches = headers
            .get(&route.header)
            .is_some_and(|v| v.as_bytes() == route.value.as_bytes());
        if !matches {
            continue;
        }
        let clusters: Vec<&str> = match &route.target {
            HeaderTarget::Pin(c) => vec![c],
            HeaderTarget::Split(split) => {
                let live: Vec<(&str, u32)> = split
                    .iter()
                    .filter(|(c, _)| svc.candidate(c).is_some_and(|c| available(c, world)))
                    .map(|(c, w)| (&**c, *w))
                    .collect();
                let all: Vec<(&str, u32)> = split.iter().map(|(c, w)| (&**c, *w)).collect();
                weighted_order(if live.is_empty() { &all } else { &live }, &mut rng)
            }
        };
        return clusters
            .into_iter()
            .filter_map(|c| svc.candidate(c))
            .filter(|c| !c.drained)
            .cloned()
            .collect();
    }

    let mut out = Vec::with_capacity(svc.candidates.len());
    let mut i = 0;
    while i < svc.candidates.len() {
        let priority = svc.candidates[i].priority;
        let group: Vec<(&Candidate, u32)> = svc.candidates[i..]
            .iter()
            .take_while(|c| c.priority == priority)
            .map(|c| (c, c.weight))
            .collect();
        i += group.len();
        let live: Vec<(&Candidate, u32)> = group
            .into_iter()
            .filter(|(c, _)| available(c, world))
            .collect();
        out.extend(weighted_order(&live, &mut rng).into_iter().cloned());
    }
    // Stable: the order among the sound ones and among the suspect ones is kept.
    out.sort_by_key(|c| !c.local && world.peer_suspect(&c.cluster));
    if out.is_empty() {
        out = svc
            .candidates
            .iter()
            .filter(|c| !c.drained)
            .cloned()
            .collect();
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::table::Policy;
    use causeway_api::ServiceKey;
    use std::sync::Arc;
    use std::time::Duration;

    struct World {
        down: Vec<&'static str>,
        local: bool,
    }

    impl Availability for World {
        fn peer_up(&self, cluster: &str) -> bool {
            !self.down.contains(&cluster)
        }
        fn peer_suspect(&self, cluster: &str) -> bool {
            cluster.starts_with("suspect")
        }
        fn local_ready(&self) -> bool {
            self.local
        }
    }

    fn cand(cluster: &str, priority: u32, weight: u32) -> Candidate {
        Candidate {
            cluster: Arc::from(cluster),
            priority,
            weight,
            healthy: true,
            drained: false,
            ready_endpoints: 1,
            local: cluster == "east",
            stats: Default::default(),
            header: None,
        }
    }

    fn svc(candidates: Vec<Candidate>) -> Outbound {
        Outbound {
            name: ServiceKey::new("shop", "cart").unwrap(),
            ports: vec![],
            candidates,
            policy: Policy {
                timeout: None,
                retry_attempts: 2,
                retry_budget_percent: 20,
                max_concurrent: 0,
                max_pending: 0,
                outlier_errors: 5,
                outlier_base: Duration::from_secs(30),
                rate_limit: (0, 0),
            },
            pinned: None,
            header_routes: vec![],
            budget: Default::default(),
            limiter: Default::default(),
        }
    }

    fn names(v: &[Candidate]) -> Vec<&str> {
        v.iter().map(|c| &*c.cluster).collect()
    }

    #[test]
    fn priority_order_and_exclusions() {
        let world = World {
            down: vec![],
            local: true,
        };
        let s = svc(vec![
            cand("east", 0, 1),
            cand("west", 1, 1),
            cand("north", 2, 1),
        ]);
        let h = HeaderMap::new();
        assert_eq!(names(&plan(&s, &h, &world)), ["east", "west", "north"]);

        let world = World {
            down: vec!["west"],
            local: false,
        };
        assert_eq!(names(&plan(&s, &h, &world)), ["north"]);

        let mut drained = cand("north", 2, 1);
        drained.drained = true;
        let s2 = svc(vec![cand("west", 1, 1), drained]);
        // Nothing available: panic routing over the non-drained ones.
        assert_eq!(names(&plan(&s2, &h, &world)), ["west"]);

        let ejected = cand("west", 1, 1);
        ejected.stats.record_failure(1, Duration::from_secs(60));
        let s3 = svc(vec![ejected, cand("north", 2, 1)]);
        let world = World {
            down: vec![],
            local: false,
        };
        assert_eq!(names(&plan(&s3, &h, &world)), ["north"]);
    }

    #[test]
    fn suspect_peers_come_last_in_their_order() {
        let world = World {
            down: vec![],
            local: true,
        };
        let s = svc(vec![
            cand("east", 0, 1),
            cand("suspect-a", 1, 1),
            cand("west", 1, 0),
            cand("suspect-b", 2, 1),
            cand("north", 2, 1),
        ]);
        let h = HeaderMap::new();
        let p = plan(&s, &h, &world);
        assert_eq!(p.len(), 5);
        assert_eq!(names(&p[..3]), ["east", "west", "north"]);
        assert_eq!(names(&p[3..]), ["suspect-a", "suspect-b"]);
        // Alone, a suspect peer is still tried.
        let s = svc(vec![cand("suspect-a", 1, 1)]);
        assert_eq!(names(&plan(&s, &h, &world)), ["suspect-a"]);
    }

    #[test]
    fn weights_split_within_a_priority() {
        let world = World {
            down: vec![],
            local: false,
        };
        let s = svc(vec![cand("west", 1, 90), cand("north", 1, 10)]);
        let h = HeaderMap::new();
        let mut west_first = 0;
        for _ in 0..1000 {
            let p = plan(&s, &h, &world);
            assert_eq!(p.len(), 2);
            if &*p[0].cluster == "west" {
                west_first += 1;
            }
        }
        assert!((820..=980).contains(&west_first), "{west_first}");
    }

    #[test]
    fn header_routes_pin_and_split() {
        let world = World {
            down: vec![],
            local: false,
        };
        let mut s = svc(vec![cand("west", 1, 1), cand("north", 2, 1)]);
        s.header_routes = vec![
            crate::table::HeaderRoute {
                header: http::HeaderName::from_static("x-canary"),
                value: "1".into(),
                target: HeaderTarget::Pin(Arc::from("north")),
            },
            crate::table::HeaderRoute {
                header: http::HeaderName::from_static("x-split"),
                value: "yes".into(),
                target: HeaderTarget::Split(vec![(Arc::from("north"), 1), (Arc::from("west"), 0)]),
            },
        ];
        let mut h = HeaderMap::new();
        h.insert("x-canary", "1".parse().unwrap());
        assert_eq!(names(&plan(&s, &h, &world)), ["north"]);
        let mut h = HeaderMap::new();
        h.insert("x-split", "yes".parse().unwrap());
        assert_eq!(names(&plan(&s, &h, &world)), ["north", "west"]);
        let mut h = HeaderMap::new();
        h.insert("x-canary", "2".parse().unwrap());
        assert_eq!(names(&plan(&s, &h, &world)), ["west", "north"]);
    }
}
