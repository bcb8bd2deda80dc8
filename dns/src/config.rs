//! What the DNS server is told: where to listen, the TTL, and the answer policy per import.

use std::collections::BTreeMap;
use std::fmt;
use std::net::{Ipv4Addr, SocketAddr};
use std::str::FromStr;
use std::time::Duration;

use causeway_api::ServiceKey;
use serde::{Deserialize, Serialize};

use crate::DnsError;

/// Default listen address: the standard DNS port on every interface, UDP and TCP.
pub const DEFAULT_LISTEN: SocketAddr =
    SocketAddr::new(std::net::IpAddr::V4(Ipv4Addr::UNSPECIFIED), 53);
/// Default TTL of every record we answer, negative answers included (SOA minimum).
pub const DEFAULT_TTL: Duration = Duration::from_secs(5);
/// Default time a TCP client may stay idle between queries before we close its connection.
/// TCP connections served at once by default (Knot's `tcp-max-clients` scale).
pub const DEFAULT_MAX_TCP_CONNECTIONS: usize = 512;
pub const DEFAULT_TCP_TIMEOUT: Duration = Duration::from_secs(10);

/// How the A/AAAA answer of a ClusterSetIP service is chosen (DESIGN.md "Addressing and failover").
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum AnswerPolicy {
    /// The local service address when this cluster exports the service itself, not drained, with
    /// ready endpoints; otherwise the ClusterSetIP (via the local gateway).
    #[default]
    LocalFirst,
    /// Always the ClusterSetIP.
    ViaGateway,
}

impl fmt::Display for AnswerPolicy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            AnswerPolicy::LocalFirst => "local-first",
            AnswerPolicy::ViaGateway => "via-gateway",
        })
    }
}

impl FromStr for AnswerPolicy {
    type Err = DnsError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "local-first" => Ok(AnswerPolicy::LocalFirst),
            "via-gateway" => Ok(AnswerPolicy::ViaGateway),
            other => Err(DnsError::InvalidConfig {
                field: "policy",
                reason: format!("unknown answer policy {other:?} (local-first, via-gateway)"),
            }),
        }
    }
}

/// Configuration of the `clusterset.local` server.
///
/// In YAML/JSON: `listen: "0.0.0.0:53"`, `ttl: 5s` (or a number of seconds), `tcp_timeout: 10s`,
/// `default_policy: local-first`, `policy_overrides: {"prod/web": via-gateway}`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct DnsConfig {
    /// UDP and TCP, same port. Port 0 picks a free port (tests).
    pub listen: SocketAddr,
    /// TTL of every answer, and the SOA minimum (negative caching).
    #[serde(with = "duration")]
    pub ttl: Duration,
    /// Answer policy per import, keyed `<namespace>/<name>` in files.
    #[serde(with = "overrides")]
    pub policy_overrides: BTreeMap<ServiceKey, AnswerPolicy>,
    pub default_policy: AnswerPolicy,
    /// Idle time after which a TCP connection is closed.
    #[serde(with = "duration")]
    pub tcp_timeout: Duration,
    /// TCP connections served at once; one more is closed at accept (and counted).
    pub max_tcp_connections: usize,
}

impl Default for DnsConfig {
    fn default() -> Self {
        Self {
            listen: DEFAULT_LISTEN,
            ttl: DEFAULT_TTL,
            policy_overrides: BTreeMap::new(),
            default_policy: AnswerPolicy::LocalFirst,
            tcp_timeout: DEFAULT_TCP_TIMEOUT,
            max_tcp_connections: DEFAULT_MAX_TCP_CONNECTIONS,
        }
    }
}

impl DnsConfig {
    /// The policy of one import.
    pub fn policy(&self, key: &ServiceKey) -> AnswerPolicy {
        self.policy_overrides
            .get(key)
            .copied()
            .unwrap_or(self.default_policy)
    }

    /// Checks what serde cannot; the error names the field.
    pub fn validate(&self) -> Result<(), DnsError> {
        if self.ttl.as_secs() > u64::from(i32::MAX as u32) {
            return Err(DnsError::InvalidConfig {
                field: "ttl",
                reason: format!("{:?} exceeds the DNS maximum of 2^31-1 seconds", self.ttl),
            });
        }
        if self.max_tcp_connections == 0 {
            return Err(DnsError::InvalidConfig {
                field: "max_tcp_connections",
                reason: "must be at least 1".to_string(),
            });
        }
        if self.tcp_timeout.is_zero() {
            return Err(DnsError::InvalidConfig {
                field: "tcp_timeout",
                reason: "must be greater than zero".to_string(),
            });
        }
        Ok(())
    }

    /// The TTL in whole seconds, as records carry it.
    pub(crate) fn ttl_secs(&self) -> u32 {
        u32::try_from(self.ttl.as_secs()).unwrap_or(i32::MAX as u32)
    }
}

/// Durations as `"5s"`, `"500ms"`, `"1m"` or a plain number of seconds.
mod duration {
    use std::time::Duration;

    use serde::de::Error as _;
    use serde::{Deserialize, Deserializer, Serializer};

    pub(super) fn serialize<S: Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
        if d.subsec_millis() == 0 {
            s.serialize_str(&format!("{}s", d.as_secs()))
        } else {
            s.serialize_str(&format!("{}ms", d.as_millis()))
        }
    }

    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Raw {
        Secs(u64),
        Float(f64),
        Text(String),
    }

    pub(super) fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
        match Raw::deserialize(d)? {
            Raw::Secs(s) => Ok(Duration::from_secs(s)),
            Raw::Float(f) => Duration::try_from_secs_f64(f).map_err(D::Error::custom),
            Raw::Text(t) => parse(&t).map_err(D::Error::custom),
        }
    }

    pub(super) fn parse(text: &str) -> Result<Duration, String> {
        let text = text.trim();
        let split = text
            .find(|c: char| !c.is_ascii_digit())
            .unwrap_or(text.len());
        let (num, unit) = text.split_at(split);
        let n: u64 = num
            .parse()
            .map_err(|_| format!("invalid duration {text:?}: expected e.g. 5s, 500ms, 1m"))?;
        match unit {
            "" | "s" => Ok(Duration::from_secs(n)),
            "ms" => Ok(Duration::from_millis(n)),
            "m" => Ok(Duration::from_secs(n.saturating_mul(60))),
            _ => Err(format!(
                "invalid duration unit in {text:?}: expected ms, s or m"
            )),
        }
    }
}

/// `policy_overrides` keyed by `<namespace>/<name>`: `ServiceKey` is a struct, not a map key.
mod overrides {
    use std::collections::BTreeMap;

    use causeway_api::ServiceKey;
    use serde::de::Error as _;
    use serde::ser::SerializeMap;
    use serde::{Deserialize, Deserializer, Serializer};

    use super::AnswerPolicy;

    pub(super) fn serialize<S: Serializer>(
        map: &BTreeMap<ServiceKey, AnswerPolicy>,
        s: S,
    ) -> Result<S::Ok, S::Error> {
        let mut out = s.serialize_map(Some(map.len()))?;
        for (k, v) in map {
            out.serialize_entry(&k.to_string(), v)?;
        }
        out.end()
    }

    pub(super) fn deserialize<'de, D: Deserializer<'de>>(
        d: D,
    ) -> Result<BTreeMap<ServiceKey, AnswerPolicy>, D::Error> {
        let raw = BTreeMap::<String, AnswerPolicy>::deserialize(d)?;
        raw.into_iter()
            .map(|(k, v)| {
                k.parse::<ServiceKey>()
                    .map(|k| (k, v))
                    .map_err(|e| D::Error::custom(format!("policy_overrides: {e}")))
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults() {
        let c = DnsConfig::default();
        assert_eq!(c.listen.port(), 53);
        assert_eq!(c.ttl, Duration::from_secs(5));
        assert_eq!(c.default_policy, AnswerPolicy::LocalFirst);
        c.validate().unwrap();
    }

    #[test]
    fn policy_names() {
        assert_eq!(
            serde_json::to_string(&AnswerPolicy::ViaGateway).unwrap(),
            "\"via-gateway\""
        );
        assert_eq!(
            serde_json::from_str::<AnswerPolicy>("\"local-first\"").unwrap(),
            AnswerPolicy::LocalFirst
        );
        assert_eq!(
            "via-gateway".parse::<AnswerPolicy>().unwrap(),
            AnswerPolicy::ViaGateway
        );
        assert!("via_gateway".parse::<AnswerPolicy>().is_err());
    }

    #[test]
    fn config_from_json_and_back() {
        let c: DnsConfig = serde_json::from_str(
            r#"{"listen":"127.0.0.1:5353","ttl":"30s","tcp_timeout":2,
                "policy_overrides":{"prod/web":"via-gateway"}}"#,
        )
        .unwrap();
        assert_eq!(c.listen, "127.0.0.1:5353".parse().unwrap());
        assert_eq!(c.ttl, Duration::from_secs(30));
        assert_eq!(c.tcp_timeout, Duration::from_secs(2));
        let key = ServiceKey::new("prod", "web").unwrap();
        assert_eq!(c.policy(&key), AnswerPolicy::ViaGateway);
        assert_eq!(
            c.policy(&ServiceKey::new("prod", "db").unwrap()),
            AnswerPolicy::LocalFirst
        );
        let back: DnsConfig = serde_json::from_str(&serde_json::to_string(&c).unwrap()).unwrap();
        assert_eq!(back, c);
    }

    #[test]
    fn bad_config_names_the_field() {
        let err =
            serde_json::from_str::<DnsConfig>(r#"{"policy_overrides":{"web":"via-gateway"}}"#)
                .unwrap_err();
        assert!(err.to_string().contains("policy_overrides"), "{err}");
        let err = serde_json::from_str::<DnsConfig>(r#"{"ttl":"5h"}"#).unwrap_err();
        assert!(err.to_string().contains("5h"), "{err}");
        let c = DnsConfig {
            tcp_timeout: Duration::ZERO,
            ..DnsConfig::default()
        };
        assert!(c
            .validate()
            .unwrap_err()
            .to_string()
            .contains("tcp_timeout"));
    }

    #[test]
    fn durations() {
        assert_eq!(
            duration::parse("500ms").unwrap(),
            Duration::from_millis(500)
        );
        assert_eq!(duration::parse("2m").unwrap(), Duration::from_secs(120));
        assert_eq!(duration::parse("7").unwrap(), Duration::from_secs(7));
        assert!(duration::parse("s").is_err());
    }
}
