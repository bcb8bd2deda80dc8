//! Connections routed by the address they arrived on: a ClusterSetIP, a pinned endpoint's
//! address or a gateway port; opaque TCP ports are carried as tunnels here.

use std::sync::Arc;

use http::Method;
use tokio::net::TcpStream;

use crate::proxy::{Proxy, Record};
use crate::table::{Outbound, PortSpec, Tables};

use super::tunnel::open_planned_tunnel;

pub(super) async fn tcp_by_vip(
    proxy: Arc<Proxy>,
    tables: Arc<Tables>,
    svc: Arc<Outbound>,
    port: PortSpec,
    client: TcpStream,
) {
    let authority = svc.peer_authority(port.port);
    let mut record = Record::new(&proxy, "egress", &Method::CONNECT, &authority, "");
    record.service = svc.name.to_string();
    record.source_cluster = &proxy.config.cluster;
    record.attempts = 1;
    match open_planned_tunnel(&proxy, &tables, &svc, port, &http::HeaderMap::new()).await {
        Ok((upstream, cluster)) => {
            record.destination_cluster = cluster.clone();
            record.finish("tcp", 200, None);
            crate::proxy::pump(client, upstream).await;
        }
        Err((e, cluster)) => {
            record.destination_cluster = cluster.clone();
            record.finish("tcp_error", 502, Some("upstream"));
            tracing::debug!(service = %svc.name, error = %e, "TCP connection refused");
        }
    }
}
