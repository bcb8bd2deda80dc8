//! A DNS client: A queries over UDP (hickory's wire format), one server or a resolver's list.

use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use anyhow::{anyhow, bail, Context as _};
/// A DNS response code (NoError, NXDomain, ...), as [`dns_query_a`] returns it.
pub use hickory_proto::op::ResponseCode;
use hickory_proto::op::{Message, Query};
use hickory_proto::rr::{Name, RData, RecordType};
use tokio::net::UdpSocket;
use tokio::time::timeout;

/// Asks `server` for the A records of `name` over UDP, once. NXDOMAIN and NODATA are errors.
pub async fn dns_a(server: SocketAddr, name: &str, wait: Duration) -> anyhow::Result<Vec<IpAddr>> {
    let (code, ips) = dns_query_a(server, name, wait).await?;
    if code != ResponseCode::NoError {
        bail!("{server} answered {code} for {name}");
    }
    if ips.is_empty() {
        bail!("{server} has no A record for {name}");
    }
    Ok(ips)
}

/// One A query to `server`: its response code and the addresses answered (empty for NXDOMAIN
/// and NODATA), for tests that tell those apart.
pub async fn dns_query_a(
    server: SocketAddr,
    name: &str,
    wait: Duration,
) -> anyhow::Result<(ResponseCode, Vec<IpAddr>)> {
    let fqdn = Name::from_ascii(name).with_context(|| format!("{name:?} is not a DNS name"))?;
    let mut query = Message::query();
    query.add_query(Query::query(fqdn, RecordType::A));
    query.metadata.recursion_desired = true;
    let id = query.metadata.id;
    let bytes = query.to_vec().context("encoding the DNS query")?;

    let bind: SocketAddr = if server.is_ipv4() {
        "0.0.0.0:0".parse()?
    } else {
        "[::]:0".parse()?
    };
    let socket = UdpSocket::bind(bind)
        .await
        .context("binding a UDP socket")?;
    socket
        .connect(server)
        .await
        .with_context(|| format!("connecting to {server}"))?;
    socket
        .send(&bytes)
        .await
        .with_context(|| format!("sending to {server}"))?;
    let mut buf = vec![0u8; 4096];
    let answer = timeout(wait, async {
        loop {
            let n = socket.recv(&mut buf).await?;
            match Message::from_vec(&buf[..n]) {
                Ok(m) if m.metadata.id == id => return Ok::<_, std::io::Error>(m),
                _ => continue,
            }
        }
    })
    .await
    .map_err(|_| anyhow!("no DNS answer from {server} within {wait:?}"))?
    .with_context(|| format!("receiving from {server}"))?;
    Ok(answer_a(&answer))
}

/// The response code of a DNS response and its A records.
pub fn answer_a(answer: &Message) -> (ResponseCode, Vec<IpAddr>) {
    let ips: Vec<IpAddr> = answer
        .answers
        .iter()
        .filter_map(|r| match &r.data {
            RData::A(a) => Some(IpAddr::V4(a.0)),
            _ => None,
        })
        .collect();
    (answer.metadata.response_code, ips)
}

/// [`dns_a`] against each server in turn, the way a stub resolver walks `resolv.conf`.
pub async fn resolve(
    servers: &[SocketAddr],
    name: &str,
    wait: Duration,
) -> anyhow::Result<Vec<IpAddr>> {
    let mut errors = Vec::new();
    for server in servers {
        match dns_a(*server, name, wait).await {
            Ok(ips) => return Ok(ips),
            Err(e) => errors.push(format!("{e:#}")),
        }
    }
    bail!("cannot resolve {name}: {}", errors.join("; "))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_records_are_read_through_name_compression_and_rcodes_are_kept() {
        // Header (id 1, response, 1 question, 1 answer), question, answer with a pointer.
        let mut m = vec![0, 1, 0x81, 0x80, 0, 1, 0, 1, 0, 0, 0, 0];
        m.extend_from_slice(&[4, b'e', b'c', b'h', b'o', 0, 0, 1, 0, 1]);
        m.extend_from_slice(&[0xc0, 12, 0, 1, 0, 1, 0, 0, 0, 5, 0, 4, 10, 255, 0, 7]);
        let (code, ips) = answer_a(&Message::from_vec(&m).unwrap());
        assert_eq!(code, ResponseCode::NoError);
        assert_eq!(ips, [IpAddr::from([10, 255, 0, 7])]);
        let mut nx = m.clone();
        nx[3] = 0x83;
        let (code, _) = answer_a(&Message::from_vec(&nx).unwrap());
        assert_eq!(code, ResponseCode::NXDomain);
    }
}
