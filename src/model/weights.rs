//! The model's weights on a backend, bound to their tensors in a verified checkpoint and
//! uploaded once.

use crate::backend::{Backend, MlpLinears};
use crate::error::{Error, Result};
use crate::plan::{IN_WEIGHTS, IndexerType, LayerKind, MlpKind, Plan, render_problems};
use crate::weights::glm::{Proj, Role, TensorTable};
use crate::weights::{Checkpoint, Linear, load_vector, verify};

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
    /// tensors the table names and uploads them. Nothing is computed before the check passes.
    pub fn load(backend: &B, plan: &Plan, ckpt: &Checkpoint) -> Result<GlmWeights<B>> {
        let problems = verify(plan, ckpt);
        if !problems.is_empty() {
            return Err(Error::Checkpoint { path: ckpt.dir.clone(), message: render_problems(IN_WEIGHTS, &problems) });
        }
        let m = &plan.model;
        let b = Binder { ckpt, table: TensorTable::new(m), backend };
        let layers =
            m.layers().into_iter().enumerate().map(|(i, kind)| b.layer(i as u64, kind)).collect::<Result<_>>()?;
        let lm_head = if m.tie_word_embeddings { None } else { Some(b.weight(Role::LmHead, 0)?) };
        let mtp = (0..m.num_nextn_predict_layers)
            .map(|j| {
                let i = m.num_hidden_layers + j;
                Ok(MtpWeights {
                    enorm: b.vector(Role::MtpEnorm, i)?,
                    hnorm: b.vector(Role::MtpHnorm, i)?,
                    eh_proj: b.weight(Role::MtpEhProj, i)?,
                    head_norm: b.vector(Role::MtpHeadNorm, i)?,
                    layer: b.layer(i, m.mtp_layer())?,
                })
            })
            .collect::<Result<_>>()?;
        Ok(GlmWeights {
            embed: b.weight(Role::EmbedTokens, 0)?,
            layers,
            norm: b.vector(Role::FinalNorm, 0)?,
            lm_head,
            mtp,
        })
    }

    pub fn lm_head(&self) -> &B::Weight {
        self.lm_head.as_ref().unwrap_or(&self.embed)
    }
}

/// Binds the tensors the table names; verification guarantees each exists with its shape.
struct Binder<'a, B: Backend> {
    ckpt: &'a Checkpoint,
    table: TensorTable,
    backend: &'a B,
}

impl<B: Backend> Binder<'_, B> {
    fn linear(&self, role: Role, layer: u64, expert: u64) -> Linear {
        let (module, rows, cols) =
            self.table.tensor(role, layer, expert).unwrap_or_else(|| panic!("{role:?} is not in layer {layer}"));
        Linear::load(self.ckpt, &module, rows, cols).unwrap_or_else(|| panic!("verified tensor {module} vanished"))
    }

    fn weight(&self, role: Role, layer: u64) -> Result<B::Weight> {
        self.backend.weight(self.linear(role, layer, 0))
    }

    fn host_vector(&self, role: Role, layer: u64) -> Vec<f32> {
        let name = role.name(layer, 0);
        load_vector(self.ckpt, &name).unwrap_or_else(|| panic!("verified tensor {name} vanished"))
    }

    fn vector(&self, role: Role, layer: u64) -> Result<B::Vector> {
        self.backend.vector(self.host_vector(role, layer))
    }

    fn mlp(&self, role: fn(Proj) -> Role, layer: u64) -> Result<Mlp<B>> {
        Ok(Mlp {
            gate: self.weight(role(Proj::Gate), layer)?,
            up: self.weight(role(Proj::Up), layer)?,
            down: self.weight(role(Proj::Down), layer)?,
        })
    }

    fn layer(&self, i: u64, kind: LayerKind) -> Result<LayerWeights<B>> {
        let attn = AttnWeights {
            q_a: self.weight(Role::QaProj, i)?,
            q_a_norm: self.vector(Role::QaNorm, i)?,
            q_b: self.weight(Role::QbProj, i)?,
            kv_a: self.weight(Role::KvaProj, i)?,
            kv_a_norm: self.vector(Role::KvaNorm, i)?,
            kv_b: self.weight(Role::KvbProj, i)?,
            o: self.weight(Role::OProj, i)?,
        };
        let indexer = match kind.indexer {
            IndexerType::Full => Some(IndexerWeights {
                wq_b: self.weight(Role::IndexerWqB, i)?,
                wk: self.weight(Role::IndexerWk, i)?,
                k_norm_w: self.vector(Role::IndexerKNormWeight, i)?,
                k_norm_b: self.vector(Role::IndexerKNormBias, i)?,
                weights_proj: self.weight(Role::IndexerWeightsProj, i)?,
            }),
            IndexerType::Shared => None,
        };
        let ffn = match kind.mlp {
            MlpKind::Dense => Ffn::Dense(self.mlp(Role::Dense, i)?),
            MlpKind::Moe => {
                let experts = self.table.family(Role::Expert(Proj::Gate), i).map_or(0, |f| f.experts);
                let linears = (0..experts)
                    .map(|e| MlpLinears {
                        gate: self.linear(Role::Expert(Proj::Gate), i, e),
                        up: self.linear(Role::Expert(Proj::Up), i, e),
                        down: self.linear(Role::Expert(Proj::Down), i, e),
                    })
                    .collect();
                Ffn::Moe(MoeWeights {
                    router: self.backend.vector(self.linear(Role::Router, i, 0).to_f32())?,
                    bias: self.vector(Role::RouterBias, i)?,
                    experts: self.backend.experts(linears)?,
                    shared: match self.table.family(Role::SharedExpert(Proj::Gate), i) {
                        Some(_) => Some(self.mlp(Role::SharedExpert, i)?),
                        None => None,
                    },
                })
            }
        };
        Ok(LayerWeights {
            kind,
            input_norm: self.vector(Role::InputNorm, i)?,
            post_norm: self.vector(Role::PostNorm, i)?,
            attn,
            indexer,
            ffn,
        })
    }
}
