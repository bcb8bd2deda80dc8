//! The UDP loop: a batch of queries per system call (`recvmmsg`), answered synchronously from
//! memory, the batch of responses sent with one `sendmmsg`, as Knot does.
//!
//! Why not hickory's UDP path (which TCP still uses, see `server.rs`): it copies every datagram
//! into a fresh `Vec`, spawns a task per query and queues each response through a channel to the
//! socket task, one `recvfrom` and one `sendto` per query. On the benchmark machine (2 shared
//! cores) two thirds of a query's time is the kernel's; batching the system calls and skipping
//! the per-query task is what brings one worker near Knot's rate (docs/benchmarks.md "DNS").
//! Behaviour is unchanged: every datagram goes through `DnsHandler::handle_bytes`.

use std::io::{self, IoSlice, IoSliceMut};
use std::net::{SocketAddr, SocketAddrV4, SocketAddrV6};
use std::os::fd::{AsRawFd, RawFd};
use std::sync::Arc;

use nix::sys::socket::{
    recvmmsg, sendmmsg, ControlMessage, MsgFlags, MultiHeaders, SockaddrStorage,
};
use tokio::io::Interest;
use tokio::net::UdpSocket;
use tracing::debug;

use crate::DnsHandler;

/// Datagrams taken per `recvmmsg`.
const BATCH: usize = 32;
/// Receive buffer per datagram. A query is far smaller; a longer datagram is cut by the kernel
/// and the cut message fails to parse (FORMERR), which is what such garbage deserves.
const MAX_QUERY: usize = 4096;

pub(crate) async fn serve(socket: UdpSocket, handler: Arc<DnsHandler>) -> io::Result<()> {
    let fd = socket.as_raw_fd();
    let mut bufs: Vec<Vec<u8>> = (0..BATCH).map(|_| vec![0u8; MAX_QUERY]).collect();
    let mut received: Vec<(usize, SocketAddr)> = Vec::with_capacity(BATCH);
    let mut responses: Vec<(Vec<u8>, SocketAddr)> = Vec::with_capacity(BATCH);
    loop {
        socket.readable().await?;
        received.clear();
        match socket.try_io(Interest::READABLE, || receive(fd, &mut bufs, &mut received)) {
            Ok(()) => {}
            // Spurious readiness; try_io cleared it.
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
            // An error of one datagram (ICMP unreachable from an earlier answer's client...).
            Err(e) if is_transient(&e) => {
                debug!(error = %e, "UDP receive");
                continue;
            }
            Err(e) => return Err(e),
        }
        for (buf, &(len, src)) in bufs.iter().zip(&received) {
            // Nobody to answer (hickory's server drops these too).
            if src.port() == 0 || src.ip().is_unspecified() {
                continue;
            }
            if let Some(response) = handler.handle_bytes(&buf[..len], src, false) {
                responses.push((response, src));
            }
        }
        send_all(&socket, &responses).await;
        responses.clear();
    }
}

/// One `recvmmsg` without blocking: appends (length, source) per datagram to `out`.
fn receive(fd: RawFd, bufs: &mut [Vec<u8>], out: &mut Vec<(usize, SocketAddr)>) -> io::Result<()> {
    let mut headers = MultiHeaders::<SockaddrStorage>::preallocate(bufs.len(), None);
    let mut iovs: Vec<[IoSliceMut<'_>; 1]> = bufs
        .iter_mut()
        .map(|b| [IoSliceMut::new(b.as_mut_slice())])
        .collect();
    let results = recvmmsg(
        fd,
        &mut headers,
        iovs.iter_mut(),
        MsgFlags::MSG_DONTWAIT,
        None,
    )
    .map_err(io::Error::from)?;
    for msg in results {
        match msg.address.as_ref().and_then(socket_addr) {
            Some(src) => out.push((msg.bytes, src)),
            // Keep indices aligned with `bufs`: an unanswerable slot.
            None => out.push((0, SocketAddr::from(([0, 0, 0, 0], 0)))),
        }
    }
    Ok(())
}

/// Sends every response, waiting for room in the socket buffer rather than dropping answers.
async fn send_all(socket: &UdpSocket, responses: &[(Vec<u8>, SocketAddr)]) {
    let fd = socket.as_raw_fd();
    let mut next = 0;
    while next < responses.len() {
        match socket.try_io(Interest::WRITABLE, || send(fd, &responses[next..])) {
            Ok(sent) => next += sent.max(1),
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                if socket.writable().await.is_err() {
                    return;
                }
            }
            Err(e) => {
                // The first datagram of the batch failed (e.g. an address we cannot reach):
                // drop it, send the rest.
                debug!(error = %e, dst = %responses[next].1, "UDP send");
                next += 1;
            }
        }
    }
}

/// One `sendmmsg` without blocking: how many datagrams went out.
fn send(fd: RawFd, batch: &[(Vec<u8>, SocketAddr)]) -> io::Result<usize> {
    let batch = &batch[..batch.len().min(BATCH)];
    let mut headers = MultiHeaders::<SockaddrStorage>::preallocate(batch.len(), None);
    let iovs: Vec<[IoSlice<'_>; 1]> = batch.iter().map(|(b, _)| [IoSlice::new(b)]).collect();
    let addrs: Vec<Option<SockaddrStorage>> = batch
        .iter()
        .map(|(_, a)| Some(SockaddrStorage::from(*a)))
        .collect();
    let no_cmsgs: [ControlMessage<'_>; 0] = [];
    let sent = sendmmsg(
        fd,
        &mut headers,
        &iovs,
        addrs,
        no_cmsgs,
        MsgFlags::MSG_DONTWAIT,
    )
    .map_err(io::Error::from)?;
    Ok(sent.count())
}

fn socket_addr(addr: &SockaddrStorage) -> Option<SocketAddr> {
    if let Some(v4) = addr.as_sockaddr_in() {
        return Some(SocketAddr::V4(SocketAddrV4::from(*v4)));
    }
    if let Some(v6) = addr.as_sockaddr_in6() {
        return Some(SocketAddr::V6(SocketAddrV6::from(*v6)));
    }
    None
}

fn is_transient(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::ConnectionRefused
            | io::ErrorKind::ConnectionReset
            | io::ErrorKind::Interrupted
            | io::ErrorKind::HostUnreachable
            | io::ErrorKind::NetworkUnreachable
    )
}
