//! `kiln bench spec`: single-stream decode speed and MTP acceptance at each draft depth,
//! measured in one run on the same prompts (greedy, so every depth writes the same text).

use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::engine::{self, EngineConfig, Event, GenerationRequest};
use crate::metrics::Metrics;
use crate::model::Model;
use crate::sample::SamplingParams;

#[derive(Debug, Clone)]
pub struct SpecRow {
    pub depth: usize,
    /// Generated tokens over all prompts.
    pub tokens: usize,
    /// Tokens after the first, per second of decoding (prefill excluded).
    pub decode_tok_s: f64,
    /// Tokens per verification step (accepted drafts + 1); 1 without speculation.
    pub acceptance_length: f64,
    /// Share of verification steps whose draft at each position was accepted.
    pub accepted_by_position: Vec<f64>,
}

/// Runs every prompt alone, one after another, at each depth.
pub fn spec_table(
    model: &Arc<Model>,
    base: &EngineConfig,
    prompts: &[Vec<u32>],
    max_tokens: usize,
    depths: &[usize],
) -> Vec<SpecRow> {
    depths
        .iter()
        .map(|&depth| {
            let metrics = Arc::new(Metrics::default());
            let cfg = EngineConfig { spec_depth: depth, prefix_cache: false, ..base.clone() };
            let (h, _join) = engine::spawn(model.clone(), cfg, metrics.clone());
            let (mut tokens, mut decode) = (0usize, Duration::ZERO);
            for p in prompts {
                let (req, rx) = GenerationRequest::new(p.clone(), SamplingParams::greedy(), max_tokens);
                if h.submit(req).is_err() {
                    continue;
                }
                let (mut first, mut last, mut n) = (None, Instant::now(), 0);
                while let Ok(ev) = rx.recv_timeout(Duration::from_secs(600)) {
                    match ev {
                        Event::Token { .. } => {
                            let now = Instant::now();
                            first.get_or_insert(now);
                            last = now;
                            n += 1;
                        }
                        Event::Done { .. } | Event::Failed(_) => break,
                    }
                }
                if let Some(f) = first {
                    tokens += n;
                    decode += last - f;
                    // The first token is the prefill's; decoding made the other n - 1.
                    tokens -= 1;
                }
            }
            let (steps, _, accepted, per_pos) = metrics.speculation();
            SpecRow {
                depth,
                tokens,
                decode_tok_s: tokens as f64 / decode.as_secs_f64().max(1e-9),
                acceptance_length: if steps > 0 { (accepted + steps) as f64 / steps as f64 } else { 1.0 },
                accepted_by_position: per_pos.iter().map(|&a| a as f64 / steps.max(1) as f64).collect(),
            }
        })
        .collect()
}

pub fn spec_markdown(rows: &[SpecRow]) -> String {
    let base = rows.iter().find(|r| r.depth == 0).map(|r| r.decode_tok_s);
    let mut s = String::from(
        "| draft depth | decode tok/s | vs depth 0 | acceptance length | accepted by draft position |\n|---|---|---|---|---|\n",
    );
    for r in rows {
        let speedup = base.map_or("-".to_string(), |b| format!("{:.2}x", r.decode_tok_s / b));
        let pos: Vec<String> = r.accepted_by_position.iter().map(|x| format!("{:.0}%", 100.0 * x)).collect();
        s.push_str(&format!(
            "| {} | {:.1} | {speedup} | {:.2} | {} |\n",
            r.depth,
            r.decode_tok_s,
            r.acceptance_length,
            if pos.is_empty() { "-".into() } else { pos.join(" / ") }
        ));
    }
    s
}
