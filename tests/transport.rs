//! The transport under attack, in process (the same server `kiln serve` runs, on the chat_tiny
//! fixture, with a plan whose limits are low enough to reach in a test): oversized and too
//! many headers, slow headers and bodies, idle and excess connections, ambiguous framing,
//! other protocols, resets, clients that leave, unbounded echoes, insane sampling values, the
//! weights path, and the API token. After each attack, /health must answer within 100 ms.

mod common;

use std::io::{ErrorKind, Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

use common::serve::*;
use kiln::app::App;
use kiln::plan::{Auth, Plan, Target};
use kiln::plan_init::{InitOptions, init_from_hf};
use kiln::server::{self, PROBE_SLOTS, Running};
use serde_json::json;

const MAX_CONNECTIONS: u32 = 12;

fn plan(edit: impl FnOnce(&mut Plan)) -> Plan {
    let opts = InitOptions { target: Target::Cpu, arch: None, tp: None, dp: None };
    let mut plan = init_from_hf(&common::repo_path(CHAT_FIXTURE), &opts).unwrap().plan;
    let s = &mut plan.server;
    s.max_connections = MAX_CONNECTIONS;
    s.max_header_bytes = 8192;
    s.max_headers = 16;
    s.header_timeout_s = 1;
    s.body_timeout_s = 1;
    s.idle_timeout_s = 2;
    s.write_timeout_s = 2;
    edit(&mut plan);
    plan
}

fn serve(plan: &Plan) -> Running {
    let source = kiln::weights::WeightsSource::Dir(common::repo_path(CHAT_FIXTURE));
    let (ctx, _engine) = App::open(plan, &toml::to_string(plan).unwrap(), &source).unwrap().start();
    server::start(ctx, "127.0.0.1:0").unwrap()
}

fn connect(r: &Running) -> TcpStream {
    let c = TcpStream::connect(r.addr).unwrap();
    c.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    c
}

/// Whatever the server sends until it closes or goes quiet for `quiet`.
fn read_some(c: &mut TcpStream, quiet: Duration) -> (String, bool) {
    c.set_read_timeout(Some(quiet)).unwrap();
    let mut out = Vec::new();
    let mut buf = [0u8; 8192];
    loop {
        match c.read(&mut buf) {
            Ok(0) => return (String::from_utf8_lossy(&out).into_owned(), true),
            Ok(n) => out.extend_from_slice(&buf[..n]),
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {
                return (String::from_utf8_lossy(&out).into_owned(), false);
            }
            Err(_) => return (String::from_utf8_lossy(&out).into_owned(), true),
        }
    }
}

fn status(text: &str) -> u16 {
    text.split_whitespace().nth(1).and_then(|s| s.parse().ok()).unwrap_or(0)
}

/// /health answers 200 within 100 ms (on a fresh connection).
#[track_caller]
fn health_is_fast(r: &Running) {
    let t = Instant::now();
    let (code, _, _) = curl(&["--max-time", "2", &format!("http://{}/health", r.addr)]);
    let took = t.elapsed();
    assert_eq!(code, 200);
    assert!(took < Duration::from_millis(100), "/health took {took:?}");
}

fn get(path: &str) -> String {
    format!("GET {path} HTTP/1.1\r\nHost: x\r\n\r\n")
}

#[test]
fn oversized_and_too_many_headers_get_431() {
    let r = serve(&plan(|_| {}));
    let mut c = connect(&r);
    let big = "a".repeat(4 << 20);
    // The server may close while the rest is still being written.
    let _ = c.write_all(format!("GET /health HTTP/1.1\r\nHost: x\r\nX-Big: {big}\r\n\r\n").as_bytes());
    let (text, _) = read_some(&mut c, Duration::from_secs(5));
    assert_eq!(status(&text), 431, "{text:.200}");
    let mut c = connect(&r);
    let many: String = (0..40).map(|i| format!("X-H{i}: v\r\n")).collect();
    c.write_all(format!("GET /health HTTP/1.1\r\nHost: x\r\n{many}\r\n").as_bytes()).unwrap();
    assert_eq!(status(&read_some(&mut c, Duration::from_secs(5)).0), 431);
    health_is_fast(&r);
    r.stop();
}

#[test]
fn slow_bodies_time_out_while_health_stays_fast() {
    let r = serve(&plan(|p| p.server.max_connections = 64));
    // More slow clients than generation handlers could ever be spared for them.
    let slow: Vec<TcpStream> = (0..40)
        .map(|_| {
            let mut c = connect(&r);
            c.write_all(b"POST /v1/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: 1000\r\n\r\n{\"pro")
                .unwrap();
            c
        })
        .collect();
    std::thread::sleep(Duration::from_millis(300));
    health_is_fast(&r);
    // Completions are served meanwhile too.
    let (code, _, body) = post(&format!("http://{}", r.addr), "/v1/completions", r#"{"prompt": "x", "max_tokens": 2}"#);
    assert_eq!(code, 200, "{body}");
    for mut c in slow {
        let (text, _) = read_some(&mut c, Duration::from_secs(4));
        assert_eq!(status(&text), 408, "{text}");
        assert!(text.contains("body_timeout"), "{text}");
    }
    health_is_fast(&r);
    r.stop();
}

#[test]
fn slow_headers_and_idle_connections_are_closed() {
    let r = serve(&plan(|_| {}));
    let mut slow = connect(&r);
    slow.write_all(b"GET /health HTTP/1.1\r\nHost").unwrap();
    let mut idle = connect(&r);
    let t = Instant::now();
    let (_, closed) = read_some(&mut slow, Duration::from_secs(4));
    assert!(closed && t.elapsed() < Duration::from_secs(3), "slow headers held {:?}", t.elapsed());
    let (_, closed) = read_some(&mut idle, Duration::from_secs(5));
    assert!(closed && t.elapsed() < Duration::from_secs(4), "idle connection held {:?}", t.elapsed());
    // A kept-alive connection serves several requests, then idles out.
    let mut c = connect(&r);
    for _ in 0..3 {
        c.write_all(get("/health").as_bytes()).unwrap();
        let (text, closed) = read_some(&mut c, Duration::from_millis(500));
        assert_eq!(status(&text), 200);
        assert!(!closed);
    }
    health_is_fast(&r);
    r.stop();
}

#[test]
fn beyond_the_connection_cap_only_health_and_metrics_answer() {
    let r = serve(&plan(|_| {}));
    let held: Vec<TcpStream> = (0..MAX_CONNECTIONS).map(|_| connect(&r)).collect();
    std::thread::sleep(Duration::from_millis(200));
    assert_eq!(r.context.open_connections(), MAX_CONNECTIONS as usize);
    health_is_fast(&r);
    let (code, _, body) = curl(&["--max-time", "2", &format!("http://{}/metrics", r.addr)]);
    assert_eq!(code, 200, "{body}");
    let (code, head, body) =
        post(&format!("http://{}", r.addr), "/v1/completions", r#"{"prompt": "x", "max_tokens": 1}"#);
    assert_eq!(code, 503, "{body}");
    assert!(body.contains("too many open connections") && head.to_lowercase().contains("connection: close"));
    // Beyond the probes too: closed at once, never queued.
    let probes: Vec<TcpStream> = (0..PROBE_SLOTS).map(|_| connect(&r)).collect();
    std::thread::sleep(Duration::from_millis(200));
    let mut extra = connect(&r);
    let (_, closed) = read_some(&mut extra, Duration::from_secs(1));
    assert!(closed, "a connection beyond the cap and the probes was kept");
    drop(probes);
    drop(held);
    // Slots come back once the clients go.
    let deadline = Instant::now() + Duration::from_secs(5);
    while r.context.open_connections() > 0 {
        assert!(Instant::now() < deadline, "{} connections still counted", r.context.open_connections());
        std::thread::sleep(Duration::from_millis(20));
    }
    health_is_fast(&r);
    // Both refusals are counted for the operator.
    let base = format!("http://{}", r.addr);
    assert!(refused(&base, "overloaded") >= 1.0);
    assert!(refused(&base, "connections_full") >= 1.0);
    r.stop();
}

/// `kiln:request_refused_total` for `reason`.
fn refused(base: &str, reason: &str) -> f64 {
    let (_, _, body) = curl(&[&format!("{base}/metrics")]);
    let line = body
        .lines()
        .find(|l| l.starts_with("kiln:request_refused_total{") && l.contains(&format!("reason=\"{reason}\"")))
        .unwrap_or_else(|| panic!("no refusals for {reason} in:\n{body}"));
    line.rsplit(' ').next().and_then(|v| v.parse().ok()).expect("a count")
}

#[test]
fn ambiguous_framing_and_other_protocols_are_refused_promptly() {
    let r = serve(&plan(|_| {}));
    let mut c = connect(&r);
    c.write_all(
        b"POST /v1/completions HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
    )
    .unwrap();
    let (text, closed) = read_some(&mut c, Duration::from_secs(2));
    assert_eq!(status(&text), 400, "{text}");
    assert!(closed, "the connection stayed open after ambiguous framing");
    // An HTTP/2 preface: closed (or refused) at once.
    let mut c = connect(&r);
    c.write_all(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n").unwrap();
    let t = Instant::now();
    let (_, closed) = read_some(&mut c, Duration::from_secs(2));
    assert!(closed && t.elapsed() < Duration::from_secs(1), "HTTP/2 preface held {:?}", t.elapsed());
    // Bare LF line endings: answered, not held.
    let mut c = connect(&r);
    c.write_all(b"GET /health HTTP/1.1\nHost: x\n\n").unwrap();
    let (text, _) = read_some(&mut c, Duration::from_secs(1));
    assert!(matches!(status(&text), 200 | 400), "bare-LF request got {text:?}");
    health_is_fast(&r);
    r.stop();
}

#[test]
fn resets_right_after_connecting_harm_nothing() {
    let r = serve(&plan(|p| p.server.max_connections = 200));
    for _ in 0..100 {
        let c = TcpStream::connect(r.addr).unwrap();
        kiln::bench::soak::reset_on_close(&c);
    }
    for _ in 0..20 {
        let mut c = TcpStream::connect(r.addr).unwrap();
        let _ = c.write_all(b"POST /v1/completions HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\n{");
        kiln::bench::soak::reset_on_close(&c);
    }
    std::thread::sleep(Duration::from_millis(200));
    health_is_fast(&r);
    r.stop();
}

#[test]
fn a_stream_really_closes_after_done() {
    let r = serve(&plan(|_| {}));
    let body = json!({"prompt": "def f():", "max_tokens": 8, "stream": true}).to_string();
    let mut c = connect(&r);
    write!(c, "POST /v1/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}", body.len()).unwrap();
    // Reading to EOF ends right after [DONE]: the declared `Connection: close` is real.
    let t = Instant::now();
    let (text, closed) = read_some(&mut c, Duration::from_secs(5));
    assert!(closed, "the stream's connection was left open:\n{text}");
    assert!(t.elapsed() < Duration::from_secs(4));
    assert!(text.to_lowercase().contains("connection: close") && text.contains("data: [DONE]"), "{text}");
    r.stop();
}

#[test]
fn a_whole_request_whose_client_leaves_is_cancelled() {
    let r = serve(&plan(|_| {}));
    let b = format!("http://{}", r.addr);
    r.context.engine.throttle(Duration::from_millis(20));
    let body = json!({"prompt": "while True:", "max_tokens": 30, "ignore_eos": true}).to_string();
    let mut c = connect(&r);
    write!(c, "POST /v1/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}", body.len()).unwrap();
    let deadline = Instant::now() + Duration::from_secs(5);
    while metric(&b, "kiln:generation_tokens_total") < 3.0 {
        assert!(Instant::now() < deadline, "the request did not start");
        std::thread::sleep(Duration::from_millis(20));
    }
    drop(c);
    let deadline = Instant::now() + Duration::from_secs(5);
    while r.context.engine.in_flight() > 0 {
        assert!(Instant::now() < deadline, "the abandoned request kept running");
        std::thread::sleep(Duration::from_millis(20));
    }
    let generated = metric(&b, "kiln:generation_tokens_total");
    assert!(generated < 25.0, "{generated} tokens generated for a client that left");
    let aborted = format!(
        "kiln:request_success_total{{model_name=\"{}\",finished_reason=\"abort\"}}",
        r.context.limits.model_name
    );
    assert_eq!(metric(&b, &aborted), 1.0);
    r.stop();
}

#[test]
fn errors_echo_bounded_input_and_sampling_stays_sane() {
    let r = serve(&plan(|_| {}));
    let b = format!("http://{}", r.addr);
    let long = "x".repeat(7000);
    let (code, _, body) = curl(&[&format!("{b}/{long}")]);
    assert_eq!(code, 404);
    assert!(body.len() < 1000, "a 404 echoed {} bytes", body.len());
    let (code, v) = post_json(&b, "/v1/completions", &json!({"prompt": "x", "model": long}));
    assert_eq!(code, 404);
    assert!(v.to_string().len() < 1000);
    let (code, v) = post_json(&b, "/v1/completions", &json!({"prompt": "x", long.clone(): 1}));
    assert_eq!(code, 400);
    assert!(v.to_string().len() < 1000);
    let (code, v) = post_json(&b, "/v1/completions", &json!({"prompt": "x", "repetition_penalty": 1e-45}));
    assert_eq!(code, 400, "{v}");
    assert_eq!(v["error"]["param"], "repetition_penalty");
    // /v1/plan names the weights by digest, not by where they sit.
    let (_, _, plan) = curl(&[&format!("{b}/v1/plan")]);
    let v: serde_json::Value = serde_json::from_str(&plan).unwrap();
    assert_eq!(v["weights"]["id"].as_str().unwrap().len(), 64);
    assert!(v["weights"].get("path").is_none(), "{}", v["weights"]);
    health_is_fast(&r);
    r.stop();
}

#[test]
fn an_api_token_guards_every_route_but_health() {
    let var = "KILN_TEST_TRANSPORT_TOKEN";
    // SAFETY: no other test reads or writes this variable.
    unsafe { std::env::set_var(var, "s3cret-token\n") };
    let p = plan(|p| p.server.auth = Some(Auth { token_env: Some(var.into()), token_file: None }));
    let r = serve(&p);
    let b = format!("http://{}", r.addr);
    assert_eq!(curl(&[&format!("{b}/health")]).0, 200);
    for path in ["/v1/models", "/metrics", "/v1/plan", "/nowhere"] {
        let (code, _, body) = curl(&[&format!("{b}{path}")]);
        assert_eq!(code, 401, "{path}: {body}");
        let v: serde_json::Value = serde_json::from_str(&body).unwrap();
        assert_eq!(v["error"]["code"], "invalid_api_key", "{path}");
        let (code, _, _) = curl(&["-H", "Authorization: Bearer wrong", &format!("{b}{path}")]);
        assert_eq!(code, 401);
    }
    let auth = "Authorization: Bearer s3cret-token";
    assert_eq!(curl(&["-H", auth, &format!("{b}/v1/models")]).0, 200);
    let (code, _, body) = curl(&[
        "-H",
        auth,
        "-H",
        "Content-Type: application/json",
        "-d",
        r#"{"prompt": "x", "max_tokens": 2}"#,
        &format!("{b}/v1/completions"),
    ]);
    assert_eq!(code, 200, "{body}");
    let (_, _, plan) = curl(&["-H", auth, &format!("{b}/v1/plan")]);
    assert!(!plan.contains("s3cret"), "the token leaked into /v1/plan");
    r.stop();
}
