//! The GLM-DSA forward, written once against `backend::Backend`: embeddings; decoder layers
//! (MLA attention over the indexer's selection, dense MLP or MoE); final norm; lm_head on the
//! rows that need logits; and the MTP layer that drafts the token after next. One step runs
//! the tokens of any number of sequences at their own positions, their KV written into and
//! read from the backend's KV store where the page tables say.

pub mod cache;
pub mod indexer;
pub mod mla;
pub mod moe;
mod mtp;
pub mod projections;
pub mod weights;

use std::collections::BTreeMap;

pub use crate::backend::{Route, Selection, StepBatch};
pub use cache::SeqCache;
pub use mla::AttentionForm;

use crate::backend::cpu::{Cpu, Rope};
use crate::backend::{Backend, MlaDims};
use crate::error::{Error, Result};
use crate::kv::{KvFormat, KvGeometry};
use crate::plan::{ActivationQuant, ModelShape, Plan};
use crate::weights::Checkpoint;
use weights::{Ffn, GlmWeights, LayerWeights};

/// Per-layer discrete choices of one forward, for checking against a reference.
#[derive(Debug, Clone, Default)]
pub struct Trace {
    /// Layer -> the selection of each token of the batch (full indexer layers only).
    pub topk: BTreeMap<usize, Selection>,
    /// Layer -> each token's routed experts (MoE layers only).
    pub experts: BTreeMap<usize, Vec<Route>>,
    /// Layer -> the rows it ran whole, where not every row: the last layer of a step that
    /// returns a few rows' logits (`topk` and `experts` then hold those rows'), the other
    /// rows having only written their entries.
    pub whole_rows: BTreeMap<usize, Vec<usize>>,
}

/// What one step returns to the host.
#[derive(Debug, Clone, Default)]
pub struct StepOutput {
    /// [R, V] for the batch's logits_rows, in that order.
    pub logits: Vec<f32>,
    /// The greedy token of each of the batch's argmax_rows, in that order.
    pub argmax: Vec<u32>,
    /// [N, D] final-normed hidden states when the batch asked for them.
    pub hidden: Vec<f32>,
}

pub struct Model<B: Backend = Cpu> {
    pub backend: B,
    pub shape: ModelShape,
    pub weights: GlmWeights<B>,
    /// [qk_rope_head_dim / 2] RoPE frequencies, computed in f32 as HF does.
    inv_freq: B::Vector,
    /// Quantize activations to MXFP4 before MXFP4 linears (W4A4).
    act_quant: bool,
    pub form: AttentionForm,
}

impl Model<Cpu> {
    /// The model on the CPU backend: the checkpoint checked against the plan, then bound.
    /// No copy of the weights is made.
    pub fn load(plan: &Plan, ckpt: &Checkpoint) -> Result<Model<Cpu>> {
        Model::load_on(Cpu, plan, ckpt)
    }

    /// lm_head over final-normed hidden states [n, D] -> logits [n, V].
    pub fn logits(&self, hidden: &[f32]) -> Vec<f32> {
        self.lm_head(hidden).expect("CPU ops do not fail on well-formed rows")
    }
}

impl<B: Backend> Model<B> {
    /// Checks the checkpoint against the plan, then uploads it to `backend`.
    pub fn load_on(backend: B, plan: &Plan, ckpt: &Checkpoint) -> Result<Model<B>> {
        let weights = GlmWeights::load(&backend, plan, ckpt)?;
        let m = plan.model.clone();
        let rope = Rope::new(m.rope_theta, m.qk_rope_head_dim as usize);
        Ok(Model {
            inv_freq: backend.vector(rope.inv_freq().to_vec())?,
            backend,
            shape: m,
            weights,
            act_quant: plan.weights.quant.activations == ActivationQuant::Mxfp4,
            form: AttentionForm::Absorbed,
        })
    }

    /// What the main layers keep per token.
    pub fn kv_geometry(&self) -> KvGeometry {
        let m = &self.shape;
        KvGeometry {
            latent: m.kv_lora_rank as usize,
            rope: m.qk_rope_head_dim as usize,
            index: m.index_head_dim as usize,
            indexed: self.weights.layers.iter().map(|l| l.indexer.is_some()).collect(),
        }
    }

    /// A single-sequence cache in f32 (the reference numerics).
    pub fn new_cache(&self) -> SeqCache<B> {
        self.cache(KvFormat::F32, self.kv_geometry())
    }

    /// A single-sequence cache of `geometry`'s layers in `format`.
    pub fn cache(&self, format: KvFormat, geometry: KvGeometry) -> SeqCache<B> {
        SeqCache::new(&self.backend, format, geometry).expect("an empty cache allocates nothing")
    }

    pub fn vocab_size(&self) -> usize {
        self.shape.vocab_size as usize
    }

    fn hidden_size(&self) -> usize {
        self.shape.hidden_size as usize
    }

    /// Token ids must index the embedding table.
    pub fn check_tokens(&self, tokens: &[u32]) -> Result<()> {
        match tokens.iter().find(|&&t| t as usize >= self.vocab_size()) {
            Some(t) => Err(Error::Usage(format!(
                "token id {t} is outside the vocabulary (model.vocab_size = {})",
                self.vocab_size()
            ))),
            None => Ok(()),
        }
    }

    /// Runs `tokens` after the cache's, appends them to it, and returns the final-normed
    /// hidden states [S, D] (the lm_head and MTP input).
    pub fn forward(&self, tokens: &[u32], cache: &mut SeqCache<B>, trace: Option<&mut Trace>) -> Result<Vec<f32>> {
        let mut step = cache.step(&self.backend, tokens)?;
        step.want_hidden = true;
        let out = self.step(&step, &mut cache.store, trace)?;
        cache.advance(tokens.len());
        Ok(out.hidden)
    }

    /// One forward over a step batch: every sequence's tokens at their own positions, KV
    /// written into `kv` (whose pages the batch's tables already hold). Logits for the rows
    /// the batch names; hidden states if it asks.
    pub fn step(&self, step: &StepBatch, kv: &mut B::KvStore, mut trace: Option<&mut Trace>) -> Result<StepOutput> {
        self.check_tokens(&step.tokens)?;
        let b = &self.backend;
        let batch = b.batch(step)?;
        let mut h = b.embed(&self.weights.embed, &batch)?;
        let mut selection: Option<B::Selection> = None;
        // The rows the step hands back logits or a token of, when that is all it hands back:
        // the last layer then runs whole for those rows only (`layer_outputs`), the others'
        // entries written. A prompt chunk's rows but its last need nothing more.
        let outputs = step.output_rows();
        let last = self.weights.layers.len().saturating_sub(1);
        let record = |trace: Option<&mut Trace>, i: usize, sel: &Option<B::Selection>, routing: &Option<B::Routing>| {
            if let Some(t) = trace {
                if let Some(s) = sel {
                    t.topk.insert(i, b.read_selection(s)?);
                }
                if let Some(r) = routing {
                    t.experts.insert(i, b.read_routing(r)?);
                }
            }
            Ok::<(), Error>(())
        };
        for (i, layer) in self.weights.layers.iter().enumerate() {
            if let Some(rows) = outputs.as_deref().filter(|_| i == last && layer.indexer.is_some()) {
                if let Some(t) = trace.as_deref_mut() {
                    t.whole_rows.insert(i, rows.to_vec());
                }
                let Some((out, sel, routing)) = self.layer_outputs(layer, i, &h, step, &batch, kv, rows)? else {
                    return Ok(StepOutput::default());
                };
                record(trace, i, &sel, &routing)?;
                let at = |wanted: &[usize]| -> Vec<usize> {
                    wanted.iter().map(|r| rows.binary_search(r).expect("an output row")).collect()
                };
                return self.head(&out, &at(&step.logits_rows), &at(&step.argmax_rows), false);
            }
            let (out, sel, routing) = self.layer(layer, i, &h, step, &batch, kv, selection.as_ref())?;
            h = out;
            record(trace.as_deref_mut(), i, &sel, &routing)?;
            if sel.is_some() {
                selection = sel;
            }
        }
        self.head(&h, &step.logits_rows, &step.argmax_rows, step.want_hidden)
    }

    /// The last layer's output h [N, D] through the final norm: logits of `logits_rows`, the
    /// greedy token of `argmax_rows`, every row's hidden state if `want_hidden`.
    fn head(
        &self,
        h: &B::Tensor,
        logits_rows: &[usize],
        argmax_rows: &[usize],
        want_hidden: bool,
    ) -> Result<StepOutput> {
        let b = &self.backend;
        let h = b.rms_norm(h, &self.weights.norm, self.shape.rms_norm_eps as f32)?;
        let logits = if logits_rows.is_empty() {
            Vec::new()
        } else {
            let rows = b.gather(&h, logits_rows)?;
            b.download(&b.linear(&rows, self.weights.lm_head(), self.act_quant)?)?
        };
        let argmax = if argmax_rows.is_empty() {
            Vec::new()
        } else {
            let rows = b.gather(&h, argmax_rows)?;
            b.argmax(&b.linear(&rows, self.weights.lm_head(), self.act_quant)?)?
        };
        let hidden = if want_hidden { b.download(&h)? } else { Vec::new() };
        Ok(StepOutput { logits, argmax, hidden })
    }

    /// lm_head over final-normed hidden states [n, D] (host rows) -> logits [n, V].
    pub fn lm_head(&self, hidden: &[f32]) -> Result<Vec<f32>> {
        let b = &self.backend;
        let x = b.upload(hidden.to_vec(), self.hidden_size())?;
        b.download(&b.linear(&x, self.weights.lm_head(), self.act_quant)?)
    }

    /// lm_head's greedy token for each final-normed hidden row [n, D] (host rows); only the
    /// tokens come back.
    pub fn lm_head_argmax(&self, hidden: &[f32]) -> Result<Vec<u32>> {
        let b = &self.backend;
        let x = b.upload(hidden.to_vec(), self.hidden_size())?;
        b.argmax(&b.linear(&x, self.weights.lm_head(), self.act_quant)?)
    }

    fn dims(&self) -> MlaDims {
        mla::dims(&self.shape)
    }

    /// A last layer (no layer after it reads its output: the MTP layer, the main model's last)
    /// that runs its own indexer, over h [N, D]: every row's KV entries written, its output
    /// [R, D] only for `rows` (ascending; None when there are none), with the selection and
    /// routing of those rows. A row's entries depend on its own input alone, and a row's
    /// output on the entries, never on another row's output, so the rows left out cost their
    /// entries only and the others get the bits the whole step would give.
    #[allow(clippy::too_many_arguments, clippy::type_complexity)]
    fn layer_outputs(
        &self,
        w: &LayerWeights<B>,
        kv_layer: usize,
        h: &B::Tensor,
        step: &StepBatch,
        batch: &B::Batch,
        kv: &mut B::KvStore,
        rows: &[usize],
    ) -> Result<Option<(B::Tensor, Option<B::Selection>, Option<B::Routing>)>> {
        // Without an indexer of its own the layer would need the selection of one before it.
        if w.indexer.is_none() {
            return Err(Error::Usage("a layer's outputs for some rows need the layer's own indexer".into()));
        }
        if rows.len() == step.len() {
            return self.layer(w, kv_layer, h, step, batch, kv, None).map(Some);
        }
        self.write_entries_only(w, kv_layer, h, batch, kv)?;
        if rows.is_empty() {
            return Ok(None);
        }
        let b = &self.backend;
        let sub = step.subset(rows);
        let (h_sub, sub_batch) = (b.gather(h, rows)?, b.batch(&sub)?);
        // The rows' own entries are written again, the same values.
        self.layer(w, kv_layer, &h_sub, &sub, &sub_batch, kv, None).map(Some)
    }

    /// A layer's KV entries (and indexer keys) for every row of h [N, D], as `layer` writes
    /// them, and nothing else.
    fn write_entries_only(
        &self,
        w: &LayerWeights<B>,
        kv_layer: usize,
        h: &B::Tensor,
        batch: &B::Batch,
        kv: &mut B::KvStore,
    ) -> Result<()> {
        let b = &self.backend;
        let x = b.rms_norm(h, &w.input_norm, self.shape.rms_norm_eps as f32)?;
        let mut of_x = vec![&w.attn.kv_a];
        of_x.extend(w.indexer.as_ref().map(|ix| &ix.wk));
        let mut ys = b.linears(&x, &of_x, self.act_quant)?.into_iter();
        let ckv = ys.next().expect("kv_a");
        mla::write_entries(b, &w.attn, &self.dims(), &self.inv_freq, &ckv, batch, kv, kv_layer)?;
        if let Some(ix) = &w.indexer {
            indexer::write_keys(b, ix, &self.inv_freq, &ys.next().expect("wk"), batch, kv, kv_layer)?;
        }
        Ok(())
    }

    /// One decoder layer over h [N, D], its KV in store layer `kv_layer`. Returns the new h,
    /// the selection it made (layers with an indexer; the others reuse `previous`), and the
    /// routing when it is an MoE layer.
    #[allow(clippy::too_many_arguments, clippy::type_complexity)]
    fn layer(
        &self,
        w: &LayerWeights<B>,
        kv_layer: usize,
        h: &B::Tensor,
        step: &StepBatch,
        batch: &B::Batch,
        kv: &mut B::KvStore,
        previous: Option<&B::Selection>,
    ) -> Result<(B::Tensor, Option<B::Selection>, Option<B::Routing>)> {
        let b = &self.backend;
        let m = &self.shape;
        let d = self.dims();
        let eps = m.rms_norm_eps as f32;
        let aq = self.act_quant;
        let x = b.rms_norm(h, &w.input_norm, eps)?;

        let scoring = projections::scoring(m.index_topk as usize, &step.positions);
        let p = projections::project(b, &w.attn, w.indexer.as_ref(), scoring, &x, aq)?;
        let mut q = p.q; // [n, H * (nope + rope)]
        b.rope(&mut q, batch, &self.inv_freq, d.heads, d.nope)?;
        // The step's entries go into the store before anyone attends.
        mla::write_entries(b, &w.attn, &d, &self.inv_freq, &p.ckv, batch, kv, kv_layer)?;
        let own = match (&w.indexer, &p.index_k) {
            (Some(ix), Some(k)) => {
                indexer::write_keys(b, ix, &self.inv_freq, k, batch, kv, kv_layer)?;
                Some(indexer::select(b, m, &self.inv_freq, p.index_scoring, batch, kv, kv_layer)?)
            }
            _ => None,
        };
        let all;
        let sel = match (&own, previous) {
            (Some(s), _) | (None, Some(s)) => s,
            (None, None) => {
                all = b.select_all(batch)?;
                &all
            }
        };
        let heads = mla::attend(b, &w.attn, &d, kv, kv_layer, batch, &q, sel, self.form)?;
        // h + attn (addition commutes exactly, so the residual can be added onto attn).
        let mut h_out = b.linear(&heads, &w.attn.o, aq)?;
        b.add(&mut h_out, h)?;

        let x = b.rms_norm(&h_out, &w.post_norm, eps)?;
        let (y, routing) = match &w.ffn {
            Ffn::Dense(mlp) => (moe::mlp(b, mlp, &x, aq)?, None),
            Ffn::Moe(block) => {
                let (y, r) = moe::moe(b, block, m, &x, aq)?;
                (y, Some(r))
            }
        };
        b.add(&mut h_out, &y)?;
        Ok((h_out, own, routing))
    }
}
