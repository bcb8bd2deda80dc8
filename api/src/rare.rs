//! [`Rare`]: a part of a record that most records leave empty, held behind a pointer only when
//! it is set.
//!
//! A federator holds one [`crate::ExportRecord`] per export (510,000 at Cilium's scale); its
//! traffic policy and exported metadata are about 200 bytes together and empty in nearly every
//! export. As `Rare`, an empty one costs 8 bytes and no allocation.

use std::fmt;
use std::ops::{Deref, DerefMut};

use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// The value every unset [`Rare`] reads as.
pub trait Empty: Default + PartialEq + 'static {
    fn empty() -> &'static Self;
}

/// `T`, boxed only when it differs from [`Empty::empty`]. Reads through `Deref` see the empty
/// value when unset; a write through `DerefMut` boxes it. Compares, prints and (de)serializes
/// as `T` does.
#[derive(Clone, Default)]
pub struct Rare<T: Empty>(Option<Box<T>>);

impl<T: Empty> From<T> for Rare<T> {
    fn from(v: T) -> Self {
        if v == *T::empty() {
            Self(None)
        } else {
            Self(Some(Box::new(v)))
        }
    }
}

impl<T: Empty> Deref for Rare<T> {
    type Target = T;
    fn deref(&self) -> &T {
        match &self.0 {
            Some(v) => v,
            None => T::empty(),
        }
    }
}

impl<T: Empty> DerefMut for Rare<T> {
    fn deref_mut(&mut self) -> &mut T {
        self.0.get_or_insert_with(Box::default)
    }
}

impl<T: Empty> PartialEq for Rare<T> {
    fn eq(&self, other: &Self) -> bool {
        **self == **other
    }
}

impl<T: Empty + Eq> Eq for Rare<T> {}

impl<T: Empty + fmt::Debug> fmt::Debug for Rare<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        (**self).fmt(f)
    }
}

impl<T: Empty + Serialize> Serialize for Rare<T> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        (**self).serialize(s)
    }
}

impl<'de, T: Empty + Deserialize<'de>> Deserialize<'de> for Rare<T> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        T::deserialize(d).map(Self::from)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{ExportRecord, Exported, TrafficPolicy};

    #[test]
    fn an_empty_part_is_not_boxed_and_reads_as_empty() {
        let r: Rare<TrafficPolicy> = TrafficPolicy::default().into();
        assert!(r.0.is_none());
        assert!(r.is_empty());
        assert_eq!(r.timeout_ms, None);
        let set: Rare<TrafficPolicy> = TrafficPolicy {
            timeout_ms: Some(5),
            ..TrafficPolicy::default()
        }
        .into();
        assert!(set.0.is_some());
        assert_ne!(r, set);
    }

    #[test]
    fn a_write_boxes_it_and_an_emptied_one_equals_an_unset_one() {
        let mut r = Rare::<Exported>::default();
        r.labels.insert("team".into(), "a".into());
        assert_eq!(r.labels.len(), 1);
        r.labels.clear();
        assert!(r.0.is_some());
        assert_eq!(r, Rare::default());
    }

    #[test]
    fn a_record_reads_and_writes_the_same_json_and_is_smaller() {
        let json = r#"{"ports":[],"created_unix_ms":1,"traffic_policy":{"timeout_ms":250},"exported":{"labels":{"a":"b"}}}"#;
        let rec: ExportRecord = serde_json::from_str(json).unwrap();
        assert_eq!(rec.traffic_policy.timeout_ms, Some(250));
        assert_eq!(rec.exported.labels["a"], "b");
        let back: ExportRecord =
            serde_json::from_str(&serde_json::to_string(&rec).unwrap()).unwrap();
        assert_eq!(back, rec);
        let plain: ExportRecord =
            serde_json::from_str(r#"{"ports":[],"created_unix_ms":1}"#).unwrap();
        let text = serde_json::to_string(&plain).unwrap();
        assert!(
            !text.contains("traffic_policy") && !text.contains("exported"),
            "{text}"
        );
        assert!(
            std::mem::size_of::<ExportRecord>()
                < std::mem::size_of::<TrafficPolicy>() + std::mem::size_of::<Exported>(),
            "{} bytes",
            std::mem::size_of::<ExportRecord>()
        );
    }
}
