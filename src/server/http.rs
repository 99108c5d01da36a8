//! HTTP plumbing on hyper: bounded, timed body reads; JSON, text and error replies; and
//! server-sent events fed from a channel. Every reply body can carry guards that are dropped
//! when its last byte is written or the connection goes away.

use std::convert::Infallible;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Incoming;
use hyper::header::{CONNECTION, CONTENT_LENGTH, CONTENT_TYPE, HeaderValue, RETRY_AFTER};
use hyper::{Request, Response, StatusCode};
use tokio::sync::mpsc;

use super::api_error::ApiError;

/// Something to drop when a reply is done (a slot, a connection's state change).
pub type Guard = Box<dyn Send + Sync>;

/// A reply's body: whole bytes or a stream of events, with its guards.
pub struct ReplyBody {
    source: Source,
    guards: Vec<Guard>,
}

enum Source {
    Full(Full<Bytes>),
    Events(mpsc::Receiver<Bytes>),
}

impl ReplyBody {
    fn full(bytes: impl Into<Bytes>) -> ReplyBody {
        ReplyBody { source: Source::Full(Full::new(bytes.into())), guards: Vec::new() }
    }
}

impl Body for ReplyBody {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        let this = self.get_mut();
        let polled = match &mut this.source {
            Source::Full(f) => Pin::new(f).poll_frame(cx),
            Source::Events(rx) => rx.poll_recv(cx).map(|b| b.map(|b| Ok(Frame::data(b)))),
        };
        if let Poll::Ready(None) = polled {
            // The last byte is out: release what the reply held.
            this.guards.clear();
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        match &self.source {
            Source::Full(f) => f.is_end_stream(),
            Source::Events(_) => false,
        }
    }

    fn size_hint(&self) -> SizeHint {
        match &self.source {
            Source::Full(f) => f.size_hint(),
            Source::Events(_) => SizeHint::default(),
        }
    }
}

pub type Reply = Response<ReplyBody>;

/// `guard` is dropped when the reply's last byte is written, or with the connection.
pub fn hold(mut r: Reply, guard: Guard) -> Reply {
    r.body_mut().guards.push(guard);
    r
}

fn with_type(status: u16, content_type: &'static str, body: impl Into<Bytes>) -> Reply {
    let mut r = Response::new(ReplyBody::full(body));
    *r.status_mut() = StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    r.headers_mut().insert(CONTENT_TYPE, HeaderValue::from_static(content_type));
    r
}

pub fn json(status: u16, body: &serde_json::Value) -> Reply {
    with_type(status, "application/json", body.to_string())
}

pub fn text(status: u16, content_type: &'static str, body: String) -> Reply {
    with_type(status, content_type, body)
}

pub fn error(e: &ApiError) -> Reply {
    let mut r = json(e.status, &e.body());
    if e.status == 429 {
        r.headers_mut().insert(RETRY_AFTER, HeaderValue::from_static("1"));
    }
    r
}

/// 503 that asks the client to come back later and closes the connection.
pub fn unavailable(e: &ApiError) -> Reply {
    let mut r = closing(error(e));
    r.headers_mut().insert(RETRY_AFTER, HeaderValue::from_static("1"));
    r
}

/// The connection is closed after this reply.
pub fn closing(mut r: Reply) -> Reply {
    r.headers_mut().insert(CONNECTION, HeaderValue::from_static("close"));
    r
}

/// A `text/event-stream` reply whose events arrive on `rx` (each already framed as
/// `data: ...\n\n`); the connection closes after the last one.
pub fn event_stream(rx: mpsc::Receiver<Bytes>) -> Reply {
    let mut r = Response::new(ReplyBody { source: Source::Events(rx), guards: Vec::new() });
    let h = r.headers_mut();
    h.insert(CONTENT_TYPE, HeaderValue::from_static("text/event-stream"));
    h.insert("cache-control", HeaderValue::from_static("no-cache"));
    h.insert(CONNECTION, HeaderValue::from_static("close"));
    r
}

/// `data: <payload>\n\n`
pub fn event(payload: &str) -> Bytes {
    Bytes::from(format!("data: {payload}\n\n"))
}

/// The body, refused with 413 beyond `limit` bytes (by Content-Length or by reading) and with
/// 408 when it has not all arrived within `timeout`.
pub async fn read_body(req: Request<Incoming>, limit: usize, timeout: Duration) -> Result<Bytes, ApiError> {
    let too_big =
        || ApiError::new(413, "invalid_request_error", "body_too_large", format!("request body exceeds {limit} bytes"));
    let declared = req.headers().get(CONTENT_LENGTH).and_then(|v| v.to_str().ok()).and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|n| n > limit as u64) {
        return Err(too_big());
    }
    match tokio::time::timeout(timeout, Limited::new(req.into_body(), limit).collect()).await {
        Err(_) => Err(ApiError::new(
            408,
            "invalid_request_error",
            "body_timeout",
            format!("the request body did not arrive within {} s", timeout.as_secs()),
        )),
        Ok(Err(e)) if e.downcast_ref::<http_body_util::LengthLimitError>().is_some() => Err(too_big()),
        Ok(Err(e)) => Err(ApiError::bad_request(format!("cannot read the request body: {}", clip(&e.to_string())))),
        Ok(Ok(collected)) => Ok(collected.to_bytes()),
    }
}

/// Text from a client, cut short enough to echo in an error message.
pub fn clip(s: &str) -> String {
    const MAX: usize = 120;
    if s.len() <= MAX {
        return s.to_string();
    }
    let mut end = MAX;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}... ({} bytes)", &s[..end], s.len())
}
