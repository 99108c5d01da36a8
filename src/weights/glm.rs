//! The only file that knows GLM-DSA checkpoint tensor names (reference/glm-dsa-spec.md
//! section 2). Everything else asks it.

use crate::plan::{IndexerType, LayerKind, MlpKind, ModelShape, ModuleClass};

/// A linear (or the embedding table): `{module}.weight` of shape [rows, cols], plus
/// `{module}.weight_scale` when stored as MXFP4.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Linear {
    pub module: String,
    pub rows: u64,
    pub cols: u64,
    pub class: ModuleClass,
    pub mtp: bool,
}

/// A norm weight, norm bias or router correction bias: one vector.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Vector {
    pub name: String,
    pub len: u64,
    /// The router's correction bias is f32 in every release; the rest follow the checkpoint.
    pub f32_only: bool,
}

/// Every tensor the model needs, by name.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TensorNames {
    pub linears: Vec<Linear>,
    pub vectors: Vec<Vector>,
}

impl TensorNames {
    fn linear(&mut self, module: String, rows: u64, cols: u64, class: ModuleClass, mtp: bool) {
        self.linears.push(Linear { module, rows, cols, class, mtp });
    }

    fn vector(&mut self, name: String, len: u64) {
        self.vectors.push(Vector { name, len, f32_only: false });
    }

    fn layer(&mut self, m: &ModelShape, i: u64, kind: LayerKind, mtp: bool) {
        use ModuleClass as C;
        let p = format!("model.layers.{i}.");
        let (d, h) = (m.hidden_size, m.num_attention_heads);
        self.vector(format!("{p}input_layernorm.weight"), d);
        self.vector(format!("{p}post_attention_layernorm.weight"), d);

        let a = format!("{p}self_attn.");
        self.linear(format!("{a}q_a_proj"), m.q_lora_rank, d, C::Attention, mtp);
        self.vector(format!("{a}q_a_layernorm.weight"), m.q_lora_rank);
        self.linear(format!("{a}q_b_proj"), h * m.qk_head_dim(), m.q_lora_rank, C::Attention, mtp);
        self.linear(format!("{a}kv_a_proj_with_mqa"), m.kv_lora_rank + m.qk_rope_head_dim, d, C::Attention, mtp);
        self.vector(format!("{a}kv_a_layernorm.weight"), m.kv_lora_rank);
        let kv_b_rows = h * (m.qk_nope_head_dim + m.v_head_dim);
        self.linear(format!("{a}kv_b_proj"), kv_b_rows, m.kv_lora_rank, C::Attention, mtp);
        self.linear(format!("{a}o_proj"), d, h * m.v_head_dim, C::Attention, mtp);

        if kind.indexer == IndexerType::Full {
            let x = format!("{a}indexer.");
            let q_rows = m.index_n_heads * m.index_head_dim;
            self.linear(format!("{x}wq_b"), q_rows, m.q_lora_rank, C::Indexer, mtp);
            self.linear(format!("{x}wk"), m.index_head_dim, d, C::Indexer, mtp);
            self.vector(format!("{x}k_norm.weight"), m.index_head_dim);
            self.vector(format!("{x}k_norm.bias"), m.index_head_dim);
            self.linear(format!("{x}weights_proj"), m.index_n_heads, d, C::Indexer, mtp);
        }

        let f = format!("{p}mlp.");
        match kind.mlp {
            MlpKind::Dense => {
                let w = m.intermediate_size;
                self.linear(format!("{f}gate_proj"), w, d, C::DenseMlp, mtp);
                self.linear(format!("{f}up_proj"), w, d, C::DenseMlp, mtp);
                self.linear(format!("{f}down_proj"), d, w, C::DenseMlp, mtp);
            }
            MlpKind::Moe => {
                let e = m.n_routed_experts;
                self.linear(format!("{f}gate"), e, d, C::Router, mtp);
                self.vectors.push(Vector { name: format!("{f}gate.e_score_correction_bias"), len: e, f32_only: true });
                let w = m.moe_intermediate_size;
                for x in 0..e {
                    self.linear(format!("{f}experts.{x}.gate_proj"), w, d, C::RoutedExperts, mtp);
                    self.linear(format!("{f}experts.{x}.up_proj"), w, d, C::RoutedExperts, mtp);
                    self.linear(format!("{f}experts.{x}.down_proj"), d, w, C::RoutedExperts, mtp);
                }
                let s = w * m.n_shared_experts;
                if s > 0 {
                    self.linear(format!("{f}shared_experts.gate_proj"), s, d, C::SharedExperts, mtp);
                    self.linear(format!("{f}shared_experts.up_proj"), s, d, C::SharedExperts, mtp);
                    self.linear(format!("{f}shared_experts.down_proj"), d, s, C::SharedExperts, mtp);
                }
            }
        }
    }
}

/// The checkpoint tensors of a GLM-DSA model: the main stack, then the MTP layers, which
/// follow it as `model.layers.{num_hidden_layers + j}`.
pub fn tensor_names(m: &ModelShape) -> TensorNames {
    use ModuleClass as C;
    let mut t = TensorNames::default();
    let d = m.hidden_size;
    t.linear("model.embed_tokens".into(), m.vocab_size, d, C::EmbedTokens, false);
    for (i, kind) in m.layers().into_iter().enumerate() {
        t.layer(m, i as u64, kind, false);
    }
    t.vector("model.norm.weight".into(), d);
    if !m.tie_word_embeddings {
        t.linear("lm_head".into(), m.vocab_size, d, C::LmHead, false);
    }
    for j in 0..m.num_nextn_predict_layers {
        let i = m.num_hidden_layers + j;
        let p = format!("model.layers.{i}.");
        t.vector(format!("{p}enorm.weight"), d);
        t.vector(format!("{p}hnorm.weight"), d);
        t.linear(format!("{p}eh_proj"), d, 2 * d, C::EhProj, true);
        t.vector(format!("{p}shared_head.norm.weight"), d);
        t.layer(m, i, m.mtp_layer(), true);
    }
    t
}

/// `{module}.weight` / `{module}.weight_scale`.
pub fn weight_name(module: &str) -> String {
    format!("{module}.weight")
}

pub fn scale_name(module: &str) -> String {
    format!("{module}.weight_scale")
}
