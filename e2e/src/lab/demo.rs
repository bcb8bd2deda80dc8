//! The lab's demo services, each reporting the cluster it runs in: an HTTP echo (HTTP/1.1 and
//! h2c), a gRPC service (the standard `grpc.health.v1.Health/Check`) and a TCP line echo.
//!
//! They run as `causeway-demo` processes inside the cluster namespaces; the functions here are
//! public so that tests can run them in-process too.

use std::collections::BTreeMap;
use std::convert::Infallible;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use bytes::{Buf, Bytes};
use http::{HeaderMap, HeaderValue, Request, Response, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::{TcpListener, TcpStream};

pub use causeway_probe::CLUSTER_HEADER;

pub use causeway_probe::HOSTNAME_HEADER;

/// `grpc.health.v1.Health/Check`, the method the demo gRPC service implements.
pub const GRPC_HEALTH_CHECK: &str = "/grpc.health.v1.Health/Check";

// === impl Demo ===

/// What every demo server knows: its cluster and whether it should fail.
#[derive(Debug)]
pub struct Demo {
    cluster: String,
    /// The replica's hostname, for a server that is one of several replicas (headless).
    hostname: Option<String>,
    /// While this file exists the server answers 503 (gRPC: UNAVAILABLE; TCP: closes).
    fail_file: Option<PathBuf>,
    /// Set by `/fail`, cleared by `/heal` (HTTP echo only).
    failing: AtomicBool,
}

impl Demo {
    pub fn new(cluster: impl Into<String>, fail_file: Option<PathBuf>) -> Arc<Self> {
        Self::replica(cluster, None, fail_file)
    }

    /// One replica of a stateful service: its answers name `hostname` too.
    pub fn replica(
        cluster: impl Into<String>,
        hostname: Option<String>,
        fail_file: Option<PathBuf>,
    ) -> Arc<Self> {
        Arc::new(Self {
            cluster: cluster.into(),
            hostname,
            fail_file,
            failing: AtomicBool::new(false),
        })
    }

    pub fn cluster(&self) -> &str {
        &self.cluster
    }

    /// Whether requests should fail now. The file is checked on every request: a stat is cheap
    /// next to a request, and tests flip it without talking to the process.
    pub fn is_failing(&self) -> bool {
        self.failing.load(Ordering::Relaxed) || self.fail_file.as_ref().is_some_and(|f| f.exists())
    }
}

/// Accepts connections forever, serving each with `serve`; accept errors (too many open
/// files, ...) are logged and retried rather than ending the server.
async fn accept_loop<F, Fut>(
    listener: TcpListener,
    demo: Arc<Demo>,
    serve: F,
) -> std::io::Result<()>
where
    F: Fn(TcpStream, Arc<Demo>) -> Fut,
    Fut: std::future::Future<Output = ()> + Send + 'static,
{
    loop {
        match listener.accept().await {
            Ok((stream, _)) => {
                let _ = stream.set_nodelay(true);
                tokio::spawn(serve(stream, demo.clone()));
            }
            Err(e) => {
                tracing::warn!(error = %e, "accept failed");
                tokio::time::sleep(std::time::Duration::from_millis(50)).await;
            }
        }
    }
}

// === HTTP echo ===

/// Serves the HTTP echo: HTTP/1.1 and h2c (prior knowledge) on the same port.
///
/// - `GET /anything` → 200 `{"cluster", "method", "path", "version", "headers"}`.
/// - `/fail` and `/heal` switch failing on and off; while failing every other path gets 503
///   `{"cluster", "error": "failing"}`.
///
/// Every response carries [`CLUSTER_HEADER`].
pub async fn serve_http_echo(listener: TcpListener, demo: Arc<Demo>) -> std::io::Result<()> {
    accept_loop(listener, demo, |stream, demo| async move {
        let service = service_fn(move |req| {
            let demo = demo.clone();
            async move { Ok::<_, Infallible>(http_echo(&demo, req).await) }
        });
        if let Err(e) = auto::Builder::new(TokioExecutor::new())
            .serve_connection(TokioIo::new(stream), service)
            .await
        {
            tracing::debug!(error = %e, "HTTP connection ended with an error");
        }
    })
    .await
}

async fn http_echo(demo: &Demo, req: Request<Incoming>) -> Response<Full<Bytes>> {
    let (parts, body) = req.into_parts();
    // Read the whole body so that the connection can be reused; its size is reported.
    let body_bytes = match body.collect().await {
        Ok(b) => b.aggregate().remaining(),
        Err(_) => 0,
    };
    let path = parts.uri.path().to_string();
    let json = match path.as_str() {
        "/fail" | "/heal" => {
            demo.failing.store(path == "/fail", Ordering::Relaxed);
            let v = serde_json::json!({"cluster": demo.cluster, "failing": path == "/fail"});
            return json_response(demo, StatusCode::OK, v);
        }
        _ if demo.is_failing() => {
            let v = serde_json::json!({"cluster": demo.cluster, "error": "failing"});
            return json_response(demo, StatusCode::SERVICE_UNAVAILABLE, v);
        }
        _ => serde_json::json!({
            "cluster": demo.cluster,
            "hostname": demo.hostname,
            "method": parts.method.as_str(),
            "path": parts.uri.path_and_query().map_or("/", |p| p.as_str()),
            "version": format!("{:?}", parts.version),
            "headers": headers_json(&parts.headers),
            "body_bytes": body_bytes,
        }),
    };
    json_response(demo, StatusCode::OK, json)
}

fn headers_json(headers: &HeaderMap) -> BTreeMap<String, String> {
    let mut out: BTreeMap<String, String> = BTreeMap::new();
    for (name, value) in headers {
        let value = String::from_utf8_lossy(value.as_bytes()).into_owned();
        out.entry(name.as_str().to_string())
            .and_modify(|v| {
                v.push_str(", ");
                v.push_str(&value);
            })
            .or_insert(value);
    }
    out
}

fn json_response(demo: &Demo, status: StatusCode, v: serde_json::Value) -> Response<Full<Bytes>> {
    let mut body = v.to_string();
    body.push('\n');
    let mut resp = Response::new(Full::new(Bytes::from(body)));
    *resp.status_mut() = status;
    let h = resp.headers_mut();
    h.insert(
        http::header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    if let Ok(v) = HeaderValue::from_str(&demo.cluster) {
        h.insert(CLUSTER_HEADER, v);
    }
    if let Some(v) = demo
        .hostname
        .as_deref()
        .and_then(|n| HeaderValue::from_str(n).ok())
    {
        h.insert(HOSTNAME_HEADER, v);
    }
    resp
}

// === gRPC ===

/// gRPC status codes the demo answers with.
const GRPC_OK: u32 = 0;
const GRPC_UNIMPLEMENTED: u32 = 12;
const GRPC_UNAVAILABLE: u32 = 14;

/// Serves `grpc.health.v1.Health/Check` over h2c (HTTP/1.1 is accepted too but gRPC clients use
/// HTTP/2). The answer is `SERVING`, or gRPC status UNAVAILABLE while failing; the cluster is in
/// the [`CLUSTER_HEADER`] header and trailer. Other methods get UNIMPLEMENTED.
///
/// Written on hyper directly: one method with a two-byte message does not need a code
/// generator.
pub async fn serve_grpc(listener: TcpListener, demo: Arc<Demo>) -> std::io::Result<()> {
    accept_loop(listener, demo, |stream, demo| async move {
        let service = service_fn(move |req| {
            let demo = demo.clone();
            async move { Ok::<_, Infallible>(grpc(&demo, req).await) }
        });
        if let Err(e) = auto::Builder::new(TokioExecutor::new())
            .serve_connection(TokioIo::new(stream), service)
            .await
        {
            tracing::debug!(error = %e, "gRPC connection ended with an error");
        }
    })
    .await
}

type GrpcBody = http_body_util::combinators::BoxBody<Bytes, Infallible>;

async fn grpc(demo: &Demo, req: Request<Incoming>) -> Response<GrpcBody> {
    let path = req.uri().path().to_string();
    let _ = req.into_body().collect().await;
    let (status, message): (u32, Option<&[u8]>) = if path != GRPC_HEALTH_CHECK {
        (GRPC_UNIMPLEMENTED, None)
    } else if demo.is_failing() {
        (GRPC_UNAVAILABLE, None)
    } else {
        // HealthCheckResponse { status: SERVING (1) }: field 1, varint.
        (GRPC_OK, Some(&[0x08, 0x01]))
    };

    let mut trailers = HeaderMap::new();
    trailers.insert("grpc-status", HeaderValue::from(status));
    if status != GRPC_OK {
        let msg = if status == GRPC_UNIMPLEMENTED {
            "only grpc.health.v1.Health/Check is implemented"
        } else {
            "failing"
        };
        trailers.insert("grpc-message", HeaderValue::from_static(msg));
    }
    let cluster = HeaderValue::from_str(&demo.cluster).ok();
    if let Some(c) = &cluster {
        trailers.insert(CLUSTER_HEADER, c.clone());
    }

    let data = message.map(grpc_frame).unwrap_or_default();
    let body = Full::new(data)
        .with_trailers(async move { Some(Ok(trailers)) })
        .boxed();
    let mut resp = Response::new(body);
    let h = resp.headers_mut();
    h.insert(
        http::header::CONTENT_TYPE,
        HeaderValue::from_static("application/grpc"),
    );
    if let Some(c) = cluster {
        h.insert(CLUSTER_HEADER, c);
    }
    resp
}

/// A gRPC length-prefixed message: not compressed, big-endian length, the bytes.
pub fn grpc_frame(message: &[u8]) -> Bytes {
    let mut out = Vec::with_capacity(5 + message.len());
    out.push(0);
    out.extend_from_slice(&(message.len() as u32).to_be_bytes());
    out.extend_from_slice(message);
    Bytes::from(out)
}

// === TCP echo ===

/// Echoes every line back prefixed by the cluster: `hello` → `east: hello`. While failing it
/// closes new connections at once.
pub async fn serve_tcp_echo(listener: TcpListener, demo: Arc<Demo>) -> std::io::Result<()> {
    accept_loop(listener, demo, |stream, demo| async move {
        if demo.is_failing() {
            return;
        }
        let (read, mut write) = stream.into_split();
        let mut lines = BufReader::new(read).lines();
        while let Ok(Some(line)) = lines.next_line().await {
            let reply = format!("{}: {line}\n", demo.cluster);
            if write.write_all(reply.as_bytes()).await.is_err() {
                break;
            }
        }
    })
    .await
}
