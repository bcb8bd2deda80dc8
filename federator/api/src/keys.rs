//! The etcd key schema (DESIGN.md "etcd key schema (v1)"): builders and parsers for every key
//! under [`PREFIX`], and the JSON value helpers.
//!
//! Keys come from etcd, i.e. from outside the process, so parsing never panics and every
//! rejection names the key and says what is wrong with it.

use std::fmt;
use std::str::FromStr;

use serde::de::DeserializeOwned;
use serde::Serialize;

use crate::model::{validate_dns_label, ClusterId, ServiceKey, SCHEMA_VERSION};

/// Every Causeway key lives under this prefix.
pub const PREFIX: &str = "/causeway/v1/";

const CLUSTERS: &str = "clusters";
const EXPORTS: &str = "exports";
const SYNCED: &str = "synced";
const HEALTH: &str = "health";
const DRILLS: &str = "drills";
const VIPS: &str = "vips";
const ELECTION: &str = "election";

const KINDS: [&str; 7] = [CLUSTERS, EXPORTS, SYNCED, HEALTH, DRILLS, VIPS, ELECTION];

// === impl Key ===

/// A parsed Causeway etcd key.
///
/// `Display` writes the full key (with [`PREFIX`]) and [`Key::parse`] reads it back. A `Key`
/// built from parts that are not valid RFC 1123 labels (the fields of [`ServiceKey`] and
/// [`Key::Drill`] are not checked on construction) displays as a key that does not parse.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Key {
    /// `clusters/<cluster>`
    Cluster(ClusterId),
    /// `exports/<ns>/<svc>/<cluster>`
    Export {
        service: ServiceKey,
        cluster: ClusterId,
    },
    /// `synced/<cluster>`
    Synced(ClusterId),
    /// `health/<observer>/<cluster>`
    Health {
        observer: ClusterId,
        cluster: ClusterId,
    },
    /// `drills/<id>`, the ID an RFC 1123 label.
    Drill(String),
    /// `vips/<ns>/<svc>`
    Vip(ServiceKey),
    /// `election/<cluster>/<suffix>`: the keys etcd's election API creates under
    /// [`election_prefix`] (it appends `/<lease ID>`). The suffix is anything, `/` included, and
    /// may be empty (`election/<cluster>/`); `election/<cluster>` without the `/` is rejected so
    /// that parsing and displaying stay lossless.
    Election { cluster: ClusterId, suffix: String },
}

impl Key {
    /// Parses a full key, [`PREFIX`] included.
    pub fn parse(key: &str) -> Result<Key, KeyError> {
        let err = |reason: String| KeyError {
            key: key.to_string(),
            reason,
        };
        let rest = key
            .strip_prefix(PREFIX)
            .ok_or_else(|| err(format!("does not start with {PREFIX:?}")))?;
        let (kind, tail) = match rest.split_once('/') {
            Some((kind, tail)) => (kind, Some(tail)),
            None => (rest, None),
        };
        if kind.is_empty() {
            return Err(err(format!("no kind after {PREFIX:?}")));
        }
        let cluster =
            |what: &str, id: &str| ClusterId::new(id).map_err(|e| err(format!("{what}: {e}")));
        let service =
            |ns: &str, name: &str| ServiceKey::new(ns, name).map_err(|e| err(e.to_string()));
        match kind {
            CLUSTERS => {
                let [c] = segments(kind, tail, ["<cluster>"]).map_err(err)?;
                Ok(Key::Cluster(cluster("cluster", c)?))
            }
            EXPORTS => {
                let [ns, svc, c] =
                    segments(kind, tail, ["<ns>", "<svc>", "<cluster>"]).map_err(err)?;
                Ok(Key::Export {
                    service: service(ns, svc)?,
                    cluster: cluster("cluster", c)?,
                })
            }
            SYNCED => {
                let [c] = segments(kind, tail, ["<cluster>"]).map_err(err)?;
                Ok(Key::Synced(cluster("cluster", c)?))
            }
            HEALTH => {
                let [observer, c] =
                    segments(kind, tail, ["<observer>", "<cluster>"]).map_err(err)?;
                Ok(Key::Health {
                    observer: cluster("observer", observer)?,
                    cluster: cluster("cluster", c)?,
                })
            }
            DRILLS => {
                let [id] = segments(kind, tail, ["<id>"]).map_err(err)?;
                validate_dns_label("drill ID", id).map_err(|e| err(e.to_string()))?;
                Ok(Key::Drill(id.to_string()))
            }
            VIPS => {
                let [ns, svc] = segments(kind, tail, ["<ns>", "<svc>"]).map_err(err)?;
                Ok(Key::Vip(service(ns, svc)?))
            }
            ELECTION => {
                let layout = "election keys are election/<cluster>/<suffix>";
                let (c, suffix) = match tail {
                    None => return Err(err(format!("missing <cluster>: {layout}"))),
                    Some(tail) => tail
                        .split_once('/')
                        .ok_or_else(|| err(format!("missing '/' after the cluster: {layout}")))?,
                };
                if c.is_empty() {
                    return Err(err(format!("empty <cluster> segment: {layout}")));
                }
                Ok(Key::Election {
                    cluster: cluster("cluster", c)?,
                    suffix: suffix.to_string(),
                })
            }
            other => Err(err(format!(
                "unknown kind {other:?}, expected one of {}",
                KINDS.join(", ")
            ))),
        }
    }

    /// The kind segment of the key: `clusters`, `exports`, `synced`, `health`, `drills`, `vips`
    /// or `election`.
    pub fn kind(&self) -> &'static str {
        match self {
            Key::Cluster(_) => CLUSTERS,
            Key::Export { .. } => EXPORTS,
            Key::Synced(_) => SYNCED,
            Key::Health { .. } => HEALTH,
            Key::Drill(_) => DRILLS,
            Key::Vip(_) => VIPS,
            Key::Election { .. } => ELECTION,
        }
    }
}

/// Splits what follows `<kind>/` into exactly `N` non-empty segments.
fn segments<'k, const N: usize>(
    kind: &str,
    tail: Option<&'k str>,
    names: [&str; N],
) -> Result<[&'k str; N], String> {
    let layout = format!("{kind} keys are {kind}/{}", names.join("/"));
    let found: Vec<&str> = tail.map(|t| t.split('/').collect()).unwrap_or_default();
    if found.len() != N {
        return Err(format!(
            "expected {N} segment(s) after \"{kind}/\", found {}: {layout}",
            found.len()
        ));
    }
    if let Some(i) = found.iter().position(|s| s.is_empty()) {
        return Err(format!("empty {} segment: {layout}", names[i]));
    }
    found
        .try_into()
        .map_err(|_| format!("expected {N} segment(s): {layout}"))
}

/// Parses a key as etcd hands it over: bytes, which must be UTF-8.
pub fn parse_bytes(key: &[u8]) -> Result<Key, KeyError> {
    match std::str::from_utf8(key) {
        Ok(key) => Key::parse(key),
        Err(e) => Err(KeyError {
            key: String::from_utf8_lossy(key).into_owned(),
            reason: format!("not valid UTF-8 ({e})"),
        }),
    }
}

impl FromStr for Key {
    type Err = KeyError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Key::parse(s)
    }
}

impl fmt::Display for Key {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Key::Cluster(c) => write!(f, "{PREFIX}{CLUSTERS}/{c}"),
            Key::Export { service, cluster } => write!(
                f,
                "{PREFIX}{EXPORTS}/{}/{}/{cluster}",
                service.namespace, service.name
            ),
            Key::Synced(c) => write!(f, "{PREFIX}{SYNCED}/{c}"),
            Key::Health { observer, cluster } => {
                write!(f, "{PREFIX}{HEALTH}/{observer}/{cluster}")
            }
            Key::Drill(id) => write!(f, "{PREFIX}{DRILLS}/{id}"),
            Key::Vip(s) => write!(f, "{PREFIX}{VIPS}/{}/{}", s.namespace, s.name),
            Key::Election { cluster, suffix } => {
                write!(f, "{PREFIX}{ELECTION}/{cluster}/{suffix}")
            }
        }
    }
}

/// A key under [`PREFIX`] that does not follow the schema.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("malformed etcd key {key:?}: {reason}")]
pub struct KeyError {
    /// The key as read (lossily decoded when it was not UTF-8).
    pub key: String,
    pub reason: String,
}

// === Builders ===

pub fn cluster_key(c: &ClusterId) -> String {
    format!("{PREFIX}{CLUSTERS}/{c}")
}

pub fn export_key(s: &ServiceKey, c: &ClusterId) -> String {
    format!("{PREFIX}{EXPORTS}/{}/{}/{c}", s.namespace, s.name)
}

pub fn synced_key(c: &ClusterId) -> String {
    format!("{PREFIX}{SYNCED}/{c}")
}

pub fn health_key(observer: &ClusterId, c: &ClusterId) -> String {
    format!("{PREFIX}{HEALTH}/{observer}/{c}")
}

pub fn drill_key(id: &str) -> String {
    format!("{PREFIX}{DRILLS}/{id}")
}

pub fn vip_key(s: &ServiceKey) -> String {
    format!("{PREFIX}{VIPS}/{}/{}", s.namespace, s.name)
}

/// The election name of a cluster's federators, `/causeway/v1/election/<c>`, without a trailing
/// `/`: etcd's election API appends `/<lease ID>` itself.
pub fn election_prefix(c: &ClusterId) -> String {
    format!("{PREFIX}{ELECTION}/{c}")
}

// === Prefixes for range reads and watches ===
//
// All end with `/`, so that e.g. the exports of `ns/web` do not include those of `ns/web2`.

pub fn clusters_prefix() -> String {
    format!("{PREFIX}{CLUSTERS}/")
}

pub fn exports_prefix() -> String {
    format!("{PREFIX}{EXPORTS}/")
}

/// The exports of one service by every cluster.
pub fn service_exports_prefix(s: &ServiceKey) -> String {
    format!("{PREFIX}{EXPORTS}/{}/{}/", s.namespace, s.name)
}

pub fn health_prefix() -> String {
    format!("{PREFIX}{HEALTH}/")
}

pub fn drills_prefix() -> String {
    format!("{PREFIX}{DRILLS}/")
}

pub fn vips_prefix() -> String {
    format!("{PREFIX}{VIPS}/")
}

pub fn synced_prefix() -> String {
    format!("{PREFIX}{SYNCED}/")
}

// === Values ===

/// A value under [`PREFIX`] that is not valid JSON of the expected shape or schema.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("malformed value of etcd key {key:?}: {reason}")]
pub struct ValueError {
    pub key: String,
    pub reason: String,
}

/// Encodes a value as JSON, adding `"schema": 1` to JSON objects that do not carry a `schema`
/// field themselves (the model's records do, defaulting to 1).
///
/// # Panics
///
/// When `T`'s `Serialize` implementation fails, e.g. on a map with non-string keys: a bug in
/// the type, not a property of input, and none of the model's records can fail.
pub fn encode<T: Serialize>(value: &T) -> Vec<u8> {
    let mut json = serde_json::to_value(value).expect("stored values serialize to JSON");
    if let serde_json::Value::Object(map) = &mut json {
        map.entry("schema").or_insert(SCHEMA_VERSION.into());
    }
    serde_json::to_vec(&json).expect("a JSON value serializes")
}

/// Decodes the JSON value of `key`. Unknown fields are ignored; a `schema` other than 1 is
/// rejected (a missing one is left to `T`'s default).
pub fn decode<T: DeserializeOwned>(key: &str, bytes: &[u8]) -> Result<T, ValueError> {
    let err = |reason: String| ValueError {
        key: key.to_string(),
        reason,
    };
    // Through `Value` first, so that a value of another schema is reported as such rather than
    // as whatever field its shape happens to break.
    let json: serde_json::Value =
        serde_json::from_slice(bytes).map_err(|e| err(format!("invalid JSON: {e}")))?;
    if let Some(schema) = json.get("schema") {
        if schema.as_u64() != Some(u64::from(SCHEMA_VERSION)) {
            return Err(err(format!(
                "unsupported schema {schema}, expected {SCHEMA_VERSION}"
            )));
        }
    }
    serde_json::from_value(json).map_err(|e| err(e.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{
        BackendTlsMode, ClusterRecord, Endpoint, ExportRecord, Protocol, ServicePort, ServiceType,
        SessionAffinity, VipRecord,
    };

    fn c(id: &str) -> ClusterId {
        ClusterId::new(id).unwrap()
    }

    fn svc(ns: &str, name: &str) -> ServiceKey {
        ServiceKey::new(ns, name).unwrap()
    }

    fn every_variant() -> Vec<Key> {
        vec![
            Key::Cluster(c("east")),
            Key::Export {
                service: svc("shop", "cart"),
                cluster: c("west-2"),
            },
            Key::Synced(c("east")),
            Key::Health {
                observer: c("east"),
                cluster: c("west"),
            },
            Key::Drill("drill-0a1b".to_string()),
            Key::Vip(svc("shop", "cart")),
            Key::Election {
                cluster: c("east"),
                suffix: "694d7a1b2c3d4e5f".to_string(),
            },
            Key::Election {
                cluster: c("east"),
                suffix: String::new(),
            },
            Key::Election {
                cluster: c("east"),
                suffix: "/with/slashes and Spaces".to_string(),
            },
        ]
    }

    #[test]
    fn every_variant_round_trips() {
        for key in every_variant() {
            let text = key.to_string();
            assert!(text.starts_with(PREFIX), "{text}");
            assert_eq!(Key::parse(&text), Ok(key.clone()), "{text}");
            assert_eq!(parse_bytes(text.as_bytes()), Ok(key.clone()), "{text}");
            assert_eq!(text.parse::<Key>(), Ok(key.clone()), "{text}");
            // Parsing then displaying gives the same text back.
            assert_eq!(Key::parse(&text).unwrap().to_string(), text);
        }
    }

    #[test]
    fn builders_match_display() {
        let (east, west, cart) = (c("east"), c("west"), svc("shop", "cart"));
        let cases = [
            (cluster_key(&east), Key::Cluster(east.clone())),
            (
                export_key(&cart, &west),
                Key::Export {
                    service: cart.clone(),
                    cluster: west.clone(),
                },
            ),
            (synced_key(&east), Key::Synced(east.clone())),
            (
                health_key(&east, &west),
                Key::Health {
                    observer: east.clone(),
                    cluster: west.clone(),
                },
            ),
            (drill_key("d1"), Key::Drill("d1".to_string())),
            (vip_key(&cart), Key::Vip(cart.clone())),
        ];
        for (built, key) in cases {
            assert_eq!(built, key.to_string());
        }
    }

    #[test]
    fn literal_keys() {
        let (east, west, cart) = (c("east"), c("west"), svc("shop", "cart"));
        assert_eq!(cluster_key(&east), "/causeway/v1/clusters/east");
        assert_eq!(
            export_key(&cart, &west),
            "/causeway/v1/exports/shop/cart/west"
        );
        assert_eq!(synced_key(&east), "/causeway/v1/synced/east");
        assert_eq!(health_key(&east, &west), "/causeway/v1/health/east/west");
        assert_eq!(drill_key("d1"), "/causeway/v1/drills/d1");
        assert_eq!(vip_key(&cart), "/causeway/v1/vips/shop/cart");
        assert_eq!(election_prefix(&east), "/causeway/v1/election/east");
        assert_eq!(clusters_prefix(), "/causeway/v1/clusters/");
        assert_eq!(exports_prefix(), "/causeway/v1/exports/");
        assert_eq!(
            service_exports_prefix(&cart),
            "/causeway/v1/exports/shop/cart/"
        );
        assert_eq!(health_prefix(), "/causeway/v1/health/");
        assert_eq!(drills_prefix(), "/causeway/v1/drills/");
        assert_eq!(vips_prefix(), "/causeway/v1/vips/");
        assert_eq!(synced_prefix(), "/causeway/v1/synced/");
    }

    #[test]
    fn keys_fall_under_their_prefixes() {
        let (east, west, cart) = (c("east"), c("west"), svc("shop", "cart"));
        assert!(cluster_key(&east).starts_with(&clusters_prefix()));
        assert!(export_key(&cart, &west).starts_with(&exports_prefix()));
        assert!(export_key(&cart, &west).starts_with(&service_exports_prefix(&cart)));
        assert!(synced_key(&east).starts_with(&synced_prefix()));
        assert!(health_key(&east, &west).starts_with(&health_prefix()));
        assert!(drill_key("d1").starts_with(&drills_prefix()));
        assert!(vip_key(&cart).starts_with(&vips_prefix()));
        // A service whose name extends another's is not under the other's prefix.
        let cart2 = svc("shop", "cart2");
        assert!(!export_key(&cart2, &west).starts_with(&service_exports_prefix(&cart)));
        // What the election API creates parses as an election key of that cluster.
        let campaign = format!("{}/694d7a1b2c3d4e5f", election_prefix(&east));
        assert_eq!(
            Key::parse(&campaign),
            Ok(Key::Election {
                cluster: east,
                suffix: "694d7a1b2c3d4e5f".to_string()
            })
        );
    }

    #[test]
    fn kinds() {
        let kinds: Vec<&str> = every_variant().iter().map(Key::kind).collect();
        assert_eq!(
            kinds,
            [
                "clusters", "exports", "synced", "health", "drills", "vips", "election",
                "election", "election"
            ]
        );
        for key in every_variant() {
            assert!(key
                .to_string()
                .starts_with(&format!("{PREFIX}{}/", key.kind())));
        }
    }

    #[test]
    fn malformed_keys_are_rejected_naming_the_key() {
        let long = "a".repeat(64);
        let too_long_cluster = format!("/causeway/v1/clusters/{long}");
        let too_long_drill = format!("/causeway/v1/drills/{long}");
        let cases: &[(&str, &str)] = &[
            // prefix
            ("", "does not start with"),
            ("clusters/east", "does not start with"),
            ("/causeway/v2/clusters/east", "does not start with"),
            ("/causeway/v1", "does not start with"),
            ("/Causeway/v1/clusters/east", "does not start with"),
            // kind
            ("/causeway/v1/", "no kind"),
            ("/causeway/v1//east", "no kind"),
            ("/causeway/v1/widgets/east", "unknown kind \"widgets\""),
            ("/causeway/v1/cluster/east", "unknown kind \"cluster\""),
            ("/causeway/v1/Clusters/east", "unknown kind"),
            // segment counts
            (
                "/causeway/v1/clusters",
                "expected 1 segment(s) after \"clusters/\", found 0",
            ),
            ("/causeway/v1/clusters/east/x", "found 2"),
            ("/causeway/v1/clusters/east/", "found 2"),
            ("/causeway/v1/exports/shop/cart", "expected 3 segment(s)"),
            ("/causeway/v1/exports/shop/cart/east/x", "found 4"),
            ("/causeway/v1/synced", "found 0"),
            ("/causeway/v1/synced/east/west", "found 2"),
            ("/causeway/v1/health/east", "expected 2 segment(s)"),
            ("/causeway/v1/health/east/west/x", "found 3"),
            ("/causeway/v1/drills", "found 0"),
            ("/causeway/v1/drills/a/b", "found 2"),
            ("/causeway/v1/vips/shop", "expected 2 segment(s)"),
            ("/causeway/v1/vips/shop/cart/x", "found 3"),
            ("/causeway/v1/election", "missing <cluster>"),
            (
                "/causeway/v1/election/east",
                "missing '/' after the cluster",
            ),
            // empty segments
            ("/causeway/v1/clusters/", "empty <cluster> segment"),
            ("/causeway/v1/exports//cart/east", "empty <ns> segment"),
            ("/causeway/v1/exports/shop//east", "empty <svc> segment"),
            ("/causeway/v1/exports/shop/cart/", "empty <cluster> segment"),
            ("/causeway/v1/health//west", "empty <observer> segment"),
            ("/causeway/v1/health/east/", "empty <cluster> segment"),
            ("/causeway/v1/drills/", "empty <id> segment"),
            ("/causeway/v1/vips/shop/", "empty <svc> segment"),
            ("/causeway/v1/election//x", "empty <cluster> segment"),
            // invalid labels
            ("/causeway/v1/clusters/East", "invalid cluster ID \"East\""),
            (
                "/causeway/v1/clusters/-east",
                "start and end with an alphanumeric",
            ),
            (
                "/causeway/v1/clusters/east-",
                "start and end with an alphanumeric",
            ),
            ("/causeway/v1/clusters/ea_st", "lower case alphanumeric"),
            ("/causeway/v1/clusters/ea.st", "lower case alphanumeric"),
            (&too_long_cluster, "at most 63 characters"),
            (
                "/causeway/v1/exports/Shop/cart/east",
                "invalid namespace \"Shop\"",
            ),
            (
                "/causeway/v1/exports/shop/cart!/east",
                "invalid service name \"cart!\"",
            ),
            (
                "/causeway/v1/exports/shop/cart/EAST",
                "invalid cluster ID \"EAST\"",
            ),
            ("/causeway/v1/synced/e ast", "invalid cluster ID"),
            (
                "/causeway/v1/health/East/west",
                "observer: invalid cluster ID \"East\"",
            ),
            (
                "/causeway/v1/health/east/West",
                "cluster: invalid cluster ID \"West\"",
            ),
            ("/causeway/v1/drills/Drill", "invalid drill ID \"Drill\""),
            ("/causeway/v1/drills/-d", "invalid drill ID"),
            (&too_long_drill, "invalid drill ID"),
            (
                "/causeway/v1/vips/shop/Cart",
                "invalid service name \"Cart\"",
            ),
            (
                "/causeway/v1/election/East/x",
                "invalid cluster ID \"East\"",
            ),
        ];
        for (key, reason) in cases {
            let err = Key::parse(key).expect_err(key);
            assert_eq!(err.key, *key);
            let msg = err.to_string();
            assert!(
                msg.starts_with(&format!("malformed etcd key {key:?}: ")),
                "{msg}"
            );
            assert!(err.reason.contains(reason), "{key}: {msg}");
            // The same through the bytes entry point.
            assert_eq!(parse_bytes(key.as_bytes()), Err(err));
        }
    }

    #[test]
    fn non_utf8_keys_are_rejected() {
        let key = b"/causeway/v1/clusters/ea\xffst";
        let err = parse_bytes(key).unwrap_err();
        assert_eq!(err.key, "/causeway/v1/clusters/ea\u{fffd}st");
        assert!(err.reason.contains("not valid UTF-8"), "{err}");
        assert!(
            err.to_string().contains("/causeway/v1/clusters/ea"),
            "{err}"
        );
    }

    fn export_record() -> ExportRecord {
        ExportRecord {
            schema: 1,
            ports: vec![
                ServicePort {
                    name: "http".to_string(),
                    protocol: Protocol::Tcp,
                    port: 80,
                    app_protocol: Some("http".to_string()),
                },
                ServicePort {
                    name: "dns".to_string(),
                    protocol: Protocol::Udp,
                    port: 53,
                    app_protocol: None,
                },
            ],
            service_type: ServiceType::Headless,
            session_affinity: SessionAffinity::ClientIP,
            created_unix_ms: 1_700_000_000_123,
            ready_endpoints: 3,
            backend_tls_mode: BackendTlsMode::Mtls,
            endpoints: vec![Endpoint {
                address: "10.0.0.7".parse().unwrap(),
                port: Some(8080),
                ready: true,
                hostname: Some("web-0".to_string()),
            }],
            allowed_source_clusters: vec![c("west")],
            allowed_identities: vec!["spiffe://west.example/ns/shop/sa/web".to_string()],
            weight: Some(10),
            service_ip: Some("10.96.0.10".parse().unwrap()),
            traffic_policy: Default::default(),
            exported: Default::default(),
        }
    }

    #[test]
    fn export_record_round_trips() {
        let key = export_key(&svc("shop", "cart"), &c("east"));
        let record = export_record();
        let bytes = encode(&record);
        let json: serde_json::Value = serde_json::from_slice(&bytes).unwrap();
        assert_eq!(json["schema"], 1);
        assert_eq!(json["type"], "Headless");
        assert_eq!(decode::<ExportRecord>(&key, &bytes), Ok(record));
    }

    #[test]
    fn encode_adds_schema_to_values_without_one() {
        #[derive(Serialize)]
        struct Bare {
            x: u8,
        }
        let json: serde_json::Value = serde_json::from_slice(&encode(&Bare { x: 1 })).unwrap();
        assert_eq!(json, serde_json::json!({ "schema": 1, "x": 1 }));
    }

    #[test]
    fn decode_ignores_unknown_fields() {
        let bytes = br#"{"schema":1,"ip":"10.9.0.1","color":"blue","nested":{"a":[1,2]}}"#;
        let vip: VipRecord = decode("/causeway/v1/vips/shop/cart", bytes).unwrap();
        assert_eq!(vip.ip, "10.9.0.1".parse::<std::net::IpAddr>().unwrap());
    }

    #[test]
    fn decode_defaults_a_missing_schema_to_1() {
        let bytes = br#"{"created_unix_ms":5}"#;
        let record: ExportRecord = decode("/causeway/v1/exports/a/b/c", bytes).unwrap();
        assert_eq!(record.schema, 1);
        assert_eq!(record.created_unix_ms, 5);
        assert!(record.ports.is_empty());
    }

    #[test]
    fn decode_rejects_other_schemas_naming_the_key() {
        let key = "/causeway/v1/clusters/east";
        for schema in ["2", "0", "\"1\"", "1.5", "null"] {
            let bytes = format!(r#"{{"schema":{schema},"trust_domain":"east.example"}}"#);
            let err = decode::<ClusterRecord>(key, bytes.as_bytes()).unwrap_err();
            assert_eq!(err.key, key);
            assert!(err.reason.contains("unsupported schema"), "{err}");
            assert!(err.to_string().contains(key), "{err}");
        }
    }

    #[test]
    fn decode_reports_serde_errors_naming_the_key() {
        let key = "/causeway/v1/exports/shop/cart/east";
        let cases: &[(&[u8], &str)] = &[
            (b"", "invalid JSON"),
            (b"{not json", "invalid JSON"),
            (br#"{"schema":1}"#, "missing field `created_unix_ms`"),
            (br#"{"created_unix_ms":"soon"}"#, "invalid type"),
            (
                br#"{"created_unix_ms":1,"type":"LoadBalancer"}"#,
                "unknown variant",
            ),
            (
                br#"{"created_unix_ms":1,"allowed_source_clusters":["East"]}"#,
                "invalid cluster ID",
            ),
        ];
        for (bytes, reason) in cases {
            let err = decode::<ExportRecord>(key, bytes).unwrap_err();
            assert_eq!(err.key, key);
            assert!(err.reason.contains(reason), "{err}");
            assert!(err.to_string().contains(key), "{err}");
        }
    }
}
