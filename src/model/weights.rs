//! The model's weights, bound to their tensors in a verified checkpoint.

use crate::error::{Error, Result};
use crate::plan::{IndexerType, LayerKind, MlpKind, Plan};
use crate::weights::glm::{EMBED_TOKENS, FINAL_NORM, LM_HEAD, LayerNames, Proj};
use crate::weights::{Checkpoint, Linear, load_vector, render_weight_problems, verify};

pub struct AttnWeights {
    pub q_a: Linear,         // [q_lora, D]
    pub q_a_norm: Vec<f32>,  // [q_lora]
    pub q_b: Linear,         // [H * (nope + rope), q_lora]
    pub kv_a: Linear,        // [kv_lora + rope, D]
    pub kv_a_norm: Vec<f32>, // [kv_lora]
    pub kv_b: Linear,        // [H * (nope + v), kv_lora]
    pub o: Linear,           // [D, H * v]
}

pub struct IndexerWeights {
    pub wq_b: Linear,         // [Hi * Di, q_lora]
    pub wk: Linear,           // [Di, D]
    pub k_norm_w: Vec<f32>,   // [Di]
    pub k_norm_b: Vec<f32>,   // [Di]
    pub weights_proj: Linear, // [Hi, D]
}

/// A SwiGLU MLP: down(silu(gate x) * up x).
pub struct MlpWeights {
    pub gate: Linear, // [W, D]
    pub up: Linear,   // [W, D]
    pub down: Linear, // [D, W]
}

pub struct MoeWeights {
    /// Router weight in f32 [E, D]: the router always runs in fp32.
    pub router: Vec<f32>,
    pub bias: Vec<f32>, // [E] correction bias, used only to choose
    pub experts: Vec<MlpWeights>,
    pub shared: Option<MlpWeights>,
}

pub enum Ffn {
    Dense(MlpWeights),
    Moe(MoeWeights),
}

pub struct LayerWeights {
    pub kind: LayerKind,
    pub input_norm: Vec<f32>, // [D]
    pub post_norm: Vec<f32>,  // [D]
    pub attn: AttnWeights,
    pub indexer: Option<IndexerWeights>,
    pub ffn: Ffn,
}

pub struct MtpWeights {
    pub enorm: Vec<f32>,     // [D]
    pub hnorm: Vec<f32>,     // [D]
    pub eh_proj: Linear,     // [D, 2D]: embedding half first
    pub head_norm: Vec<f32>, // [D]
    pub layer: LayerWeights,
}

pub struct GlmWeights {
    pub embed: Linear, // [V, D]
    pub layers: Vec<LayerWeights>,
    pub norm: Vec<f32>,  // [D]
    pub lm_head: Linear, // [V, D]
    pub mtp: Vec<MtpWeights>,
}

impl GlmWeights {
    /// Verifies the checkpoint against the plan (every problem at once), then binds the
    /// tensors. Nothing is computed before the check passes.
    pub fn load(plan: &Plan, ckpt: &Checkpoint) -> Result<GlmWeights> {
        let problems = verify(plan, ckpt);
        if !problems.is_empty() {
            return Err(Error::Checkpoint { path: ckpt.dir.clone(), message: render_weight_problems(&problems) });
        }
        let m = &plan.model;
        let b = Binder { ckpt, plan };
        let layers = m.layers().into_iter().enumerate().map(|(i, kind)| b.layer(i as u64, kind)).collect();
        let embed = b.linear(EMBED_TOKENS, m.vocab_size, m.hidden_size);
        let lm_head =
            if m.tie_word_embeddings { embed.clone() } else { b.linear(LM_HEAD, m.vocab_size, m.hidden_size) };
        let mtp = (0..m.num_nextn_predict_layers)
            .map(|j| {
                let i = m.num_hidden_layers + j;
                let n = LayerNames::new(i);
                MtpWeights {
                    enorm: b.vector(&n.mtp_enorm()),
                    hnorm: b.vector(&n.mtp_hnorm()),
                    eh_proj: b.linear(&n.mtp_eh_proj(), m.hidden_size, 2 * m.hidden_size),
                    head_norm: b.vector(&n.mtp_shared_head_norm()),
                    layer: b.layer(i, m.mtp_layer()),
                }
            })
            .collect();
        Ok(GlmWeights { embed, layers, norm: b.vector(FINAL_NORM), lm_head, mtp })
    }
}

/// Looks tensors up after verification, which guarantees each exists with its shape.
struct Binder<'a> {
    ckpt: &'a Checkpoint,
    plan: &'a Plan,
}

impl Binder<'_> {
    fn linear(&self, module: &str, rows: u64, cols: u64) -> Linear {
        Linear::load(self.ckpt, module, rows, cols).unwrap_or_else(|| panic!("verified tensor {module} vanished"))
    }

    fn vector(&self, name: &str) -> Vec<f32> {
        load_vector(self.ckpt, name).unwrap_or_else(|| panic!("verified tensor {name} vanished"))
    }

    fn mlp(&self, name: impl Fn(Proj) -> String, width: u64) -> MlpWeights {
        let d = self.plan.model.hidden_size;
        MlpWeights {
            gate: self.linear(&name(Proj::Gate), width, d),
            up: self.linear(&name(Proj::Up), width, d),
            down: self.linear(&name(Proj::Down), d, width),
        }
    }

    fn layer(&self, i: u64, kind: LayerKind) -> LayerWeights {
        let m = &self.plan.model;
        let n = LayerNames::new(i);
        let (d, h) = (m.hidden_size, m.num_attention_heads);
        let attn = AttnWeights {
            q_a: self.linear(&n.q_a_proj(), m.q_lora_rank, d),
            q_a_norm: self.vector(&n.q_a_layernorm()),
            q_b: self.linear(&n.q_b_proj(), h * m.qk_head_dim(), m.q_lora_rank),
            kv_a: self.linear(&n.kv_a_proj_with_mqa(), m.kv_lora_rank + m.qk_rope_head_dim, d),
            kv_a_norm: self.vector(&n.kv_a_layernorm()),
            kv_b: self.linear(&n.kv_b_proj(), h * (m.qk_nope_head_dim + m.v_head_dim), m.kv_lora_rank),
            o: self.linear(&n.o_proj(), d, h * m.v_head_dim),
        };
        let indexer = (kind.indexer == IndexerType::Full).then(|| IndexerWeights {
            wq_b: self.linear(&n.indexer_wq_b(), m.index_n_heads * m.index_head_dim, m.q_lora_rank),
            wk: self.linear(&n.indexer_wk(), m.index_head_dim, d),
            k_norm_w: self.vector(&n.indexer_k_norm_weight()),
            k_norm_b: self.vector(&n.indexer_k_norm_bias()),
            weights_proj: self.linear(&n.indexer_weights_proj(), m.index_n_heads, d),
        });
        let ffn = match kind.mlp {
            MlpKind::Dense => Ffn::Dense(self.mlp(|p| n.dense(p), m.intermediate_size)),
            MlpKind::Moe => Ffn::Moe(MoeWeights {
                router: self.linear(&n.router(), m.n_routed_experts, d).to_f32(),
                bias: self.vector(&n.router_bias()),
                experts: (0..m.n_routed_experts)
                    .map(|e| self.mlp(|p| n.expert(e, p), m.moe_intermediate_size))
                    .collect(),
                shared: (m.n_shared_experts > 0)
                    .then(|| self.mlp(|p| n.shared_expert(p), m.moe_intermediate_size * m.n_shared_experts)),
            }),
        };
        LayerWeights {
            kind,
            input_norm: self.vector(&n.input_layernorm()),
            post_norm: self.vector(&n.post_attention_layernorm()),
            attn,
            indexer,
            ffn,
        }
    }
}
