//! What one request did, for metrics, the JSON access log and its span.

use std::sync::Arc;
use std::time::Instant;

use http::Method;
use serde::Serialize;

use super::Proxy;

#[derive(Serialize)]
struct AccessLog<'a> {
    direction: &'a str,
    method: &'a str,
    authority: &'a str,
    path: &'a str,
    status: u16,
    duration_ms: f64,
    service: &'a str,
    source_cluster: &'a str,
    destination_cluster: &'a str,
    attempts: u32,
    #[serde(skip_serializing_if = "Option::is_none")]
    traceparent: Option<&'a str>,
    /// With tracing on: this request's trace and the gateway's span in it.
    #[serde(skip_serializing_if = "Option::is_none")]
    trace_id: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    span_id: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    error: Option<&'a str>,
}

/// The path and `traceparent` of a request, as the access log records them.
pub(crate) fn path_and_traceparent<B>(req: &http::Request<B>) -> (String, Option<String>) {
    let path = req
        .uri()
        .path_and_query()
        .map_or("/", |p| p.as_str())
        .to_string();
    let traceparent = req
        .headers()
        .get("traceparent")
        .and_then(|v| v.to_str().ok())
        .map(str::to_string);
    (path, traceparent)
}

/// What one request did, for metrics, the access log and its span: a guard that reports
/// exactly once. [`Record::finish`] reports the outcome; a record dropped unfinished (the
/// caller went away while the request waited) reports `cancelled` (499 in the log, as nginx
/// writes it), so no request goes uncounted.
pub(crate) struct Record<'a> {
    proxy: &'a Proxy,
    pub(crate) direction: &'static str,
    pub(crate) method: &'a Method,
    pub(crate) authority: &'a str,
    pub(crate) path: &'a str,
    pub(crate) service: String,
    pub(crate) source_cluster: &'a str,
    pub(crate) destination_cluster: Arc<str>,
    pub(crate) attempts: u32,
    pub(crate) traceparent: Option<&'a str>,
    pub(crate) start: Instant,
    /// This request's span, when tracing is on.
    pub(crate) span: Option<crate::trace::SpanContext>,
    done: bool,
}

/// The status the access log gives a request whose caller went away first.
const CANCELLED: u16 = 499;

impl<'a> Record<'a> {
    /// A request that starts now, untraced; [`Record::traced`] joins or starts its trace.
    pub(crate) fn new(
        proxy: &'a Proxy,
        direction: &'static str,
        method: &'a Method,
        authority: &'a str,
        path: &'a str,
    ) -> Self {
        Self {
            proxy,
            direction,
            method,
            authority,
            path,
            service: String::new(),
            source_cluster: "",
            destination_cluster: Arc::from(""),
            attempts: 0,
            traceparent: None,
            start: Instant::now(),
            span: None,
            done: false,
        }
    }

    /// With the caller's `traceparent` (if any) and a span of ours when tracing is on.
    pub(crate) fn traced(mut self, traceparent: Option<&'a str>) -> Self {
        self.traceparent = traceparent;
        self.span = self.proxy.tracer.start(traceparent);
        self
    }

    /// Counts the request under its outcome: an HTTP status, or `tcp` / `tcp_error` for tunnels.
    pub(crate) fn finish(mut self, code: &str, status: u16, error: Option<&str>) {
        self.report(code, status, error);
    }

    /// Finishes the request as refused by the gateway with `status` and `error` (also the
    /// `x-causeway-error` of the reply), and makes that reply.
    pub(crate) fn refuse(
        self,
        status: http::StatusCode,
        error: &'static str,
        message: String,
    ) -> http::Response<crate::body::Body> {
        self.finish(status.as_str(), status.as_u16(), Some(error));
        super::reply(status, error, message)
    }

    fn report(&mut self, code: &str, status: u16, error: Option<&str>) {
        self.done = true;
        let shared = self.proxy;
        let elapsed = self.start.elapsed();
        shared
            .metrics
            .requests
            .with_label_values(&[
                self.direction,
                &self.service,
                self.source_cluster,
                &self.destination_cluster,
                code,
            ])
            .inc();
        shared
            .metrics
            .request_duration
            .observe(elapsed.as_secs_f64());
        if let Some(ctx) = self.span {
            use crate::trace::{int, string};
            let end = crate::trace::now_unix_ns();
            let mut attributes = vec![
                ("http.request.method", string(self.method.as_str())),
                ("url.path", string(self.path)),
                ("server.address", string(self.authority)),
                ("causeway.service", string(&self.service)),
                ("causeway.source_cluster", string(self.source_cluster)),
                (
                    "causeway.destination_cluster",
                    string(&*self.destination_cluster),
                ),
                ("causeway.attempts", int(i64::from(self.attempts))),
            ];
            if code.starts_with("tcp") {
                attributes.push(("causeway.outcome", string(code)));
            } else {
                attributes.push(("http.response.status_code", int(i64::from(status))));
            }
            if let Some(e) = error {
                attributes.push(("error.type", string(e)));
            }
            shared.tracer.finish(crate::trace::Span {
                ctx,
                name: format!("{} {}", self.direction, self.service),
                kind: if self.direction == "ingress" { 2 } else { 3 },
                start_unix_ns: end.saturating_sub(elapsed.as_nanos()),
                end_unix_ns: end,
                attributes,
                error: status >= 500 || error.is_some(),
            });
        }
        if shared.config.access_log {
            let line = AccessLog {
                direction: self.direction,
                method: self.method.as_str(),
                authority: self.authority,
                path: self.path,
                status,
                duration_ms: elapsed.as_secs_f64() * 1000.0,
                service: &self.service,
                source_cluster: self.source_cluster,
                destination_cluster: &self.destination_cluster,
                attempts: self.attempts,
                traceparent: self.traceparent,
                trace_id: self.span.map(|s| s.trace_id_hex()),
                span_id: self.span.map(|s| s.span_id_hex()),
                error,
            };
            if let Ok(json) = serde_json::to_string(&line) {
                println!("{json}");
            }
        }
    }
}

impl Drop for Record<'_> {
    fn drop(&mut self) {
        if !self.done {
            self.report("cancelled", CANCELLED, Some("client_cancelled"));
        }
    }
}
