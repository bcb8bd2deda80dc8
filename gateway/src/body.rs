//! Body types shared by every proxy path, and a body that holds guards until it is done.

use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::Bytes;
use http_body_util::combinators::UnsyncBoxBody;
use http_body_util::{BodyExt, Empty, Full};
use hyper::body::{Body as HttpBody, Frame, Incoming, SizeHint};

pub(crate) type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// The one body type every request and response the gateway sends is converted to.
pub(crate) type Body = UnsyncBoxBody<Bytes, BoxError>;

pub(crate) fn empty() -> Body {
    Empty::new().map_err(|never| match never {}).boxed_unsync()
}

pub(crate) fn full(bytes: impl Into<Bytes>) -> Body {
    Full::new(bytes.into())
        .map_err(|never| match never {})
        .boxed_unsync()
}

/// A failure of the body a client sent (malformed chunked encoding, a reset stream, a body
/// shorter than its `content-length`): the client's fault, never the destination's.
#[derive(Debug, thiserror::Error)]
#[error("the client's request body failed: {0}")]
pub(crate) struct ClientBodyError(#[source] hyper::Error);

/// Whether a client's request body has failed ([`from_client`]). HTTP/2 turns a body error
/// into a reset stream whose error no longer says why, so the body says so itself.
#[derive(Debug, Clone, Default)]
pub(crate) struct ClientFault(std::sync::Arc<std::sync::atomic::AtomicBool>);

impl ClientFault {
    pub(crate) fn failed(&self) -> bool {
        self.0.load(std::sync::atomic::Ordering::Acquire)
    }
}

/// A request body from a client (a local caller at the egress, a peer at the ingress) whose
/// errors say so: they are [`ClientBodyError`]s, and they set the returned [`ClientFault`].
pub(crate) fn from_client(body: Incoming) -> (Body, ClientFault) {
    let fault = ClientFault::default();
    let flag = fault.0.clone();
    let body = body
        .map_err(move |e| {
            flag.store(true, std::sync::atomic::Ordering::Release);
            BoxError::from(ClientBodyError(e))
        })
        .boxed_unsync();
    (body, fault)
}

/// Whether `e`, or anything it was caused by, is a [`ClientBodyError`].
pub(crate) fn caused_by_client(e: &(dyn std::error::Error + 'static)) -> bool {
    let mut cur = Some(e);
    while let Some(e) = cur {
        if e.is::<ClientBodyError>() {
            return true;
        }
        cur = e.source();
    }
    false
}

pub(crate) fn incoming(body: Incoming) -> Body {
    body.map_err(BoxError::from).boxed_unsync()
}

/// Anything held until the body is dropped (breaker permits, budget slots, log records).
pub(crate) type Guard = Box<dyn Send>;

/// Wraps a body so that `guards` live as long as the body is being sent.
pub(crate) struct Guarded {
    inner: Body,
    _guards: Vec<Guard>,
}

impl Guarded {
    pub(crate) fn wrap(inner: Body, guards: Vec<Guard>) -> Body {
        if guards.is_empty() {
            return inner;
        }
        Self {
            inner,
            _guards: guards,
        }
        .boxed_unsync()
    }
}

impl HttpBody for Guarded {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        Pin::new(&mut self.inner).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

/// Largest request body the gateway buffers so that the request can be retried.
pub(crate) const MAX_REPLAY_BYTES: u64 = 64 * 1024;

/// A request body that can be sent more than once (buffered) or exactly once (streamed).
pub(crate) enum ReplayBody {
    Buffered(Bytes),
    Once(Option<Body>),
}

impl ReplayBody {
    /// Buffers `body` when `replay` is wanted and it is known to be small; streams it otherwise.
    pub(crate) async fn new(body: Body, replay: bool) -> Result<Self, BoxError> {
        if body.is_end_stream() {
            return Ok(Self::Buffered(Bytes::new()));
        }
        let small = body
            .size_hint()
            .upper()
            .is_some_and(|n| n <= MAX_REPLAY_BYTES);
        if replay && small {
            let bytes = body.collect().await?.to_bytes();
            return Ok(Self::Buffered(bytes));
        }
        Ok(Self::Once(Some(body)))
    }

    /// Whether another attempt may take the body again.
    pub(crate) fn replayable(&self) -> bool {
        matches!(self, Self::Buffered(_) | Self::Once(Some(_)))
    }

    pub(crate) fn is_buffered(&self) -> bool {
        matches!(self, Self::Buffered(_))
    }

    pub(crate) fn take(&mut self) -> Option<Body> {
        match self {
            Self::Buffered(b) if b.is_empty() => Some(empty()),
            Self::Buffered(b) => Some(full(b.clone())),
            Self::Once(b) => b.take(),
        }
    }

    /// Puts back a body that was not sent (the connection refused it before writing).
    pub(crate) fn put_back(&mut self, body: Body) {
        if let Self::Once(slot @ None) = self {
            *slot = Some(body);
        }
    }
}
