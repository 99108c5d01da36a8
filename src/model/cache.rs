//! One sequence's KV cache: what each layer keeps per token (reference/glm-dsa-spec.md 3.4).

/// Per layer: the normalized MLA latent, the roped shared rope key, and on layers that run
/// the indexer, the roped indexer key. Token t's entries are row t.
#[derive(Debug, Clone, Default)]
pub struct LayerCache {
    pub latent: Vec<f32>,     // [T, kv_lora_rank]
    pub k_rope: Vec<f32>,     // [T, qk_rope_head_dim]
    pub index_keys: Vec<f32>, // [T, index_head_dim] (empty on shared layers)
}

#[derive(Debug, Clone)]
pub struct SeqCache {
    pub layers: Vec<LayerCache>,
    len: usize,
}

impl SeqCache {
    pub fn new(layers: usize) -> SeqCache {
        SeqCache { layers: vec![LayerCache::default(); layers], len: 0 }
    }

    /// Tokens cached; the next token's position.
    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Called once every layer has appended `n` tokens.
    pub(crate) fn advance(&mut self, n: usize) {
        self.len += n;
    }

    /// Drops every token from `len` on (speculative rollback).
    pub fn truncate(&mut self, len: usize, kv_lora_rank: usize, rope: usize, index_dim: usize) {
        if len >= self.len {
            return;
        }
        for l in &mut self.layers {
            l.latent.truncate(len * kv_lora_rank);
            l.k_rope.truncate(len * rope);
            if !l.index_keys.is_empty() {
                l.index_keys.truncate(len * index_dim);
            }
        }
        self.len = len;
    }
}
