//! Clients the lab and the tests call services with. The DNS and HTTP clients, the
//! [`Prober`] and its [`Timeline`] are causeway-probe's (shared with `causeway drill`); the gRPC
//! health check and the TCP echo, which only the lab's demo services answer, are here.
//!
//! Every function runs in the network namespace of the thread that calls it: see
//! [`super::net::run_in`].

use std::net::SocketAddr;
use std::time::Duration;

use anyhow::{anyhow, bail, Context as _};
use bytes::Bytes;
use http::Request;
use http_body_util::{BodyExt, Full};
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;
use tokio::time::timeout;

pub use causeway_probe::dns::{dns_a, dns_query_a, resolve};
pub use causeway_probe::http::{http_get, http_get_via, HttpAnswer};
pub use causeway_probe::prober::{ProbeTarget, Prober, Sample, Timeline};

use super::demo::{grpc_frame, CLUSTER_HEADER, GRPC_HEALTH_CHECK};

// === gRPC ===

/// What the demo gRPC service answered.
#[derive(Debug, Clone)]
pub struct GrpcAnswer {
    /// `grpc-status` (0 = OK).
    pub grpc_status: u32,
    pub cluster: Option<String>,
    /// The response message bytes (without the 5-byte frame header).
    pub message: Bytes,
}

/// Calls `grpc.health.v1.Health/Check` over h2c (prior knowledge) on a new connection.
pub async fn grpc_health(
    addr: SocketAddr,
    authority: &str,
    wait: Duration,
) -> anyhow::Result<GrpcAnswer> {
    timeout(wait, async {
        let stream = TcpStream::connect(addr)
            .await
            .with_context(|| format!("connecting to {addr}"))?;
        let _ = stream.set_nodelay(true);
        let (mut sender, conn) =
            hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(stream))
                .await
                .context("HTTP/2 handshake")?;
        tokio::spawn(conn);
        let req = Request::post(format!("http://{authority}{GRPC_HEALTH_CHECK}"))
            .header(http::header::CONTENT_TYPE, "application/grpc")
            .header("te", "trailers")
            // HealthCheckRequest { service: "" } is the empty message.
            .body(Full::new(grpc_frame(&[])))?;
        let resp = sender
            .send_request(req)
            .await
            .context("sending the request")?;
        let header_cluster = resp
            .headers()
            .get(CLUSTER_HEADER)
            .and_then(|v| v.to_str().ok())
            .map(str::to_string);
        // A trailers-only answer carries grpc-status in the headers.
        let header_status = resp
            .headers()
            .get("grpc-status")
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse().ok());
        let collected = resp
            .into_body()
            .collect()
            .await
            .context("reading the body")?;
        let trailers = collected.trailers().cloned();
        let data = collected.to_bytes();
        let grpc_status = trailers
            .as_ref()
            .and_then(|t| t.get("grpc-status"))
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse().ok())
            .or(header_status)
            .ok_or_else(|| anyhow!("no grpc-status in the answer"))?;
        let cluster = header_cluster.or_else(|| {
            trailers
                .as_ref()
                .and_then(|t| t.get(CLUSTER_HEADER))
                .and_then(|v| v.to_str().ok())
                .map(str::to_string)
        });
        let message = if data.len() >= 5 {
            data.slice(5..)
        } else {
            Bytes::new()
        };
        Ok(GrpcAnswer {
            grpc_status,
            cluster,
            message,
        })
    })
    .await
    .map_err(|_| {
        anyhow!("gRPC health check of {authority} via {addr}: no answer within {wait:?}")
    })?
}

// === TCP ===

/// Sends one line to a TCP echo and returns the line it sends back (without the newline).
pub async fn tcp_echo(addr: SocketAddr, line: &str, wait: Duration) -> anyhow::Result<String> {
    timeout(wait, async {
        let mut stream = TcpStream::connect(addr)
            .await
            .with_context(|| format!("connecting to {addr}"))?;
        stream.write_all(format!("{line}\n").as_bytes()).await?;
        let mut reader = BufReader::new(stream);
        let mut reply = String::new();
        let n = reader.read_line(&mut reply).await?;
        if n == 0 {
            bail!("{addr} closed the connection without answering");
        }
        Ok(reply.trim_end().to_string())
    })
    .await
    .map_err(|_| anyhow!("TCP echo via {addr}: no answer within {wait:?}"))?
}
