//! Operating a server: SIGTERM drains it (requests in flight finish, new ones are refused,
//! exit 0), SIGHUP changes nothing, and the log is one line per event, optionally JSON.

mod common;

use std::io::{BufRead, BufReader, Write};
use std::net::TcpStream;
use std::process::Command;
use std::time::Duration;

use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use serde_json::{Value, json};

use common::serve::{Serving, curl, post};

const STREAM_TOKENS: usize = 200;

fn start(extra: &[&str]) -> Serving {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_kiln"));
    cmd.args(extra).args(["serve", "--bind", "127.0.0.1:0"]);
    Serving::spawn(cmd)
}

fn signal(s: &Serving, sig: Signal) {
    kill(Pid::from_raw(s.child.id() as i32), sig).unwrap();
}

/// A streaming completion whose first event has arrived.
struct Stream {
    reader: BufReader<TcpStream>,
    events: Vec<String>,
}

impl Stream {
    fn open(base: &str, i: usize) -> Stream {
        let addr = base.trim_start_matches("http://");
        let mut conn = TcpStream::connect(addr).unwrap();
        conn.set_read_timeout(Some(Duration::from_secs(120))).unwrap();
        let body = json!({
            "prompt": format!("def handler_{i}(request):\n"), "max_tokens": STREAM_TOKENS, "stream": true,
            "ignore_eos": true, "stream_options": {"include_usage": true},
        })
        .to_string();
        write!(
            conn,
            "POST /v1/completions HTTP/1.1\r\nHost: {addr}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
            body.len()
        )
        .unwrap();
        let mut s = Stream { reader: BufReader::new(conn), events: Vec::new() };
        let status = s.line().unwrap_or_default();
        assert!(status.starts_with("HTTP/1.1 200"), "{status}");
        while s.events.is_empty() {
            let line = s.line().expect("the first event");
            if let Some(data) = line.strip_prefix("data: ") {
                s.events.push(data.to_string());
            }
        }
        s
    }

    fn line(&mut self) -> Option<String> {
        let mut line = String::new();
        match self.reader.read_line(&mut line) {
            Ok(0) | Err(_) => None,
            Ok(_) => Some(line.trim_end().to_string()),
        }
    }

    /// Reads to the end of the response.
    fn finish(mut self) -> Vec<String> {
        while let Some(line) = self.line() {
            if let Some(data) = line.strip_prefix("data: ") {
                self.events.push(data.to_string());
            }
        }
        self.events
    }
}

#[test]
fn sigterm_drains_streams_refuses_new_requests_and_exits_zero() {
    let mut server = start(&[]);

    // SIGHUP: logged, nothing else; the server keeps answering.
    signal(&server, Signal::SIGHUP);
    let (status, _, body) = post(&server.base, "/v1/completions", r#"{"prompt": "x = ", "max_tokens": 4}"#);
    assert_eq!(status, 200, "{body}");

    let streams: Vec<Stream> = (0..4).map(|i| Stream::open(&server.base, i)).collect();
    signal(&server, Signal::SIGTERM);
    // Give the signal thread a moment to flip the server into draining.
    std::thread::sleep(Duration::from_millis(200));
    let (status, _, body) = post(&server.base, "/v1/completions", r#"{"prompt": "y = ", "max_tokens": 4}"#);
    assert_eq!(status, 503, "a new request during the drain: {body}");
    let v: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(v["error"]["code"], "shutting_down", "{v}");
    let (status, _, _) = curl(&[&format!("{}/health", server.base)]);
    assert_eq!(status, 503, "/health during the drain");

    for (i, s) in streams.into_iter().enumerate() {
        let events = s.finish();
        assert_eq!(events.last().map(String::as_str), Some("[DONE]"), "stream {i} was cut: {events:?}");
        let usage: Value = serde_json::from_str(&events[events.len() - 2]).unwrap();
        assert_eq!(usage["usage"]["completion_tokens"], STREAM_TOKENS, "stream {i}: {usage}");
        let last: Value = serde_json::from_str(&events[events.len() - 3]).unwrap();
        assert_eq!(last["choices"][0]["finish_reason"], "length", "stream {i}: {last}");
    }
    let status = server.wait(Duration::from_secs(60));
    let log = server.log_text();
    assert_eq!(status.code(), Some(0), "{log}");
    assert!(log.contains("SIGHUP ignored"), "{log}");
    assert!(log.contains("SIGTERM: refusing new requests"), "{log}");
    assert!(log.contains("drained in"), "{log}");
    assert!(log.contains("engine stopped"), "the engine thread ends before the process: {log}");
}

#[test]
fn json_log_is_one_object_per_line() {
    let mut server = start(&["--log-format", "json"]);
    let (status, _, body) = post(&server.base, "/v1/completions", r#"{"prompt": "import ", "max_tokens": 3}"#);
    assert_eq!(status, 200, "{body}");
    signal(&server, Signal::SIGTERM);
    assert_eq!(server.wait(Duration::from_secs(60)).code(), Some(0));
    let lines = server.log.lock().unwrap().clone();
    let events: Vec<Value> = lines
        .iter()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not one JSON object ({e}): {l}")))
        .collect();
    for e in &events {
        for key in ["ts", "level", "event", "msg"] {
            assert!(e[key].is_string(), "{key} missing: {e}");
        }
    }
    let names: Vec<&str> = events.iter().filter_map(|e| e["event"].as_str()).collect();
    for want in ["pin_quick", "serving", "request", "draining", "drained"] {
        assert!(names.contains(&want), "no {want} event in {names:?}");
    }
    let request = events.iter().find(|e| e["event"] == "request").unwrap();
    assert_eq!(request["completion_tokens"], 3, "{request}");
    assert_eq!(request["prompt_tokens"].as_u64().map(|n| n > 0), Some(true), "{request}");
    let serving = events.iter().find(|e| e["event"] == "serving").unwrap();
    assert!(serving["addr"].as_str().unwrap().starts_with("127.0.0.1:"), "{serving}");
}
