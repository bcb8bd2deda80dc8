//! An HTTP/1.1 client for one request per connection, as a probe wants it: the status, the
//! headers the demo services and the gateway set, the body; straight to a server or through
//! an HTTP proxy (the gateway's egress) with an absolute-form request.

use std::net::SocketAddr;
use std::time::Duration;

use anyhow::{anyhow, Context as _};
use bytes::Bytes;
use http::{Request, StatusCode};
use http_body_util::{BodyExt, Empty};
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;
use tokio::time::timeout;

use crate::{CLUSTER_HEADER, HOSTNAME_HEADER};

/// What an HTTP echo answered.
#[derive(Debug, Clone)]
pub struct HttpAnswer {
    pub status: StatusCode,
    /// The [`CLUSTER_HEADER`] of the response (the cluster whose backend answered).
    pub cluster: Option<String>,
    /// The [`HOSTNAME_HEADER`] of the response (the replica that answered, if it has one).
    pub hostname: Option<String>,
    pub body: Bytes,
}

/// One HTTP/1.1 GET on a new connection to `addr`, with `Host: authority`, bounded by `wait`.
pub async fn http_get(
    addr: SocketAddr,
    authority: &str,
    path: &str,
    wait: Duration,
) -> anyhow::Result<HttpAnswer> {
    get(addr, authority, path.to_string(), wait).await
}

/// [`http_get`] through the HTTP proxy at `proxy`: the request line names the whole URL.
pub async fn http_get_via(
    proxy: SocketAddr,
    authority: &str,
    path: &str,
    wait: Duration,
) -> anyhow::Result<HttpAnswer> {
    get(proxy, authority, format!("http://{authority}{path}"), wait).await
}

async fn get(
    addr: SocketAddr,
    authority: &str,
    path: String,
    wait: Duration,
) -> anyhow::Result<HttpAnswer> {
    timeout(wait, async {
        let stream = TcpStream::connect(addr)
            .await
            .with_context(|| format!("connecting to {addr}"))?;
        let _ = stream.set_nodelay(true);
        let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
            .await
            .context("HTTP/1.1 handshake")?;
        tokio::spawn(conn);
        let req = Request::get(path.as_str())
            .header(http::header::HOST, authority)
            .body(Empty::<Bytes>::new())?;
        let resp = sender
            .send_request(req)
            .await
            .context("sending the request")?;
        let status = resp.status();
        let cluster = resp
            .headers()
            .get(CLUSTER_HEADER)
            .and_then(|v| v.to_str().ok())
            .map(str::to_string);
        let hostname = resp
            .headers()
            .get(HOSTNAME_HEADER)
            .and_then(|v| v.to_str().ok())
            .map(str::to_string);
        let body = resp
            .into_body()
            .collect()
            .await
            .context("reading the body")?
            .to_bytes();
        Ok(HttpAnswer {
            status,
            cluster,
            hostname,
            body,
        })
    })
    .await
    .map_err(|_| anyhow!("GET http://{authority}{path} via {addr}: no answer within {wait:?}"))?
}
