//! The memory and roofline planner: per-device weight bytes, KV bytes per token, how many
//! KV tokens fit, and a single-stream decode upper bound.

use std::collections::BTreeMap;

use serde::Serialize;

use super::{KvDtype, ModuleClass, Plan, SpecMethod, weight_inventory};

/// Bytes one token occupies in one layer's KV cache.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct KvLayout {
    /// MLA entry: the normalized latent c plus the roped shared key, every layer.
    pub mla_bytes: u64,
    /// Indexer key, on layers that run the indexer.
    pub indexer_bytes: u64,
}

/// fp8 latents carry one f32 scale per this many values.
pub const FP8_SCALE_GROUP: u64 = 128;

/// bf16 stores everything in 2 bytes. fp8_e4m3 stores the latent as e4m3 with an f32 scale
/// per 128 values and keeps the 64-wide rope key in bf16 (as FlashMLA's sparse layout does:
/// rope keys lose too much in fp8); the indexer key is e4m3 with one f32 scale.
pub fn kv_layout(plan: &Plan) -> KvLayout {
    let m = &plan.model;
    match plan.kv_cache.dtype {
        KvDtype::Bf16 => {
            KvLayout { mla_bytes: 2 * (m.kv_lora_rank + m.qk_rope_head_dim), indexer_bytes: 2 * m.index_head_dim }
        }
        KvDtype::Fp8E4m3 => KvLayout {
            mla_bytes: m.kv_lora_rank + 4 * m.kv_lora_rank.div_ceil(FP8_SCALE_GROUP) + 2 * m.qk_rope_head_dim,
            indexer_bytes: m.index_head_dim + 4,
        },
    }
}

/// Bytes of one class on one device, main layers and MTP apart.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ClassBytes {
    pub class: &'static str,
    pub mtp: bool,
    pub bytes_per_device: u64,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct MemoryReport {
    /// Bytes of the whole checkpoint (one copy of every weight).
    pub weights_bytes_total: u64,
    pub weights_bytes_per_device: u64,
    pub weights_by_class: Vec<ClassBytes>,
    pub kv_layout: KvLayout,
    /// Layers holding KV: the main stack, plus the MTP layers when speculation uses them.
    pub kv_layers: u64,
    pub kv_indexer_layers: u64,
    /// KV bytes per token on each device. MLA's latent is one shared KV head, so every tp
    /// rank of a replica holds the whole entry.
    pub kv_bytes_per_token: u64,
    pub usable_bytes_per_device: f64,
    pub kv_budget_bytes_per_device: f64,
    pub kv_tokens_per_device: u64,
    /// KV one request of maximum length needs: the smallest useful reserve.
    pub max_request_tokens: u64,
    pub max_request_kv_bytes: u64,
    /// Weight bytes one decode token reads on a device (uniform routing, no speculation).
    pub decode_weight_bytes_per_token: f64,
    /// Single-stream decode bound from weights alone: bandwidth / bytes read per token.
    pub decode_roofline_tok_s: f64,
    /// The same bound with the KV reads of a sequence at max_request_tokens.
    pub decode_kv_bytes_at_max_context: f64,
    pub decode_roofline_at_max_context_tok_s: f64,
    /// Most tokens one forward step of one replica can carry: the decode token and drafts of
    /// each of its running requests, plus one prefill chunk.
    pub max_step_tokens: u64,
}

pub fn memory_report(plan: &Plan) -> MemoryReport {
    let m = &plan.model;
    let inventory = weight_inventory(plan);
    let weights_bytes_total = inventory.iter().map(|g| g.total_bytes()).sum();
    let weights_bytes_per_device: u64 = inventory.iter().map(|g| g.bytes_per_device()).sum();
    let mut by_class: BTreeMap<(bool, ModuleClass), u64> = BTreeMap::new();
    for g in &inventory {
        *by_class.entry((g.mtp, g.class)).or_default() += g.bytes_per_device();
    }
    let weights_by_class = by_class
        .into_iter()
        .map(|((mtp, class), bytes_per_device)| ClassBytes { class: class.key(), mtp, bytes_per_device })
        .collect();

    let layout = kv_layout(plan);
    let spec_mtp = plan.speculative.method == SpecMethod::Mtp;
    let mtp_layers = if spec_mtp { m.num_nextn_predict_layers } else { 0 };
    let kv_layers = m.num_hidden_layers + mtp_layers;
    let kv_indexer_layers = m.num_full_indexer_layers() + mtp_layers;
    let kv_bytes_per_token = kv_layers * layout.mla_bytes + kv_indexer_layers * layout.indexer_bytes;

    let usable = plan.device.memory_bytes() * plan.kv_cache.memory_fraction;
    let kv_budget = usable - weights_bytes_per_device as f64;
    let kv_tokens_per_device = if kv_budget > 0.0 && kv_bytes_per_token > 0 {
        (kv_budget / kv_bytes_per_token as f64).floor() as u64
    } else {
        0
    };
    let max_request_tokens = plan.server.max_request_tokens();

    let decode_weight_bytes_per_token: f64 =
        inventory.iter().filter(|g| !g.mtp).map(|g| g.active_bytes_per_device()).sum();
    let bw = plan.device.bandwidth_bytes_s();
    let per_s = |bytes: f64| if bytes > 0.0 { bw / bytes } else { 0.0 };
    // Attention reads the selected entries (at most index_topk) of every layer; each full
    // indexer layer scans every cached indexer key.
    let ctx = max_request_tokens;
    let selected = ctx.min(m.index_topk);
    let decode_kv = (m.num_hidden_layers * selected * layout.mla_bytes
        + m.num_full_indexer_layers() * ctx * layout.indexer_bytes) as f64;

    let drafts = if spec_mtp { u64::from(plan.speculative.depth) } else { 0 };
    let per_replica = u64::from(plan.server.max_running_requests).div_ceil(u64::from(plan.parallel.dp.max(1)));
    let max_step_tokens = per_replica * (1 + drafts) + plan.server.prefill_chunk_tokens;

    MemoryReport {
        weights_bytes_total,
        weights_bytes_per_device,
        weights_by_class,
        kv_layout: layout,
        kv_layers,
        kv_indexer_layers,
        kv_bytes_per_token,
        usable_bytes_per_device: usable,
        kv_budget_bytes_per_device: kv_budget,
        kv_tokens_per_device,
        max_request_tokens,
        max_request_kv_bytes: max_request_tokens.saturating_mul(kv_bytes_per_token),
        decode_weight_bytes_per_token,
        decode_roofline_tok_s: per_s(decode_weight_bytes_per_token),
        decode_kv_bytes_at_max_context: decode_kv,
        decode_roofline_at_max_context_tok_s: per_s(decode_weight_bytes_per_token + decode_kv),
        max_step_tokens,
    }
}
