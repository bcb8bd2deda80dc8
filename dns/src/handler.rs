//! The request path: one DNS message in, one out, answered from the latest snapshot.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Instant;

use causeway_api::MeshSnapshot;
use hickory_proto::op::{Edns, Header, HeaderCounts, MessageType, Metadata, OpCode, ResponseCode};
use hickory_proto::rr::{DNSClass, Record, RecordType};
use hickory_proto::serialize::binary::{BinDecodable, BinDecoder, BinEncoder};
use hickory_server::net::runtime::Time;
use hickory_server::net::xfer::Protocol;
use hickory_server::server::{Request, RequestHandler, ResponseHandler, ResponseInfo};
use hickory_server::zone_handler::{MessageResponseBuilder, Queries};
use tokio::sync::watch;
use tracing::{debug, warn};

use crate::cache::AnswerCache;
use crate::metrics::Metrics;
use crate::zone::Zone;
use crate::{DnsConfig, DnsError};

/// Largest UDP response we send, whatever the client offers: the DNS Flag Day 2020 size, which
/// avoids IP fragmentation (Knot and BIND default to it too). Bigger answers set TC and the
/// client retries over TCP.
pub const MAX_UDP_PAYLOAD: u16 = 1232;
/// UDP response size for a client without EDNS (RFC 1035 4.2.1).
pub const CLASSIC_UDP_PAYLOAD: u16 = 512;

/// Answers `clusterset.local` queries from the latest `MeshSnapshot`.
///
/// The server runs it behind its sockets; [`DnsHandler::handle_bytes`] drives the same path
/// without sockets (tests, fuzzing).
pub struct DnsHandler {
    zone: Zone,
    snapshots: watch::Receiver<Arc<MeshSnapshot>>,
    metrics: Metrics,
    /// Responses of the current snapshot by request ([`crate::cache`]).
    cache: std::sync::Mutex<AnswerCache>,
}

/// The response to one request, before encoding.
struct Prepared {
    metadata: Metadata,
    edns: Option<Edns>,
    answers: Vec<Record>,
    authority: Vec<Record>,
    qtype: Option<RecordType>,
}

// === impl DnsHandler ===

impl DnsHandler {
    /// Registers the DNS metrics into `registry`; fails if they are already there.
    pub fn new(
        config: &DnsConfig,
        snapshots: watch::Receiver<Arc<MeshSnapshot>>,
        registry: &prometheus::Registry,
    ) -> Result<Self, DnsError> {
        config.validate()?;
        Ok(Self {
            zone: Zone::new(config),
            snapshots,
            metrics: Metrics::register(registry)?,
            cache: Default::default(),
        })
    }

    /// The whole request path on raw bytes, as a UDP (`tcp == false`, size limits apply) or TCP
    /// request: `None` when the server would not answer at all (shorter than a header, or a
    /// response rather than a query), else the encoded response.
    pub fn handle_bytes(&self, raw: &[u8], src: SocketAddr, tcp: bool) -> Option<Vec<u8>> {
        let start = Instant::now();
        // One snapshot for the lookup, the answer and the cache entry. Cloned so that the watch
        // lock goes at once.
        let snapshot = Arc::clone(&*self.snapshots.borrow());
        let cacheable = raw.len() >= 12 && raw.len() <= crate::cache::MAX_REQUEST;
        if cacheable {
            let hit = self
                .cache
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .get(&snapshot, raw, tcp);
            if let Some((response, qtype, rcode)) = hit {
                self.metrics.observe(qtype, rcode, start.elapsed());
                return Some(response);
            }
        }
        let protocol = if tcp { Protocol::Tcp } else { Protocol::Udp };
        let request = match Request::from_bytes(raw.to_vec(), src, protocol) {
            Ok(request) => request,
            // What hickory's server does with an unreadable message: FORMERR if the header is
            // there, silence if not.
            Err(_) => return formerr_for_unreadable(raw),
        };
        if request.metadata.message_type == MessageType::Response {
            return None;
        }
        let prepared = self.prepare(&request, &snapshot);
        let max_size = if tcp {
            u16::MAX
        } else {
            prepared
                .edns
                .as_ref()
                .map_or(CLASSIC_UDP_PAYLOAD, Edns::max_payload)
        };
        let mut bytes = Vec::with_capacity(512);
        let mut encoder = BinEncoder::new(&mut bytes);
        encoder.set_max_size(max_size);
        let response = MessageResponseBuilder::new(&request.queries, prepared.edns.as_ref()).build(
            prepared.metadata,
            prepared.answers.iter(),
            std::iter::empty(),
            prepared.authority.iter(),
            std::iter::empty(),
        );
        let sent = response.destructive_emit(&mut encoder);
        self.metrics.observe(
            prepared.qtype,
            prepared.metadata.response_code,
            start.elapsed(),
        );
        match sent {
            Ok(_) => {
                if cacheable {
                    self.cache.lock().unwrap_or_else(|e| e.into_inner()).put(
                        &snapshot,
                        raw,
                        tcp,
                        &bytes,
                        prepared.qtype,
                        prepared.metadata.response_code,
                    );
                }
                Some(bytes)
            }
            Err(error) => {
                warn!(%error, "cannot encode DNS response");
                None
            }
        }
    }

    /// Counts a TCP connection refused at the connection limit.
    pub(crate) fn tcp_refused(&self) {
        self.metrics.tcp_refused();
    }

    /// Decides the response: the header, EDNS, and the records.
    fn prepare(&self, request: &Request, snapshot: &MeshSnapshot) -> Prepared {
        let mut metadata = Metadata::response_from_request(&request.metadata);
        // No recursion here, ever: RA stays 0 (response_from_request leaves it unset).
        let edns = request.edns.as_ref().map(|req| {
            let mut edns = Edns::new();
            edns.set_max_payload(
                req.max_payload()
                    .clamp(CLASSIC_UDP_PAYLOAD, MAX_UDP_PAYLOAD),
            );
            edns.set_version(0);
            // RFC 3225 3: the DO bit of the query is copied into the response.
            edns.set_dnssec_ok(req.flags().dnssec_ok);
            edns
        });
        let queries = request.queries.queries();
        let qtype = match queries {
            [q] => Some(q.query_type()),
            _ => None,
        };
        let mut prepared = Prepared {
            metadata,
            edns,
            answers: Vec::new(),
            authority: Vec::new(),
            qtype,
        };
        let rcode = 'rcode: {
            if request.metadata.message_type != MessageType::Query {
                break 'rcode ResponseCode::FormErr;
            }
            if request.edns.as_ref().is_some_and(|e| e.version() > 0) {
                break 'rcode ResponseCode::BADVERS;
            }
            if request.metadata.op_code != OpCode::Query {
                break 'rcode ResponseCode::NotImp;
            }
            let [query] = queries else {
                // Zero or several questions: RFC 9619 allows exactly one.
                break 'rcode ResponseCode::FormErr;
            };
            if query.query_class() != DNSClass::IN {
                break 'rcode ResponseCode::Refused;
            }
            let reverse = crate::zone::reverse_address(query.name());
            if reverse.is_none() && !self.zone.contains(query.name()) {
                break 'rcode ResponseCode::Refused;
            }
            if matches!(query.query_type(), RecordType::AXFR | RecordType::IXFR) {
                // The zone is computed per query; there is nothing to transfer.
                break 'rcode ResponseCode::Refused;
            }
            if !snapshot.synced {
                // Before the initial sync an NXDOMAIN would be a lie that resolvers cache.
                break 'rcode ResponseCode::ServFail;
            }
            if let Some(ip) = reverse {
                // PTR of an address we hand out (a ClusterSetIP, a headless endpoint); any
                // other address is not ours to answer.
                let answers = self
                    .zone
                    .reverse(snapshot, query.name(), ip, query.query_type());
                match answers {
                    Some(records) => {
                        metadata.authoritative = true;
                        prepared.answers = records;
                        break 'rcode ResponseCode::NoError;
                    }
                    None => break 'rcode ResponseCode::Refused,
                }
            }
            metadata.authoritative = true;
            let answer = self.zone.lookup(snapshot, query.name(), query.query_type());
            prepared.answers = answer.answers;
            prepared.authority = answer.authority;
            answer.rcode
        };
        metadata.response_code = rcode;
        prepared.metadata = metadata;
        debug!(id = metadata.id, ?qtype, %rcode, "dns answer");
        prepared
    }
}

#[async_trait::async_trait]
impl RequestHandler for DnsHandler {
    async fn handle_request<R: ResponseHandler, T: Time>(
        &self,
        request: &Request,
        mut response_handle: R,
    ) -> ResponseInfo {
        let start = Instant::now();
        // Cloned so that the watch lock goes at once: never held across an await.
        let snapshot = Arc::clone(&*self.snapshots.borrow());
        let prepared = self.prepare(request, &snapshot);
        let response = MessageResponseBuilder::new(&request.queries, prepared.edns.as_ref()).build(
            prepared.metadata,
            prepared.answers.iter(),
            std::iter::empty(),
            prepared.authority.iter(),
            std::iter::empty(),
        );
        let info = match response_handle.send_response(response).await {
            Ok(info) => info,
            Err(error) => {
                warn!(%error, "cannot send DNS response");
                let mut metadata = prepared.metadata;
                metadata.response_code = ResponseCode::ServFail;
                ResponseInfo::from(Header {
                    metadata,
                    counts: HeaderCounts::default(),
                })
            }
        };
        self.metrics.observe(
            prepared.qtype,
            prepared.metadata.response_code,
            start.elapsed(),
        );
        info
    }
}

fn formerr_for_unreadable(raw: &[u8]) -> Option<Vec<u8>> {
    let mut decoder = BinDecoder::new(raw);
    let header = Header::read(&mut decoder).ok()?;
    if header.metadata.message_type == MessageType::Response {
        return None;
    }
    let mut metadata = Metadata::response_from_request(&header.metadata);
    metadata.response_code = ResponseCode::FormErr;
    let no_queries = Queries::read(&mut BinDecoder::new(&[]), 0).ok()?;
    let mut bytes = Vec::with_capacity(12);
    let mut encoder = BinEncoder::new(&mut bytes);
    MessageResponseBuilder::new(&no_queries, None)
        .build_no_records(metadata)
        .destructive_emit(&mut encoder)
        .ok()?;
    Some(bytes)
}
