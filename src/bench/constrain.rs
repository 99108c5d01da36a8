//! `kiln bench constrain`: what a grammar costs per decode step. The same greedy requests run
//! free and under a JSON schema whose string never closes within the run (so both generate
//! every token), at each batch size, in one run; the constraint's own time (mask and commit)
//! is timed inside the engine.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use serde_json::json;

use crate::constrain::{self, Grammars};
use crate::engine::{self, Constraint, EngineConfig, Event, GenerationRequest, TokenMask};
use crate::metrics::Metrics;
use crate::model::Model;
use crate::sample::SamplingParams;

#[derive(Debug, Clone)]
pub struct ConstrainRow {
    pub batch: usize,
    /// Generated tokens per second, all requests together.
    pub free_tok_s: f64,
    pub constrained_tok_s: f64,
    /// Mask computation and commits per constrained token.
    pub constraint_us_per_token: f64,
}

/// A constraint that adds the time spent in it to a shared counter (nanoseconds).
struct Timed {
    inner: Box<dyn Constraint>,
    spent: Arc<AtomicU64>,
}

impl Timed {
    fn time<R>(&mut self, f: impl FnOnce(&mut dyn Constraint) -> R) -> R {
        let t = Instant::now();
        let r = f(self.inner.as_mut());
        self.spent.fetch_add(t.elapsed().as_nanos() as u64, Ordering::Relaxed);
        r
    }
}

impl Constraint for Timed {
    fn allowed(&mut self) -> Result<TokenMask, String> {
        self.time(|c| c.allowed())
    }
    fn commit(&mut self, token: u32) -> Result<(), String> {
        self.time(|c| c.commit(token))
    }
    fn rollback(&mut self, n: usize) -> Result<(), String> {
        self.time(|c| c.rollback(n))
    }
    fn is_complete(&self) -> bool {
        self.inner.is_complete()
    }
}

/// (tokens per second, constraint nanoseconds per token) of `batch` requests at once.
fn run(
    model: &Arc<Model>,
    cfg: &EngineConfig,
    grammars: Option<&Grammars>,
    prompts: &[Vec<u32>],
    batch: usize,
    tokens: usize,
) -> (f64, f64) {
    let (h, join) = engine::spawn(model.clone(), cfg.clone(), Arc::new(Metrics::default()));
    let spent = Arc::new(AtomicU64::new(0));
    // A string of at least 4096 characters: open for the whole run, like a long answer.
    let schema =
        json!({"type": "object", "properties": {"text": {"type": "string", "minLength": 4096}}, "required": ["text"]});
    let started = Instant::now();
    let pending: Vec<_> = (0..batch)
        .filter_map(|i| {
            let (mut req, rx) =
                GenerationRequest::new(prompts[i % prompts.len()].clone(), SamplingParams::greedy(), tokens);
            if let Some(g) = grammars {
                let inner = g.constraint(constrain::json_schema(&schema)).ok()?;
                req.constraint = Some(Box::new(Timed { inner, spent: spent.clone() }));
            }
            h.submit(req).ok().map(|_| rx)
        })
        .collect();
    let mut generated = 0usize;
    for rx in pending {
        while let Ok(ev) = rx.recv_timeout(Duration::from_secs(600)) {
            match ev {
                Event::Token { .. } => generated += 1,
                Event::Done { .. } | Event::Failed(_) => break,
            }
        }
    }
    let took = started.elapsed().as_secs_f64();
    drop(h);
    let _ = join.join();
    (generated as f64 / took.max(1e-9), spent.load(Ordering::Relaxed) as f64 / generated.max(1) as f64)
}

pub fn constrain_table(
    model: &Arc<Model>,
    cfg: &EngineConfig,
    grammars: &Grammars,
    prompts: &[Vec<u32>],
    batches: &[usize],
    tokens: usize,
) -> Vec<ConstrainRow> {
    batches
        .iter()
        .map(|&batch| {
            let (free_tok_s, _) = run(model, cfg, None, prompts, batch, tokens);
            let (constrained_tok_s, ns) = run(model, cfg, Some(grammars), prompts, batch, tokens);
            ConstrainRow { batch, free_tok_s, constrained_tok_s, constraint_us_per_token: ns / 1e3 }
        })
        .collect()
}

pub fn constrain_markdown(rows: &[ConstrainRow]) -> String {
    let mut s = String::from(
        "| requests at once | free tok/s | constrained tok/s | constrained / free | constraint µs per token |\n|---|---|---|---|---|\n",
    );
    for r in rows {
        s.push_str(&format!(
            "| {} | {:.1} | {:.1} | {:.2} | {:.0} |\n",
            r.batch,
            r.free_tok_s,
            r.constrained_tok_s,
            r.constrained_tok_s / r.free_tok_s.max(1e-9),
            r.constraint_us_per_token
        ));
    }
    s
}
