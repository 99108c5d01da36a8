//! The model's shapes, with the key names of HF's config.json, and the sizes derived from them.

use serde::{Deserialize, Serialize};

/// Every shape of a `GlmMoeDsaForCausalLM` (the GLM-DSA spec's section 1).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ModelShape {
    pub architecture: String,
    pub vocab_size: u64,
    pub hidden_size: u64,
    /// Decoder layers, not counting the MTP layers that follow them.
    pub num_hidden_layers: u64,
    /// The first layers use a dense MLP; the rest are MoE.
    pub first_k_dense_replace: u64,
    /// Dense MLP width.
    pub intermediate_size: u64,
    /// Width of each routed expert and of each shared expert.
    pub moe_intermediate_size: u64,
    pub num_attention_heads: u64,
    pub q_lora_rank: u64,
    pub kv_lora_rank: u64,
    pub qk_nope_head_dim: u64,
    pub qk_rope_head_dim: u64,
    pub v_head_dim: u64,
    pub index_n_heads: u64,
    pub index_head_dim: u64,
    pub index_topk: u64,
    /// IndexShare period: layer i runs the indexer iff max(i - offset + 1, 0) % freq == 0.
    pub index_topk_freq: u64,
    pub index_skip_topk_offset: u64,
    /// Explicit per-layer schedule; when present it wins over freq/offset, as in HF.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub indexer_types: Option<Vec<IndexerType>>,
    pub n_routed_experts: u64,
    pub num_experts_per_tok: u64,
    pub n_shared_experts: u64,
    pub n_group: u64,
    pub topk_group: u64,
    pub norm_topk_prob: bool,
    pub routed_scaling_factor: f64,
    /// MTP layers after the decoder stack (GLM-5.x: 1).
    pub num_nextn_predict_layers: u64,
    pub rope_theta: f64,
    pub rms_norm_eps: f64,
    /// Context length: prompt plus output never exceeds it.
    pub max_position_embeddings: u64,
    pub tie_word_embeddings: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum IndexerType {
    /// Runs the DSA indexer and keeps indexer keys.
    Full,
    /// Reuses the top-k set of the closest earlier full layer (IndexShare).
    Shared,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MlpKind {
    Dense,
    Moe,
}

/// What one decoder layer contains.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LayerKind {
    pub mlp: MlpKind,
    pub indexer: IndexerType,
}

impl ModelShape {
    /// Per-head query/key width: nope + rope.
    pub fn qk_head_dim(&self) -> u64 {
        self.qk_nope_head_dim + self.qk_rope_head_dim
    }

    /// Whether main layer `i` runs the indexer (HF `GlmMoeDsaConfig.__post_init__` order:
    /// explicit list, else the freq/offset formula).
    pub fn indexer_type(&self, i: u64) -> IndexerType {
        if let Some(list) = &self.indexer_types
            && let Some(t) = list.get(i as usize)
        {
            return *t;
        }
        let freq = self.index_topk_freq.max(1);
        let k = (i + 1).saturating_sub(self.index_skip_topk_offset);
        if k.is_multiple_of(freq) { IndexerType::Full } else { IndexerType::Shared }
    }

    /// The main decoder layers, in order (MTP layers excluded).
    pub fn layers(&self) -> Vec<LayerKind> {
        (0..self.num_hidden_layers)
            .map(|i| LayerKind {
                mlp: if i < self.first_k_dense_replace { MlpKind::Dense } else { MlpKind::Moe },
                indexer: self.indexer_type(i),
            })
            .collect()
    }

    pub fn num_dense_layers(&self) -> u64 {
        self.first_k_dense_replace.min(self.num_hidden_layers)
    }

    pub fn num_moe_layers(&self) -> u64 {
        self.num_hidden_layers - self.num_dense_layers()
    }

    pub fn num_full_indexer_layers(&self) -> u64 {
        self.layers().iter().filter(|l| l.indexer == IndexerType::Full).count() as u64
    }

    /// The MTP layer is a full MoE decoder layer with its own indexer: it drafts from a
    /// stack of its own, with no earlier layer to share a selection from.
    pub fn mtp_layer(&self) -> LayerKind {
        LayerKind { mlp: MlpKind::Moe, indexer: IndexerType::Full }
    }

    /// The schedule written as a string of F and S, one letter per main layer.
    pub fn indexer_pattern(&self) -> String {
        self.layers().iter().map(|l| if l.indexer == IndexerType::Full { 'F' } else { 'S' }).collect()
    }
}
