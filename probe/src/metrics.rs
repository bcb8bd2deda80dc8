//! A gateway's request counters, from its admin port's `/metrics`.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::time::Duration;

use causeway_api::ServiceKey;

/// `causeway_gateway_requests_total` of one service by (direction, destination cluster, code).
pub type Counters = BTreeMap<(String, String, String), f64>;

/// The Prometheus text of `admin`'s `/metrics`.
pub async fn scrape(admin: SocketAddr, wait: Duration) -> anyhow::Result<String> {
    let a = crate::http::http_get(admin, &admin.to_string(), "/metrics", wait).await?;
    anyhow::ensure!(
        a.status.is_success(),
        "{admin}/metrics answered {}",
        a.status
    );
    Ok(String::from_utf8_lossy(&a.body).into_owned())
}

/// The request counters of `service` in the gateway whose admin port is `admin`.
pub async fn gateway_counters(
    admin: SocketAddr,
    service: &ServiceKey,
    wait: Duration,
) -> anyhow::Result<Counters> {
    Ok(counters_of(&scrape(admin, wait).await?, service))
}

/// The request counters of `service` in a gateway's metrics text.
pub fn counters_of(text: &str, service: &ServiceKey) -> Counters {
    let wanted = service.to_string();
    let mut out = BTreeMap::new();
    for s in causeway_api::prom::samples(text)
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
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counters_are_summed_per_direction_destination_and_code_for_one_service() {
        let text = r#"
causeway_gateway_requests_total{direction="egress",service="demo/echo",source_cluster="east",destination_cluster="west",code="200"} 3
causeway_gateway_requests_total{direction="egress",service="demo/echo",source_cluster="north",destination_cluster="west",code="200"} 2
causeway_gateway_requests_total{direction="egress",service="demo/other",source_cluster="east",destination_cluster="west",code="200"} 7
"#;
        let c = counters_of(text, &"demo/echo".parse().unwrap());
        assert_eq!(c.len(), 1);
        assert_eq!(c[&("egress".into(), "west".into(), "200".into())], 5.0);
    }
}
