//! The tuned kernel map: which kernel variant serves each (op, shape, token bucket), and the
//! registry of variants this build has. build.rs derives the (op, shape, bucket) set the plan's
//! model, layout and limits need; a miss, a duplicate, an unknown kernel, a shape or an arch
//! the kernel was not made for is a build error.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use super::registry::{KernelVariant, REGISTRY, variant};
use super::{Plan, Problem, SpecMethod, Target, WeightFormat, memory_report};

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KernelMap {
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub entries: Vec<KernelEntry>,
}

/// One row of the map: `kernel` serves `op` of `shape` at these token buckets.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KernelEntry {
    pub op: String,
    /// The op's shape this row was tuned for; must equal what the plan derives.
    pub shape: String,
    /// Token buckets (powers of two) this row serves.
    pub buckets: Vec<u64>,
    pub kernel: String,
}

/// The shape an op runs at in one plan: what a kernel map row was tuned for. Its text form is
/// what plan files write in `kernels.entries[].shape`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum OpShape {
    /// RMSNorm over rows of each of these widths.
    Norm {
        widths: Vec<u64>,
    },
    /// Interleaved RoPE on `rot` dims of `heads` attention heads and `index_heads` indexer heads.
    Rope {
        rot: u64,
        heads: u64,
        index_heads: u64,
    },
    /// Sigmoid router: `experts` scores over `d` inputs, `top_k` kept from the best
    /// `keep_groups` of `groups` groups.
    Router {
        experts: u64,
        top_k: u64,
        keep_groups: u64,
        groups: u64,
        d: u64,
    },
    /// Grouped expert GEMM: `experts` matrices of [n, k] on this device.
    Experts {
        experts: u64,
        n: u64,
        k: u64,
    },
    /// Absorbed MLA attention over a paged latent cache.
    MlaDecode {
        heads: u64,
        r: u64,
        dr: u64,
        page: u64,
        topk: u64,
    },
    /// Indexer scores over paged keys and their top-k.
    Indexer {
        heads: u64,
        dim: u64,
        topk: u64,
        page: u64,
    },
    Sample {
        vocab: u64,
    },
    /// Embedding rows of a [vocab, d] table.
    Embed {
        vocab: u64,
        d: u64,
    },
    /// Elementwise ops and row moves on rows of `d` (the widest the step moves).
    Rows {
        d: u64,
    },
    /// One dense [n, k] weight (y = x W^T) on this device.
    Linear {
        n: u64,
        k: u64,
    },
    /// The absorbed MLA's per-head ends through kv_b: `heads` heads of nope/v dims over rank r.
    MlaHeads {
        heads: u64,
        nope: u64,
        v: u64,
        r: u64,
    },
    /// KV entries (latent r, rope dr) and indexer keys (index dims) into the paged store.
    KvWrite {
        r: u64,
        dr: u64,
        index: u64,
    },
    /// Tokens to `experts` experts, top_k each, rows of d, and back.
    Dispatch {
        experts: u64,
        top_k: u64,
        d: u64,
    },
}

impl std::fmt::Display for OpShape {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            OpShape::Norm { widths } => {
                let w: Vec<String> = widths.iter().map(u64::to_string).collect();
                write!(f, "d={}", w.join("|"))
            }
            OpShape::Rope { rot, heads, index_heads } => write!(f, "rot={rot} heads={heads} index_heads={index_heads}"),
            OpShape::Router { experts, top_k, keep_groups, groups, d } => {
                write!(f, "experts={experts} top_k={top_k} groups={keep_groups}/{groups} d={d}")
            }
            OpShape::Experts { experts, n, k } => write!(f, "experts={experts} n={n} k={k}"),
            OpShape::MlaDecode { heads, r, dr, page, topk } => {
                write!(f, "heads={heads} r={r} dr={dr} page={page} topk={topk}")
            }
            OpShape::Indexer { heads, dim, topk, page } => write!(f, "heads={heads} dim={dim} topk={topk} page={page}"),
            OpShape::Sample { vocab } => write!(f, "vocab={vocab}"),
            OpShape::Embed { vocab, d } => write!(f, "vocab={vocab} d={d}"),
            OpShape::Rows { d } => write!(f, "d={d}"),
            OpShape::Linear { n, k } => write!(f, "n={n} k={k}"),
            OpShape::MlaHeads { heads, nope, v, r } => write!(f, "heads={heads} nope={nope} v={v} r={r}"),
            OpShape::KvWrite { r, dr, index } => write!(f, "r={r} dr={dr} index={index}"),
            OpShape::Dispatch { experts, top_k, d } => write!(f, "experts={experts} top_k={top_k} d={d}"),
        }
    }
}

/// An op instance the plan's model runs, with its shape and the token buckets it sees.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RequiredOp {
    /// Map key; op families the registry serves (`moe.gate_up` is served by `moe.mxfp4`
    /// kernels when the experts are MXFP4).
    pub op: String,
    /// Which registry op family can serve it.
    pub family: String,
    pub shape: OpShape,
    pub buckets: Vec<u64>,
}

/// Powers of two from 1 through the first at or above `max`.
pub fn buckets_up_to(max: u64) -> Vec<u64> {
    let mut b = vec![1u64];
    while *b.last().expect("non-empty") < max.max(1) {
        b.push(b.last().expect("non-empty") * 2);
    }
    b
}

/// The registry family that runs a weight of this format: dense formats through the grouped
/// linear kernels, MXFP4 through the MXFP4 expert kernels (one group for a dense linear).
pub fn linear_family(format: WeightFormat) -> &'static str {
    match format {
        WeightFormat::Bf16 => "linear.bf16",
        WeightFormat::F32 => "linear.f32",
        WeightFormat::Mxfp4 => "moe.mxfp4",
    }
}

/// The (op, shape, buckets) set a GPU plan needs (nothing for the cpu target): every op the
/// forward runs, in the order it runs them, dense linears included. Linear shapes are per
/// device: column-parallel projections (q_b, gate/up, lm_head) split their rows over TP,
/// row-parallel ones (o_proj, down) their inputs. The MTP layer's ops get rows of their own
/// (`mtp.*`) where its formats differ from the main layers'.
pub fn required_ops(plan: &Plan) -> Vec<RequiredOp> {
    if plan.appliance.target == Target::Cpu {
        return Vec::new();
    }
    let m = &plan.model;
    let q = &plan.weights.quant;
    let tp = u64::from(plan.parallel.tp.max(1));
    let ep = u64::from(plan.parallel.ep.max(1));
    let heads = m.num_attention_heads / tp;
    let step = memory_report(plan).max_step_tokens;
    let drafts = if plan.speculative.method == SpecMethod::Mtp { u64::from(plan.speculative.depth) } else { 0 };
    let decode_rows =
        u64::from(plan.server.max_running_requests).div_ceil(u64::from(plan.parallel.dp.max(1))) * (1 + drafts);
    let all = buckets_up_to(step);
    let decode = buckets_up_to(decode_rows);
    let kv = plan.kv_cache.dtype.as_str();
    let mut out: Vec<RequiredOp> = Vec::new();
    let mut op = |op: &str, family: &str, shape: OpShape, buckets: &[u64]| {
        out.push(RequiredOp { op: op.to_string(), family: family.to_string(), shape, buckets: buckets.to_vec() })
    };
    let (d, qk) = (m.hidden_size, m.qk_nope_head_dim + m.qk_rope_head_dim);
    let experts = m.n_routed_experts / ep;
    let expert_width = m.moe_intermediate_size / (tp / ep).max(1);
    let shared_width = m.moe_intermediate_size * m.n_shared_experts / tp;
    let linear = |n: u64, k: u64| OpShape::Linear { n, k };

    op("embed", "embed", OpShape::Embed { vocab: m.vocab_size, d }, &all);
    op("rmsnorm", "rmsnorm", OpShape::Norm { widths: vec![d, m.q_lora_rank, m.kv_lora_rank] }, &all);
    op("elementwise", "elementwise", OpShape::Rows { d }, &all);
    // Attention: q and kv projections, RoPE, the cache write, the indexer, attention, o_proj.
    let attn_family = linear_family(q.attention);
    op("linear.q_a", attn_family, linear(m.q_lora_rank, d), &all);
    op("linear.q_b", attn_family, linear(heads * qk, m.q_lora_rank), &all);
    op("linear.kv_a", attn_family, linear(m.kv_lora_rank + m.qk_rope_head_dim, d), &all);
    op("rope", "rope", OpShape::Rope { rot: m.qk_rope_head_dim, heads, index_heads: m.index_n_heads }, &all);
    op(
        "kv_write",
        &format!("kv_write.{kv}"),
        OpShape::KvWrite { r: m.kv_lora_rank, dr: m.qk_rope_head_dim, index: m.index_head_dim },
        &all,
    );
    let ix = linear_family(q.indexer);
    op("linear.indexer.wk", ix, linear(m.index_head_dim, d), &all);
    op("layernorm", "layernorm", OpShape::Norm { widths: vec![m.index_head_dim] }, &all);
    op("linear.indexer.wq_b", ix, linear(m.index_n_heads * m.index_head_dim, m.q_lora_rank), &all);
    op("linear.indexer.weights_proj", ix, linear(m.index_n_heads, d), &all);
    op(
        "indexer",
        &format!("indexer.{kv}"),
        OpShape::Indexer {
            heads: m.index_n_heads,
            dim: m.index_head_dim,
            topk: m.index_topk,
            page: u64::from(plan.kv_cache.page_size),
        },
        &all,
    );
    let mla_heads = OpShape::MlaHeads { heads, nope: m.qk_nope_head_dim, v: m.v_head_dim, r: m.kv_lora_rank };
    op("mla.heads", &format!("mla.heads.{}", q.attention.as_str()), mla_heads.clone(), &all);
    op(
        "mla.decode",
        &format!("mla.decode.{kv}"),
        OpShape::MlaDecode {
            heads,
            r: m.kv_lora_rank,
            dr: m.qk_rope_head_dim,
            page: u64::from(plan.kv_cache.page_size),
            topk: m.index_topk,
        },
        &all,
    );
    op("linear.o", attn_family, linear(d, heads * m.v_head_dim), &all);
    // Feed-forward: the dense MLP of the first layers, then router, experts and shared expert.
    if m.first_k_dense_replace > 0 {
        let f = linear_family(q.dense_mlp);
        op("linear.dense.gate_up", f, linear(m.intermediate_size / tp, d), &all);
        op("linear.dense.down", f, linear(d, m.intermediate_size / tp), &all);
    }
    let router = OpShape::Router {
        experts: m.n_routed_experts,
        top_k: m.num_experts_per_tok,
        keep_groups: m.topk_group,
        groups: m.n_group,
        d,
    };
    op("router", "router", router, &all);
    let dispatch = OpShape::Dispatch { experts, top_k: m.num_experts_per_tok, d };
    op("moe.dispatch", "moe.dispatch", dispatch, &all);
    let moe_family = linear_family(q.routed_experts);
    op("moe.gate_up", moe_family, OpShape::Experts { experts, n: expert_width, k: d }, &all);
    op("moe.down", moe_family, OpShape::Experts { experts, n: d, k: expert_width }, &all);
    if shared_width > 0 {
        let f = linear_family(q.shared_experts);
        op("linear.shared.gate_up", f, linear(shared_width, d), &all);
        op("linear.shared.down", f, linear(d, shared_width), &all);
    }
    op("linear.lm_head", linear_family(q.lm_head), linear(m.vocab_size / tp, d), &all);
    // The MTP layer: eh_proj, and its own rows where its formats differ.
    if let (true, Some(mq)) = (m.num_nextn_predict_layers > 0, &q.mtp) {
        op("linear.mtp.eh_proj", linear_family(mq.eh_proj), linear(d, 2 * d), &all);
        if mq.attention != q.attention {
            let f = linear_family(mq.attention);
            op("linear.mtp.q_a", f, linear(m.q_lora_rank, d), &all);
            op("linear.mtp.q_b", f, linear(heads * qk, m.q_lora_rank), &all);
            op("linear.mtp.kv_a", f, linear(m.kv_lora_rank + m.qk_rope_head_dim, d), &all);
            op("mla.mtp.heads", &format!("mla.heads.{}", mq.attention.as_str()), mla_heads, &all);
            op("linear.mtp.o", f, linear(d, heads * m.v_head_dim), &all);
        }
        if mq.indexer != q.indexer {
            let f = linear_family(mq.indexer);
            op("linear.mtp.indexer.wk", f, linear(m.index_head_dim, d), &all);
            op("linear.mtp.indexer.wq_b", f, linear(m.index_n_heads * m.index_head_dim, m.q_lora_rank), &all);
            op("linear.mtp.indexer.weights_proj", f, linear(m.index_n_heads, d), &all);
        }
        if mq.routed_experts != q.routed_experts {
            let f = linear_family(mq.routed_experts);
            op("moe.mtp.gate_up", f, OpShape::Experts { experts, n: expert_width, k: d }, &all);
            op("moe.mtp.down", f, OpShape::Experts { experts, n: d, k: expert_width }, &all);
        }
        if shared_width > 0 && mq.shared_experts != q.shared_experts {
            let f = linear_family(mq.shared_experts);
            op("linear.mtp.shared.gate_up", f, linear(shared_width, d), &all);
            op("linear.mtp.shared.down", f, linear(d, shared_width), &all);
        }
    }
    op("sample", "sample", OpShape::Sample { vocab: m.vocab_size }, &decode);
    out
}

/// The kernel map's rules, each problem naming `kernels.entries[i]` or the missing cell.
pub fn check(plan: &Plan) -> Vec<Problem> {
    let mut out = Vec::new();
    let entries = &plan.kernels.entries;
    if plan.appliance.target == Target::Cpu {
        if !entries.is_empty() {
            out.push(Problem::new(
                "kernels.entries",
                format!(
                    "kernels.entries has {} rows but appliance.target = cpu has no kernel variants to choose",
                    entries.len()
                ),
            ));
        }
        return out;
    }
    let arch = plan.appliance.arch.as_deref().unwrap_or("");
    let required = required_ops(plan);
    let mut served: BTreeMap<(&str, u64), usize> = BTreeMap::new();
    for (i, e) in entries.iter().enumerate() {
        let key = format!("kernels.entries[{i}]");
        let Some(req) = required.iter().find(|r| r.op == e.op) else {
            let known: Vec<&str> = required.iter().map(|r| r.op.as_str()).collect();
            out.push(Problem::new(
                &key,
                format!("{key}: op {:?} is not one this plan runs ({})", e.op, known.join(", ")),
            ));
            continue;
        };
        let runs = req.shape.to_string();
        if e.shape != runs {
            out.push(Problem::new(
                &key,
                format!("{key}: op {:?} was tuned for shape {:?} but this plan runs {runs:?}", e.op, e.shape),
            ));
        }
        match variant(&e.kernel) {
            None => {
                let names: Vec<&str> = REGISTRY.iter().filter(|v| v.op == req.family).map(|v| v.name).collect();
                out.push(Problem::new(
                    &key,
                    format!(
                        "{key}: unknown kernel {:?} (this build has for {}: {})",
                        e.kernel,
                        req.family,
                        names.join(", ")
                    ),
                ));
            }
            Some(v) => {
                if v.op != req.family {
                    out.push(Problem::new(
                        &key,
                        format!(
                            "{key}: kernel {:?} serves {} but op {:?} needs a {} kernel",
                            v.name, v.op, e.op, req.family
                        ),
                    ));
                }
                if !v.archs.contains(&arch) {
                    out.push(Problem::new(
                        &key,
                        format!(
                            "{key}: kernel {:?} is not built for appliance.arch = {arch:?} ({})",
                            v.name,
                            v.archs.join(", ")
                        ),
                    ));
                }
                if let Some(b) = e.buckets.iter().find(|b| **b > v.max_bucket) {
                    out.push(Problem::new(
                        &key,
                        format!(
                            "{key}: kernel {:?} serves buckets up to {} but the row lists {b}",
                            v.name, v.max_bucket
                        ),
                    ));
                }
            }
        }
        for &b in &e.buckets {
            if !req.buckets.contains(&b) {
                out.push(Problem::new(
                    &key,
                    format!("{key}: bucket {b} is not one op {:?} sees (its buckets: {:?})", e.op, req.buckets),
                ));
            } else if let Some(first) = served.insert((req.op.as_str(), b), i) {
                out.push(Problem::new(
                    &key,
                    format!("{key}: (op = {:?}, bucket = {b}) is already served by kernels.entries[{first}]", e.op),
                ));
            }
        }
    }
    for r in &required {
        for &b in &r.buckets {
            if !served.contains_key(&(r.op.as_str(), b)) {
                out.push(Problem::new(
                    "kernels.entries",
                    format!(
                        "kernels.entries: no kernel serves (op = {:?}, shape = {:?}, bucket = {b})",
                        r.op,
                        r.shape.to_string()
                    ),
                ));
            }
        }
    }
    out
}

/// A starting map for a plan: for each required op and bucket, the registry variant of its
/// family with the smallest reach that covers the bucket. `kiln plan init` writes it; tuning
/// replaces rows with measured choices.
pub fn default_entries(plan: &Plan) -> Vec<KernelEntry> {
    let mut out = Vec::new();
    for r in required_ops(plan) {
        let mut variants: Vec<&KernelVariant> = REGISTRY.iter().filter(|v| v.op == r.family).collect();
        variants.sort_by_key(|v| v.max_bucket);
        let mut rows: Vec<KernelEntry> = Vec::new();
        for &b in &r.buckets {
            let Some(v) = variants.iter().find(|v| b <= v.max_bucket) else { continue };
            match rows.last_mut() {
                Some(e) if e.kernel == v.name => e.buckets.push(b),
                _ => rows.push(KernelEntry {
                    op: r.op.clone(),
                    shape: r.shape.to_string(),
                    buckets: vec![b],
                    kernel: v.name.into(),
                }),
            }
        }
        out.extend(rows);
    }
    out
}
