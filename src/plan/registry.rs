//! The registry of kernel variants this build has: each variant's op family, kernels/ source,
//! exported symbols, arches and largest token bucket. The kernel map (kernels.rs) picks from it.

/// A kernel variant built from kernels/<source>.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct KernelVariant {
    pub name: &'static str,
    pub op: &'static str,
    pub source: &'static str,
    /// extern "C" symbols the code object must export.
    pub symbols: &'static [&'static str],
    pub archs: &'static [&'static str],
    /// Largest token bucket it is made for.
    pub max_bucket: u64,
}

const ALL_ARCHES: &[&str] = &["gfx90a", "gfx940", "gfx942", "gfx950", "sm_80", "sm_90", "sm_90a"];

/// Every kernel variant in kernels/.
pub const REGISTRY: &[KernelVariant] = &[
    KernelVariant {
        name: "rmsnorm.block",
        op: "rmsnorm",
        source: "norm.hip",
        symbols: &["kiln_rmsnorm_f32"],
        archs: ALL_ARCHES,
        max_bucket: u64::MAX,
    },
    KernelVariant {
        name: "rope.interleaved",
        op: "rope",
        source: "rope.hip",
        symbols: &["kiln_rope_interleaved_f32"],
        archs: ALL_ARCHES,
        max_bucket: u64::MAX,
    },
    KernelVariant {
        name: "router.sigmoid_topk",
        op: "router",
        source: "router.hip",
        symbols: &["kiln_router_logits", "kiln_router_select"],
        archs: ALL_ARCHES,
        max_bucket: u64::MAX,
    },
    KernelVariant {
        name: "moe.mxfp4.wave_per_row",
        op: "moe.mxfp4",
        source: "moe_mxfp4.hip",
        symbols: &["kiln_moe_mxfp4_decode", "kiln_mxfp4_quantize_act"],
        archs: ALL_ARCHES,
        max_bucket: 64,
    },
    KernelVariant {
        name: "moe.mxfp4.tile64x32",
        op: "moe.mxfp4",
        source: "moe_mxfp4.hip",
        symbols: &["kiln_moe_mxfp4_prefill", "kiln_mxfp4_quantize_act"],
        archs: ALL_ARCHES,
        max_bucket: u64::MAX,
    },
    KernelVariant {
        name: "mla.decode.bf16",
        op: "mla.decode.bf16",
        source: "mla_decode.hip",
        symbols: &["kiln_mla_decode_bf16"],
        archs: ALL_ARCHES,
        max_bucket: u64::MAX,
    },
    KernelVariant {
        name: "mla.decode.fp8",
        op: "mla.decode.fp8_e4m3",
        source: "mla_decode.hip",
        symbols: &["kiln_mla_decode_fp8"],
        archs: ALL_ARCHES,
        max_bucket: u64::MAX,
    },
    KernelVariant {
        name: "indexer.radix_topk.bf16",
        op: "indexer.bf16",
        source: "indexer.hip",
        symbols: &["kiln_indexer_scores_bf16", "kiln_topk_f32"],
        archs: ALL_ARCHES,
        max_bucket: u64::MAX,
    },
    KernelVariant {
        name: "indexer.radix_topk.fp8",
        op: "indexer.fp8_e4m3",
        source: "indexer.hip",
        symbols: &["kiln_indexer_scores_fp8", "kiln_topk_f32"],
        archs: ALL_ARCHES,
        max_bucket: u64::MAX,
    },
    KernelVariant {
        name: "mla.decode.f32",
        op: "mla.decode.f32",
        source: "mla_decode.hip",
        symbols: &["kiln_mla_decode_f32"],
        archs: ALL_ARCHES,
        max_bucket: u64::MAX,
    },
    KernelVariant {
        name: "indexer.radix_topk.f32",
        op: "indexer.f32",
        source: "indexer.hip",
        symbols: &["kiln_indexer_scores_f32", "kiln_topk_f32"],
        archs: ALL_ARCHES,
        max_bucket: u64::MAX,
    },
    KernelVariant {
        name: "embed.gather",
        op: "embed",
        source: "embed.hip",
        symbols: &["kiln_embed_bf16", "kiln_embed_f32"],
        archs: ALL_ARCHES,
        max_bucket: u64::MAX,
    },
    KernelVariant {
        name: "layernorm.block",
        op: "layernorm",
        source: "norm.hip",
        symbols: &["kiln_layernorm_f32"],
        archs: ALL_ARCHES,
        max_bucket: u64::MAX,
    },
    KernelVariant {
        name: "elementwise.flat",
        op: "elementwise",
        source: "elementwise.hip",
        symbols: &[
            "kiln_add_f32",
            "kiln_scale_f32",
            "kiln_silu_mul_f32",
            "kiln_fill_i32",
            "kiln_copy_cols_f32",
            "kiln_gather_rows_f32",
        ],
        archs: ALL_ARCHES,
        max_bucket: u64::MAX,
    },
    KernelVariant {
        name: "linear.bf16.wave_per_row",
        op: "linear.bf16",
        source: "linear.hip",
        symbols: &["kiln_linear_bf16"],
        archs: ALL_ARCHES,
        max_bucket: u64::MAX,
    },
    KernelVariant {
        name: "linear.f32.wave_per_row",
        op: "linear.f32",
        source: "linear.hip",
        symbols: &["kiln_linear_f32"],
        archs: ALL_ARCHES,
        max_bucket: u64::MAX,
    },
    KernelVariant {
        name: "mla.heads.bf16",
        op: "mla.heads.bf16",
        source: "mla_heads.hip",
        symbols: &["kiln_absorb_q_bf16", "kiln_expand_v_bf16"],
        archs: ALL_ARCHES,
        max_bucket: u64::MAX,
    },
    KernelVariant {
        name: "mla.heads.f32",
        op: "mla.heads.f32",
        source: "mla_heads.hip",
        symbols: &["kiln_absorb_q_f32", "kiln_expand_v_f32"],
        archs: ALL_ARCHES,
        max_bucket: u64::MAX,
    },
    KernelVariant {
        name: "mla.heads.mxfp4",
        op: "mla.heads.mxfp4",
        source: "mla_heads.hip",
        symbols: &["kiln_absorb_q_mxfp4", "kiln_expand_v_mxfp4"],
        archs: ALL_ARCHES,
        max_bucket: u64::MAX,
    },
    KernelVariant {
        name: "kv_write.bf16",
        op: "kv_write.bf16",
        source: "kv_write.hip",
        symbols: &["kiln_kv_write_bf16", "kiln_index_write_bf16"],
        archs: ALL_ARCHES,
        max_bucket: u64::MAX,
    },
    KernelVariant {
        name: "kv_write.fp8",
        op: "kv_write.fp8_e4m3",
        source: "kv_write.hip",
        symbols: &["kiln_kv_write_fp8", "kiln_index_write_fp8"],
        archs: ALL_ARCHES,
        max_bucket: u64::MAX,
    },
    KernelVariant {
        name: "kv_write.f32",
        op: "kv_write.f32",
        source: "kv_write.hip",
        symbols: &["kiln_kv_write_f32", "kiln_index_write_f32"],
        archs: ALL_ARCHES,
        max_bucket: u64::MAX,
    },
    KernelVariant {
        name: "moe.dispatch.atomic",
        op: "moe.dispatch",
        source: "moe_dispatch.hip",
        symbols: &["kiln_moe_count", "kiln_moe_offsets", "kiln_moe_place", "kiln_moe_gather", "kiln_moe_combine"],
        archs: ALL_ARCHES,
        max_bucket: u64::MAX,
    },
    KernelVariant {
        name: "sample.greedy_top_p",
        op: "sample",
        source: "sample.hip",
        symbols: &["kiln_sample_greedy", "kiln_sample_top_p"],
        archs: ALL_ARCHES,
        max_bucket: u64::MAX,
    },
];

pub fn variant(name: &str) -> Option<&'static KernelVariant> {
    REGISTRY.iter().find(|v| v.name == name)
}

/// Every kernels/ source file, once.
pub fn all_sources() -> Vec<&'static str> {
    let mut s: Vec<&str> = REGISTRY.iter().map(|v| v.source).collect();
    s.sort_unstable();
    s.dedup();
    s
}

/// Every symbol the registry names from `source`: what a code object built from it exports,
/// so every format's variant (the f32 oracle formats included) is there for the backend.
pub fn source_symbols(source: &str) -> Vec<&'static str> {
    let mut s: Vec<&'static str> =
        REGISTRY.iter().filter(|v| v.source == source).flat_map(|v| v.symbols.iter().copied()).collect();
    s.sort_unstable();
    s.dedup();
    s
}

/// Every kernel symbol the registry names, once.
pub fn all_symbols() -> Vec<&'static str> {
    let mut s: Vec<&'static str> = REGISTRY.iter().flat_map(|v| v.symbols.iter().copied()).collect();
    s.sort_unstable();
    s.dedup();
    s
}
