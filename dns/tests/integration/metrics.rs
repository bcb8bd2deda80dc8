//! `causeway_dns_queries_total{qtype,rcode}` and the latency histogram, as scraped.

use crate::support::*;

fn sample(text: &str, series: &str) -> f64 {
    causeway_api::prom::series(text, series).unwrap_or(0.0)
}

#[tokio::test]
async fn queries_are_counted_by_type_and_rcode() {
    let server = TestServer::start(mesh()).await;
    for _ in 0..3 {
        server.dig(&[WEB, "A"]).await;
    }
    server.dig(&["nope.prod.svc.clusterset.local", "A"]).await;
    server.dig(&["example.com", "AAAA"]).await;
    server
        .dig(&["+tcp", &format!("_http._tcp.{WEB}"), "SRV"])
        .await;

    let text = server.metrics_text();
    let q = |labels: &str| sample(&text, &format!("causeway_dns_queries_total{{{labels}}}"));
    assert_eq!(q(r#"qtype="A",rcode="NOERROR""#), 3.0, "{text}");
    assert_eq!(q(r#"qtype="A",rcode="NXDOMAIN""#), 1.0, "{text}");
    assert_eq!(q(r#"qtype="AAAA",rcode="REFUSED""#), 1.0, "{text}");
    assert_eq!(q(r#"qtype="SRV",rcode="NOERROR""#), 1.0, "{text}");
    assert_eq!(
        sample(&text, "causeway_dns_request_duration_seconds_count"),
        6.0,
        "{text}"
    );
    // Answers from memory: well under a millisecond each, even in a debug build.
    assert!(
        sample(
            &text,
            r#"causeway_dns_request_duration_seconds_bucket{le="0.001"}"#
        ) >= 5.0,
        "{text}"
    );
    server.stop().await;
}
