//! `kiln bench decode` and `kiln bench prefill`: the CPU forward in-process, against the
//! machine's read bandwidth measured in the same run. Decode is judged by its roofline: the
//! bytes a step must read (weights it touches, KV entries it attends to) over its time, as a
//! share of what a streaming read achieves. A prefill is compute-bound, so it is also judged
//! by the multiply-adds its math needs per second, as a share of the f32 FMA rate measured in
//! the same run (`fma_peak`).

use std::collections::BTreeSet;
use std::time::Instant;

use crate::backend::Backend;
use crate::backend::cpu::Cpu;
use crate::error::{Error, Result};
use crate::kv::KvFormat;
use crate::model::weights::{Ffn, LayerWeights};
use crate::model::{Model, SeqCache, Trace};

/// One width of the decode table.
#[derive(Debug, Clone)]
pub struct DecodeRow {
    /// Tokens of one sequence per forward (1 = plain decode, 1 + depth = a verification).
    pub width: usize,
    pub step_s: f64,
    /// Weight and KV bytes one step reads, on average.
    pub bytes_per_step: f64,
}

impl DecodeRow {
    pub fn tok_s(&self) -> f64 {
        self.width as f64 / self.step_s
    }

    pub fn gb_s(&self) -> f64 {
        self.bytes_per_step / self.step_s / 1e9
    }
}

/// The prefill measurement.
#[derive(Debug, Clone)]
pub struct PrefillRow {
    pub prompt: usize,
    /// Best of the repetitions.
    pub seconds: f64,
    pub bytes: f64,
    /// Multiply-adds the forward's math needs (`step_macs`).
    pub macs: f64,
}

/// Prompt ids: a fixed spread over the vocabulary past its first eighth (no special tokens).
fn prompt(model: &Model<Cpu>, n: usize, salt: usize) -> Vec<u32> {
    let v = model.vocab_size();
    (0..n).map(|i| (v / 8 + (i * 7919 + salt * 104_729) % (v - v / 8)) as u32).collect()
}

/// Decodes `steps` forwards of each width after a prompt of `context` tokens; every row of a
/// step gets its greedy token (as verification does), and the first is fed back.
pub fn decode_table(
    model: &Model<Cpu>,
    format: KvFormat,
    context: usize,
    steps: usize,
    widths: &[usize],
) -> Result<Vec<DecodeRow>> {
    let mut rows = Vec::new();
    for (k, &width) in widths.iter().enumerate() {
        let mut cache = model.cache(format, model.kv_geometry());
        let ids = prompt(model, context, k);
        let mut next = greedy_step(model, &mut cache, &ids, None)?;
        let (mut time, mut bytes) = (0.0f64, 0.0f64);
        for s in 0..steps {
            // The greedy token, then ids that stand in for drafts.
            let mut tokens = vec![next];
            tokens.extend(prompt(model, width - 1, 1000 + s));
            let positions: Vec<usize> = (cache.len()..cache.len() + width).collect();
            let mut trace = Trace::default();
            let t = Instant::now();
            next = greedy_step(model, &mut cache, &tokens, Some(&mut trace))?;
            time += t.elapsed().as_secs_f64();
            bytes += step_bytes(model, format, &trace, &positions);
        }
        rows.push(DecodeRow { width, step_s: time / steps as f64, bytes_per_step: bytes / steps as f64 });
    }
    Ok(rows)
}

/// A forward of `tokens` after the cache with every row's greedy token; returns the first.
fn greedy_step(
    model: &Model<Cpu>,
    cache: &mut SeqCache<Cpu>,
    tokens: &[u32],
    trace: Option<&mut Trace>,
) -> Result<u32> {
    let mut step = cache.step(&model.backend, tokens)?;
    step.argmax_rows = (0..tokens.len()).collect();
    let out = model.step(&step, &mut cache.store, trace)?;
    cache.advance(tokens.len());
    Ok(out.argmax[0])
}

/// The prompt through one forward, `reps` times on fresh caches; the best time.
pub fn prefill(model: &Model<Cpu>, format: KvFormat, n: usize, reps: usize) -> Result<PrefillRow> {
    let ids = prompt(model, n, 0);
    let positions: Vec<usize> = (0..n).collect();
    let (mut best, mut bytes, mut macs) = (f64::INFINITY, 0.0, 0.0);
    for _ in 0..reps.max(1) {
        let mut cache = model.cache(format, model.kv_geometry());
        let mut trace = Trace::default();
        let t = Instant::now();
        let mut step = cache.step(&model.backend, &ids)?;
        step.argmax_rows = vec![n - 1];
        model.step(&step, &mut cache.store, Some(&mut trace))?;
        best = best.min(t.elapsed().as_secs_f64());
        bytes = step_bytes(model, format, &trace, &positions);
        macs = step_macs(model, &trace, &positions, step.argmax_rows.len());
    }
    Ok(PrefillRow { prompt: n, seconds: best, bytes, macs })
}

fn linears_bytes(ws: &[&crate::weights::Linear]) -> usize {
    ws.iter().map(|w| w.stored_bytes()).sum()
}

/// The linears of a layer every token goes through: attention, indexer, dense or shared MLP.
/// The indexer's queries and head weights only in a step that scores (`scoring`): while
/// every query's causal window fits in its top-k the forward keeps every key without them,
/// and counting their bytes would credit the step with reads it never made.
fn layer_fixed_linears(l: &LayerWeights<Cpu>, scoring: bool) -> Vec<&crate::weights::Linear> {
    let a = &l.attn;
    let mut ws = vec![&a.q_a, &a.q_b, &a.kv_a, &a.kv_b, &a.o];
    if let Some(ix) = &l.indexer {
        ws.push(&ix.wk);
        if scoring {
            ws.extend([&ix.wq_b, &ix.weights_proj]);
        }
    }
    let mlp = match &l.ffn {
        Ffn::Dense(m) => Some(m),
        Ffn::Moe(moe) => moe.shared.as_ref(),
    };
    if let Some(m) = mlp {
        ws.extend([&m.gate, &m.up, &m.down]);
    }
    ws
}

/// The linears a row that only writes its KV entries goes through (`Trace::whole_rows`).
fn entry_linears(l: &LayerWeights<Cpu>) -> Vec<&crate::weights::Linear> {
    let mut ws = vec![&l.attn.kv_a];
    ws.extend(l.indexer.as_ref().map(|ix| &ix.wk));
    ws
}

/// The positions of the rows layer `i` ran whole: every row's but where the trace says
/// otherwise (the last layer of a step that returned a few rows).
fn whole_positions(trace: &Trace, i: usize, positions: &[usize]) -> Vec<usize> {
    trace.whole_rows.get(&i).map_or_else(|| positions.to_vec(), |rows| rows.iter().map(|&r| positions[r]).collect())
}

/// Bytes of a layer every token reads: its fixed linears, norms and router.
fn layer_fixed_bytes(l: &LayerWeights<Cpu>, scoring: bool) -> usize {
    let f = |v: &Vec<f32>| v.len() * 4;
    let mut b = linears_bytes(&layer_fixed_linears(l, scoring))
        + f(&l.attn.q_a_norm)
        + f(&l.attn.kv_a_norm)
        + f(&l.input_norm)
        + f(&l.post_norm);
    if let Ffn::Moe(moe) = &l.ffn {
        b += f(&moe.router) + f(&moe.bias);
    }
    b
}

/// What a step of tokens at `positions` (one sequence) reads: the weights it touched (routed
/// experts counted once per distinct expert, as the MoE reads each once per step), the whole
/// lm_head, and the KV entries each token attends to or scores.
fn step_bytes(model: &Model<Cpu>, format: KvFormat, trace: &Trace, positions: &[usize]) -> f64 {
    let w = &model.weights;
    let mut bytes = w.lm_head().stored_bytes() + w.norm.len() * 4;
    bytes += positions.len() * w.embed.stored_bytes() / w.embed.rows.max(1);
    let geometry = model.kv_geometry();
    let (mla, index) = (format.mla_bytes(&geometry), format.index_bytes(&geometry));
    let topk = model.shape.index_topk as usize;
    for (i, l) in w.layers.iter().enumerate() {
        let whole = whole_positions(trace, i, positions);
        bytes += match whole.is_empty() {
            true => linears_bytes(&entry_linears(l)),
            false => layer_fixed_bytes(l, crate::model::projections::scoring(topk, &whole)),
        };
        if let (Ffn::Moe(moe), Some(routes)) = (&l.ffn, trace.experts.get(&i)) {
            let used: BTreeSet<u32> = routes.iter().flat_map(|r| r.experts.iter().copied()).collect();
            bytes += used
                .iter()
                .map(|&e| &moe.experts[e as usize])
                .map(|x| linears_bytes(&[&x.gate, &x.up, &x.down]))
                .sum::<usize>();
        }
        for &p in &whole {
            bytes += (p + 1).min(topk) * mla;
            if l.indexer.is_some() && p + 1 > topk {
                bytes += (p + 1) * index;
            }
        }
    }
    bytes as f64
}

/// The multiply-adds a step of tokens at `positions` (one sequence) needs, with lm_head
/// for `logit_rows` of them: every weight a token touched once per token (its routed experts
/// only), the router, attention over the entries each token attends to (scores and values
/// per head), and the indexer's scores where it runs.
fn step_macs(model: &Model<Cpu>, trace: &Trace, positions: &[usize], logit_rows: usize) -> f64 {
    let (w, m) = (&model.weights, &model.shape);
    let params = |ws: &[&crate::weights::Linear]| ws.iter().map(|w| w.rows * w.cols).sum::<usize>();
    let (n, topk) = (positions.len(), m.index_topk as usize);
    let (heads, latent, rope) = (m.num_attention_heads as usize, m.kv_lora_rank as usize, m.qk_rope_head_dim as usize);
    let index = m.index_n_heads as usize * m.index_head_dim as usize;
    let mut macs = logit_rows * params(&[w.lm_head()]);
    for (i, l) in w.layers.iter().enumerate() {
        let router = if let Ffn::Moe(moe) = &l.ffn { moe.router.len() } else { 0 };
        let whole = whole_positions(trace, i, positions);
        let scoring = crate::model::projections::scoring(topk, &whole);
        macs += whole.len() * (params(&layer_fixed_linears(l, scoring)) + router);
        macs += (n - whole.len()) * params(&entry_linears(l));
        if let (Ffn::Moe(moe), Some(routes)) = (&l.ffn, trace.experts.get(&i)) {
            let expert = |e: u32| {
                let x = &moe.experts[e as usize];
                params(&[&x.gate, &x.up, &x.down])
            };
            macs += routes.iter().flat_map(|r| r.experts.iter()).map(|&e| expert(e)).sum::<usize>();
        }
        for &p in &whole {
            macs += (p + 1).min(topk) * heads * (2 * latent + rope);
            if l.indexer.is_some() && p + 1 > topk {
                macs += (p + 1) * index;
            }
        }
    }
    macs as f64
}

/// The decode table in markdown, each row against `read_gb_s` and the first row.
pub fn decode_markdown(rows: &[DecodeRow], read_gb_s: f64) -> String {
    let base = rows.first().map(|r| r.step_s).unwrap_or(1.0);
    let mut s = String::from(
        "| tokens per step | step ms | tok/s | MB read per step | GB/s | of read bandwidth | step cost vs first row |\n|---|---|---|---|---|---|---|\n",
    );
    for r in rows {
        s.push_str(&format!(
            "| {} | {:.2} | {:.1} | {:.1} | {:.2} | {:.0}% | {:.2}x |\n",
            r.width,
            r.step_s * 1e3,
            r.tok_s(),
            r.bytes_per_step / 1e6,
            r.gb_s(),
            100.0 * r.gb_s() / read_gb_s,
            r.step_s / base
        ));
    }
    s
}

pub fn prefill_markdown(r: &PrefillRow, read_gb_s: f64, fma_gmacs: f64) -> String {
    let gb_s = r.bytes / r.seconds / 1e9;
    let gmacs = r.macs / r.seconds / 1e9;
    format!(
        "| prompt tokens | seconds | tok/s | MB read per token | GB/s | of read bandwidth | G multiply-adds/s | of f32 FMA peak |\n|---|---|---|---|---|---|---|---|\n| {} | {:.3} | {:.1} | {:.2} | {:.2} | {:.0}% | {:.1} | {:.0}% |\n",
        r.prompt,
        r.seconds,
        r.prompt as f64 / r.seconds,
        r.bytes / r.prompt as f64 / 1e6,
        gb_s,
        100.0 * gb_s / read_gb_s,
        gmacs,
        100.0 * gmacs / fma_gmacs
    )
}

/// What `run` measures.
#[derive(Debug, Clone)]
pub enum Measure {
    Decode { context: usize, steps: usize, widths: Vec<usize> },
    Prefill { prompt: usize, reps: usize },
}

/// Measures the read bandwidth, then `what`, both on the CPU backend's worker pool; returns
/// the report (a heading line and a markdown table).
pub fn run(model: &Model<Cpu>, format: KvFormat, name: &str, what: &Measure) -> Result<String> {
    let limit = model.shape.max_position_embeddings as usize;
    let longest = match what {
        Measure::Decode { context, steps, widths } => {
            if *context == 0 || widths.contains(&0) {
                return Err(Error::Usage("--context and every --widths entry must be at least 1".into()));
            }
            context + steps.max(&1) * widths.iter().max().unwrap_or(&1)
        }
        Measure::Prefill { prompt, .. } if *prompt == 0 => {
            return Err(Error::Usage("--prompt must be at least 1".into()));
        }
        Measure::Prefill { prompt, .. } => *prompt,
    };
    if longest > limit {
        return Err(Error::Usage(format!(
            "the bench needs {longest} positions; the model has {limit} (model.max_position_embeddings)"
        )));
    }
    crate::backend::cpu::pool::run_as_worker(|| {
        // This VM's read bandwidth moves by half within minutes (other tenants): it is
        // measured before and after the timed forwards, and the higher is the ceiling.
        let before = super::bandwidth::read_gb_s();
        let timed = match what {
            Measure::Decode { context, steps, widths } => Timed::Decode {
                rows: decode_table(model, format, *context, (*steps).max(1), widths)?,
                context: *context,
                steps: *steps,
            },
            // A prefill is compute-bound: it is also judged against the f32 FMA rate.
            Measure::Prefill { prompt: n, reps } => {
                Timed::Prefill { row: prefill(model, format, *n, *reps)?, fma_gmacs: super::fma_peak::fma_gmacs() }
            }
        };
        let after = super::bandwidth::read_gb_s();
        let read = before.max(after);
        let head = format!(
            "{name} on {} ({} kernels), KV {format:?}; streaming read {read:.1} GB/s (the higher of {before:.1} \
             before and {after:.1} after)\n",
            model.backend.describe(),
            crate::backend::cpu::kernels::Isa::current().name()
        );
        Ok(match timed {
            Timed::Decode { rows, context, steps } => format!(
                "{head}{context} tokens of context, {steps} greedy steps per width\n\n{}",
                decode_markdown(&rows, read)
            ),
            Timed::Prefill { row, fma_gmacs } => format!(
                "{head}f32 FMA peak {fma_gmacs:.1} G multiply-adds/s ({} lanes, all threads)\n\n{}",
                super::fma_peak::lanes(),
                prefill_markdown(&row, read, fma_gmacs)
            ),
        })
    })
}

/// What `run` timed, before it is judged against the bandwidth measured around it.
enum Timed {
    Decode { rows: Vec<DecodeRow>, context: usize, steps: usize },
    Prefill { row: PrefillRow, fma_gmacs: f64 },
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::weights::WeightsSource;
    use std::path::Path;

    fn demo_model() -> Model<Cpu> {
        let root = Path::new(env!("CARGO_MANIFEST_DIR"));
        let text = std::fs::read_to_string(root.join("plan/tiny.toml")).expect("the demo plan");
        let plan = crate::plan::check(&text).expect("the demo plan checks");
        let ckpt = WeightsSource::Dir(root.join("models/tiny")).checkpoint().expect("the demo weights");
        Model::load(&plan, &ckpt).expect("the demo model loads")
    }

    #[test]
    fn the_indexer_queries_count_only_in_steps_that_score() {
        let model = demo_model();
        let topk = model.shape.index_topk as usize;
        let format = KvFormat::Bf16;
        let geometry = model.kv_geometry();
        let (mla, index) = (format.mla_bytes(&geometry), format.index_bytes(&geometry));
        let indexed: Vec<_> = model.weights.layers.iter().filter_map(|l| l.indexer.as_ref()).collect();
        assert!(!indexed.is_empty(), "the demo model has indexer layers");
        let scorer: usize = indexed.iter().map(|ix| ix.wq_b.stored_bytes() + ix.weights_proj.stored_bytes()).sum();
        // One token just inside the top-k window, one just past it: past it, the step also
        // reads the indexer's queries and head weights, and scores every cached key.
        let trace = Trace::default();
        let (inside, past) = (topk - 1, topk);
        let a = step_bytes(&model, format, &trace, &[inside]);
        let b = step_bytes(&model, format, &trace, &[past]);
        let layers = model.weights.layers.len();
        let kv = layers * ((past + 1).min(topk) - (inside + 1).min(topk)) * mla + indexed.len() * (past + 1) * index;
        assert_eq!(b - a, (scorer + kv) as f64);
        // And the multiply-adds: the scorer's rows once per token when it runs.
        let params: usize =
            indexed.iter().map(|ix| ix.wq_b.rows * ix.wq_b.cols + ix.weights_proj.rows * ix.weights_proj.cols).sum();
        let (ma, mb) = (step_macs(&model, &trace, &[inside], 1), step_macs(&model, &trace, &[past], 1));
        let m = &model.shape;
        let attend = |p: usize| {
            (p + 1).min(topk)
                * m.num_attention_heads as usize
                * (2 * m.kv_lora_rank as usize + m.qk_rope_head_dim as usize)
        };
        let scores = indexed.len() * (past + 1) * m.index_n_heads as usize * m.index_head_dim as usize;
        assert_eq!(mb - ma, (params + layers * (attend(past) - attend(inside)) + scores) as f64);
    }
}
