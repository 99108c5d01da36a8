//! The GLM-DSA forward on the CPU backend, in f32, from weights kept in their checkpoint
//! format. Embeddings; decoder layers (MLA attention over the indexer's selection, dense MLP
//! or MoE); final norm; lm_head; and the MTP layer that drafts the token after next.

pub mod cache;
pub mod indexer;
pub mod mla;
pub mod moe;
mod mtp;
pub mod weights;

use std::collections::BTreeMap;

pub use cache::SeqCache;
pub use indexer::Selection;
pub use mla::AttentionForm;
pub use moe::Route;

use crate::backend::cpu::{Rope, matmul, rms_norm_rows};
use crate::error::{Error, Result};
use crate::plan::{ActivationQuant, ModelShape, Plan};
use crate::weights::Checkpoint;
use weights::{Ffn, GlmWeights, LayerWeights};

/// Per-layer discrete choices of one forward, for checking against a reference.
#[derive(Debug, Clone, Default)]
pub struct Trace {
    /// Layer -> the selection of each query (full indexer layers only).
    pub topk: BTreeMap<usize, Selection>,
    /// Layer -> each token's routed experts (MoE layers only).
    pub experts: BTreeMap<usize, Vec<Route>>,
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

    pub fn new_cache(&self) -> SeqCache {
        SeqCache::new(self.shape.num_hidden_layers as usize)
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

    /// Runs `tokens` at the positions after the cache's, appends them to the cache and
    /// returns the final-normed hidden states [S, D] (the lm_head and MTP input).
    pub fn forward(&self, tokens: &[u32], cache: &mut SeqCache, mut trace: Option<&mut Trace>) -> Result<Vec<f32>> {
        self.check_tokens(tokens)?;
        let s = tokens.len();
        let start = cache.len();
        let positions: Vec<usize> = (start..start + s).collect();
        let mut h = self.embed(tokens);
        let mut selection = Selection::default();
        for (i, layer) in self.weights.layers.iter().enumerate() {
            let lc = &mut cache.layers[i];
            let (out, sel, routes) = self.layer(layer, &h, &positions, lc, &selection);
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
        cache.advance(s);
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

    /// One decoder layer over h [S, D]; returns the new h, the selection it attended with,
    /// and its routing when it is an MoE layer.
    fn layer(
        &self,
        w: &LayerWeights,
        h: &[f32],
        positions: &[usize],
        cache: &mut cache::LayerCache,
        previous: &Selection,
    ) -> (Vec<f32>, Selection, Option<Vec<Route>>) {
        let m = &self.shape;
        let s = positions.len();
        let eps = m.rms_norm_eps as f32;
        let aq = self.act_quant;
        let mut x = h.to_vec();
        rms_norm_rows(&mut x, &w.input_norm, eps);
        let queries = mla::project(&w.attn, m, &self.rope, &x, positions, cache, aq);
        let selection = match &w.indexer {
            Some(ix) => indexer::select(ix, m, &self.rope, &x, &queries.q_lat, positions, &mut cache.index_keys, aq),
            None => previous.clone(),
        };
        let attn = mla::attend(&w.attn, m, &queries, positions, cache, &selection, self.form, aq);
        let mut h: Vec<f32> = h.iter().zip(&attn).map(|(a, b)| a + b).collect();

        let mut x = h.clone();
        rms_norm_rows(&mut x, &w.post_norm, eps);
        let (y, routes) = match &w.ffn {
            Ffn::Dense(mlp) => (moe::mlp(mlp, &x, s, aq), None),
            Ffn::Moe(block) => {
                let (y, r) = moe::moe(block, m, &x, s, aq);
                (y, Some(r))
            }
        };
        h.iter_mut().zip(&y).for_each(|(a, b)| *a += b);
        (h, selection, routes)
    }
}
