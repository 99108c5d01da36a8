//! A minimal HTTP/1.1 client for the load generator: one streaming completion per
//! connection, recording when each server-sent event arrives. (Written here because the load
//! generator needs per-chunk arrival times on raw chunked responses; a full client crate
//! would add an async runtime to an otherwise synchronous binary.)

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

/// What one streamed request saw.
#[derive(Debug, Clone, Default)]
pub struct StreamResult {
    pub ok: bool,
    pub error: Option<String>,
    /// Time to the first event carrying text.
    pub ttft: Option<Duration>,
    /// Arrival times of the text-carrying events after the first.
    pub gaps: Vec<Duration>,
    pub completion_tokens: usize,
    pub cached_tokens: usize,
    pub total: Duration,
}

/// POSTs `body` (a streaming completion) to `host:port` `path` and reads the event stream.
/// The request asks the server to close the connection after its response: an error
/// response (a 429 when the queue is full) is then read to its end at once, where on a
/// kept-alive connection reading it to the end waited out the server's idle timeout and
/// stretched the rate's wall time by a minute.
pub fn stream(addr: &str, path: &str, body: &str, timeout: Duration) -> StreamResult {
    let start = Instant::now();
    let mut r = StreamResult::default();
    let run = || -> std::io::Result<StreamResult> {
        let mut conn = TcpStream::connect(addr)?;
        conn.set_read_timeout(Some(timeout))?;
        write!(
            conn,
            "POST {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
            body.len()
        )?;
        let mut rd = BufReader::new(conn);
        let mut line = String::new();
        rd.read_line(&mut line)?;
        if !line.starts_with("HTTP/1.1 200") {
            let mut rest = String::new();
            let _ = rd.read_to_string(&mut rest);
            return Ok(StreamResult { error: Some(format!("{} {}", line.trim(), rest.trim())), ..Default::default() });
        }
        let mut chunked = false;
        loop {
            line.clear();
            rd.read_line(&mut line)?;
            if line == "\r\n" || line.is_empty() {
                break;
            }
            chunked |= line.to_ascii_lowercase().starts_with("transfer-encoding: chunked");
        }
        if !chunked {
            return Ok(StreamResult {
                error: Some("the response is not a chunked event stream".into()),
                ..Default::default()
            });
        }
        let mut out = StreamResult::default();
        let mut last: Option<Instant> = None;
        loop {
            line.clear();
            rd.read_line(&mut line)?;
            let size = usize::from_str_radix(line.trim(), 16).unwrap_or(0);
            if size == 0 {
                break;
            }
            let mut chunk = vec![0u8; size + 2];
            rd.read_exact(&mut chunk)?;
            let now = Instant::now();
            let text = String::from_utf8_lossy(&chunk[..size]);
            for event in text.lines().filter_map(|l| l.strip_prefix("data: ")) {
                if event == "[DONE]" {
                    out.ok = out.error.is_none();
                    continue;
                }
                let v: serde_json::Value = serde_json::from_str(event).unwrap_or_default();
                if let Some(e) = v.get("error") {
                    out.error = Some(e.to_string());
                }
                if let Some(u) = v.get("usage").filter(|u| !u.is_null()) {
                    out.completion_tokens = u["completion_tokens"].as_u64().unwrap_or(0) as usize;
                    out.cached_tokens = u["prompt_tokens_details"]["cached_tokens"].as_u64().unwrap_or(0) as usize;
                }
                let has_text = v["choices"].get(0).and_then(|c| c["text"].as_str()).is_some_and(|t| !t.is_empty());
                if has_text {
                    match last {
                        None => out.ttft = Some(now - start),
                        Some(t) => out.gaps.push(now - t),
                    }
                    last = Some(now);
                }
            }
        }
        Ok(out)
    };
    match run() {
        Ok(res) => r = res,
        Err(e) => r.error = Some(e.to_string()),
    }
    r.total = start.elapsed();
    r
}
