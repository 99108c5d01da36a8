//! The only file that knows GLM-DSA checkpoint tensor names (reference/glm-dsa-spec.md
//! section 2). Linears are named by module (`{module}.weight`, plus `{module}.weight_scale`
//! when MXFP4); vectors by their full tensor name.

use crate::plan::{IndexerType, LayerKind, MlpKind, ModelShape, ModuleClass};

pub const EMBED_TOKENS: &str = "model.embed_tokens";
pub const FINAL_NORM: &str = "model.norm.weight";
pub const LM_HEAD: &str = "lm_head";

/// The three projections of a SwiGLU MLP.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Proj {
    Gate,
    Up,
    Down,
}

impl Proj {
    pub const ALL: [Proj; 3] = [Proj::Gate, Proj::Up, Proj::Down];

    fn name(self) -> &'static str {
        match self {
            Proj::Gate => "gate_proj",
            Proj::Up => "up_proj",
            Proj::Down => "down_proj",
        }
    }
}

/// Names inside decoder layer `i` (`model.layers.{i}.`); MTP layers continue the numbering.
#[derive(Debug, Clone)]
pub struct LayerNames {
    prefix: String,
}

impl LayerNames {
    pub fn new(i: u64) -> LayerNames {
        LayerNames { prefix: format!("model.layers.{i}.") }
    }

    fn n(&self, rest: &str) -> String {
        format!("{}{rest}", self.prefix)
    }

    pub fn input_layernorm(&self) -> String {
        self.n("input_layernorm.weight")
    }
    pub fn post_attention_layernorm(&self) -> String {
        self.n("post_attention_layernorm.weight")
    }
    pub fn q_a_proj(&self) -> String {
        self.n("self_attn.q_a_proj")
    }
    pub fn q_a_layernorm(&self) -> String {
        self.n("self_attn.q_a_layernorm.weight")
    }
    pub fn q_b_proj(&self) -> String {
        self.n("self_attn.q_b_proj")
    }
    pub fn kv_a_proj_with_mqa(&self) -> String {
        self.n("self_attn.kv_a_proj_with_mqa")
    }
    pub fn kv_a_layernorm(&self) -> String {
        self.n("self_attn.kv_a_layernorm.weight")
    }
    pub fn kv_b_proj(&self) -> String {
        self.n("self_attn.kv_b_proj")
    }
    pub fn o_proj(&self) -> String {
        self.n("self_attn.o_proj")
    }
    pub fn indexer_wq_b(&self) -> String {
        self.n("self_attn.indexer.wq_b")
    }
    pub fn indexer_wk(&self) -> String {
        self.n("self_attn.indexer.wk")
    }
    pub fn indexer_k_norm_weight(&self) -> String {
        self.n("self_attn.indexer.k_norm.weight")
    }
    pub fn indexer_k_norm_bias(&self) -> String {
        self.n("self_attn.indexer.k_norm.bias")
    }
    pub fn indexer_weights_proj(&self) -> String {
        self.n("self_attn.indexer.weights_proj")
    }
    /// Dense MLP of the first layers.
    pub fn dense(&self, p: Proj) -> String {
        self.n(&format!("mlp.{}", p.name()))
    }
    pub fn router(&self) -> String {
        self.n("mlp.gate")
    }
    pub fn router_bias(&self) -> String {
        self.n("mlp.gate.e_score_correction_bias")
    }
    pub fn expert(&self, e: u64, p: Proj) -> String {
        self.n(&format!("mlp.experts.{e}.{}", p.name()))
    }
    pub fn shared_expert(&self, p: Proj) -> String {
        self.n(&format!("mlp.shared_experts.{}", p.name()))
    }
    pub fn mtp_enorm(&self) -> String {
        self.n("enorm.weight")
    }
    pub fn mtp_hnorm(&self) -> String {
        self.n("hnorm.weight")
    }
    pub fn mtp_eh_proj(&self) -> String {
        self.n("eh_proj")
    }
    pub fn mtp_shared_head_norm(&self) -> String {
        self.n("shared_head.norm.weight")
    }
}

/// A linear (or the embedding table) of shape [rows, cols].
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
        let n = LayerNames::new(i);
        let (d, h) = (m.hidden_size, m.num_attention_heads);
        self.vector(n.input_layernorm(), d);
        self.vector(n.post_attention_layernorm(), d);
        self.linear(n.q_a_proj(), m.q_lora_rank, d, C::Attention, mtp);
        self.vector(n.q_a_layernorm(), m.q_lora_rank);
        self.linear(n.q_b_proj(), h * m.qk_head_dim(), m.q_lora_rank, C::Attention, mtp);
        self.linear(n.kv_a_proj_with_mqa(), m.kv_lora_rank + m.qk_rope_head_dim, d, C::Attention, mtp);
        self.vector(n.kv_a_layernorm(), m.kv_lora_rank);
        self.linear(n.kv_b_proj(), h * (m.qk_nope_head_dim + m.v_head_dim), m.kv_lora_rank, C::Attention, mtp);
        self.linear(n.o_proj(), d, h * m.v_head_dim, C::Attention, mtp);

        if kind.indexer == IndexerType::Full {
            self.linear(n.indexer_wq_b(), m.index_n_heads * m.index_head_dim, m.q_lora_rank, C::Indexer, mtp);
            self.linear(n.indexer_wk(), m.index_head_dim, d, C::Indexer, mtp);
            self.vector(n.indexer_k_norm_weight(), m.index_head_dim);
            self.vector(n.indexer_k_norm_bias(), m.index_head_dim);
            self.linear(n.indexer_weights_proj(), m.index_n_heads, d, C::Indexer, mtp);
        }

        match kind.mlp {
            MlpKind::Dense => {
                let w = m.intermediate_size;
                for p in Proj::ALL {
                    let (r, c) = if p == Proj::Down { (d, w) } else { (w, d) };
                    self.linear(n.dense(p), r, c, C::DenseMlp, mtp);
                }
            }
            MlpKind::Moe => {
                let e = m.n_routed_experts;
                self.linear(n.router(), e, d, C::Router, mtp);
                self.vectors.push(Vector { name: n.router_bias(), len: e, f32_only: true });
                let w = m.moe_intermediate_size;
                for x in 0..e {
                    for p in Proj::ALL {
                        let (r, c) = if p == Proj::Down { (d, w) } else { (w, d) };
                        self.linear(n.expert(x, p), r, c, C::RoutedExperts, mtp);
                    }
                }
                let s = w * m.n_shared_experts;
                if s > 0 {
                    for p in Proj::ALL {
                        let (r, c) = if p == Proj::Down { (d, s) } else { (s, d) };
                        self.linear(n.shared_expert(p), r, c, C::SharedExperts, mtp);
                    }
                }
            }
        }
    }
}

/// The checkpoint tensors of a GLM-DSA model: the main stack, then the MTP layers, which
/// follow it as `model.layers.{num_hidden_layers + j}`.
pub fn tensor_names(m: &ModelShape) -> TensorNames {
    let mut t = TensorNames::default();
    let d = m.hidden_size;
    t.linear(EMBED_TOKENS.into(), m.vocab_size, d, ModuleClass::EmbedTokens, false);
    for (i, kind) in m.layers().into_iter().enumerate() {
        t.layer(m, i as u64, kind, false);
    }
    t.vector(FINAL_NORM.into(), d);
    if !m.tie_word_embeddings {
        t.linear(LM_HEAD.into(), m.vocab_size, d, ModuleClass::LmHead, false);
    }
    for j in 0..m.num_nextn_predict_layers {
        let i = m.num_hidden_layers + j;
        let n = LayerNames::new(i);
        t.vector(n.mtp_enorm(), d);
        t.vector(n.mtp_hnorm(), d);
        t.linear(n.mtp_eh_proj(), d, 2 * d, ModuleClass::EhProj, true);
        t.vector(n.mtp_shared_head_norm(), d);
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
