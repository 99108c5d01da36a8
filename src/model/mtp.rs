//! The MTP layer (the GLM-DSA spec's section 3.11): from the main model's final-normed hidden
//! state h_i and the next token t_{i+1}, draft logits for t_{i+2}.
//!
//! Input variant: z = eh_proj(concat[enorm(embed(t_{i+1})), hnorm(h_i)]), embedding half first,
//! with h_i the output of `model.norm` (what lm_head sees), as sglang and vLLM feed it and as
//! tools/train_demo.py trains it. The embedding is not zeroed at position 0 (vLLM does; sglang
//! does not). Chained drafts feed the MTP output back as the next h; that choice lives with
//! the speculative decoder.

use super::cache::SeqCache;
use super::{Model, StepBatch};
use crate::backend::Backend;
use crate::error::{Error, Result};
use crate::kv::{KvFormat, KvGeometry};

impl<B: Backend> Model<B> {
    /// What an MTP layer keeps per token (it always runs its own indexer).
    pub fn mtp_kv_geometry(&self) -> KvGeometry {
        KvGeometry { indexed: vec![true], ..self.kv_geometry() }
    }

    /// The main layers followed by the MTP layers, for a store that holds both: the MTP
    /// entries then share the main page tables, prefix cache and rollback.
    pub fn kv_geometry_with_mtp(&self) -> KvGeometry {
        let mut g = self.kv_geometry();
        g.indexed.extend(std::iter::repeat_n(true, self.weights.mtp.len()));
        g
    }

    /// The store layer of MTP layer `j` in a `kv_geometry_with_mtp` store.
    pub fn mtp_kv_layer(&self, j: usize) -> usize {
        self.weights.layers.len() + j
    }

    /// The KV cache of one MTP layer, in f32.
    pub fn new_mtp_cache(&self) -> SeqCache<B> {
        self.cache(KvFormat::F32, self.mtp_kv_geometry())
    }

    /// Runs MTP layer `j` on S (hidden [S, D], next token) pairs at the positions after its
    /// cache's (`cache` from `new_mtp_cache`, one per MTP layer). Returns the layer's
    /// final-normed output [S, D] (after `shared_head.norm`); its `lm_head` is the drafts'.
    pub fn mtp_forward(
        &self,
        j: usize,
        hidden: &[f32],
        next_tokens: &[u32],
        cache: &mut SeqCache<B>,
    ) -> Result<Vec<f32>> {
        let step = cache.step(&self.backend, next_tokens)?;
        let every: Vec<usize> = (0..step.len()).collect();
        let out = self.mtp_step(j, &step, hidden, &mut cache.store, 0, &every)?;
        cache.advance(next_tokens.len());
        Ok(out)
    }

    /// MTP layer `j` over a step: the batch's tokens are the next tokens t_{i+1}, paired with
    /// `hidden` rows h_i [N, D], their KV in store layer `kv_layer`. Every row's entries are
    /// written; returns the final-normed outputs of `outputs` (ascending rows) [R, D], the
    /// rows a draft is made from. The layer is the last one its input goes through, so the
    /// other rows' attention and experts would feed nothing: they are not run.
    pub fn mtp_step(
        &self,
        j: usize,
        step: &StepBatch,
        hidden: &[f32],
        kv: &mut B::KvStore,
        kv_layer: usize,
        outputs: &[usize],
    ) -> Result<Vec<f32>> {
        let w = self.weights.mtp.get(j).ok_or_else(|| {
            Error::Usage(format!("the model has {} MTP layer(s), not layer {j}", self.weights.mtp.len()))
        })?;
        self.check_tokens(&step.tokens)?;
        let d = self.hidden_size();
        if hidden.len() != step.len() * d {
            return Err(Error::Usage(format!("MTP input: {} hidden rows for {} tokens", hidden.len() / d, step.len())));
        }
        let b = &self.backend;
        let eps = self.shape.rms_norm_eps as f32;
        let batch = b.batch(step)?;
        let e = b.rms_norm(&b.embed(&self.weights.embed, &batch)?, &w.enorm, eps)?;
        let hn = b.rms_norm(&b.upload(hidden.to_vec(), d)?, &w.hnorm, eps)?;
        let z = b.linear(&b.concat(&e, &hn)?, &w.eh_proj, self.act_quant)?;
        if let Some(&r) = outputs.iter().find(|&&r| r >= step.len()) {
            return Err(Error::Usage(format!("MTP output row {r} of a step of {} tokens", step.len())));
        }
        if outputs.windows(2).any(|p| p[0] >= p[1]) {
            return Err(Error::Usage(format!("MTP output rows {outputs:?} are not ascending")));
        }
        let Some((out, _, _)) = self.layer_outputs(&w.layer, kv_layer, &z, step, &batch, kv, outputs)? else {
            return Ok(Vec::new());
        };
        b.download(&b.rms_norm(&out, &w.head_norm, eps)?)
    }
}
