//! The gateway's errors. Proxy errors know whether a retry is safe (pingora's habit): retry
//! logic asks the error, never a string.

use std::io;
use std::net::SocketAddr;
use std::path::PathBuf;

use crate::body::BoxError;

/// Why the gateway could not start.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error(transparent)]
    Config(#[from] crate::config::ConfigError),
    #[error("cannot load the gateway identity: {0}")]
    Identity(#[from] causeway_api::tls::TlsError),
    #[error("cannot listen on {addr} ({what}): {source}")]
    Bind {
        what: &'static str,
        addr: SocketAddr,
        #[source]
        source: io::Error,
    },
    #[error("config file {}: {reason}", path.display())]
    ConfigFile { path: PathBuf, reason: String },
    #[error("cannot start the data threads: {0}")]
    Runtime(#[source] io::Error),
}

/// Why one attempt to forward a request or a connection failed.
#[derive(Debug, thiserror::Error)]
pub enum ProxyError {
    /// Nothing was sent: the connection could not be made (or was refused before the request
    /// was written). Safe to retry whatever the method.
    #[error("cannot connect to {target}: {source}")]
    Connect {
        target: String,
        #[source]
        source: BoxError,
    },
    /// The request may have reached the other side: retry only idempotent requests.
    #[error("request to {target} failed: {source}")]
    Request {
        target: String,
        #[source]
        source: BoxError,
    },
    /// The destination answered a CONNECT with something else than 200.
    #[error("{target} refused the tunnel with status {status}")]
    TunnelRefused { target: String, status: u16 },
    #[error("no ready endpoint for {0}")]
    NoEndpoint(String),
}

impl ProxyError {
    /// Whether a retry is safe for any request (nothing reached the destination).
    pub fn is_connect(&self) -> bool {
        matches!(self, Self::Connect { .. } | Self::NoEndpoint(_))
    }

    /// Whether the client's own request body failed the attempt (then it is the client's
    /// error, a 400, and no destination's).
    pub fn caused_by_client(&self) -> bool {
        match self {
            Self::Connect { source, .. } | Self::Request { source, .. } => {
                crate::body::caused_by_client(source.as_ref())
            }
            _ => false,
        }
    }

    /// What a caller may be told: the kind of failure, without the addresses in `target`
    /// (those go to the log).
    pub fn summary(&self) -> String {
        match self {
            Self::Connect { .. } => "cannot connect".to_string(),
            Self::Request { .. } => "the request failed on the way".to_string(),
            Self::TunnelRefused { status, .. } => format!("the tunnel was refused ({status})"),
            Self::NoEndpoint(_) => "no ready endpoint".to_string(),
        }
    }

    /// The status a client sees when this is the last error.
    pub fn status(&self) -> http::StatusCode {
        match self {
            Self::NoEndpoint(_) => http::StatusCode::SERVICE_UNAVAILABLE,
            Self::TunnelRefused { status, .. } => {
                http::StatusCode::from_u16(*status).unwrap_or(http::StatusCode::BAD_GATEWAY)
            }
            _ => http::StatusCode::BAD_GATEWAY,
        }
    }
}
