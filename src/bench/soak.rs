//! `kiln bench soak`: many mixed requests against a running kiln (whole and streamed
//! completions and chats, clients that leave mid-stream or right after sending, bad JSON,
//! oversized headers, resets, health and model probes), from a few threads at once, reading
//! the server's resident memory from its /metrics every so often. Memory that grows with the
//! number of requests served shows as a rising column.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

#[derive(Debug, Clone)]
pub struct SoakConfig {
    pub addr: String,
    pub requests: usize,
    pub threads: usize,
    /// Resident memory is read after every this many requests.
    pub every: usize,
    pub seed: u64,
}

/// Resident memory after `requests` requests.
#[derive(Debug, Clone, Copy)]
pub struct Sample {
    pub requests: usize,
    pub rss_bytes: u64,
    pub seconds: f64,
}

#[derive(Debug, Clone, Default)]
pub struct SoakReport {
    pub samples: Vec<Sample>,
    /// Requests whose answer was not what their kind expects (a 5xx, no answer).
    pub unexpected: usize,
    pub first_unexpected: Option<String>,
}

/// What the server's /metrics says its resident memory is.
pub fn server_rss(addr: &str) -> Option<u64> {
    let text = exchange(addr, "GET /metrics HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n", true).ok()?;
    text.lines().find_map(|l| l.strip_prefix("process_resident_memory_bytes ")).and_then(|v| v.trim().parse().ok())
}

/// Sends `request` and reads to EOF (or only the status line when `whole` is false).
fn exchange(addr: &str, request: &str, whole: bool) -> std::io::Result<String> {
    let mut c = TcpStream::connect(addr)?;
    c.set_read_timeout(Some(Duration::from_secs(60)))?;
    c.set_write_timeout(Some(Duration::from_secs(10)))?;
    c.write_all(request.as_bytes())?;
    let mut out = Vec::new();
    if whole {
        c.read_to_end(&mut out)?;
    } else {
        let mut buf = [0u8; 512];
        let n = c.read(&mut buf)?;
        out.extend_from_slice(&buf[..n]);
    }
    Ok(String::from_utf8_lossy(&out).into_owned())
}

fn post(path: &str, body: &str) -> String {
    format!(
        "POST {path} HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    )
}

/// One request of a random kind; Err says what was unexpected.
fn one(addr: &str, rng: &mut ChaCha8Rng) -> Result<(), String> {
    let words = ["def", "main", "(", ")", ":", "return", "x", "+", "1", "import", "os", "class"];
    let prompt: String =
        (0..rng.random_range(1..40)).map(|_| words[rng.random_range(0..words.len())]).collect::<Vec<_>>().join(" ");
    let max = rng.random_range(1..12);
    let status = |text: &str| text.split_whitespace().nth(1).and_then(|s| s.parse::<u16>().ok()).unwrap_or(0);
    let expect = |text: String, ok: &[u16]| {
        let s = status(&text);
        if ok.contains(&s) { Ok(()) } else { Err(format!("status {s}: {}", text.lines().next().unwrap_or(""))) }
    };
    match rng.random_range(0..10) {
        0 | 1 => {
            let body = serde_json::json!({"prompt": prompt, "max_tokens": max, "temperature": 0.7}).to_string();
            expect(exchange(addr, &post("/v1/completions", &body), true).map_err(|e| e.to_string())?, &[200, 429])
        }
        2 | 3 => {
            let body = serde_json::json!({"prompt": prompt, "max_tokens": max, "stream": true, "stream_options": {"include_usage": true}})
                .to_string();
            let text = exchange(addr, &post("/v1/completions", &body), true).map_err(|e| e.to_string())?;
            if status(&text) == 200 && !text.contains("[DONE]") {
                return Err("a stream ended without [DONE]".into());
            }
            expect(text, &[200, 429])
        }
        4 => {
            // Leaves after the first bytes of a stream.
            let body = serde_json::json!({"messages": [{"role": "user", "content": prompt}], "max_tokens": 64, "stream": true, "ignore_eos": true})
                .to_string();
            expect(exchange(addr, &post("/v1/chat/completions", &body), false).map_err(|e| e.to_string())?, &[200, 429])
        }
        5 => {
            // Leaves right after sending a whole-body request.
            let body =
                serde_json::json!({"messages": [{"role": "user", "content": prompt}], "max_tokens": 64, "ignore_eos": true})
                    .to_string();
            let mut c = TcpStream::connect(addr).map_err(|e| e.to_string())?;
            c.write_all(post("/v1/chat/completions", &body).as_bytes()).map_err(|e| e.to_string())?;
            Ok(())
        }
        6 => {
            expect(exchange(addr, &post("/v1/completions", "{\"prompt\": "), true).map_err(|e| e.to_string())?, &[400])
        }
        7 => {
            let big = "x".repeat(rng.random_range(20_000..60_000));
            let req = format!("GET /health HTTP/1.1\r\nHost: x\r\nX-Pad: {big}\r\nConnection: close\r\n\r\n");
            // The server may close while the header is still being written.
            match exchange(addr, &req, true) {
                Ok(text) => expect(text, &[431]),
                Err(_) => Ok(()),
            }
        }
        8 => {
            // Connects and resets.
            let c = TcpStream::connect(addr).map_err(|e| e.to_string())?;
            reset_on_close(&c);
            Ok(())
        }
        _ => {
            let path = if rng.random_bool(0.5) { "/health" } else { "/v1/models" };
            expect(
                exchange(addr, &format!("GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"), true)
                    .map_err(|e| e.to_string())?,
                &[200],
            )
        }
    }
}

/// Makes closing `c` send a reset instead of a FIN (SO_LINGER with a zero timeout).
pub fn reset_on_close(c: &TcpStream) {
    use std::os::fd::AsRawFd;
    let l = libc::linger { l_onoff: 1, l_linger: 0 };
    // SAFETY: a valid socket and a linger struct of the size passed.
    unsafe {
        libc::setsockopt(
            c.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_LINGER,
            &l as *const libc::linger as *const libc::c_void,
            std::mem::size_of::<libc::linger>() as libc::socklen_t,
        );
    }
}

pub fn soak(cfg: &SoakConfig) -> SoakReport {
    let start = Instant::now();
    let done = Arc::new(AtomicUsize::new(0));
    let unexpected = Arc::new(AtomicUsize::new(0));
    let first = Arc::new(std::sync::Mutex::new(None::<String>));
    let mut samples = vec![Sample { requests: 0, rss_bytes: server_rss(&cfg.addr).unwrap_or(0), seconds: 0.0 }];
    std::thread::scope(|s| {
        for t in 0..cfg.threads.max(1) {
            let (done, unexpected, first) = (done.clone(), unexpected.clone(), first.clone());
            let addr = cfg.addr.clone();
            let total = cfg.requests;
            let mut rng = ChaCha8Rng::seed_from_u64(cfg.seed.wrapping_add(t as u64));
            s.spawn(move || {
                while done.fetch_add(1, Ordering::AcqRel) < total {
                    if let Err(e) = one(&addr, &mut rng) {
                        unexpected.fetch_add(1, Ordering::AcqRel);
                        first.lock().unwrap_or_else(|p| p.into_inner()).get_or_insert(e);
                    }
                }
            });
        }
        let mut next = cfg.every.max(1);
        while next <= cfg.requests {
            if done.load(Ordering::Acquire) >= next {
                samples.push(Sample {
                    requests: next,
                    rss_bytes: server_rss(&cfg.addr).unwrap_or(0),
                    seconds: start.elapsed().as_secs_f64(),
                });
                next += cfg.every.max(1);
            } else {
                std::thread::sleep(Duration::from_millis(20));
            }
        }
    });
    let first_unexpected = first.lock().unwrap_or_else(|p| p.into_inner()).take();
    SoakReport { samples, unexpected: unexpected.load(Ordering::Acquire), first_unexpected }
}

pub fn table(r: &SoakReport) -> String {
    let mut s = String::from("requests   seconds   server RSS (MB)\n");
    for x in &r.samples {
        s.push_str(&format!("{:>8}  {:>8.1}   {:>10.1}\n", x.requests, x.seconds, x.rss_bytes as f64 / 1e6));
    }
    s
}
