//! Responses already computed, by request: for one snapshot a response is a function of the
//! request's bytes after its ID (the flags, the question, the EDNS record) and of the transport
//! (UDP limits the size), so the same request again gets the same bytes with its own ID,
//! without parsing, looking up or encoding. Knot and NSD answer from precompiled data too.
//!
//! Exact bytes, not a normalised question: a query whose name differs in case (0x20) or whose
//! EDNS differs is another entry, so a hit is always exactly what the full path would send.
//! Cleared whenever the snapshot changes; bounded in entries and bytes (full: cleared, so a flood
//! of distinct names costs the full path, never memory).

use std::collections::HashMap;
use std::sync::Arc;

use causeway_api::MeshSnapshot;
use hickory_proto::op::ResponseCode;
use hickory_proto::rr::RecordType;

/// Requests longer than this are not cached (a question is at most 255 bytes of name, plus the
/// header and an OPT record).
pub(crate) const MAX_REQUEST: usize = 512;
/// Responses longer than this are not cached (large headless answers over TCP).
pub(crate) const MAX_RESPONSE: usize = 4096;
/// Entries kept, and bytes of keys and responses, before the cache is cleared.
const MAX_ENTRIES: usize = 4096;
const MAX_BYTES: usize = 4 << 20;

/// A cached response and what the metrics count of it.
#[derive(Debug, Clone)]
pub(crate) struct Cached {
    pub response: Box<[u8]>,
    pub qtype: Option<RecordType>,
    pub rcode: ResponseCode,
}

#[derive(Default)]
pub(crate) struct AnswerCache {
    /// The snapshot the entries were computed from (held, so its address cannot be reused).
    snapshot: Option<Arc<MeshSnapshot>>,
    /// By request bytes after the ID; UDP and TCP apart.
    udp: HashMap<Box<[u8]>, Cached>,
    tcp: HashMap<Box<[u8]>, Cached>,
    bytes: usize,
}

impl AnswerCache {
    /// The response to `request` (whole, ID included) computed from `snapshot`, with the
    /// request's ID.
    pub(crate) fn get(
        &mut self,
        snapshot: &Arc<MeshSnapshot>,
        request: &[u8],
        tcp: bool,
    ) -> Option<(Vec<u8>, Option<RecordType>, ResponseCode)> {
        if !self.is_for(snapshot) {
            self.reset(snapshot);
            return None;
        }
        let key = request.get(2..)?;
        let hit = if tcp { &self.tcp } else { &self.udp }.get(key)?;
        let mut response = hit.response.to_vec();
        response[..2].copy_from_slice(&request[..2]);
        Some((response, hit.qtype, hit.rcode))
    }

    /// Keeps `response` to `request`, both as sent, when computed from `snapshot`.
    pub(crate) fn put(
        &mut self,
        snapshot: &Arc<MeshSnapshot>,
        request: &[u8],
        tcp: bool,
        response: &[u8],
        qtype: Option<RecordType>,
        rcode: ResponseCode,
    ) {
        if request.len() < 12
            || request.len() > MAX_REQUEST
            || response.len() < 12
            || response.len() > MAX_RESPONSE
        {
            return;
        }
        if !self.is_for(snapshot) {
            self.reset(snapshot);
        }
        let size = request.len() + response.len();
        if self.udp.len() + self.tcp.len() >= MAX_ENTRIES || self.bytes + size > MAX_BYTES {
            self.udp.clear();
            self.tcp.clear();
            self.bytes = 0;
        }
        let map = if tcp { &mut self.tcp } else { &mut self.udp };
        let old = map.insert(
            request[2..].into(),
            Cached {
                response: response.into(),
                qtype,
                rcode,
            },
        );
        if old.is_none() {
            self.bytes += size;
        }
    }

    fn is_for(&self, snapshot: &Arc<MeshSnapshot>) -> bool {
        self.snapshot
            .as_ref()
            .is_some_and(|s| Arc::ptr_eq(s, snapshot))
    }

    fn reset(&mut self, snapshot: &Arc<MeshSnapshot>) {
        self.snapshot = Some(snapshot.clone());
        self.udp.clear();
        self.tcp.clear();
        self.bytes = 0;
    }

    #[cfg(test)]
    fn len(&self) -> usize {
        self.udp.len() + self.tcp.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn request(id: u16, name: &[u8]) -> Vec<u8> {
        let mut r = id.to_be_bytes().to_vec();
        r.extend_from_slice(&[1, 0, 0, 1, 0, 0, 0, 0, 0, 0]);
        r.extend_from_slice(name);
        r.extend_from_slice(&[0, 1, 0, 1]);
        r
    }

    #[test]
    fn a_hit_is_the_same_response_with_the_requests_id_for_the_same_snapshot_only() {
        let mut c = AnswerCache::default();
        let snap = Arc::new(MeshSnapshot::default());
        let q = request(7, b"\x04echo\x00");
        let mut response = q.clone();
        response[2] |= 0x80;
        response.extend_from_slice(b"answer");
        assert!(c.get(&snap, &q, false).is_none());
        c.put(
            &snap,
            &q,
            false,
            &response,
            Some(RecordType::A),
            ResponseCode::NoError,
        );

        let again = request(0xbeef, b"\x04echo\x00");
        let (r, qtype, rcode) = c.get(&snap, &again, false).expect("a hit");
        assert_eq!(&r[..2], &0xbeef_u16.to_be_bytes());
        assert_eq!(&r[2..], &response[2..]);
        assert_eq!((qtype, rcode), (Some(RecordType::A), ResponseCode::NoError));
        // Another transport, another case of the name: misses.
        assert!(c.get(&snap, &again, true).is_none());
        assert!(c.get(&snap, &request(1, b"\x04ECHO\x00"), false).is_none());
        // A new snapshot (even an equal one): everything goes.
        let next = Arc::new(MeshSnapshot::default());
        assert!(c.get(&next, &again, false).is_none());
        assert_eq!(c.len(), 0);
    }

    #[test]
    fn bounded_in_entries_and_sizes() {
        let mut c = AnswerCache::default();
        let snap = Arc::new(MeshSnapshot::default());
        for i in 0..MAX_ENTRIES + 5 {
            let name = format!("\x05n{i:04}\x00");
            let q = request(1, name.as_bytes());
            c.put(&snap, &q, false, &q, None, ResponseCode::NoError);
        }
        assert!(c.len() <= MAX_ENTRIES, "{}", c.len());
        let q = request(1, b"\x01a\x00");
        c.put(
            &snap,
            &q,
            false,
            &vec![0; MAX_RESPONSE + 1],
            None,
            ResponseCode::NoError,
        );
        assert!(
            c.get(&snap, &q, false).is_none(),
            "too large a response is not kept"
        );
        let long = request(1, &vec![1u8; MAX_REQUEST]);
        c.put(&snap, &long, false, &q, None, ResponseCode::NoError);
        assert!(
            c.get(&snap, &long, false).is_none(),
            "too long a request is not kept"
        );
    }
}
