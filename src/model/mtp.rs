//! The MTP layer (reference/glm-dsa-spec.md 3.11): from the main model's final-normed hidden
//! state h_i and the next token t_{i+1}, draft logits for t_{i+2}.
//!
//! Input variant: z = eh_proj(concat[enorm(embed(t_{i+1})), hnorm(h_i)]), embedding half first,
//! with h_i the output of `model.norm` (what lm_head sees), as sglang and vLLM feed it and as
//! tools/train_demo.py trains it. The embedding is not zeroed at position 0 (vLLM does; sglang
//! does not). Chained drafts feed the MTP output back as the next h; that choice lives with
//! the speculative decoder.

use super::cache::SeqCache;
use super::{BatchLayout, Model, Selection, SeqInput};
use crate::backend::cpu::{matmul, rms_norm_rows};
use crate::error::{Error, Result};
use crate::kv::{KvFormat, KvGeometry, KvPool};

impl Model {
    /// What an MTP layer keeps per token (it always runs its own indexer).
    pub fn mtp_kv_geometry(&self) -> KvGeometry {
        KvGeometry { indexed: vec![true], ..self.kv_geometry() }
    }

    /// The main layers followed by the MTP layers, for a pool that holds both: the MTP
    /// entries then share the main page tables, prefix cache and rollback.
    pub fn kv_geometry_with_mtp(&self) -> KvGeometry {
        let mut g = self.kv_geometry();
        g.indexed.extend(std::iter::repeat_n(true, self.weights.mtp.len()));
        g
    }

    /// The pool layer of MTP layer `j` in a `kv_geometry_with_mtp` pool.
    pub fn mtp_kv_layer(&self, j: usize) -> usize {
        self.weights.layers.len() + j
    }

    /// The KV cache of one MTP layer, in f32.
    pub fn new_mtp_cache(&self) -> SeqCache {
        SeqCache::new(KvFormat::F32, self.mtp_kv_geometry())
    }

    /// Runs MTP layer `j` on S (hidden [S, D], next token) pairs at the positions after its
    /// cache's (`cache` from `new_mtp_cache`, one per MTP layer). Returns the layer's
    /// final-normed output [S, D] (after `shared_head.norm`); its `logits` are the drafts.
    pub fn mtp_forward(&self, j: usize, hidden: &[f32], next_tokens: &[u32], cache: &mut SeqCache) -> Result<Vec<f32>> {
        let end = cache.kv.len + next_tokens.len();
        cache.pool.reserve(&mut cache.kv, end).expect("a growable pool always has pages");
        let out =
            self.mtp_forward_batch(j, &[SeqInput { tokens: next_tokens, kv: &cache.kv }], hidden, &mut cache.pool, 0)?;
        cache.kv.len = end;
        Ok(out)
    }

    /// MTP layer `j` over a batch: each input's `tokens` are the next tokens t_{i+1} paired
    /// with `hidden` rows h_i (aligned with all tokens of the batch), at positions kv.len..,
    /// its KV in pool layer `kv_layer`, whose pages are already reserved. Returns the
    /// final-normed outputs [N, D].
    pub fn mtp_forward_batch(
        &self,
        j: usize,
        inputs: &[SeqInput],
        hidden: &[f32],
        pool: &mut KvPool,
        kv_layer: usize,
    ) -> Result<Vec<f32>> {
        let w = self.weights.mtp.get(j).ok_or_else(|| {
            Error::Usage(format!("the model has {} MTP layer(s), not layer {j}", self.weights.mtp.len()))
        })?;
        let d = self.shape.hidden_size as usize;
        let tokens: Vec<u32> = inputs.iter().flat_map(|s| s.tokens.iter().copied()).collect();
        self.check_tokens(&tokens)?;
        let s = tokens.len();
        if hidden.len() != s * d {
            return Err(Error::Usage(format!("MTP input: {} hidden rows for {s} tokens", hidden.len() / d)));
        }
        let eps = self.shape.rms_norm_eps as f32;
        let mut e = self.embed(&tokens);
        rms_norm_rows(&mut e, &w.enorm, eps);
        let mut hn = hidden.to_vec();
        rms_norm_rows(&mut hn, &w.hnorm, eps);
        let cat: Vec<f32> = e.chunks(d).zip(hn.chunks(d)).flat_map(|(a, b)| a.iter().chain(b).copied()).collect();
        let z = matmul(&cat, s, &w.eh_proj, self.act_quant);
        let layout = BatchLayout::new(inputs);
        let (mut out, _, _) = self.layer(&w.layer, kv_layer, &z, &layout, pool, &Selection::default());
        rms_norm_rows(&mut out, &w.head_norm, eps);
        Ok(out)
    }
}
