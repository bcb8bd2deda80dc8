//! Tracing: with a collector set, each gateway records a span per request, as a child of the
//! request's `traceparent`, passes its own span on as the parent, and exports the spans as
//! OTLP/HTTP JSON. The collector here is a test HTTP server that keeps what it is sent.

use std::sync::{Arc, Mutex};

use causeway_api::proto::AppProtocol;
use http_body_util::BodyExt;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use serde_json::Value;

use crate::support::*;

const HOST: &str = "cart.shop.svc.clusterset.local";
const TRACE: &str = "4bf92f3577b34da6a3ce929d0e0e4736";

/// Every span the collector received.
#[derive(Clone, Default)]
struct Collector {
    spans: Arc<Mutex<Vec<Value>>>,
}

impl Collector {
    async fn start(&self) -> (String, tokio::task::JoinHandle<()>) {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}/v1/traces", listener.local_addr().unwrap());
        let spans = self.spans.clone();
        let task = tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    return;
                };
                let spans = spans.clone();
                tokio::spawn(async move {
                    let svc = service_fn(move |req: http::Request<hyper::body::Incoming>| {
                        let spans = spans.clone();
                        async move {
                            assert_eq!(req.uri().path(), "/v1/traces");
                            let body = req.into_body().collect().await.unwrap().to_bytes();
                            let v: Value = serde_json::from_slice(&body).unwrap();
                            for rs in v["resourceSpans"].as_array().unwrap() {
                                for ss in rs["scopeSpans"].as_array().unwrap() {
                                    for s in ss["spans"].as_array().unwrap() {
                                        let mut s = s.clone();
                                        s["resource"] = rs["resource"].clone();
                                        spans.lock().unwrap().push(s);
                                    }
                                }
                            }
                            Ok::<_, std::convert::Infallible>(http::Response::new(
                                http_body_util::Full::new(bytes::Bytes::from_static(b"{}")),
                            ))
                        }
                    });
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), svc)
                        .await;
                });
            }
        });
        (url, task)
    }

    fn of_trace(&self, trace: &str) -> Vec<Value> {
        self.spans
            .lock()
            .unwrap()
            .iter()
            .filter(|s| s["traceId"] == trace)
            .cloned()
            .collect()
    }
}

fn attr<'a>(span: &'a Value, key: &str) -> &'a Value {
    span["attributes"]
        .as_array()
        .unwrap()
        .iter()
        .find(|a| a["key"] == key)
        .map_or(&Value::Null, |a| &a["value"])
}

async fn traced_pair(url: &str) -> Pair {
    let pki = Pki::new();
    let start = |cluster: &'static str| {
        let mut c = gateway_config(&pki, cluster);
        c.trace_collector = Some(url.to_string());
        c.trace_sample_percent = 100.0;
        causeway_gateway::Gateway::start(c)
    };
    let east = start("east").await.unwrap();
    let west = start("west").await.unwrap();
    Pair { pki, east, west }
}

#[tokio::test]
async fn spans_of_both_gateways_form_one_tree_with_the_backend() {
    let collector = Collector::default();
    let (url, _task) = collector.start().await;
    let mesh = traced_pair(&url).await;
    let backend = HttpBackend::start("cart-west").await;
    mesh.configure(
        1,
        &[("cart", 80, AppProtocol::Http, vec![backend.addr])],
        |_, _| {},
    );

    let mut client = H1::connect(mesh.east.egress_addr).await;
    let incoming = format!("00-{TRACE}-00f067aa0ba902b7-01");
    let a = client
        .send("GET", HOST, "/items/7", &[("traceparent", &incoming)], "")
        .await;
    assert_eq!(a.status, 200, "{}", a.body);

    let spans = wait_for("both gateways' spans at the collector", 10, || async {
        let s = collector.of_trace(TRACE);
        (s.len() >= 2).then_some(s)
    })
    .await;
    assert_eq!(spans.len(), 2, "{spans:#?}");
    let egress = spans
        .iter()
        .find(|s| s["kind"] == 3)
        .expect("a client span");
    let ingress = spans
        .iter()
        .find(|s| s["kind"] == 2)
        .expect("a server span");
    assert_eq!(
        egress["parentSpanId"], "00f067aa0ba902b7",
        "child of the caller's span"
    );
    assert_eq!(
        ingress["parentSpanId"], egress["spanId"],
        "ingress is egress's child"
    );
    assert_eq!(egress["name"], "egress shop/cart");
    assert_eq!(
        attr(egress, "causeway.destination_cluster")["stringValue"],
        "west"
    );
    assert_eq!(
        attr(ingress, "http.response.status_code")["intValue"],
        "200"
    );
    assert_eq!(attr(ingress, "url.path")["stringValue"], "/items/7");
    let cluster_of = |s: &Value| {
        s["resource"]["attributes"]
            .as_array()
            .unwrap()
            .iter()
            .find(|a| a["key"] == "causeway.cluster")
            .unwrap()["value"]["stringValue"]
            .clone()
    };
    assert_eq!(cluster_of(egress), "east");
    assert_eq!(cluster_of(ingress), "west");
    let start: u128 = egress["startTimeUnixNano"]
        .as_str()
        .unwrap()
        .parse()
        .unwrap();
    let end: u128 = egress["endTimeUnixNano"].as_str().unwrap().parse().unwrap();
    assert!(start > 0 && end >= start);
    // The backend's parent is the ingress span.
    assert_eq!(
        a.seen("traceparent"),
        Some(format!(
            "00-{TRACE}-{}-01",
            ingress["spanId"].as_str().unwrap()
        ))
    );

    // Not sampled upstream: nothing is recorded, the flag travels on.
    let quiet = "0af7651916cd43dd8448eb211c80319c";
    let a = client
        .send(
            "GET",
            HOST,
            "/",
            &[("traceparent", &format!("00-{quiet}-b7ad6b7169203331-00"))],
            "",
        )
        .await;
    let seen = a.seen("traceparent").unwrap();
    assert!(
        seen.starts_with(&format!("00-{quiet}-")) && seen.ends_with("-00"),
        "{seen}"
    );

    // No traceparent: a new trace (sampled at 100 % here), rooted at the egress.
    let a = client.get(HOST, "/fresh").await;
    let seen = a
        .seen("traceparent")
        .expect("a traceparent for the backend");
    let fresh = seen.split('-').nth(1).unwrap().to_string();
    let spans = wait_for("the new trace's spans", 10, || async {
        let s = collector.of_trace(&fresh);
        (s.len() >= 2).then_some(s)
    })
    .await;
    let root = spans.iter().find(|s| s["kind"] == 3).unwrap();
    assert!(root.get("parentSpanId").is_none(), "{root}");
    assert!(
        collector.of_trace(quiet).is_empty(),
        "unsampled trace recorded"
    );
    // The exporter counts a batch once the collector has answered, a moment after the
    // collector has the spans.
    wait_for("east to count its exported spans", 10, || async {
        let ok = metric_or_zero(
            &mesh.east,
            "causeway_gateway_spans_total",
            &[("result", "ok")],
        );
        (ok >= 2.0).then_some(())
    })
    .await;
}

#[tokio::test]
async fn without_a_collector_traceparent_passes_untouched() {
    let mesh = Pair::start().await;
    let backend = HttpBackend::start("cart-west").await;
    mesh.configure(
        1,
        &[("cart", 80, AppProtocol::Http, vec![backend.addr])],
        |_, _| {},
    );
    let incoming = format!("00-{TRACE}-00f067aa0ba902b7-01");
    let mut client = H1::connect(mesh.east.egress_addr).await;
    let a = client
        .send("GET", HOST, "/", &[("traceparent", &incoming)], "")
        .await;
    assert_eq!(a.seen("traceparent"), Some(incoming));
}
