//! The one table of every tensor a GLM-DSA checkpoint holds, and the only place that knows
//! their names (the GLM-DSA spec's section 2, summarized in the README): each family of
//! identical tensors with its checkpoint name, shape, module class, how a parallel layout
//! splits it and how much of it one decode token reads. `verify` checks a checkpoint against
//! it, the model binds its weights through it, and the plan's memory inventory sums it.
//!
//! Linears are named by module (`{module}.weight`, plus `{module}.weight_scale` when MXFP4);
//! vectors by their full tensor name. build.rs includes this file beside src/plan (as
//! `crate::weights::glm`), so it stays pure: plan types only, no I/O.

use crate::plan::{IndexerType, LayerKind, MlpKind, ModelShape, ModuleClass};

/// The three projections of a SwiGLU MLP.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
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

/// What a tensor is, wherever it sits.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Role {
    EmbedTokens,
    FinalNorm,
    LmHead,
    InputNorm,
    PostNorm,
    QaProj,
    QaNorm,
    QbProj,
    KvaProj,
    KvaNorm,
    KvbProj,
    OProj,
    IndexerWqB,
    IndexerWk,
    IndexerKNormWeight,
    IndexerKNormBias,
    IndexerWeightsProj,
    /// The dense MLP of the first layers.
    Dense(Proj),
    Router,
    RouterBias,
    /// One routed expert's projection (one tensor per expert).
    Expert(Proj),
    SharedExpert(Proj),
    MtpEnorm,
    MtpHnorm,
    MtpEhProj,
    MtpHeadNorm,
}

impl Role {
    /// The checkpoint name in decoder layer `layer` (MTP layers continue the numbering),
    /// for routed expert `expert`.
    pub fn name(self, layer: u64, expert: u64) -> String {
        let top = match self {
            Role::EmbedTokens => return "model.embed_tokens".into(),
            Role::FinalNorm => return "model.norm.weight".into(),
            Role::LmHead => return "lm_head".into(),
            _ => format!("model.layers.{layer}."),
        };
        let rest: String = match self {
            Role::InputNorm => "input_layernorm.weight".into(),
            Role::PostNorm => "post_attention_layernorm.weight".into(),
            Role::QaProj => "self_attn.q_a_proj".into(),
            Role::QaNorm => "self_attn.q_a_layernorm.weight".into(),
            Role::QbProj => "self_attn.q_b_proj".into(),
            Role::KvaProj => "self_attn.kv_a_proj_with_mqa".into(),
            Role::KvaNorm => "self_attn.kv_a_layernorm.weight".into(),
            Role::KvbProj => "self_attn.kv_b_proj".into(),
            Role::OProj => "self_attn.o_proj".into(),
            Role::IndexerWqB => "self_attn.indexer.wq_b".into(),
            Role::IndexerWk => "self_attn.indexer.wk".into(),
            Role::IndexerKNormWeight => "self_attn.indexer.k_norm.weight".into(),
            Role::IndexerKNormBias => "self_attn.indexer.k_norm.bias".into(),
            Role::IndexerWeightsProj => "self_attn.indexer.weights_proj".into(),
            Role::Dense(p) => format!("mlp.{}", p.name()),
            Role::Router => "mlp.gate".into(),
            Role::RouterBias => "mlp.gate.e_score_correction_bias".into(),
            Role::Expert(p) => format!("mlp.experts.{expert}.{}", p.name()),
            Role::SharedExpert(p) => format!("mlp.shared_experts.{}", p.name()),
            Role::MtpEnorm => "enorm.weight".into(),
            Role::MtpHnorm => "hnorm.weight".into(),
            Role::MtpEhProj => "eh_proj".into(),
            Role::MtpHeadNorm => "shared_head.norm.weight".into(),
            Role::EmbedTokens | Role::FinalNorm | Role::LmHead => unreachable!("named above"),
        };
        top + &rest
    }
}

/// How a tensor is laid out over the tp devices of a replica.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Split {
    /// Every device holds the whole tensor.
    Replicated,
    /// Column-parallel: output rows over tp.
    Rows,
    /// Row-parallel: input columns over tp.
    Cols,
    /// Routed experts: instances over ep, the intermediate dim (rows) over tp / ep.
    ExpertRows,
    /// Routed experts' down projection: instances over ep, inputs over tp / ep.
    ExpertCols,
}

#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Kind {
    /// A weight matrix [rows, cols] stored as its class's quant rule says.
    Matrix {
        class: ModuleClass,
        split: Split,
        /// Fraction of the family one decode token reads (routed experts: top-k / experts).
        active: f64,
    },
    /// A norm weight or bias (bf16, f16 or f32 as stored) of `rows` values; the router's
    /// correction bias is f32 in every release.
    Vector { f32_only: bool },
}

/// Identical tensors: the same role in each of `layers` (once each, or once per routed
/// expert when `experts` > 1).
#[derive(Debug, Clone, PartialEq)]
pub struct Family {
    pub role: Role,
    /// The planner's label, e.g. `attention.q_b_proj`.
    pub label: &'static str,
    /// Decoder layers holding it (empty for model-level tensors).
    pub layers: Vec<u64>,
    /// Tensors per layer (routed experts: one per expert).
    pub experts: u64,
    pub rows: u64,
    pub cols: u64,
    pub kind: Kind,
    /// Part of the MTP layer.
    pub mtp: bool,
}

impl Family {
    /// How many tensors the family holds.
    pub fn count(&self) -> u64 {
        self.layers.len().max(1) as u64 * self.experts
    }

    /// Every tensor's checkpoint name (a module for matrices).
    pub fn names(&self) -> Vec<String> {
        let layers = if self.layers.is_empty() { vec![0] } else { self.layers.clone() };
        layers.iter().flat_map(|&l| (0..self.experts).map(move |e| self.role.name(l, e))).collect()
    }

    pub fn class(&self) -> ModuleClass {
        match self.kind {
            Kind::Matrix { class, .. } => class,
            Kind::Vector { .. } => ModuleClass::Norms,
        }
    }
}

/// Every tensor family of a model: main layers, then the MTP layers.
#[derive(Debug, Clone, PartialEq)]
pub struct TensorTable {
    pub families: Vec<Family>,
}

impl TensorTable {
    pub fn new(m: &ModelShape) -> TensorTable {
        let mut t = Builder { m, families: Vec::new(), mtp: false };
        let (d, v) = (m.hidden_size, m.vocab_size);
        // A token reads one row of the embedding.
        t.matrix(
            Role::EmbedTokens,
            "embed_tokens",
            &[],
            v,
            d,
            ModuleClass::EmbedTokens,
            Split::Rows,
            1.0 / v.max(1) as f64,
        );
        let layers = m.layers();
        t.layers(&layers.iter().enumerate().map(|(i, k)| (i as u64, *k)).collect::<Vec<_>>());
        t.vector(Role::FinalNorm, "norm", &[], d, false);
        if !m.tie_word_embeddings {
            t.matrix(Role::LmHead, "lm_head", &[], v, d, ModuleClass::LmHead, Split::Rows, 1.0);
        }
        if m.num_nextn_predict_layers > 0 {
            t.mtp = true;
            let mtp: Vec<u64> = (0..m.num_nextn_predict_layers).map(|j| m.num_hidden_layers + j).collect();
            for role in [Role::MtpEnorm, Role::MtpHnorm, Role::MtpHeadNorm] {
                t.vector(role, "mtp.norms", &mtp, d, false);
            }
            t.matrix(Role::MtpEhProj, "mtp.eh_proj", &mtp, d, 2 * d, ModuleClass::EhProj, Split::Replicated, 1.0);
            t.layers(&mtp.iter().map(|&i| (i, m.mtp_layer())).collect::<Vec<_>>());
        }
        TensorTable { families: t.families }
    }

    /// Every matrix, one per tensor, with its module name.
    pub fn linears(&self) -> Vec<Linear> {
        let mut out = Vec::new();
        for f in &self.families {
            if let Kind::Matrix { class, .. } = f.kind {
                out.extend(f.names().into_iter().map(|module| Linear {
                    module,
                    rows: f.rows,
                    cols: f.cols,
                    class,
                    mtp: f.mtp,
                }));
            }
        }
        out
    }

    /// Every vector, one per tensor.
    pub fn vectors(&self) -> Vec<Vector> {
        let mut out = Vec::new();
        for f in &self.families {
            if let Kind::Vector { f32_only } = f.kind {
                out.extend(f.names().into_iter().map(|name| Vector { name, len: f.rows, f32_only }));
            }
        }
        out
    }

    /// The family of `role` that holds `layer` (ignored for model-level roles).
    pub fn family(&self, role: Role, layer: u64) -> Option<&Family> {
        self.families.iter().find(|f| f.role == role && (f.layers.is_empty() || f.layers.contains(&layer)))
    }

    /// (name, rows, cols) of `role` in `layer` for routed expert `expert` (0 otherwise).
    pub fn tensor(&self, role: Role, layer: u64, expert: u64) -> Option<(String, u64, u64)> {
        self.family(role, layer).map(|f| (role.name(layer, expert), f.rows, f.cols))
    }
}

struct Builder<'a> {
    m: &'a ModelShape,
    families: Vec<Family>,
    mtp: bool,
}

impl Builder<'_> {
    #[allow(clippy::too_many_arguments)]
    fn push(
        &mut self,
        role: Role,
        label: &'static str,
        layers: &[u64],
        experts: u64,
        rows: u64,
        cols: u64,
        kind: Kind,
    ) {
        if experts == 0 || (layers.is_empty() && role_in_layer(role)) {
            return;
        }
        let mtp = self.mtp;
        self.families.push(Family { role, label, layers: layers.to_vec(), experts, rows, cols, kind, mtp });
    }

    #[allow(clippy::too_many_arguments)]
    fn matrix(
        &mut self,
        role: Role,
        label: &'static str,
        layers: &[u64],
        rows: u64,
        cols: u64,
        class: ModuleClass,
        split: Split,
        active: f64,
    ) {
        self.push(role, label, layers, 1, rows, cols, Kind::Matrix { class, split, active });
    }

    fn vector(&mut self, role: Role, label: &'static str, layers: &[u64], len: u64, f32_only: bool) {
        self.push(role, label, layers, 1, len, 1, Kind::Vector { f32_only });
    }

    /// The tensors of decoder layers (index, kind).
    fn layers(&mut self, layers: &[(u64, LayerKind)]) {
        use ModuleClass as C;
        use Split::*;
        let m = self.m;
        let (d, h) = (m.hidden_size, m.num_attention_heads);
        let all: Vec<u64> = layers.iter().map(|l| l.0).collect();
        let which = |f: &dyn Fn(&LayerKind) -> bool| -> Vec<u64> {
            layers.iter().filter(|(_, k)| f(k)).map(|(i, _)| *i).collect()
        };
        let indexed = which(&|k| k.indexer == IndexerType::Full);
        let dense = which(&|k| k.mlp == MlpKind::Dense);
        let moe = which(&|k| k.mlp == MlpKind::Moe);

        self.vector(Role::InputNorm, "input_layernorm", &all, d, false);
        self.vector(Role::PostNorm, "post_attention_layernorm", &all, d, false);
        self.matrix(Role::QaProj, "attention.q_a_proj", &all, m.q_lora_rank, d, C::Attention, Replicated, 1.0);
        self.vector(Role::QaNorm, "attention.q_a_layernorm", &all, m.q_lora_rank, false);
        let q_rows = h * m.qk_head_dim();
        self.matrix(Role::QbProj, "attention.q_b_proj", &all, q_rows, m.q_lora_rank, C::Attention, Rows, 1.0);
        let kv_a = m.kv_lora_rank + m.qk_rope_head_dim;
        self.matrix(Role::KvaProj, "attention.kv_a_proj_with_mqa", &all, kv_a, d, C::Attention, Replicated, 1.0);
        self.vector(Role::KvaNorm, "attention.kv_a_layernorm", &all, m.kv_lora_rank, false);
        let kv_b = h * (m.qk_nope_head_dim + m.v_head_dim);
        self.matrix(Role::KvbProj, "attention.kv_b_proj", &all, kv_b, m.kv_lora_rank, C::Attention, Rows, 1.0);
        self.matrix(Role::OProj, "attention.o_proj", &all, d, h * m.v_head_dim, C::Attention, Cols, 1.0);

        let (hi, di) = (m.index_n_heads, m.index_head_dim);
        self.matrix(Role::IndexerWqB, "indexer.wq_b", &indexed, hi * di, m.q_lora_rank, C::Indexer, Replicated, 1.0);
        self.matrix(Role::IndexerWk, "indexer.wk", &indexed, di, d, C::Indexer, Replicated, 1.0);
        self.vector(Role::IndexerKNormWeight, "indexer.k_norm", &indexed, di, false);
        self.vector(Role::IndexerKNormBias, "indexer.k_norm", &indexed, di, false);
        self.matrix(Role::IndexerWeightsProj, "indexer.weights_proj", &indexed, hi, d, C::Indexer, Replicated, 1.0);

        let w = m.intermediate_size;
        for p in Proj::ALL {
            let (label, rows, cols, split) = if p == Proj::Down {
                ("dense_mlp.down_proj", d, w, Cols)
            } else {
                ("dense_mlp.gate_up_proj", w, d, Rows)
            };
            self.matrix(Role::Dense(p), label, &dense, rows, cols, C::DenseMlp, split, 1.0);
        }

        let e = m.n_routed_experts;
        self.matrix(Role::Router, "router.gate", &moe, e, d, C::Router, Replicated, 1.0);
        self.vector(Role::RouterBias, "router.e_score_correction_bias", &moe, e, true);
        let mi = m.moe_intermediate_size;
        let active = m.num_experts_per_tok as f64 / e.max(1) as f64;
        for p in Proj::ALL {
            let (label, rows, cols, split) = if p == Proj::Down {
                ("routed_experts.down_proj", d, mi, ExpertCols)
            } else {
                ("routed_experts.gate_up_proj", mi, d, ExpertRows)
            };
            let kind = Kind::Matrix { class: C::RoutedExperts, split, active };
            self.push(Role::Expert(p), label, &moe, e, rows, cols, kind);
        }
        let si = mi * m.n_shared_experts;
        if si > 0 {
            for p in Proj::ALL {
                let (label, rows, cols, split) = if p == Proj::Down {
                    ("shared_experts.down_proj", d, si, Cols)
                } else {
                    ("shared_experts.gate_up_proj", si, d, Rows)
                };
                self.matrix(Role::SharedExpert(p), label, &moe, rows, cols, C::SharedExperts, split, 1.0);
            }
        }
    }
}

/// Roles that live inside a decoder layer (a family of them with no layers is empty).
fn role_in_layer(role: Role) -> bool {
    !matches!(role, Role::EmbedTokens | Role::FinalNorm | Role::LmHead)
}

/// One matrix of the checkpoint: `{module}.weight` of [rows, cols].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Linear {
    pub module: String,
    pub rows: u64,
    pub cols: u64,
    pub class: ModuleClass,
    pub mtp: bool,
}

/// A norm weight, norm bias or router correction bias.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Vector {
    pub name: String,
    pub len: u64,
    pub f32_only: bool,
}

/// `{module}.weight` / `{module}.weight_scale`.
pub fn weight_name(module: &str) -> String {
    format!("{module}.weight")
}

pub fn scale_name(module: &str) -> String {
    format!("{module}.weight_scale")
}
