//! `kiln bench serve`: a load generator shaped like the public GLM-5.2 table. Fixed input and
//! output lengths, a shared-prefix ratio (that share of every prompt is the same, so the
//! prefix cache serves it), Poisson arrivals at each request rate; per rate it prints
//! aggregate output tok/s, TTFT and inter-token latency p50/p95, and the success rate, next to
//! a single stream measured in the same run.

pub mod bandwidth;
mod client;
mod constrain;
pub mod fma_peak;
pub mod forward;
pub mod soak;
mod spec;

use std::sync::mpsc;
use std::time::{Duration, Instant};

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

pub use client::{StreamResult, stream};
pub use constrain::{ConstrainRow, constrain_markdown, constrain_table};
pub use spec::{SpecRow, spec_markdown, spec_table};

#[derive(Debug, Clone)]
pub struct BenchConfig {
    /// host:port of a running kiln.
    pub addr: String,
    /// Requests per second to try, in order.
    pub rates: Vec<f64>,
    pub requests: usize,
    pub input_len: usize,
    pub output_len: usize,
    /// Share of each prompt that is common to all requests.
    pub prefix_ratio: f64,
    /// Token ids are drawn below this (the model's vocabulary).
    pub vocab: u32,
    pub seed: u64,
}

/// One row of the table.
#[derive(Debug, Clone)]
pub struct RateResult {
    /// None for the single stream.
    pub rate: Option<f64>,
    pub requests: usize,
    pub succeeded: usize,
    pub output_tok_s: f64,
    pub ttft_p50: f64,
    pub ttft_p95: f64,
    pub itl_p50: f64,
    pub itl_p95: f64,
    pub cached_fraction: f64,
    pub wall_s: f64,
}

fn percentile(v: &mut [f64], p: f64) -> f64 {
    if v.is_empty() {
        return f64::NAN;
    }
    v.sort_by(f64::total_cmp);
    v[((v.len() - 1) as f64 * p).round() as usize]
}

struct Prompts {
    prefix: Vec<u32>,
    rng: ChaCha8Rng,
    cfg: BenchConfig,
}

impl Prompts {
    /// The shared prefix is the same for the whole run (like a common system prompt); the
    /// unique tails come from a stream of their own per `stream`, so no two runs repeat them.
    fn new(cfg: &BenchConfig, stream: u64) -> Prompts {
        let mut rng = ChaCha8Rng::seed_from_u64(cfg.seed);
        let shared = (cfg.input_len as f64 * cfg.prefix_ratio).round() as usize;
        // Ids from the upper part of the vocabulary: ordinary tokens, no specials.
        let lo = cfg.vocab / 8;
        let prefix = (0..shared).map(|_| rng.random_range(lo..cfg.vocab)).collect();
        let tails = ChaCha8Rng::seed_from_u64(cfg.seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) ^ stream);
        Prompts { prefix, rng: tails, cfg: cfg.clone() }
    }

    fn next(&mut self) -> Vec<u32> {
        let lo = self.cfg.vocab / 8;
        let mut p = self.prefix.clone();
        while p.len() < self.cfg.input_len {
            p.push(self.rng.random_range(lo..self.cfg.vocab));
        }
        p
    }

    fn body(&mut self) -> String {
        serde_json::json!({
            "prompt": self.next(), "max_tokens": self.cfg.output_len, "temperature": 0, "ignore_eos": true,
            "stream": true, "stream_options": {"include_usage": true},
        })
        .to_string()
    }
}

fn summarize(rate: Option<f64>, results: &[StreamResult], wall: Duration, input_len: usize) -> RateResult {
    let ok: Vec<&StreamResult> = results.iter().filter(|r| r.ok).collect();
    let mut ttft: Vec<f64> = ok.iter().filter_map(|r| r.ttft).map(|d| d.as_secs_f64()).collect();
    let mut itl: Vec<f64> = ok.iter().flat_map(|r| r.gaps.iter().map(|d| d.as_secs_f64())).collect();
    let tokens: usize = ok.iter().map(|r| r.completion_tokens).sum();
    let cached: usize = ok.iter().map(|r| r.cached_tokens).sum();
    RateResult {
        rate,
        requests: results.len(),
        succeeded: ok.len(),
        output_tok_s: tokens as f64 / wall.as_secs_f64(),
        ttft_p50: percentile(&mut ttft, 0.5),
        ttft_p95: percentile(&mut ttft, 0.95),
        itl_p50: percentile(&mut itl, 0.5),
        itl_p95: percentile(&mut itl, 0.95),
        cached_fraction: cached as f64 / (ok.len().max(1) * input_len) as f64,
        wall_s: wall.as_secs_f64(),
    }
}

const TIMEOUT: Duration = Duration::from_secs(600);

/// One request at a time: the single-stream reference. One request first, not counted, puts
/// the shared prefix in the prefix cache as the rates find it; counted, its prefill made the
/// figure depend on whether the server had seen the prefix before.
pub fn single_stream(cfg: &BenchConfig, n: usize) -> RateResult {
    let mut prompts = Prompts::new(cfg, 0);
    let _ = stream(&cfg.addr, "/v1/completions", &prompts.body(), TIMEOUT);
    let start = Instant::now();
    let results: Vec<StreamResult> =
        (0..n).map(|_| stream(&cfg.addr, "/v1/completions", &prompts.body(), TIMEOUT)).collect();
    summarize(None, &results, start.elapsed(), cfg.input_len)
}

/// `requests` requests with Poisson arrivals at `rate` per second.
pub fn at_rate(cfg: &BenchConfig, rate: f64) -> RateResult {
    let mut prompts = Prompts::new(cfg, rate.to_bits());
    let mut arrivals = ChaCha8Rng::seed_from_u64(cfg.seed ^ rate.to_bits());
    let (tx, rx) = mpsc::channel();
    let start = Instant::now();
    let mut at = Duration::ZERO;
    for _ in 0..cfg.requests {
        let gap = -(1.0 - arrivals.random::<f64>()).ln() / rate;
        at += Duration::from_secs_f64(gap);
        if let Some(wait) = at.checked_sub(start.elapsed()) {
            std::thread::sleep(wait);
        }
        let (tx, addr, body) = (tx.clone(), cfg.addr.clone(), prompts.body());
        std::thread::spawn(move || {
            let _ = tx.send(stream(&addr, "/v1/completions", &body, TIMEOUT));
        });
    }
    drop(tx);
    let results: Vec<StreamResult> = rx.iter().collect();
    summarize(Some(rate), &results, start.elapsed(), cfg.input_len)
}

pub fn table(rows: &[RateResult]) -> String {
    let mut s = String::from(
        "| rate (req/s) | requests | success | output tok/s | TTFT p50 / p95 (s) | ITL p50 / p95 (ms) | prompt cached |\n\
         |---|---|---|---|---|---|---|\n",
    );
    for r in rows {
        let rate = r.rate.map_or("single stream".to_string(), |x| format!("{x}"));
        s.push_str(&format!(
            "| {rate} | {} | {:.0}% | {:.1} | {:.3} / {:.3} | {:.1} / {:.1} | {:.0}% |\n",
            r.requests,
            100.0 * r.succeeded as f64 / r.requests.max(1) as f64,
            r.output_tok_s,
            r.ttft_p50,
            r.ttft_p95,
            1e3 * r.itl_p50,
            1e3 * r.itl_p95,
            100.0 * r.cached_fraction,
        ));
    }
    s
}
