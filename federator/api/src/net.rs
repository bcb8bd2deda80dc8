//! Who is calling: the rule the admin endpoints that show configuration share (DESIGN.md
//! "Gateway transport": they answer local callers only).

use std::net::IpAddr;

/// Whether a connection accepted on `local` from `remote` comes from this host (this network
/// namespace): from a loopback address, or from one of the host's own addresses, which is the
/// source Linux picks when a process connects to an address of its own host. A caller on
/// another host or pod always has an address of its own.
pub fn is_local_caller(remote: IpAddr, local: IpAddr) -> bool {
    let (remote, local) = (remote.to_canonical(), local.to_canonical());
    remote.is_loopback() || remote == local
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn loopback_and_own_address_are_local_others_are_not() {
        assert!(is_local_caller(ip("127.0.0.1"), ip("127.0.0.1")));
        assert!(is_local_caller(ip("127.0.0.5"), ip("10.96.1.1")));
        assert!(is_local_caller(ip("::1"), ip("::")));
        assert!(is_local_caller(ip("10.96.1.1"), ip("10.96.1.1")));
        assert!(is_local_caller(ip("::ffff:10.96.1.1"), ip("10.96.1.1")));
        assert!(!is_local_caller(ip("10.96.1.2"), ip("10.96.1.1")));
        assert!(!is_local_caller(ip("10.100.0.12"), ip("10.100.0.11")));
        assert!(!is_local_caller(ip("fd00::2"), ip("fd00::1")));
    }
}
