//! The etcd key schema v2 (DESIGN.md "etcd key schema (v2)"): builders and parsers for every
//! key under [`PREFIX`], and the JSON value helpers.
//!
//! Everything a cluster writes lives under `clusters/<c>/`, so that etcd's own auth can give
//! each cluster a role that writes its prefix alone ([`cluster_prefix`]); drills, which
//! operators write, live under `drills/`. [`Key::owner`] names the cluster whose prefix a key is
//! under.
//!
//! Keys come from etcd, i.e. from outside the process, so parsing never panics and every
//! rejection names the key and says what is wrong with it.

use std::fmt;
use std::str::FromStr;

use serde::de::DeserializeOwned;
use serde::Serialize;

use crate::model::{validate_dns_label, ClusterId, ServiceKey, SCHEMA_VERSION};

/// Every Causeway key lives under this prefix.
pub const PREFIX: &str = "/causeway/v2/";
/// The prefix of schema v1 (before the cluster came first); read only to adopt its VIPs.
pub const V1_PREFIX: &str = "/causeway/v1/";

const CLUSTERS: &str = "clusters";
const DRILLS: &str = "drills";

const INFO: &str = "info";
const EXPORTS: &str = "exports";
const SYNCED: &str = "synced";
const HEALTH: &str = "health";
const VIPS: &str = "vips";
const ELECTION: &str = "election";
/// Under a cluster: the drills its federator runs for Drill resources, and its observers'
/// reports of drills.
const CLUSTER_DRILLS: &str = "drills";
const DRILL_REPORTS: &str = "drill-reports";

const TOP: [&str; 2] = [CLUSTERS, DRILLS];
const KINDS: [&str; 8] = [
    INFO,
    EXPORTS,
    SYNCED,
    HEALTH,
    VIPS,
    ELECTION,
    CLUSTER_DRILLS,
    DRILL_REPORTS,
];

// === impl Key ===

/// A parsed Causeway etcd key.
///
/// `Display` writes the full key (with [`PREFIX`]) and [`Key::parse`] reads it back. A `Key`
/// built from parts that are not valid RFC 1123 labels (the fields of [`ServiceKey`] and
/// [`Key::Drill`] are not checked on construction) displays as a key that does not parse.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Key {
    /// `clusters/<cluster>/info`
    Cluster(ClusterId),
    /// `clusters/<cluster>/exports/<ns>/<svc>`
    Export {
        service: ServiceKey,
        cluster: ClusterId,
    },
    /// `clusters/<cluster>/synced`
    Synced(ClusterId),
    /// `clusters/<observer>/health/<cluster>`
    Health {
        observer: ClusterId,
        cluster: ClusterId,
    },
    /// `drills/<id>`, the ID an RFC 1123 label.
    Drill(String),
    /// `clusters/<cluster>/drills/<id>`: a drill `cluster`'s federator runs for a Drill resource
    /// (with its own etcd user, under its own prefix).
    ClusterDrill { cluster: ClusterId, id: String },
    /// `clusters/<observer>/drill-reports/<creator>/<id>`: what `observer` measured of the drill
    /// `clusters/<creator>/drills/<id>`.
    DrillReport {
        observer: ClusterId,
        creator: ClusterId,
        id: String,
    },
    /// `clusters/<cluster>/vips/<ns>/<svc>`: the address `cluster` gives an import.
    Vip {
        cluster: ClusterId,
        service: ServiceKey,
    },
    /// `clusters/<cluster>/vips/<ns>/<svc>/<exporter>/<name>`: the address `cluster` gives one
    /// endpoint of a headless import in another cluster, `name` its DNS label
    /// ([`crate::Endpoint::dns_label`]); it leads to `cluster`'s gateway, which sends its
    /// traffic to exactly that endpoint.
    EndpointVip {
        cluster: ClusterId,
        service: ServiceKey,
        exporter: ClusterId,
        name: String,
    },
    /// `clusters/<cluster>/election/<suffix>`: the keys etcd's election API creates under
    /// [`election_prefix`] (it appends `/<lease ID>`). The suffix is anything, `/` included, and
    /// may be empty (`.../election/`); `.../election` without the `/` is rejected so that
    /// parsing and displaying stay lossless.
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
        let (top, tail) = match rest.split_once('/') {
            Some((top, tail)) => (top, Some(tail)),
            None => (rest, None),
        };
        let cluster =
            |what: &str, id: &str| ClusterId::new(id).map_err(|e| err(format!("{what}: {e}")));
        let service =
            |ns: &str, name: &str| ServiceKey::new(ns, name).map_err(|e| err(e.to_string()));
        match top {
            "" => Err(err(format!("nothing after {PREFIX:?}"))),
            DRILLS => {
                let [id] = segments(DRILLS, tail, ["<id>"]).map_err(err)?;
                validate_dns_label("drill ID", id).map_err(|e| err(e.to_string()))?;
                Ok(Key::Drill(id.to_string()))
            }
            CLUSTERS => {
                let layout = "cluster keys are clusters/<cluster>/<kind>/...";
                let (c, after) = match tail {
                    None => return Err(err(format!("missing <cluster>: {layout}"))),
                    Some(t) => match t.split_once('/') {
                        Some((c, after)) => (c, Some(after)),
                        None => (t, None),
                    },
                };
                if c.is_empty() {
                    return Err(err(format!("empty <cluster> segment: {layout}")));
                }
                let owner = cluster("cluster", c)?;
                let (kind, tail) = match after {
                    None => return Err(err(format!("missing <kind> after the cluster: {layout}"))),
                    Some(a) => match a.split_once('/') {
                        Some((k, t)) => (k, Some(t)),
                        None => (a, None),
                    },
                };
                match kind {
                    INFO | SYNCED => {
                        if tail.is_some() {
                            return Err(err(format!("nothing may follow {kind:?}")));
                        }
                        Ok(if kind == INFO {
                            Key::Cluster(owner)
                        } else {
                            Key::Synced(owner)
                        })
                    }
                    EXPORTS => {
                        let [ns, svc] = segments(EXPORTS, tail, ["<ns>", "<svc>"]).map_err(err)?;
                        Ok(Key::Export {
                            service: service(ns, svc)?,
                            cluster: owner,
                        })
                    }
                    VIPS if tail.is_some_and(|t| t.split('/').count() == 4) => {
                        let [ns, svc, exporter, name] = segments(
                            VIPS,
                            tail,
                            ["<ns>", "<svc>", "<exporter>", "<name>"],
                        )
                        .map_err(err)?;
                        validate_dns_label("endpoint name", name)
                            .map_err(|e| err(e.to_string()))?;
                        Ok(Key::EndpointVip {
                            cluster: owner,
                            service: service(ns, svc)?,
                            exporter: cluster("exporter", exporter)?,
                            name: name.to_string(),
                        })
                    }
                    VIPS => {
                        let [ns, svc] = segments(VIPS, tail, ["<ns>", "<svc>"]).map_err(err)?;
                        Ok(Key::Vip {
                            cluster: owner,
                            service: service(ns, svc)?,
                        })
                    }
                    HEALTH => {
                        let [peer] = segments(HEALTH, tail, ["<cluster>"]).map_err(err)?;
                        Ok(Key::Health {
                            observer: owner,
                            cluster: cluster("cluster", peer)?,
                        })
                    }
                    CLUSTER_DRILLS => {
                        let [id] = segments(CLUSTER_DRILLS, tail, ["<id>"]).map_err(err)?;
                        validate_dns_label("drill ID", id).map_err(|e| err(e.to_string()))?;
                        Ok(Key::ClusterDrill {
                            cluster: owner,
                            id: id.to_string(),
                        })
                    }
                    DRILL_REPORTS => {
                        let [creator, id] =
                            segments(DRILL_REPORTS, tail, ["<creator>", "<id>"]).map_err(err)?;
                        validate_dns_label("drill ID", id).map_err(|e| err(e.to_string()))?;
                        Ok(Key::DrillReport {
                            observer: owner,
                            creator: cluster("creator", creator)?,
                            id: id.to_string(),
                        })
                    }
                    ELECTION => match tail {
                        Some(suffix) => Ok(Key::Election {
                            cluster: owner,
                            suffix: suffix.to_string(),
                        }),
                        None => Err(err(
                            "missing '/' after \"election\": election keys are clusters/<cluster>/election/<suffix>"
                                .to_string(),
                        )),
                    },
                    "" => Err(err(format!("empty <kind> segment: {layout}"))),
                    other => Err(err(format!(
                        "unknown kind {other:?}, expected one of {}",
                        KINDS.join(", ")
                    ))),
                }
            }
            other => Err(err(format!(
                "unknown {other:?}, expected one of {}",
                TOP.join(", ")
            ))),
        }
    }

    /// The kind of the key: `info`, `exports`, `synced`, `health`, `vips`, `election` (under a
    /// cluster) or `drills`.
    pub fn kind(&self) -> &'static str {
        match self {
            Key::Cluster(_) => INFO,
            Key::Export { .. } => EXPORTS,
            Key::Synced(_) => SYNCED,
            Key::Health { .. } => HEALTH,
            Key::Drill(_) | Key::ClusterDrill { .. } => DRILLS,
            Key::DrillReport { .. } => DRILL_REPORTS,
            Key::Vip { .. } | Key::EndpointVip { .. } => VIPS,
            Key::Election { .. } => ELECTION,
        }
    }

    /// The cluster under whose prefix the key lives (the only one etcd lets write it, with the
    /// roles of docs/security.md); `None` for drills.
    pub fn owner(&self) -> Option<&ClusterId> {
        match self {
            Key::Cluster(c)
            | Key::Synced(c)
            | Key::Export { cluster: c, .. }
            | Key::Vip { cluster: c, .. }
            | Key::EndpointVip { cluster: c, .. }
            | Key::Election { cluster: c, .. }
            | Key::ClusterDrill { cluster: c, .. } => Some(c),
            Key::Health { observer, .. } | Key::DrillReport { observer, .. } => Some(observer),
            Key::Drill(_) => None,
        }
    }
}

/// Splits what follows `<kind>/` into exactly `N` non-empty segments.
fn segments<'k, const N: usize>(
    kind: &str,
    tail: Option<&'k str>,
    names: [&str; N],
) -> Result<[&'k str; N], String> {
    let layout = format!("{kind} keys are .../{kind}/{}", names.join("/"));
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
            Key::Cluster(c) => f.write_str(&cluster_key(c)),
            Key::Export { service, cluster } => f.write_str(&export_key(service, cluster)),
            Key::Synced(c) => f.write_str(&synced_key(c)),
            Key::Health { observer, cluster } => f.write_str(&health_key(observer, cluster)),
            Key::Drill(id) => f.write_str(&drill_key(id)),
            Key::ClusterDrill { cluster, id } => f.write_str(&cluster_drill_key(cluster, id)),
            Key::DrillReport {
                observer,
                creator,
                id,
            } => f.write_str(&drill_report_key(observer, creator, id)),
            Key::Vip { cluster, service } => f.write_str(&vip_key(cluster, service)),
            Key::EndpointVip {
                cluster,
                service,
                exporter,
                name,
            } => f.write_str(&endpoint_vip_key(cluster, service, exporter, name)),
            Key::Election { cluster, suffix } => {
                write!(f, "{}/{suffix}", election_prefix(cluster))
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
    format!("{PREFIX}{CLUSTERS}/{c}/{INFO}")
}

pub fn export_key(s: &ServiceKey, c: &ClusterId) -> String {
    format!(
        "{PREFIX}{CLUSTERS}/{c}/{EXPORTS}/{}/{}",
        s.namespace, s.name
    )
}

pub fn synced_key(c: &ClusterId) -> String {
    format!("{PREFIX}{CLUSTERS}/{c}/{SYNCED}")
}

pub fn health_key(observer: &ClusterId, c: &ClusterId) -> String {
    format!("{PREFIX}{CLUSTERS}/{observer}/{HEALTH}/{c}")
}

pub fn drill_key(id: &str) -> String {
    format!("{PREFIX}{DRILLS}/{id}")
}

/// `clusters/<c>/drills/<id>`: a drill cluster `c`'s federator runs for a Drill resource.
pub fn cluster_drill_key(c: &ClusterId, id: &str) -> String {
    format!("{PREFIX}{CLUSTERS}/{c}/{CLUSTER_DRILLS}/{id}")
}

/// `clusters/<observer>/drill-reports/<creator>/<id>`.
pub fn drill_report_key(observer: &ClusterId, creator: &ClusterId, id: &str) -> String {
    format!("{PREFIX}{CLUSTERS}/{observer}/{DRILL_REPORTS}/{creator}/{id}")
}

pub fn vip_key(c: &ClusterId, s: &ServiceKey) -> String {
    format!("{PREFIX}{CLUSTERS}/{c}/{VIPS}/{}/{}", s.namespace, s.name)
}

/// The election name of a cluster's federators, `/causeway/v2/clusters/<c>/election`, without
/// a trailing `/`: etcd's election API appends `/<lease ID>` itself.
pub fn election_prefix(c: &ClusterId) -> String {
    format!("{PREFIX}{CLUSTERS}/{c}/{ELECTION}")
}

// === Prefixes for range reads, watches and etcd roles ===
//
// All end with `/`, so that e.g. the keys of `east` do not include those of `east2`.

pub fn clusters_prefix() -> String {
    format!("{PREFIX}{CLUSTERS}/")
}

/// Everything cluster `c` writes: the prefix its etcd role may write.
pub fn cluster_prefix(c: &ClusterId) -> String {
    format!("{PREFIX}{CLUSTERS}/{c}/")
}

pub fn endpoint_vip_key(c: &ClusterId, s: &ServiceKey, exporter: &ClusterId, name: &str) -> String {
    format!(
        "{PREFIX}{CLUSTERS}/{c}/{VIPS}/{}/{}/{exporter}/{name}",
        s.namespace, s.name
    )
}

/// The ClusterSetIPs of cluster `c`'s imports.
pub fn cluster_vips_prefix(c: &ClusterId) -> String {
    format!("{PREFIX}{CLUSTERS}/{c}/{VIPS}/")
}

/// The exports of cluster `c`.
pub fn cluster_exports_prefix(c: &ClusterId) -> String {
    format!("{PREFIX}{CLUSTERS}/{c}/{EXPORTS}/")
}

pub fn drills_prefix() -> String {
    format!("{PREFIX}{DRILLS}/")
}

/// Schema v1's ClusterSetIPs, `/causeway/v1/vips/`, which one federation shared.
pub fn v1_vips_prefix() -> String {
    format!("{V1_PREFIX}{VIPS}/")
}

/// Schema v1's key of `s`'s ClusterSetIP, `/causeway/v1/vips/<ns>/<svc>`.
pub fn v1_vip_key(s: &ServiceKey) -> String {
    format!("{}{}/{}", v1_vips_prefix(), s.namespace, s.name)
}

// === etcd roles ===

/// The etcd user (and role) an operator's tools use: drills.
pub const OPERATOR_ROLE: &str = "operator";

/// One etcd role of the schema, granted to the user of the same name; with etcd's
/// `--client-cert-auth` a client certificate's common name is its user.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EtcdRole {
    pub name: String,
    /// Key prefixes the role may read and write.
    pub readwrite: Vec<String>,
    /// Key prefixes the role may only read.
    pub read: Vec<String>,
}

/// `cluster-<c>`: writes `clusters/<c>/` alone, reads the whole schema (and v1's VIPs, which an
/// upgraded federator adopts).
pub fn cluster_role(c: &ClusterId) -> EtcdRole {
    EtcdRole {
        name: format!("cluster-{c}"),
        readwrite: vec![cluster_prefix(c)],
        read: vec![PREFIX.to_string(), v1_vips_prefix()],
    }
}

/// `operator`: writes `drills/` alone, reads the whole schema.
pub fn operator_role() -> EtcdRole {
    EtcdRole {
        name: OPERATOR_ROLE.to_string(),
        readwrite: vec![drills_prefix()],
        read: vec![PREFIX.to_string()],
    }
}

// === Values ===

/// A value under [`PREFIX`] that is not valid JSON of the expected shape or schema.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("malformed value of etcd key {key:?}: {reason}")]
pub struct ValueError {
    pub key: String,
    pub reason: String,
}

/// Encodes a value as JSON, adding `"schema": 2` to JSON objects that do not carry a `schema`
/// field themselves (the model's records do, defaulting to 2).
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

/// Decodes the JSON value of `key`. Unknown fields are ignored; a `schema` other than 2 is
/// rejected (a missing one is left to `T`'s default).
pub fn decode<T: DeserializeOwned>(key: &str, bytes: &[u8]) -> Result<T, ValueError> {
    let err = |reason: String| ValueError {
        key: key.to_string(),
        reason,
    };
    // The schema first, so that a value of another schema is reported as such rather than as
    // whatever field its shape happens to break. Read straight from the bytes (skipping the
    // rest) and then as `T`: going through `Value` built a tree of every value first, a third
    // of a federator's first snapshot at 510,000 exports. Whatever fails that way is read again
    // through `Value`, so that errors say what they always said.
    #[derive(serde::Deserialize)]
    struct Schema {
        // `"schema": null` is a schema, and not one of ours: `Some(Null)`, not `None`.
        #[serde(default, deserialize_with = "present")]
        schema: Option<serde_json::Value>,
    }
    fn present<'de, D: serde::Deserializer<'de>>(
        d: D,
    ) -> Result<Option<serde_json::Value>, D::Error> {
        serde::Deserialize::deserialize(d).map(Some)
    }
    if let Ok(Schema { schema }) = serde_json::from_slice::<Schema>(bytes) {
        if schema.is_none_or(|s| s.as_u64() == Some(u64::from(SCHEMA_VERSION))) {
            if let Ok(v) = serde_json::from_slice::<T>(bytes) {
                return Ok(v);
            }
        }
    }
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
            Key::ClusterDrill {
                cluster: c("east"),
                id: "echo-demo-east-17".to_string(),
            },
            Key::DrillReport {
                observer: c("west"),
                creator: c("east"),
                id: "echo-demo-east-17".to_string(),
            },
            Key::Vip {
                cluster: c("east"),
                service: svc("shop", "cart"),
            },
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
            assert_eq!(Key::parse(&text).unwrap().to_string(), text);
        }
    }

    #[test]
    fn literal_keys() {
        let (east, west, cart) = (c("east"), c("west"), svc("shop", "cart"));
        assert_eq!(cluster_key(&east), "/causeway/v2/clusters/east/info");
        assert_eq!(
            export_key(&cart, &west),
            "/causeway/v2/clusters/west/exports/shop/cart"
        );
        assert_eq!(synced_key(&east), "/causeway/v2/clusters/east/synced");
        assert_eq!(
            health_key(&east, &west),
            "/causeway/v2/clusters/east/health/west"
        );
        assert_eq!(drill_key("d1"), "/causeway/v2/drills/d1");
        assert_eq!(
            cluster_drill_key(&east, "d1"),
            "/causeway/v2/clusters/east/drills/d1"
        );
        assert_eq!(
            drill_report_key(&west, &east, "d1"),
            "/causeway/v2/clusters/west/drill-reports/east/d1"
        );
        assert_eq!(
            vip_key(&east, &cart),
            "/causeway/v2/clusters/east/vips/shop/cart"
        );
        assert_eq!(
            election_prefix(&east),
            "/causeway/v2/clusters/east/election"
        );
        assert_eq!(clusters_prefix(), "/causeway/v2/clusters/");
        assert_eq!(cluster_prefix(&east), "/causeway/v2/clusters/east/");
        assert_eq!(
            cluster_exports_prefix(&east),
            "/causeway/v2/clusters/east/exports/"
        );
        assert_eq!(drills_prefix(), "/causeway/v2/drills/");
    }

    #[test]
    fn every_cluster_key_is_under_its_owners_prefix_and_no_one_elses() {
        let east2 = c("east2");
        for key in every_variant() {
            let text = key.to_string();
            match key.owner() {
                Some(owner) => {
                    assert!(text.starts_with(&cluster_prefix(owner)), "{text}");
                    assert!(!text.starts_with(&cluster_prefix(&east2)), "{text}");
                    assert!(!text.starts_with(&drills_prefix()), "{text}");
                }
                None => assert!(text.starts_with(&drills_prefix()), "{text}"),
            }
        }
        // `east`'s prefix does not hold `east2`'s keys.
        assert!(!cluster_key(&east2).starts_with(&cluster_prefix(&c("east"))));
        // What the election API creates parses as an election key of that cluster.
        let campaign = format!("{}/694d7a1b2c3d4e5f", election_prefix(&c("east")));
        assert_eq!(
            Key::parse(&campaign),
            Ok(Key::Election {
                cluster: c("east"),
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
                "info",
                "exports",
                "synced",
                "health",
                "drills",
                "drills",
                "drill-reports",
                "vips",
                "election",
                "election",
                "election"
            ]
        );
    }

    #[test]
    fn v1_vip_keys_are_where_v1_put_them() {
        assert_eq!(
            v1_vip_key(&svc("shop", "cart")),
            "/causeway/v1/vips/shop/cart"
        );
    }

    #[test]
    fn malformed_keys_are_rejected_naming_the_key() {
        let long = "a".repeat(64);
        let too_long_cluster = format!("/causeway/v2/clusters/{long}/info");
        let too_long_drill = format!("/causeway/v2/drills/{long}");
        let cases: &[(&str, &str)] = &[
            // prefix
            ("", "does not start with"),
            ("clusters/east/info", "does not start with"),
            ("/causeway/v1/clusters/east", "does not start with"),
            ("/causeway/v2", "does not start with"),
            ("/Causeway/v2/clusters/east/info", "does not start with"),
            // top level
            ("/causeway/v2/", "nothing after"),
            ("/causeway/v2/widgets/east", "unknown \"widgets\""),
            ("/causeway/v2/exports/shop/cart/east", "unknown \"exports\""),
            // cluster part
            ("/causeway/v2/clusters", "missing <cluster>"),
            ("/causeway/v2/clusters/", "empty <cluster> segment"),
            ("/causeway/v2/clusters//info", "empty <cluster> segment"),
            ("/causeway/v2/clusters/east", "missing <kind>"),
            ("/causeway/v2/clusters/east/", "empty <kind> segment"),
            (
                "/causeway/v2/clusters/east/widgets",
                "unknown kind \"widgets\"",
            ),
            (
                "/causeway/v2/clusters/east/info/x",
                "nothing may follow \"info\"",
            ),
            (
                "/causeway/v2/clusters/east/synced/",
                "nothing may follow \"synced\"",
            ),
            // segment counts
            (
                "/causeway/v2/clusters/east/exports/shop",
                "expected 2 segment(s)",
            ),
            ("/causeway/v2/clusters/east/exports", "found 0"),
            ("/causeway/v2/clusters/east/exports/shop/cart/x", "found 3"),
            ("/causeway/v2/clusters/east/health", "found 0"),
            ("/causeway/v2/clusters/east/health/west/x", "found 2"),
            ("/causeway/v2/drills", "found 0"),
            ("/causeway/v2/drills/a/b", "found 2"),
            ("/causeway/v2/clusters/east/drills/a/b", "found 2"),
            ("/causeway/v2/clusters/east/drill-reports/west", "found 1"),
            (
                "/causeway/v2/clusters/east/drill-reports/West/d1",
                "invalid cluster ID \"West\"",
            ),
            (
                "/causeway/v2/clusters/east/drills/Drill",
                "invalid drill ID",
            ),
            (
                "/causeway/v2/clusters/east/vips/shop",
                "expected 2 segment(s)",
            ),
            (
                "/causeway/v2/clusters/east/election",
                "missing '/' after \"election\"",
            ),
            // empty segments
            (
                "/causeway/v2/clusters/east/exports//cart",
                "empty <ns> segment",
            ),
            (
                "/causeway/v2/clusters/east/exports/shop/",
                "empty <svc> segment",
            ),
            (
                "/causeway/v2/clusters/east/health/",
                "empty <cluster> segment",
            ),
            ("/causeway/v2/drills/", "empty <id> segment"),
            (
                "/causeway/v2/clusters/east/vips/shop/",
                "empty <svc> segment",
            ),
            // invalid labels
            (
                "/causeway/v2/clusters/East/info",
                "invalid cluster ID \"East\"",
            ),
            (
                "/causeway/v2/clusters/-east/info",
                "start and end with an alphanumeric",
            ),
            (
                "/causeway/v2/clusters/ea_st/info",
                "lower case alphanumeric",
            ),
            (
                "/causeway/v2/clusters/ea.st/info",
                "lower case alphanumeric",
            ),
            (&too_long_cluster, "at most 63 characters"),
            (
                "/causeway/v2/clusters/east/exports/Shop/cart",
                "invalid namespace \"Shop\"",
            ),
            (
                "/causeway/v2/clusters/east/exports/shop/cart!",
                "invalid service name \"cart!\"",
            ),
            ("/causeway/v2/clusters/e ast/synced", "invalid cluster ID"),
            (
                "/causeway/v2/clusters/east/health/West",
                "cluster: invalid cluster ID \"West\"",
            ),
            ("/causeway/v2/drills/Drill", "invalid drill ID \"Drill\""),
            ("/causeway/v2/drills/-d", "invalid drill ID"),
            (&too_long_drill, "invalid drill ID"),
            (
                "/causeway/v2/clusters/east/vips/shop/Cart",
                "invalid service name \"Cart\"",
            ),
            (
                "/causeway/v2/clusters/East/election/x",
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
            assert_eq!(parse_bytes(key.as_bytes()), Err(err));
        }
    }

    #[test]
    fn non_utf8_keys_are_rejected() {
        let key = b"/causeway/v2/clusters/ea\xffst/info";
        let err = parse_bytes(key).unwrap_err();
        assert_eq!(err.key, "/causeway/v2/clusters/ea\u{fffd}st/info");
        assert!(err.reason.contains("not valid UTF-8"), "{err}");
    }

    fn export_record() -> ExportRecord {
        ExportRecord {
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
            ]
            .into(),
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
            ..ExportRecord::default()
        }
    }

    #[test]
    fn export_record_round_trips() {
        let key = export_key(&svc("shop", "cart"), &c("east"));
        let record = export_record();
        let bytes = encode(&record);
        let json: serde_json::Value = serde_json::from_slice(&bytes).unwrap();
        assert_eq!(json["schema"], 2);
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
        assert_eq!(json, serde_json::json!({ "schema": 2, "x": 1 }));
    }

    #[test]
    fn decode_reads_what_a_read_through_json_values_reads() {
        let key = "/causeway/v2/clusters/east/exports/shop/cart";
        // What `decode` did before it read straight from the bytes.
        let through_values = |bytes: &[u8]| -> Option<ExportRecord> {
            let json: serde_json::Value = serde_json::from_slice(bytes).ok()?;
            if let Some(schema) = json.get("schema") {
                if schema.as_u64() != Some(u64::from(SCHEMA_VERSION)) {
                    return None;
                }
            }
            serde_json::from_value(json).ok()
        };
        let cases: &[&[u8]] = &[
            br#"{"schema":2,"created_unix_ms":7,"ports":[{"name":"h","port":80}],"x":{"y":[1]}}"#,
            br#"{"created_unix_ms":7,"created_unix_ms":8}"#,
            br#"{"schema":null,"created_unix_ms":7}"#,
            br#"{"schema":2,"schema":2,"created_unix_ms":7}"#,
            br#"{"created_unix_ms":7,"weight":null}"#,
            br#"{"created_unix_ms":7,"weight":-1}"#,
            br#"[2,7]"#,
            br#"{"created_unix_ms":7} x"#,
        ];
        for bytes in cases {
            let text = String::from_utf8_lossy(bytes);
            assert_eq!(
                decode::<ExportRecord>(key, bytes).ok(),
                through_values(bytes),
                "{text}"
            );
        }
        // The fast read refuses duplicate fields; the read through values takes the last, as
        // it always did.
        let dup: ExportRecord =
            decode(key, br#"{"created_unix_ms":7,"created_unix_ms":8}"#).unwrap();
        assert_eq!(dup.created_unix_ms, 8);
    }

    #[test]
    fn decode_ignores_unknown_fields() {
        let bytes = br#"{"schema":2,"ip":"10.9.0.1","color":"blue","nested":{"a":[1,2]}}"#;
        let vip: VipRecord = decode("/causeway/v2/clusters/east/vips/shop/cart", bytes).unwrap();
        assert_eq!(vip.ip, "10.9.0.1".parse::<std::net::IpAddr>().unwrap());
    }

    #[test]
    fn decode_defaults_a_missing_schema_to_2() {
        let bytes = br#"{"created_unix_ms":5}"#;
        let record: ExportRecord = decode("/causeway/v2/clusters/c/exports/a/b", bytes).unwrap();
        assert_eq!(record.schema, 2);
        assert_eq!(record.created_unix_ms, 5);
        assert!(record.ports.is_empty());
    }

    #[test]
    fn decode_rejects_other_schemas_naming_the_key() {
        let key = "/causeway/v2/clusters/east/info";
        for schema in ["1", "3", "0", "\"2\"", "2.5", "null"] {
            let bytes = format!(r#"{{"schema":{schema},"trust_domain":"east.example"}}"#);
            let err = decode::<ClusterRecord>(key, bytes.as_bytes()).unwrap_err();
            assert_eq!(err.key, key);
            assert!(err.reason.contains("unsupported schema"), "{err}");
            assert!(err.to_string().contains(key), "{err}");
        }
    }

    #[test]
    fn decode_reports_serde_errors_naming_the_key() {
        let key = "/causeway/v2/clusters/east/exports/shop/cart";
        let cases: &[(&[u8], &str)] = &[
            (b"", "invalid JSON"),
            (b"{not json", "invalid JSON"),
            (br#"{"schema":2}"#, "missing field `created_unix_ms`"),
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
