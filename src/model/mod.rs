//! The GLM-DSA forward on the CPU backend, in f32, from weights kept in their checkpoint
//! format. Embeddings; decoder layers (MLA attention over the indexer's selection, dense MLP
//! or MoE); final norm; lm_head; and the MTP layer that drafts the token after next. One
//! forward runs a batch of sequences of any lengths and positions over a paged KV pool.

pub mod cache;
pub mod indexer;
pub mod mla;
pub mod moe;
mod mtp;
pub mod weights;

use std::collections::BTreeMap;
use std::ops::Range;

use rayon::prelude::*;

pub use cache::SeqCache;
pub use indexer::Selection;
pub use mla::AttentionForm;
pub use moe::Route;

use crate::backend::cpu::{Rope, matmul, rms_norm_rows};
use crate::error::{Error, Result};
use crate::kv::{KvFormat, KvGeometry, KvPool, SeqKv};
use crate::plan::{ActivationQuant, ModelShape, Plan};
use crate::weights::Checkpoint;
use mla::KvView;
use weights::{Ffn, GlmWeights, LayerWeights};

/// Per-layer discrete choices of one forward, for checking against a reference.
#[derive(Debug, Clone, Default)]
pub struct Trace {
    /// Layer -> the selection of each token of the batch (full indexer layers only).
    pub topk: BTreeMap<usize, Selection>,
    /// Layer -> each token's routed experts (MoE layers only).
    pub experts: BTreeMap<usize, Vec<Route>>,
}

/// One sequence's part of a batch: its new tokens, which go at positions kv.len.., where
/// the pool already holds pages for them.
pub struct SeqInput<'a> {
    pub tokens: &'a [u32],
    pub kv: &'a SeqKv,
}

/// Where each token of a batch belongs.
struct BatchLayout<'a> {
    seqs: Vec<(&'a SeqKv, Range<usize>)>,
    /// [N] each token's position in its sequence.
    positions: Vec<usize>,
    /// [N] each token's sequence.
    owner: Vec<usize>,
}

impl<'a> BatchLayout<'a> {
    fn new(inputs: &'a [SeqInput<'a>]) -> BatchLayout<'a> {
        let (mut seqs, mut positions, mut owner) = (Vec::new(), Vec::new(), Vec::new());
        for (i, s) in inputs.iter().enumerate() {
            let start = positions.len();
            positions.extend(s.kv.len..s.kv.len + s.tokens.len());
            owner.extend(std::iter::repeat_n(i, s.tokens.len()));
            seqs.push((s.kv, start..positions.len()));
        }
        BatchLayout { seqs, positions, owner }
    }
}

pub struct Model {
    pub shape: ModelShape,
    pub weights: GlmWeights,
    rope: Rope,
    /// Quantize activations to MXFP4 before MXFP4 linears (W4A4).
    act_quant: bool,
    pub form: AttentionForm,
}

impl Model {
    /// Checks the checkpoint against the plan, then binds it. No copy of the weights is made.
    pub fn load(plan: &Plan, ckpt: &Checkpoint) -> Result<Model> {
        let weights = GlmWeights::load(plan, ckpt)?;
        let m = plan.model.clone();
        Ok(Model {
            rope: Rope::new(m.rope_theta, m.qk_rope_head_dim as usize),
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
    pub fn new_cache(&self) -> SeqCache {
        SeqCache::new(KvFormat::F32, self.kv_geometry())
    }

    pub fn vocab_size(&self) -> usize {
        self.shape.vocab_size as usize
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
    pub fn forward(&self, tokens: &[u32], cache: &mut SeqCache, trace: Option<&mut Trace>) -> Result<Vec<f32>> {
        self.check_tokens(tokens)?;
        let end = cache.kv.len + tokens.len();
        cache.pool.reserve(&mut cache.kv, end).expect("a growable pool always has pages");
        let h = self.forward_batch(&[SeqInput { tokens, kv: &cache.kv }], &mut cache.pool, trace)?;
        cache.kv.len = end;
        Ok(h)
    }

    /// One forward over a batch: every sequence's new tokens at their own positions, KV
    /// written into `pool`. Returns the final-normed hidden states [N, D], sequence by
    /// sequence. Callers advance each `kv.len` afterwards.
    pub fn forward_batch(
        &self,
        inputs: &[SeqInput],
        pool: &mut KvPool,
        mut trace: Option<&mut Trace>,
    ) -> Result<Vec<f32>> {
        for s in inputs {
            self.check_tokens(s.tokens)?;
        }
        let layout = BatchLayout::new(inputs);
        let tokens: Vec<u32> = inputs.iter().flat_map(|s| s.tokens.iter().copied()).collect();
        let mut h = self.embed(&tokens);
        let mut selection = Selection::default();
        for (i, layer) in self.weights.layers.iter().enumerate() {
            let (out, sel, routes) = self.layer(layer, i, &h, &layout, pool, &selection);
            h = out;
            if let Some(t) = trace.as_deref_mut() {
                if layer.indexer.is_some() {
                    t.topk.insert(i, sel.clone());
                }
                if let Some(r) = routes {
                    t.experts.insert(i, r);
                }
            }
            selection = sel;
        }
        rms_norm_rows(&mut h, &self.weights.norm, self.shape.rms_norm_eps as f32);
        Ok(h)
    }

    /// lm_head over final-normed hidden states [n, D] -> logits [n, V].
    pub fn logits(&self, hidden: &[f32]) -> Vec<f32> {
        let n = hidden.len() / self.shape.hidden_size as usize;
        matmul(hidden, n, &self.weights.lm_head, self.act_quant)
    }

    fn embed(&self, tokens: &[u32]) -> Vec<f32> {
        let d = self.shape.hidden_size as usize;
        let mut h = vec![0.0f32; tokens.len() * d];
        for (row, &t) in h.chunks_mut(d).zip(tokens) {
            self.weights.embed.row_into(t as usize, row);
        }
        h
    }

    /// One decoder layer over h [N, D] of a batch, its KV in `pool` layer `kv_layer`.
    /// Returns the new h, the selection each token attended with, and the routing when it is
    /// an MoE layer.
    fn layer(
        &self,
        w: &LayerWeights,
        kv_layer: usize,
        h: &[f32],
        layout: &BatchLayout,
        pool: &mut KvPool,
        previous: &Selection,
    ) -> (Vec<f32>, Selection, Option<Vec<Route>>) {
        let m = &self.shape;
        let n = layout.positions.len();
        let (d, r, dr) = (m.hidden_size as usize, m.kv_lora_rank as usize, m.qk_rope_head_dim as usize);
        let eps = m.rms_norm_eps as f32;
        let aq = self.act_quant;
        let mut x = h.to_vec();
        rms_norm_rows(&mut x, &w.input_norm, eps);

        // New tokens' entries go into the pool before anyone attends.
        let queries = mla::project(&w.attn, m, &self.rope, &x, &layout.positions, aq);
        for (t, (&pos, &owner)) in layout.positions.iter().zip(&layout.owner).enumerate() {
            let kv = layout.seqs[owner].0;
            pool.write_mla(
                kv,
                kv_layer,
                pos,
                &queries.latent[t * r..(t + 1) * r],
                &queries.k_rope[t * dr..(t + 1) * dr],
            );
        }
        if let Some(ix) = &w.indexer {
            let di = m.index_head_dim as usize;
            let keys = indexer::keys(ix, m, &self.rope, &x, &layout.positions, aq);
            for (t, (&pos, &owner)) in layout.positions.iter().zip(&layout.owner).enumerate() {
                pool.write_index(layout.seqs[owner].0, kv_layer, pos, &keys[t * di..(t + 1) * di]);
            }
        }

        // Each sequence attends over its own pages.
        let pool = &*pool;
        let hq = m.num_attention_heads as usize * m.qk_head_dim() as usize;
        let q_lora = m.q_lora_rank as usize;
        let per_seq = |(kv, range): &(&SeqKv, Range<usize>)| -> (Selection, Vec<f32>) {
            let positions = &layout.positions[range.clone()];
            let len = kv.len + range.len();
            let (latent, k_rope) = pool.gather_mla(kv, kv_layer, len);
            let selection = match &w.indexer {
                Some(ix) => {
                    let keys = pool.gather_index(kv, kv_layer, len);
                    let xs = &x[range.start * d..range.end * d];
                    let ql = &queries.q_lat[range.start * q_lora..range.end * q_lora];
                    indexer::select(ix, m, &self.rope, xs, ql, positions, &keys, aq)
                }
                None => Selection { rows: previous.rows.get(range.clone()).map(<[_]>::to_vec).unwrap_or_default() },
            };
            let view = KvView { latent: &latent, k_rope: &k_rope };
            let q = &queries.q[range.start * hq..range.end * hq];
            let heads = mla::attend(&w.attn, m, q, positions, &view, &selection, self.form);
            (selection, heads)
        };
        let parts: Vec<(Selection, Vec<f32>)> = if layout.seqs.len() > 1 {
            layout.seqs.par_iter().map(per_seq).collect()
        } else {
            layout.seqs.iter().map(per_seq).collect()
        };
        let mut selection = Selection::default();
        let mut heads = Vec::new();
        for (sel, hds) in parts {
            selection.rows.extend(sel.rows);
            heads.extend(hds);
        }
        let attn = matmul(&heads, n, &w.attn.o, aq);
        let mut h: Vec<f32> = h.iter().zip(&attn).map(|(a, b)| a + b).collect();

        let mut x = h.clone();
        rms_norm_rows(&mut x, &w.post_norm, eps);
        let (y, routes) = match &w.ffn {
            Ffn::Dense(mlp) => (moe::mlp(mlp, &x, n, aq), None),
            Ffn::Moe(block) => {
                let (y, r) = moe::moe(block, m, &x, n, aq);
                (y, Some(r))
            }
        };
        h.iter_mut().zip(&y).for_each(|(a, b)| *a += b);
        (h, selection, routes)
    }
}
