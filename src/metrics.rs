//! Serving metrics in Prometheus text format, with the metric names operators already
//! scrape from vLLM (`vllm:num_requests_running` here is `kiln:num_requests_running`, and so
//! on), each labelled with the model name.

use std::collections::BTreeMap;
use std::fmt::Write;
use std::sync::Mutex;

/// Latency buckets in seconds (vLLM's TTFT and ITL buckets, merged).
const LATENCY_BUCKETS: &[f64] =
    &[0.001, 0.005, 0.01, 0.02, 0.04, 0.06, 0.08, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5, 10.0, 20.0, 40.0, 80.0];

#[derive(Debug, Clone)]
struct Histogram {
    counts: Vec<u64>, // [buckets], cumulative at render time
    sum: f64,
    count: u64,
}

impl Histogram {
    fn new() -> Histogram {
        Histogram { counts: vec![0; LATENCY_BUCKETS.len()], sum: 0.0, count: 0 }
    }

    fn observe(&mut self, v: f64) {
        if let Some(i) = LATENCY_BUCKETS.iter().position(|b| v <= *b) {
            self.counts[i] += 1;
        }
        self.sum += v;
        self.count += 1;
    }
}

#[derive(Debug, Default, Clone)]
struct Values {
    running: u64,
    waiting: u64,
    kv_usage: f64,
    prompt_tokens: u64,
    generation_tokens: u64,
    prefix_queries: u64,
    prefix_hits: u64,
    engine_steps: u64,
    preemptions: u64,
    /// Speculative decoding: verification steps with drafts, drafted and accepted tokens,
    /// and accepted tokens by draft position.
    spec_drafts: u64,
    spec_draft_tokens: u64,
    spec_accepted: u64,
    spec_accepted_per_pos: Vec<u64>,
    spec_paused_steps: u64,
    refused: BTreeMap<&'static str, u64>,
    finished: BTreeMap<&'static str, u64>,
    /// The weights pin's content check: (bytes hashed, bytes pinned, state); None without a pin.
    pin: Option<(u64, u64, PinState)>,
    ttft: Option<Histogram>,
    itl: Option<Histogram>,
    e2e: Option<Histogram>,
}

/// Shared by the engine (which updates it) and the server (which renders it).
#[derive(Debug, Default)]
pub struct Metrics {
    v: Mutex<Values>,
}

/// Where the background check of the weights against the plan's pin stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PinState {
    Hashing = 0,
    Verified = 1,
    Mismatch = 2,
}

/// Why the server turned a request away before the engine saw it, as `reason` labels it:
/// running and queued limits full (429), handlers or connections at their caps (503), the
/// engine gone, a drain under way.
pub const REFUSAL_REASONS: [&str; 5] = ["queue_full", "overloaded", "connections_full", "engine_down", "shutting_down"];

/// Why a request ended, as `finished_reason` labels it.
pub const FINISH_REASONS: [&str; 5] = ["stop", "length", "abort", "timeout", "error"];

impl Metrics {
    fn with<T>(&self, f: impl FnOnce(&mut Values) -> T) -> T {
        let mut v = self.v.lock().unwrap_or_else(|p| p.into_inner());
        f(&mut v)
    }

    pub fn set_queue(&self, running: usize, waiting: usize, kv_usage: f64) {
        self.with(|v| {
            v.running = running as u64;
            v.waiting = waiting as u64;
            v.kv_usage = kv_usage;
        });
    }

    pub fn add_prompt(&self, tokens: usize, cached: usize) {
        self.with(|v| {
            v.prompt_tokens += tokens as u64;
            v.prefix_queries += tokens as u64;
            v.prefix_hits += cached as u64;
        });
    }

    pub fn add_generated(&self, tokens: usize) {
        self.with(|v| v.generation_tokens += tokens as u64);
    }

    pub fn step(&self) {
        self.with(|v| v.engine_steps += 1);
    }

    /// Forward steps taken so far.
    pub fn steps(&self) -> u64 {
        self.with(|v| v.engine_steps)
    }

    pub fn preempted(&self) {
        self.with(|v| v.preemptions += 1);
    }

    pub fn preemptions(&self) -> u64 {
        self.with(|v| v.preemptions)
    }

    /// One verification of `drafted` draft tokens of which the first `accepted` stood.
    pub fn speculated(&self, drafted: usize, accepted: usize) {
        self.with(|v| {
            v.spec_drafts += 1;
            v.spec_draft_tokens += drafted as u64;
            v.spec_accepted += accepted as u64;
            if v.spec_accepted_per_pos.len() < drafted {
                v.spec_accepted_per_pos.resize(drafted, 0);
            }
            for p in v.spec_accepted_per_pos.iter_mut().take(accepted) {
                *p += 1;
            }
        });
    }

    /// A request turned away for `reason` (one of `REFUSAL_REASONS`).
    pub fn refused(&self, reason: &'static str) {
        self.with(|v| *v.refused.entry(reason).or_default() += 1);
    }

    /// Requests turned away for `reason`.
    pub fn refusals(&self, reason: &str) -> u64 {
        self.with(|v| v.refused.get(reason).copied().unwrap_or(0))
    }

    /// A step in which no request drafted because more decoded than `speculative.max_batch`.
    pub fn drafting_paused(&self) {
        self.with(|v| v.spec_paused_steps += 1);
    }

    /// Steps counted by `drafting_paused`.
    pub fn drafting_paused_steps(&self) -> u64 {
        self.with(|v| v.spec_paused_steps)
    }

    /// (verification steps, drafted tokens, accepted tokens, accepted by position).
    pub fn speculation(&self) -> (u64, u64, u64, Vec<u64>) {
        self.with(|v| (v.spec_drafts, v.spec_draft_tokens, v.spec_accepted, v.spec_accepted_per_pos.clone()))
    }

    pub fn observe_ttft(&self, s: f64) {
        self.with(|v| v.ttft.get_or_insert_with(Histogram::new).observe(s));
    }

    pub fn observe_itl(&self, s: f64) {
        self.with(|v| v.itl.get_or_insert_with(Histogram::new).observe(s));
    }

    pub fn finish(&self, reason: &'static str, e2e_s: f64) {
        self.with(|v| {
            *v.finished.entry(reason).or_default() += 1;
            v.e2e.get_or_insert_with(Histogram::new).observe(e2e_s);
        });
    }

    /// (running, waiting) as last reported by the engine.
    pub fn set_pin(&self, hashed: u64, total: u64, state: PinState) {
        self.with(|v| v.pin = Some((hashed, total, state)));
    }

    pub fn queue(&self) -> (u64, u64) {
        self.with(|v| (v.running, v.waiting))
    }

    pub fn finished(&self, reason: &str) -> u64 {
        self.with(|v| v.finished.get(reason).copied().unwrap_or(0))
    }

    pub fn render(&self, model: &str) -> String {
        let v = self.with(|v| v.clone());
        let l = format!("model_name=\"{}\"", model.replace('"', "'"));
        let mut s = String::new();
        let mut one = |name: &str, kind: &str, help: &str, value: String| {
            let _ = writeln!(s, "# HELP kiln:{name} {help}\n# TYPE kiln:{name} {kind}\nkiln:{name}{{{l}}} {value}");
        };
        one("num_requests_running", "gauge", "Requests decoding in the engine.", v.running.to_string());
        one("num_requests_waiting", "gauge", "Requests admitted and waiting for the engine.", v.waiting.to_string());
        one(
            "kv_cache_usage_perc",
            "gauge",
            "Fraction of the plan's KV-cache capacity in use (1 = full).",
            format!("{}", v.kv_usage),
        );
        one("prompt_tokens_total", "counter", "Prompt tokens processed.", v.prompt_tokens.to_string());
        one("generation_tokens_total", "counter", "Tokens generated.", v.generation_tokens.to_string());
        one(
            "prefix_cache_queries_total",
            "counter",
            "Prompt tokens looked up in the prefix cache.",
            v.prefix_queries.to_string(),
        );
        one(
            "prefix_cache_hits_total",
            "counter",
            "Prompt tokens found in the prefix cache.",
            v.prefix_hits.to_string(),
        );
        one("engine_steps_total", "counter", "Engine steps taken.", v.engine_steps.to_string());
        one("num_preemptions_total", "counter", "Requests preempted for KV pages.", v.preemptions.to_string());
        one(
            "spec_decode_num_drafts_total",
            "counter",
            "Speculative verification steps with drafts.",
            v.spec_drafts.to_string(),
        );
        one(
            "spec_decode_num_draft_tokens_total",
            "counter",
            "Draft tokens proposed by the MTP layer.",
            v.spec_draft_tokens.to_string(),
        );
        one(
            "spec_decode_num_accepted_tokens_total",
            "counter",
            "Draft tokens the model accepted.",
            v.spec_accepted.to_string(),
        );
        one(
            "spec_decode_paused_steps_total",
            "counter",
            "Steps that drafted nothing because more requests decoded than speculative.max_batch.",
            v.spec_paused_steps.to_string(),
        );
        let mean =
            if v.spec_drafts > 0 { (v.spec_accepted + v.spec_drafts) as f64 / v.spec_drafts as f64 } else { 0.0 };
        one(
            "spec_decode_mean_acceptance_length",
            "gauge",
            "Tokens per verification step (accepted drafts + 1).",
            format!("{mean}"),
        );
        if let Some((hashed, total, state)) = v.pin {
            one("weights_pin_bytes", "gauge", "Bytes of weights the plan pins.", total.to_string());
            one(
                "weights_pin_hashed_bytes",
                "gauge",
                "Bytes of weights hashed so far by the background pin check.",
                hashed.to_string(),
            );
            one(
                "weights_pin_state",
                "gauge",
                "Background pin check: 0 hashing, 1 every byte matches, 2 mismatch (serving stopped).",
                (state as u8).to_string(),
            );
        }
        let _ = writeln!(
            s,
            "# HELP kiln:spec_decode_num_accepted_tokens_per_pos_total Accepted drafts by position.\n# TYPE kiln:spec_decode_num_accepted_tokens_per_pos_total counter"
        );
        for (pos, n) in v.spec_accepted_per_pos.iter().enumerate() {
            let _ = writeln!(s, "kiln:spec_decode_num_accepted_tokens_per_pos_total{{{l},position=\"{pos}\"}} {n}");
        }
        let _ = writeln!(
            s,
            "# HELP kiln:request_success_total Requests finished, by reason.\n# TYPE kiln:request_success_total counter"
        );
        for reason in FINISH_REASONS {
            let n = v.finished.get(reason).copied().unwrap_or(0);
            let _ = writeln!(s, "kiln:request_success_total{{{l},finished_reason=\"{reason}\"}} {n}");
        }
        let _ = writeln!(
            s,
            "# HELP kiln:request_refused_total Requests turned away before the engine, by reason.\n# TYPE kiln:request_refused_total counter"
        );
        for reason in REFUSAL_REASONS {
            let n = v.refused.get(reason).copied().unwrap_or(0);
            let _ = writeln!(s, "kiln:request_refused_total{{{l},reason=\"{reason}\"}} {n}");
        }
        for (name, help, h) in [
            ("time_to_first_token_seconds", "Time from arrival to the first token.", &v.ttft),
            ("inter_token_latency_seconds", "Time between consecutive tokens of a request.", &v.itl),
            ("e2e_request_latency_seconds", "Time from arrival to the end of a request.", &v.e2e),
        ] {
            let h = h.clone().unwrap_or_else(Histogram::new);
            let _ = writeln!(s, "# HELP kiln:{name} {help}\n# TYPE kiln:{name} histogram");
            let mut acc = 0;
            for (b, c) in LATENCY_BUCKETS.iter().zip(&h.counts) {
                acc += c;
                let _ = writeln!(s, "kiln:{name}_bucket{{{l},le=\"{b}\"}} {acc}");
            }
            let _ = writeln!(s, "kiln:{name}_bucket{{{l},le=\"+Inf\"}} {}", h.count);
            let _ = writeln!(s, "kiln:{name}_sum{{{l}}} {}\nkiln:{name}_count{{{l}}} {}", h.sum, h.count);
        }
        // The standard process metrics Prometheus clients export, from /proc.
        if let Some(rss) = resident_bytes() {
            let _ = writeln!(
                s,
                "# HELP process_resident_memory_bytes Resident memory size in bytes.\n# TYPE process_resident_memory_bytes gauge\nprocess_resident_memory_bytes {rss}"
            );
        }
        if let Some(fds) = std::fs::read_dir("/proc/self/fd").ok().map(Iterator::count) {
            let _ = writeln!(
                s,
                "# HELP process_open_fds Number of open file descriptors.\n# TYPE process_open_fds gauge\nprocess_open_fds {fds}"
            );
        }
        s
    }
}

/// This process's resident set, from /proc/self/statm (pages).
pub fn resident_bytes() -> Option<u64> {
    let statm = std::fs::read_to_string("/proc/self/statm").ok()?;
    let pages: u64 = statm.split_whitespace().nth(1)?.parse().ok()?;
    // SAFETY: sysconf has no preconditions.
    let page = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
    Some(pages * u64::try_from(page).ok()?)
}
