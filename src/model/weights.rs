//! The model's weights on a backend, bound to their tensors in a verified checkpoint and
//! uploaded once.

use crate::backend::{Backend, MlpLinears};
use crate::error::{Error, Result};
use crate::plan::{IndexerType, LayerKind, MlpKind, Plan};
use crate::weights::glm::{EMBED_TOKENS, FINAL_NORM, LM_HEAD, LayerNames, Proj};
use crate::weights::{Checkpoint, Linear, load_vector, render_weight_problems, verify};

pub struct AttnWeights<B: Backend> {
    pub q_a: B::Weight,       // [q_lora, D]
    pub q_a_norm: B::Vector,  // [q_lora]
    pub q_b: B::Weight,       // [H * (nope + rope), q_lora]
    pub kv_a: B::Weight,      // [kv_lora + rope, D]
    pub kv_a_norm: B::Vector, // [kv_lora]
    pub kv_b: B::Weight,      // [H * (nope + v), kv_lora]
    pub o: B::Weight,         // [D, H * v]
}

pub struct IndexerWeights<B: Backend> {
    pub wq_b: B::Weight,         // [Hi * Di, q_lora]
    pub wk: B::Weight,           // [Di, D]
    pub k_norm_w: B::Vector,     // [Di]
    pub k_norm_b: B::Vector,     // [Di]
    pub weights_proj: B::Weight, // [Hi, D]
}

/// A SwiGLU MLP: down(silu(gate x) * up x).
pub struct Mlp<B: Backend> {
    pub gate: B::Weight, // [W, D]
    pub up: B::Weight,   // [W, D]
    pub down: B::Weight, // [D, W]
}

pub struct MoeWeights<B: Backend> {
    /// Router weight in f32 [E, D]: the router always runs in fp32.
    pub router: B::Vector,
    pub bias: B::Vector, // [E] correction bias, used only to choose
    pub experts: B::Experts,
    pub shared: Option<Mlp<B>>,
}

pub enum Ffn<B: Backend> {
    Dense(Mlp<B>),
    Moe(MoeWeights<B>),
}

pub struct LayerWeights<B: Backend> {
    pub kind: LayerKind,
    pub input_norm: B::Vector, // [D]
    pub post_norm: B::Vector,  // [D]
    pub attn: AttnWeights<B>,
    pub indexer: Option<IndexerWeights<B>>,
    pub ffn: Ffn<B>,
}

pub struct MtpWeights<B: Backend> {
    pub enorm: B::Vector,     // [D]
    pub hnorm: B::Vector,     // [D]
    pub eh_proj: B::Weight,   // [D, 2D]: embedding half first
    pub head_norm: B::Vector, // [D]
    pub layer: LayerWeights<B>,
}

pub struct GlmWeights<B: Backend> {
    pub embed: B::Weight, // [V, D]
    pub layers: Vec<LayerWeights<B>>,
    pub norm: B::Vector, // [D]
    /// [V, D]; None when tied to the embedding.
    pub lm_head: Option<B::Weight>,
    pub mtp: Vec<MtpWeights<B>>,
}

impl<B: Backend> GlmWeights<B> {
    /// Verifies the checkpoint against the plan (every problem at once), then binds the
    /// tensors and uploads them. Nothing is computed before the check passes.
    pub fn load(backend: &B, plan: &Plan, ckpt: &Checkpoint) -> Result<GlmWeights<B>> {
        let problems = verify(plan, ckpt);
        if !problems.is_empty() {
            return Err(Error::Checkpoint { path: ckpt.dir.clone(), message: render_weight_problems(&problems) });
        }
        let m = &plan.model;
        let b = Binder { ckpt, plan, backend };
        let layers =
            m.layers().into_iter().enumerate().map(|(i, kind)| b.layer(i as u64, kind)).collect::<Result<_>>()?;
        let embed = b.weight(EMBED_TOKENS, m.vocab_size, m.hidden_size)?;
        let lm_head =
            if m.tie_word_embeddings { None } else { Some(b.weight(LM_HEAD, m.vocab_size, m.hidden_size)?) };
        let mtp = (0..m.num_nextn_predict_layers)
            .map(|j| {
                let i = m.num_hidden_layers + j;
                let n = LayerNames::new(i);
                Ok(MtpWeights {
                    enorm: b.vector(&n.mtp_enorm())?,
                    hnorm: b.vector(&n.mtp_hnorm())?,
                    eh_proj: b.weight(&n.mtp_eh_proj(), m.hidden_size, 2 * m.hidden_size)?,
                    head_norm: b.vector(&n.mtp_shared_head_norm())?,
                    layer: b.layer(i, m.mtp_layer())?,
                })
            })
            .collect::<Result<_>>()?;
        Ok(GlmWeights { embed, layers, norm: b.vector(FINAL_NORM)?, lm_head, mtp })
    }

    pub fn lm_head(&self) -> &B::Weight {
        self.lm_head.as_ref().unwrap_or(&self.embed)
    }
}

/// Looks tensors up after verification, which guarantees each exists with its shape.
struct Binder<'a, B: Backend> {
    ckpt: &'a Checkpoint,
    plan: &'a Plan,
    backend: &'a B,
}

impl<B: Backend> Binder<'_, B> {
    fn linear(&self, module: &str, rows: u64, cols: u64) -> Linear {
        Linear::load(self.ckpt, module, rows, cols).unwrap_or_else(|| panic!("verified tensor {module} vanished"))
    }

    fn weight(&self, module: &str, rows: u64, cols: u64) -> Result<B::Weight> {
        self.backend.weight(self.linear(module, rows, cols))
    }

    fn host_vector(&self, name: &str) -> Vec<f32> {
        load_vector(self.ckpt, name).unwrap_or_else(|| panic!("verified tensor {name} vanished"))
    }

    fn vector(&self, name: &str) -> Result<B::Vector> {
        self.backend.vector(self.host_vector(name))
    }

    fn mlp_linears(&self, name: impl Fn(Proj) -> String, width: u64) -> MlpLinears {
        let d = self.plan.model.hidden_size;
        MlpLinears {
            gate: self.linear(&name(Proj::Gate), width, d),
            up: self.linear(&name(Proj::Up), width, d),
            down: self.linear(&name(Proj::Down), d, width),
        }
    }

    fn mlp(&self, name: impl Fn(Proj) -> String, width: u64) -> Result<Mlp<B>> {
        let l = self.mlp_linears(name, width);
        Ok(Mlp {
            gate: self.backend.weight(l.gate)?,
            up: self.backend.weight(l.up)?,
            down: self.backend.weight(l.down)?,
        })
    }

    fn layer(&self, i: u64, kind: LayerKind) -> Result<LayerWeights<B>> {
        let m = &self.plan.model;
        let n = LayerNames::new(i);
        let (d, h) = (m.hidden_size, m.num_attention_heads);
        let attn = AttnWeights {
            q_a: self.weight(&n.q_a_proj(), m.q_lora_rank, d)?,
            q_a_norm: self.vector(&n.q_a_layernorm())?,
            q_b: self.weight(&n.q_b_proj(), h * m.qk_head_dim(), m.q_lora_rank)?,
            kv_a: self.weight(&n.kv_a_proj_with_mqa(), m.kv_lora_rank + m.qk_rope_head_dim, d)?,
            kv_a_norm: self.vector(&n.kv_a_layernorm())?,
            kv_b: self.weight(&n.kv_b_proj(), h * (m.qk_nope_head_dim + m.v_head_dim), m.kv_lora_rank)?,
            o: self.weight(&n.o_proj(), d, h * m.v_head_dim)?,
        };
        let indexer = match kind.indexer {
            IndexerType::Full => Some(IndexerWeights {
                wq_b: self.weight(&n.indexer_wq_b(), m.index_n_heads * m.index_head_dim, m.q_lora_rank)?,
                wk: self.weight(&n.indexer_wk(), m.index_head_dim, d)?,
                k_norm_w: self.vector(&n.indexer_k_norm_weight())?,
                k_norm_b: self.vector(&n.indexer_k_norm_bias())?,
                weights_proj: self.weight(&n.indexer_weights_proj(), m.index_n_heads, d)?,
            }),
            IndexerType::Shared => None,
        };
        let ffn = match kind.mlp {
            MlpKind::Dense => Ffn::Dense(self.mlp(|p| n.dense(p), m.intermediate_size)?),
            MlpKind::Moe => Ffn::Moe(MoeWeights {
                router: self.backend.vector(self.linear(&n.router(), m.n_routed_experts, d).to_f32())?,
                bias: self.vector(&n.router_bias())?,
                experts: self.backend.experts(
                    (0..m.n_routed_experts)
                        .map(|e| self.mlp_linears(|p| n.expert(e, p), m.moe_intermediate_size))
                        .collect(),
                )?,
                shared: match m.n_shared_experts {
                    0 => None,
                    s => Some(self.mlp(|p| n.shared_expert(p), m.moe_intermediate_size * s)?),
                },
            }),
        };
        Ok(LayerWeights {
            kind,
            input_norm: self.vector(&n.input_layernorm())?,
            post_norm: self.vector(&n.post_attention_layernorm())?,
            attn,
            indexer,
            ffn,
        })
    }
}
