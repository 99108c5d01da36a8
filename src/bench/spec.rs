//! `kiln bench spec`: decode speed and MTP acceptance at each draft depth, for a single
//! stream and for batches of requests decoding together, measured in one run on the same
//! prompts (greedy, so every depth writes the same text).

use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::engine::{self, EngineConfig, Event, GenerationRequest};
use crate::metrics::Metrics;
use crate::model::Model;
use crate::sample::SamplingParams;

#[derive(Debug, Clone)]
pub struct SpecRow {
    /// Requests decoding together.
    pub batch: usize,
    pub depth: usize,
    /// Generated tokens over all requests, each one's first (the prefill's) left out.
    pub tokens: usize,
    /// Those tokens per second of decoding, over all requests together.
    pub decode_tok_s: f64,
    /// Tokens per verification step (accepted drafts + 1); 1 without speculation.
    pub acceptance_length: f64,
    /// Share of verification steps whose draft at each position was accepted.
    pub accepted_by_position: Vec<f64>,
}

/// At each batch size and depth: with a batch of 1, every prompt alone, one after another;
/// with more, that many requests at once (the prompts in turn). `base` must admit the
/// largest batch. Drafting is never paused by `speculative.max_batch` here: the table is
/// what a depth costs or saves at each batch size, which is how that limit is chosen.
pub fn spec_table(
    model: &Arc<Model>,
    base: &EngineConfig,
    prompts: &[Vec<u32>],
    max_tokens: usize,
    batches: &[usize],
    depths: &[usize],
) -> Vec<SpecRow> {
    let mut rows = Vec::new();
    for &batch in batches {
        for &depth in depths {
            let metrics = Arc::new(Metrics::default());
            let cfg =
                EngineConfig { spec_depth: depth, spec_max_batch: usize::MAX, prefix_cache: false, ..base.clone() };
            let (h, _join) = engine::spawn(model.clone(), cfg, metrics.clone());
            let rounds: Vec<Vec<&Vec<u32>>> = if batch == 1 {
                prompts.iter().map(|p| vec![p]).collect()
            } else {
                vec![(0..batch).map(|i| &prompts[i % prompts.len()]).collect()]
            };
            let (mut tokens, mut decode) = (0usize, Duration::ZERO);
            for round in rounds {
                let pending: Vec<_> = round
                    .into_iter()
                    .filter_map(|p| {
                        let (req, rx) = GenerationRequest::new(p.clone(), SamplingParams::greedy(), max_tokens);
                        h.submit(req).ok().map(|_| rx)
                    })
                    .collect();
                // Each request's tokens are timed as they come, on a thread of its own; the
                // round decodes from the last request's first token (every prompt is in) to
                // the last token of all.
                let seen: Vec<(Option<Instant>, Vec<Instant>)> = std::thread::scope(|scope| {
                    let readers: Vec<_> = pending.into_iter().map(|rx| scope.spawn(move || read_tokens(&rx))).collect();
                    readers.into_iter().map(|r| r.join().unwrap_or((None, Vec::new()))).collect()
                });
                let Some(first) = seen.iter().filter_map(|s| s.0).max() else { continue };
                let decoded: Vec<Instant> =
                    seen.iter().flat_map(|s| s.1.iter().copied()).filter(|&t| t > first).collect();
                if let Some(&last) = decoded.iter().max() {
                    tokens += decoded.len();
                    decode += last - first;
                }
            }
            let (steps, _, accepted, per_pos) = metrics.speculation();
            rows.push(SpecRow {
                batch,
                depth,
                tokens,
                decode_tok_s: tokens as f64 / decode.as_secs_f64().max(1e-9),
                acceptance_length: if steps > 0 { (accepted + steps) as f64 / steps as f64 } else { 1.0 },
                accepted_by_position: per_pos.iter().map(|&a| a as f64 / steps.max(1) as f64).collect(),
            });
        }
    }
    rows
}

/// A request's events until it ends: when its first token (the prefill's) came, and when
/// each later one (the decoded ones) did.
fn read_tokens(rx: &std::sync::mpsc::Receiver<Event>) -> (Option<Instant>, Vec<Instant>) {
    let (mut first, mut later) = (None, Vec::new());
    while let Ok(ev) = rx.recv_timeout(Duration::from_secs(600)) {
        match ev {
            Event::Token { .. } if first.is_none() => first = Some(Instant::now()),
            Event::Token { .. } => later.push(Instant::now()),
            Event::Done { .. } | Event::Failed(_) => break,
        }
    }
    (first, later)
}

pub fn spec_markdown(rows: &[SpecRow]) -> String {
    let mut s = String::from(
        "| batch | draft depth | decode tok/s | vs depth 0 | acceptance length | accepted by draft position |\n|---|---|---|---|---|---|\n",
    );
    for r in rows {
        let base = rows.iter().find(|b| b.batch == r.batch && b.depth == 0).map(|b| b.decode_tok_s);
        let speedup = base.map_or("-".to_string(), |b| format!("{:.2}x", r.decode_tok_s / b));
        let pos: Vec<String> = r.accepted_by_position.iter().map(|x| format!("{:.0}%", 100.0 * x)).collect();
        s.push_str(&format!(
            "| {} | {} | {:.1} | {speedup} | {:.2} | {} |\n",
            r.batch,
            r.depth,
            r.decode_tok_s,
            r.acceptance_length,
            if pos.is_empty() { "-".into() } else { pos.join(" / ") }
        ));
    }
    s
}
