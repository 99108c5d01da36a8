//! HTTP plumbing on tiny_http: bounded body reads, JSON replies, and server-sent events
//! written straight to the socket with a flush per event.

use std::io::{Read, Write};

use tiny_http::{Header, Request, Response};

use super::api_error::ApiError;

fn header(name: &str, value: &str) -> Header {
    Header::from_bytes(name.as_bytes(), value.as_bytes()).expect("static header")
}

/// The body, refused with 413 beyond `limit` bytes (by Content-Length or by reading).
pub fn read_body(req: &mut Request, limit: usize) -> Result<Vec<u8>, ApiError> {
    let too_big =
        || ApiError::new(413, "invalid_request_error", "body_too_large", format!("request body exceeds {limit} bytes"));
    if req.body_length().is_some_and(|n| n > limit) {
        return Err(too_big());
    }
    let mut body = Vec::new();
    req.as_reader()
        .take(limit as u64 + 1)
        .read_to_end(&mut body)
        .map_err(|e| ApiError::bad_request(format!("cannot read the request body: {e}")))?;
    if body.len() > limit {
        return Err(too_big());
    }
    Ok(body)
}

pub fn respond_json(req: Request, status: u16, body: &serde_json::Value, extra: &[(&str, String)]) {
    let mut r = Response::from_string(body.to_string())
        .with_status_code(status)
        .with_header(header("Content-Type", "application/json"));
    for (k, v) in extra {
        r.add_header(header(k, v));
    }
    let _ = req.respond(r);
}

pub fn respond_error(req: Request, e: &ApiError) {
    let extra: Vec<(&str, String)> = if e.status == 429 { vec![("Retry-After", "1".into())] } else { vec![] };
    respond_json(req, e.status, &e.body(), &extra);
}

pub fn respond_text(req: Request, status: u16, content_type: &str, body: String) {
    let r = Response::from_string(body).with_status_code(status).with_header(header("Content-Type", content_type));
    let _ = req.respond(r);
}

/// An `text/event-stream` response: chunked, one flush per event, connection closed at the
/// end. A failed write means the client is gone.
pub struct EventStream {
    out: Box<dyn Write + Send>,
}

impl EventStream {
    /// Sends the status line and headers. tiny_http's own chunked writer buffers 8 KiB
    /// before sending anything, which would hold tokens back, so the response is written
    /// on the raw connection.
    pub fn start(req: Request) -> std::io::Result<EventStream> {
        let mut out = req.into_writer();
        out.write_all(
            b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nCache-Control: no-cache\r\n\
              Transfer-Encoding: chunked\r\nConnection: close\r\n\r\n",
        )?;
        out.flush()?;
        Ok(EventStream { out })
    }

    /// `data: <payload>\n\n` as one chunk.
    pub fn send(&mut self, payload: &str) -> std::io::Result<()> {
        let event = format!("data: {payload}\n\n");
        write!(self.out, "{:x}\r\n{event}\r\n", event.len())?;
        self.out.flush()
    }

    pub fn finish(mut self) -> std::io::Result<()> {
        self.send("[DONE]")?;
        self.out.write_all(b"0\r\n\r\n")?;
        self.out.flush()
    }
}
