//! The weight inventory: every tensor family the model stores, its shape, its storage
//! format under the plan's quant rules, and how the parallel layout splits it.
//!
//! This knows shapes, not checkpoint names (src/weights/glm.rs owns those); the memory
//! planner and the roofline are sums over it.

use super::model::{IndexerType, LayerKind, MlpKind};
use super::{ModuleClass, Plan, WeightFormat};

/// How a tensor is stored, in bytes per element (MXFP4 counts its E8M0 scales).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StoredFormat {
    Bf16,
    F32,
    Mxfp4,
}

impl From<WeightFormat> for StoredFormat {
    fn from(f: WeightFormat) -> Self {
        match f {
            WeightFormat::Bf16 => StoredFormat::Bf16,
            WeightFormat::F32 => StoredFormat::F32,
            WeightFormat::Mxfp4 => StoredFormat::Mxfp4,
        }
    }
}

impl StoredFormat {
    /// Bytes of a [rows, cols] matrix; MXFP4 packs two E2M1 codes per byte plus one E8M0
    /// byte per 32 inputs of a row (4.25 bits per weight).
    pub fn bytes(self, rows: u64, cols: u64) -> u64 {
        match self {
            StoredFormat::Bf16 => rows * cols * 2,
            StoredFormat::F32 => rows * cols * 4,
            StoredFormat::Mxfp4 => rows * cols.div_ceil(2) + rows * cols.div_ceil(32),
        }
    }
}

/// One family of identical tensors: `instances` copies of a [rows, cols] matrix.
#[derive(Debug, Clone, PartialEq)]
pub struct WeightGroup {
    /// Human label, e.g. `attention.q_b_proj`.
    pub label: &'static str,
    pub class: ModuleClass,
    /// Part of the MTP layer.
    pub mtp: bool,
    pub instances: u64,
    pub rows: u64,
    pub cols: u64,
    pub format: StoredFormat,
    /// Each device holds instances / split_instances ...
    pub split_instances: u64,
    /// ... of [rows / split_rows, cols / split_cols] each (ceiling division).
    pub split_rows: u64,
    pub split_cols: u64,
    /// Fraction of the instances one decode token reads (routed experts: top-k / experts).
    pub active_fraction: f64,
}

impl WeightGroup {
    pub fn total_bytes(&self) -> u64 {
        self.instances * self.format.bytes(self.rows, self.cols)
    }

    /// The [rows, cols] of one instance's shard on one device.
    pub fn shard_shape(&self) -> (u64, u64) {
        (self.rows.div_ceil(self.split_rows), self.cols.div_ceil(self.split_cols))
    }

    pub fn bytes_per_device(&self) -> u64 {
        let (r, c) = self.shard_shape();
        self.instances.div_ceil(self.split_instances) * self.format.bytes(r, c)
    }

    /// Bytes of this group one decode token reads on one device.
    pub fn active_bytes_per_device(&self) -> f64 {
        self.bytes_per_device() as f64 * self.active_fraction
    }
}

/// Splits a group can take.
#[derive(Clone, Copy)]
enum Split {
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

struct Builder<'a> {
    plan: &'a Plan,
    mtp: bool,
    groups: Vec<WeightGroup>,
}

impl Builder<'_> {
    #[allow(clippy::too_many_arguments)]
    fn push(
        &mut self,
        label: &'static str,
        class: ModuleClass,
        instances: u64,
        rows: u64,
        cols: u64,
        format: StoredFormat,
        split: Split,
        active_fraction: f64,
    ) {
        if instances == 0 {
            return;
        }
        let tp = u64::from(self.plan.parallel.tp.max(1));
        let ep = u64::from(self.plan.parallel.ep.max(1));
        let per_expert = (tp / ep).max(1);
        let (split_instances, split_rows, split_cols) = match split {
            Split::Replicated => (1, 1, 1),
            Split::Rows => (1, tp, 1),
            Split::Cols => (1, 1, tp),
            Split::ExpertRows => (ep, per_expert, 1),
            Split::ExpertCols => (ep, 1, per_expert),
        };
        self.groups.push(WeightGroup {
            label,
            class,
            mtp: self.mtp,
            instances,
            rows,
            cols,
            format,
            split_instances,
            split_rows,
            split_cols,
            active_fraction,
        });
    }

    /// The storage format the plan asks for; classes without a rule (missing MTP rules,
    /// which validation reports) count as bf16 so the planner can still add up.
    fn fmt(&self, class: ModuleClass) -> StoredFormat {
        self.plan.weights.quant.format(class, self.mtp).map(StoredFormat::from).unwrap_or(StoredFormat::Bf16)
    }

    /// `n` decoder layers of one kind.
    fn layers(&mut self, kind: LayerKind, n: u64) {
        use ModuleClass as C;
        use Split::*;
        use StoredFormat::{Bf16, F32};
        let plan = self.plan;
        let m = &plan.model;
        let d = m.hidden_size;
        let h = m.num_attention_heads;
        let attn = self.fmt(C::Attention);
        self.push("input_layernorm", C::Norms, n, d, 1, Bf16, Replicated, 1.0);
        self.push("post_attention_layernorm", C::Norms, n, d, 1, Bf16, Replicated, 1.0);
        self.push("attention.q_a_proj", C::Attention, n, m.q_lora_rank, d, attn, Replicated, 1.0);
        self.push("attention.q_a_layernorm", C::Norms, n, m.q_lora_rank, 1, Bf16, Replicated, 1.0);
        let q_rows = h * m.qk_head_dim();
        self.push("attention.q_b_proj", C::Attention, n, q_rows, m.q_lora_rank, attn, Rows, 1.0);
        let kv_a_rows = m.kv_lora_rank + m.qk_rope_head_dim;
        self.push("attention.kv_a_proj_with_mqa", C::Attention, n, kv_a_rows, d, attn, Replicated, 1.0);
        self.push("attention.kv_a_layernorm", C::Norms, n, m.kv_lora_rank, 1, Bf16, Replicated, 1.0);
        let kv_b_rows = h * (m.qk_nope_head_dim + m.v_head_dim);
        self.push("attention.kv_b_proj", C::Attention, n, kv_b_rows, m.kv_lora_rank, attn, Rows, 1.0);
        self.push("attention.o_proj", C::Attention, n, d, h * m.v_head_dim, attn, Cols, 1.0);

        if kind.indexer == IndexerType::Full {
            let ix = self.fmt(C::Indexer);
            let q_rows = m.index_n_heads * m.index_head_dim;
            self.push("indexer.wq_b", C::Indexer, n, q_rows, m.q_lora_rank, ix, Replicated, 1.0);
            self.push("indexer.wk", C::Indexer, n, m.index_head_dim, d, ix, Replicated, 1.0);
            // LayerNorm: weight and bias.
            self.push("indexer.k_norm", C::Norms, 2 * n, m.index_head_dim, 1, Bf16, Replicated, 1.0);
            self.push("indexer.weights_proj", C::Indexer, n, m.index_n_heads, d, ix, Replicated, 1.0);
        }

        match kind.mlp {
            MlpKind::Dense => {
                let f = self.fmt(C::DenseMlp);
                let i = m.intermediate_size;
                self.push("dense_mlp.gate_up_proj", C::DenseMlp, 2 * n, i, d, f, Rows, 1.0);
                self.push("dense_mlp.down_proj", C::DenseMlp, n, d, i, f, Cols, 1.0);
            }
            MlpKind::Moe => {
                let e = m.n_routed_experts;
                let r = self.fmt(C::Router);
                self.push("router.gate", C::Router, n, e, d, r, Replicated, 1.0);
                self.push("router.e_score_correction_bias", C::Norms, n, e, 1, F32, Replicated, 1.0);
                let f = self.fmt(C::RoutedExperts);
                let mi = m.moe_intermediate_size;
                let active = m.num_experts_per_tok as f64 / e.max(1) as f64;
                self.push("routed_experts.gate_up_proj", C::RoutedExperts, 2 * n * e, mi, d, f, ExpertRows, active);
                self.push("routed_experts.down_proj", C::RoutedExperts, n * e, d, mi, f, ExpertCols, active);
                let si = mi * m.n_shared_experts;
                if si > 0 {
                    let f = self.fmt(C::SharedExperts);
                    self.push("shared_experts.gate_up_proj", C::SharedExperts, 2 * n, si, d, f, Rows, 1.0);
                    self.push("shared_experts.down_proj", C::SharedExperts, n, d, si, f, Cols, 1.0);
                }
            }
        }
    }
}

/// Every weight the plan's model stores, main layers first, then the MTP layers.
pub fn weight_inventory(plan: &Plan) -> Vec<WeightGroup> {
    use ModuleClass as C;
    let m = &plan.model;
    let d = m.hidden_size;
    let v = m.vocab_size;
    let mut b = Builder { plan, mtp: false, groups: Vec::new() };

    let embed = b.fmt(C::EmbedTokens);
    // A token reads one row of the embedding.
    b.push("embed_tokens", C::EmbedTokens, 1, v, d, embed, Split::Rows, 1.0 / v.max(1) as f64);
    let mut run: Option<(LayerKind, u64)> = None;
    for kind in m.layers() {
        match run {
            Some((k, n)) if k == kind => run = Some((k, n + 1)),
            Some((k, n)) => {
                b.layers(k, n);
                run = Some((kind, 1));
            }
            None => run = Some((kind, 1)),
        }
    }
    if let Some((k, n)) = run {
        b.layers(k, n);
    }
    b.push("norm", C::Norms, 1, d, 1, StoredFormat::Bf16, Split::Replicated, 1.0);
    if !m.tie_word_embeddings {
        let head = b.fmt(C::LmHead);
        b.push("lm_head", C::LmHead, 1, v, d, head, Split::Rows, 1.0);
    }

    let n_mtp = m.num_nextn_predict_layers;
    if n_mtp > 0 {
        b.mtp = true;
        // enorm, hnorm and shared_head.norm.
        b.push("mtp.norms", C::Norms, 3 * n_mtp, d, 1, StoredFormat::Bf16, Split::Replicated, 1.0);
        let eh = b.fmt(C::EhProj);
        b.push("mtp.eh_proj", C::EhProj, n_mtp, d, 2 * d, eh, Split::Replicated, 1.0);
        b.layers(m.mtp_layer(), n_mtp);
    }
    b.groups
}
