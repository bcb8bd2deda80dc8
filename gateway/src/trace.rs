//! Distributed tracing: W3C `traceparent` in, a span per request out, exported as OTLP/HTTP
//! JSON to a collector (`trace_collector`, e.g. an OpenTelemetry Collector's
//! `http://otel-collector:4318/v1/traces`).
//!
//! With a collector set, each request through a gateway gets a span: a child of the request's
//! `traceparent` (or the root of a new trace), and the `traceparent` sent on names that span as
//! the parent, so egress, ingress and the backend's own spans form one tree. A request whose
//! `traceparent` says "sampled" is recorded; one without a `traceparent` is recorded with the
//! probability `trace_sample_percent`. Spans are batched and sent by one task; when the
//! collector is slow or away, spans past the queue are dropped and counted, and requests never
//! wait for it. Without a collector, `traceparent` passes through untouched.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use http::{HeaderValue, Request};
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use prometheus::IntCounterVec;
use rand::Rng;
use serde_json::{json, Value};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

/// Spans waiting for the exporter; past this, new spans are dropped.
const QUEUE: usize = 4096;
/// Spans per export request.
const BATCH: usize = 256;
/// How long a span may wait for its batch to fill.
const FLUSH: Duration = Duration::from_millis(500);
/// Timeout of one export request.
const EXPORT_TIMEOUT: Duration = Duration::from_secs(5);

/// The trace position of one request at this gateway.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct SpanContext {
    pub(crate) trace_id: [u8; 16],
    pub(crate) span_id: [u8; 8],
    pub(crate) parent: Option<[u8; 8]>,
    pub(crate) sampled: bool,
}

impl SpanContext {
    pub(crate) fn trace_id_hex(&self) -> String {
        hex(&self.trace_id)
    }

    pub(crate) fn span_id_hex(&self) -> String {
        hex(&self.span_id)
    }

    /// The `traceparent` to send on: this span as the parent.
    pub(crate) fn traceparent(&self) -> HeaderValue {
        let flags = if self.sampled { "01" } else { "00" };
        let v = format!("00-{}-{}-{flags}", hex(&self.trace_id), hex(&self.span_id));
        HeaderValue::from_str(&v).expect("hex is a valid header value")
    }
}

/// `(trace id, parent span id, sampled)` of a W3C `traceparent` (version 00, or a later
/// version read as 00), or `None` when it is malformed or all zeros.
pub(crate) fn parse_traceparent(v: &str) -> Option<([u8; 16], [u8; 8], bool)> {
    let mut parts = v.trim().split('-');
    let version = parts.next()?;
    let trace = parts.next()?;
    let parent = parts.next()?;
    let flags = parts.next()?;
    if version.len() != 2 || version == "ff" || (version == "00" && parts.next().is_some()) {
        return None;
    }
    let trace_id: [u8; 16] = unhex(trace)?;
    let parent_id: [u8; 8] = unhex(parent)?;
    let flags: [u8; 1] = unhex(flags)?;
    if trace_id == [0; 16] || parent_id == [0; 8] {
        return None;
    }
    Some((trace_id, parent_id, flags[0] & 1 == 1))
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn unhex<const N: usize>(s: &str) -> Option<[u8; N]> {
    if s.len() != 2 * N
        || !s
            .bytes()
            .all(|b| b.is_ascii_hexdigit() && !b.is_ascii_uppercase())
    {
        return None;
    }
    let mut out = [0u8; N];
    for (i, o) in out.iter_mut().enumerate() {
        *o = u8::from_str_radix(&s[2 * i..2 * i + 2], 16).ok()?;
    }
    Some(out)
}

/// A finished span, as the exporter sends it.
#[derive(Debug, Clone)]
pub(crate) struct Span {
    pub(crate) ctx: SpanContext,
    pub(crate) name: String,
    /// OTLP span kind: 2 server (ingress), 3 client (egress).
    pub(crate) kind: u8,
    pub(crate) start_unix_ns: u128,
    pub(crate) end_unix_ns: u128,
    pub(crate) attributes: Vec<(&'static str, Value)>,
    pub(crate) error: bool,
}

/// Starts spans and hands finished ones to the exporter. Off (no collector): no spans.
pub(crate) struct Tracer {
    tx: Option<mpsc::Sender<Span>>,
    sample_percent: f64,
    exported: IntCounterVec,
}

impl Tracer {
    /// A tracer exporting to `collector` (`http://host:port/path`) until `shutdown`.
    pub(crate) fn new(
        collector: Option<&str>,
        sample_percent: f64,
        cluster: &str,
        node: &str,
        exported: IntCounterVec,
        shutdown: CancellationToken,
    ) -> Self {
        let tx = collector.map(|url| {
            let (tx, rx) = mpsc::channel(QUEUE);
            let resource = json!({"attributes": [
                attr("service.name", json!({"stringValue": "causeway-gateway"})),
                attr("service.instance.id", json!({"stringValue": node})),
                attr("causeway.cluster", json!({"stringValue": cluster})),
            ]});
            tokio::spawn(export_loop(
                url.to_string(),
                resource,
                rx,
                exported.clone(),
                shutdown,
            ));
            tx
        });
        Self {
            tx,
            sample_percent,
            exported,
        }
    }

    /// The span of a request that arrived with `traceparent` (None when tracing is off).
    pub(crate) fn start(&self, traceparent: Option<&str>) -> Option<SpanContext> {
        self.tx.as_ref()?;
        let mut rng = rand::rng();
        let span_id = loop {
            let id: [u8; 8] = rng.random();
            if id != [0; 8] {
                break id;
            }
        };
        Some(match traceparent.and_then(parse_traceparent) {
            Some((trace_id, parent, sampled)) => SpanContext {
                trace_id,
                span_id,
                parent: Some(parent),
                sampled,
            },
            None => SpanContext {
                trace_id: loop {
                    let id: [u8; 16] = rng.random();
                    if id != [0; 16] {
                        break id;
                    }
                },
                span_id,
                parent: None,
                sampled: rng.random::<f64>() * 100.0 < self.sample_percent,
            },
        })
    }

    /// Queues a finished span; drops it (counted) when the queue is full.
    pub(crate) fn finish(&self, span: Span) {
        let Some(tx) = &self.tx else { return };
        if !span.ctx.sampled {
            return;
        }
        if tx.try_send(span).is_err() {
            self.exported.with_label_values(&["dropped"]).inc();
        }
    }
}

fn attr(key: &str, value: Value) -> Value {
    json!({"key": key, "value": value})
}

/// An attribute value in OTLP JSON.
pub(crate) fn string(v: impl Into<String>) -> Value {
    json!({"stringValue": v.into()})
}

pub(crate) fn int(v: i64) -> Value {
    // OTLP JSON carries 64-bit integers as strings.
    json!({"intValue": v.to_string()})
}

fn span_json(s: &Span) -> Value {
    let mut v = json!({
        "traceId": hex(&s.ctx.trace_id),
        "spanId": hex(&s.ctx.span_id),
        "name": s.name,
        "kind": s.kind,
        "startTimeUnixNano": s.start_unix_ns.to_string(),
        "endTimeUnixNano": s.end_unix_ns.to_string(),
        "attributes": s.attributes.iter().map(|(k, v)| attr(k, v.clone())).collect::<Vec<_>>(),
        "status": {"code": if s.error { 2 } else { 0 }},
    });
    if let Some(p) = &s.ctx.parent {
        v["parentSpanId"] = json!(hex(p));
    }
    v
}

/// Now, in nanoseconds since the Unix epoch.
pub(crate) fn now_unix_ns() -> u128 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos())
}

async fn export_loop(
    url: String,
    resource: Value,
    mut rx: mpsc::Receiver<Span>,
    exported: IntCounterVec,
    shutdown: CancellationToken,
) {
    let client: Client<_, Full<Bytes>> = Client::builder(TokioExecutor::new()).build_http();
    let mut batch: Vec<Span> = Vec::with_capacity(BATCH);
    loop {
        let deadline = tokio::time::sleep(FLUSH);
        tokio::pin!(deadline);
        let closing = loop {
            tokio::select! {
                _ = shutdown.cancelled() => break true,
                _ = &mut deadline => break false,
                span = rx.recv() => match span {
                    Some(s) => {
                        batch.push(s);
                        if batch.len() >= BATCH {
                            break false;
                        }
                    }
                    None => break true,
                },
            }
        };
        if !batch.is_empty() {
            let n = batch.len() as u64;
            let body = json!({"resourceSpans": [{
                "resource": resource,
                "scopeSpans": [{
                    "scope": {"name": "causeway-gateway", "version": env!("CARGO_PKG_VERSION")},
                    "spans": batch.iter().map(span_json).collect::<Vec<_>>(),
                }],
            }]});
            batch.clear();
            let req = Request::post(&url)
                .header(http::header::CONTENT_TYPE, "application/json")
                .body(Full::new(Bytes::from(body.to_string())));
            let result = match req {
                Ok(req) => tokio::time::timeout(EXPORT_TIMEOUT, async {
                    let resp = client.request(req).await.map_err(|e| e.to_string())?;
                    let status = resp.status();
                    let _ = resp.into_body().collect().await;
                    if status.is_success() {
                        Ok(())
                    } else {
                        Err(format!("collector answered {status}"))
                    }
                })
                .await
                .unwrap_or_else(|_| Err("no answer in time".into())),
                Err(e) => Err(e.to_string()),
            };
            match result {
                Ok(()) => exported.with_label_values(&["ok"]).inc_by(n),
                Err(e) => {
                    exported.with_label_values(&["error"]).inc_by(n);
                    tracing::warn!(collector = %url, error = %e, spans = n, "span export failed");
                }
            }
        }
        if closing {
            return;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn traceparent_round_trip_and_garbage() {
        let (t, p, s) =
            parse_traceparent("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01").unwrap();
        assert_eq!(hex(&t), "4bf92f3577b34da6a3ce929d0e0e4736");
        assert_eq!(hex(&p), "00f067aa0ba902b7");
        assert!(s);
        let ctx = SpanContext {
            trace_id: t,
            span_id: p,
            parent: None,
            sampled: false,
        };
        assert_eq!(
            ctx.traceparent(),
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-00"
        );
        for bad in [
            "",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7",
            "00-00000000000000000000000000000000-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01",
            "00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01",
            "ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-extra",
            "00-xyz-00f067aa0ba902b7-01",
        ] {
            assert!(parse_traceparent(bad).is_none(), "{bad:?}");
        }
        // A later version may carry more fields.
        assert!(
            parse_traceparent("01-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-ab")
                .is_some()
        );
    }
}
