//! Addresses: networks (`addr/len`), and who is calling (the rule the admin endpoints that show
//! configuration share, DESIGN.md "Gateway transport": they answer local callers only).

use std::fmt;
use std::net::IpAddr;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

/// An IPv4 or IPv6 network, `addr/len`, as written (host bits are kept; [`Cidr::network`] clears
/// them).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct Cidr {
    pub addr: IpAddr,
    pub len: u8,
}

impl Cidr {
    /// The longest prefix for the address's family (32 or 128).
    fn max_len(addr: IpAddr) -> u8 {
        if addr.is_ipv4() {
            32
        } else {
            128
        }
    }

    pub fn contains(&self, ip: IpAddr) -> bool {
        match (self.addr, ip.to_canonical()) {
            (IpAddr::V4(net), IpAddr::V4(ip)) => {
                let mask = u32::MAX.checked_shl(32 - u32::from(self.len)).unwrap_or(0);
                u32::from(net) & mask == u32::from(ip) & mask
            }
            (IpAddr::V6(net), IpAddr::V6(ip)) => {
                let mask = u128::MAX
                    .checked_shl(128 - u32::from(self.len))
                    .unwrap_or(0);
                u128::from(net) & mask == u128::from(ip) & mask
            }
            _ => false,
        }
    }

    /// The network address: `addr` with the host bits cleared.
    pub fn network(&self) -> IpAddr {
        match self.addr {
            IpAddr::V4(a) => {
                let mask = u32::MAX.checked_shl(32 - u32::from(self.len)).unwrap_or(0);
                IpAddr::V4((u32::from(a) & mask).into())
            }
            IpAddr::V6(a) => {
                let mask = u128::MAX
                    .checked_shl(128 - u32::from(self.len))
                    .unwrap_or(0);
                IpAddr::V6((u128::from(a) & mask).into())
            }
        }
    }
}

impl FromStr for Cidr {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let (addr, len) = s
            .split_once('/')
            .ok_or_else(|| format!("{s:?} is not a CIDR (addr/len)"))?;
        let addr: IpAddr = addr
            .parse()
            .map_err(|e| format!("{s:?}: bad address: {e}"))?;
        let len: u8 = len
            .parse()
            .map_err(|e| format!("{s:?}: bad prefix length: {e}"))?;
        let max = Self::max_len(addr);
        if len > max {
            return Err(format!("{s:?}: prefix length is more than {max}"));
        }
        Ok(Self { addr, len })
    }
}

impl TryFrom<String> for Cidr {
    type Error = String;
    fn try_from(s: String) -> Result<Self, String> {
        s.parse()
    }
}

impl From<Cidr> for String {
    fn from(c: Cidr) -> String {
        c.to_string()
    }
}

impl fmt::Display for Cidr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.addr, self.len)
    }
}

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
    fn cidrs_parse_contain_and_name_their_network() {
        let c: Cidr = "10.96.0.0/12".parse().unwrap();
        assert!(c.contains(ip("10.100.1.1")));
        assert!(!c.contains(ip("10.112.0.1")));
        assert!(!c.contains(ip("::1")));
        assert!(
            c.contains(ip("::ffff:10.100.1.1")),
            "v4-mapped is the v4 address"
        );
        let all: Cidr = "0.0.0.0/0".parse().unwrap();
        assert!(all.contains(ip("192.0.2.1")));
        let v6: Cidr = "fd00::/8".parse().unwrap();
        assert!(v6.contains(ip("fd12::1")) && !v6.contains(ip("10.0.0.1")));
        assert!("10.0.0.0/33".parse::<Cidr>().is_err());
        assert!("10.0.0.0".parse::<Cidr>().is_err());
        assert!("fd00::/129".parse::<Cidr>().is_err());
        let host: Cidr = "10.255.3.7/16".parse().unwrap();
        assert_eq!(host.network(), ip("10.255.0.0"));
        assert_eq!(host.to_string(), "10.255.3.7/16");
        let json = serde_json::to_string(&host).unwrap();
        assert_eq!(json, "\"10.255.3.7/16\"");
        assert_eq!(serde_json::from_str::<Cidr>(&json).unwrap(), host);
        assert!(serde_json::from_str::<Cidr>("\"10.0.0.0/40\"").is_err());
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
