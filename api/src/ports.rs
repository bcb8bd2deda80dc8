//! [`Ports`]: an export's port list, one copy shared by every record that holds an equal one.
//!
//! Every cluster that exports a service exports the same ports nearly always; at Cilium's scale
//! (255 clusters × 2,000 services) a federator holds 510,000 export records but only about
//! 2,000 distinct port lists. A list of two named ports costs about 250 bytes of heap (the
//! list and four small strings); as [`Ports`] interned through a [`PortPool`] it costs a
//! pointer.

use std::collections::HashSet;
use std::fmt;
use std::ops::Deref;
use std::sync::Arc;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

use crate::ServicePort;

/// An immutable port list. Compares, hashes, prints and (de)serializes as the list does; build
/// one from a `Vec<ServicePort>` with `.into()`, change one by building a new one.
#[derive(Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Ports(Arc<[ServicePort]>);

impl Ports {
    /// Whether `self` and `other` are one shared list (not only equal ones).
    pub fn ptr_eq(&self, other: &Self) -> bool {
        Arc::ptr_eq(&self.0, &other.0)
    }
}

impl Default for Ports {
    fn default() -> Self {
        Self(Arc::from(Vec::new()))
    }
}

impl From<Vec<ServicePort>> for Ports {
    fn from(v: Vec<ServicePort>) -> Self {
        Self(v.into())
    }
}

impl Deref for Ports {
    type Target = [ServicePort];
    fn deref(&self) -> &[ServicePort] {
        &self.0
    }
}

impl<'a> IntoIterator for &'a Ports {
    type Item = &'a ServicePort;
    type IntoIter = std::slice::Iter<'a, ServicePort>;
    fn into_iter(self) -> Self::IntoIter {
        self.0.iter()
    }
}

impl fmt::Debug for Ports {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

impl Serialize for Ports {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        self.0.serialize(s)
    }
}

impl<'de> Deserialize<'de> for Ports {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        Vec::<ServicePort>::deserialize(d).map(Self::from)
    }
}

/// The distinct port lists a holder of many records has seen. [`PortPool::intern`] answers the
/// pooled copy of an equal list; lists no record holds any more are dropped from the pool once it
/// has doubled since the last sweep, so the pool stays within twice the lists in use and a sweep
/// costs, spread over the inserts that led to it, a constant per insert.
#[derive(Debug, Clone, Default)]
pub struct PortPool {
    lists: HashSet<Ports>,
    swept_at: usize,
}

impl PortPool {
    /// The pool's copy of `ports` (`ports` itself when it is new to the pool).
    pub fn intern(&mut self, ports: Ports) -> Ports {
        if let Some(pooled) = self.lists.get(&ports) {
            return pooled.clone();
        }
        if self.lists.len() >= 2 * self.swept_at.max(32) {
            self.sweep();
        }
        self.lists.insert(ports.clone());
        ports
    }

    /// Drops the lists only the pool holds.
    pub fn sweep(&mut self) {
        self.lists.retain(|p| Arc::strong_count(&p.0) > 1);
        self.swept_at = self.lists.len();
    }

    /// How many distinct lists it holds.
    pub fn len(&self) -> usize {
        self.lists.len()
    }

    pub fn is_empty(&self) -> bool {
        self.lists.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{ExportRecord, Protocol};

    fn port(name: &str, port: u16) -> ServicePort {
        ServicePort {
            name: name.into(),
            protocol: Protocol::Tcp,
            port,
            app_protocol: Some("http".into()),
        }
    }

    #[test]
    fn equal_lists_share_one_copy_and_different_ones_do_not() {
        let mut pool = PortPool::default();
        let a = pool.intern(vec![port("http", 80)].into());
        let b = pool.intern(vec![port("http", 80)].into());
        let c = pool.intern(vec![port("http", 81)].into());
        assert!(a.ptr_eq(&b));
        assert_eq!(a, b);
        assert!(!a.ptr_eq(&c));
        assert_ne!(a, c);
        assert_eq!(pool.len(), 2);
    }

    #[test]
    fn lists_no_record_holds_are_swept_and_the_pool_stays_bounded() {
        let mut pool = PortPool::default();
        let kept = pool.intern(vec![port("kept", 1)].into());
        for p in 0..10_000u16 {
            // Each list is dropped by its holder at once: only the pool keeps it.
            drop(pool.intern(vec![port("gone", p)].into()));
            assert!(pool.len() <= 64, "{} lists after {p}", pool.len());
        }
        pool.sweep();
        assert_eq!(pool.len(), 1);
        assert!(pool.intern(vec![port("kept", 1)].into()).ptr_eq(&kept));
    }

    #[test]
    fn a_record_reads_and_writes_its_ports_as_a_plain_list() {
        let json = r#"{"ports":[{"name":"http","protocol":"TCP","port":80}],"created_unix_ms":1}"#;
        let rec: ExportRecord = serde_json::from_str(json).unwrap();
        assert_eq!(rec.ports.len(), 1);
        assert_eq!(rec.ports[0].port, 80);
        let text = serde_json::to_string(&rec).unwrap();
        assert!(
            text.contains(r#""ports":[{"name":"http","protocol":"TCP","port":80}]"#),
            "{text}"
        );
        let none: ExportRecord = serde_json::from_str(r#"{"created_unix_ms":1}"#).unwrap();
        assert!(none.ports.is_empty());
    }
}
