use std::net::SocketAddr;

/// What went wrong in the DNS server, and on what.
#[derive(Debug, thiserror::Error)]
pub enum DnsError {
    #[error("invalid DNS config field {field}: {reason}")]
    InvalidConfig { field: &'static str, reason: String },

    #[error("cannot bind DNS {proto} socket on {addr}: {source}")]
    Bind {
        proto: &'static str,
        addr: SocketAddr,
        #[source]
        source: std::io::Error,
    },

    #[error("cannot register DNS metrics: {0}")]
    Metrics(#[from] prometheus::Error),

    /// A listener task of the server ended with an error (the socket closed under us).
    #[error("DNS server on {addr} stopped: {reason}")]
    Serve { addr: SocketAddr, reason: String },
}
