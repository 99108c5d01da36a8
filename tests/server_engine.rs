//! The server and engine under stress, in process (same code as `kiln serve`, with the
//! engine's fault-injection hook): a client that disconnects mid-stream frees its request, a
//! full queue answers 429 with Retry-After, and a hung engine turns /health to 503.

mod common;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::serve::*;
use kiln::app::App;
use kiln::plan::{Plan, Target};
use kiln::plan_init::{InitOptions, init_from_hf};
use kiln::server::{self, Running};
use serde_json::json;

fn serve(edit: impl FnOnce(&mut Plan), stale: Duration) -> Running {
    let dir = common::repo_path(CHAT_FIXTURE);
    let opts = InitOptions { target: Target::Cpu, arch: None, tp: None, dp: None };
    let mut plan = init_from_hf(&dir, &opts).unwrap().plan;
    edit(&mut plan);
    let source = kiln::weights::WeightsSource::Dir(dir.clone());
    let (mut ctx, _engine) = App::open(&plan, &toml::to_string(&plan).unwrap(), &source).unwrap().start();
    Arc::get_mut(&mut ctx).unwrap().health_stale_after = stale;
    server::start(ctx, "127.0.0.1:0").unwrap()
}

fn base(r: &Running) -> String {
    format!("http://{}", r.addr)
}

#[test]
fn disconnect_mid_stream_frees_the_request() {
    let r = serve(|_| {}, Duration::from_secs(10));
    let b = base(&r);
    let addr = r.addr.to_string();
    // A slow model: 20 ms a step, so the request is still running when the client leaves.
    r.context.engine.throttle(Duration::from_millis(20));
    let body =
        json!({"prompt": "while True:", "max_tokens": 30, "stream": true, "ignore_eos": true, "temperature": 0.0})
            .to_string();
    let mut conn = TcpStream::connect(&addr).unwrap();
    write!(conn, "POST /v1/completions HTTP/1.1\r\nHost: {addr}\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}", body.len()).unwrap();
    // Leave after the first token.
    let mut seen = String::new();
    let mut buf = [0u8; 4096];
    while !seen.contains("\"text\"") {
        let n = conn.read(&mut buf).unwrap();
        assert!(n > 0, "connection closed early: {seen}");
        seen.push_str(&String::from_utf8_lossy(&buf[..n]));
    }
    assert!(seen.starts_with("HTTP/1.1 200 OK"), "{seen}");
    drop(conn);

    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let aborted = metric(&b, "kiln:request_success_total{model_name=\"chat_tiny\",finished_reason=\"abort\"}");
        let running = metric(&b, "kiln:num_requests_running");
        if aborted == 1.0 && running == 0.0 && r.context.engine.in_flight() == 0 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the disconnected request was not freed (aborted {aborted}, running {running})"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    let generated = metric(&b, "kiln:generation_tokens_total");
    assert!(generated < 30.0, "generation went on after the disconnect: {generated} tokens");
    assert_eq!(metric(&b, "kiln:time_to_first_token_seconds_count"), 1.0);
    r.stop();
}

#[test]
fn full_queue_answers_429_with_retry_after() {
    let r = serve(
        |p| {
            p.server.max_running_requests = 1;
            p.server.max_queued_requests = 1;
        },
        Duration::from_secs(10),
    );
    let b = base(&r);
    r.context.engine.stall(Duration::from_millis(1500));
    let req = json!({"prompt": "x", "max_tokens": 4}).to_string();
    let admitted: Vec<_> = (0..2)
        .map(|_| {
            let (b, req) = (b.clone(), req.clone());
            std::thread::spawn(move || post(&b, "/v1/completions", &req).0)
        })
        .collect();
    let deadline = Instant::now() + Duration::from_secs(5);
    while r.context.engine.in_flight() < 2 {
        assert!(Instant::now() < deadline, "the two requests were not admitted");
        std::thread::sleep(Duration::from_millis(10));
    }
    let (status, head, body) = post(&b, "/v1/completions", &req);
    assert_eq!(status, 429, "{body}");
    assert!(head.to_lowercase().contains("retry-after: 1"), "{head}");
    assert!(body.contains("queue_full"), "{body}");
    // The load generator sees the refusal as soon as it is sent, not after the server's idle
    // timeout on a kept-alive connection (its rates' wall times once grew by a minute).
    let seen = kiln::bench::stream(&r.addr.to_string(), "/v1/completions", &req, Duration::from_secs(30));
    assert!(!seen.ok && seen.error.as_deref().is_some_and(|e| e.contains("429")), "{seen:?}");
    assert!(seen.total < Duration::from_secs(2), "the refusal took {:?} to read", seen.total);
    let (_, _, metrics) = curl(&[&format!("{b}/metrics")]);
    assert!(
        metrics
            .lines()
            .any(|l| l.starts_with("kiln:request_refused_total{") && l.ends_with("reason=\"queue_full\"} 2")),
        "the two refusals are not counted:\n{metrics}"
    );
    for t in admitted {
        assert_eq!(t.join().unwrap(), 200);
    }
    // Slots come back.
    assert_eq!(post(&b, "/v1/completions", &req).0, 200);
    r.stop();
}

#[test]
fn hung_engine_turns_health_to_503() {
    let r = serve(|_| {}, Duration::from_millis(400));
    let b = base(&r);
    assert_eq!(curl(&[&format!("{b}/health")]).0, 200);
    r.context.engine.stall(Duration::from_millis(1500));
    std::thread::sleep(Duration::from_millis(800));
    let (status, _, body) = curl(&[&format!("{b}/health")]);
    assert_eq!(status, 503, "{body}");
    assert!(body.contains("has not stepped"), "{body}");
    std::thread::sleep(Duration::from_millis(1200));
    assert_eq!(curl(&[&format!("{b}/health")]).0, 200);
    r.stop();
}
