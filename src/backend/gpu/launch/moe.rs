//! Launches of the MoE kernels: the router, dispatch, gather and the weighted combine.

use super::*;

/// The router's buffers for T tokens of width d over E experts.
pub struct RouterBufs<'a> {
    /// [T, d] f32
    pub x: &'a Buffer,
    /// [E, d] f32
    pub w: &'a Buffer,
    /// [E] f32
    pub bias: &'a Buffer,
    /// [T, E] f32 scratch
    pub logits: &'a Buffer,
    /// [T, k] i32, ascending
    pub idx: &'a Buffer,
    /// [T, k] f32
    pub weights: &'a Buffer,
}

/// Router logits over the whole GPU, then each token's experts and weights.
pub fn router(gpu: &Gpu, b: &RouterBufs, t: usize, d: usize, s: &RouterConfig) -> Result<()> {
    const K: &str = "kiln_router_select";
    if s.experts > 1024 || s.top_k > 16 || s.groups > 64 || s.groups == 0 || !s.experts.is_multiple_of(s.groups) {
        return Err(refused(format!(
            "{K}: {} experts, top {}, {} groups beyond the kernel",
            s.experts, s.top_k, s.groups
        )));
    }
    f32s(b.x, t * d, "x", K)?;
    f32s(b.w, s.experts * d, "w", K)?;
    f32s(b.bias, s.experts, "bias", K)?;
    f32s(b.logits, t * s.experts, "logits", K)?;
    i32s(b.idx, t * s.top_k, "idx", K)?;
    f32s(b.weights, t * s.top_k, "weights", K)?;
    let waves = ROWS_PER_BLOCK;
    let grid = Launch::new(Dim3::xy(grid(s.experts, waves), count(t)), Dim3::x((waves * gpu.wave()) as u32));
    let args = KernelArgs::new().buf(b.x).buf(b.w).buf(b.logits).int(d).int(s.experts);
    // SAFETY: kiln_router_logits(const float* x, const float* w, float* logits, int d, int e);
    // one wave per (expert, token), blockIdx.y the token; sizes checked above.
    unsafe { gpu.launch("kiln_router_logits", grid, args)? };
    let args = KernelArgs::new()
        .buf(b.logits)
        .buf(b.bias)
        .buf(b.idx)
        .buf(b.weights)
        .int(s.experts)
        .int(s.top_k)
        .int(s.groups)
        .int(s.keep_groups)
        .i32(i32::from(s.normalize))
        .f32(s.scaling);
    // SAFETY: kiln_router_select(const float* logits, const float* bias, int* idx, float*
    // weights, int e, int k, int groups, int keep_groups, int normalize, float scaling); one
    // block per token; limits checked above.
    unsafe { gpu.launch(K, per_row(t), args) }
}

/// The expert-sorted layout of a step's (token, choice) pairs.
pub struct Dispatch<'a> {
    pub idx: &'a Buffer,     // [n, k] i32 expert ids
    pub counts: &'a Buffer,  // [E] i32 scratch
    pub offsets: &'a Buffer, // [E + 1] i32
    pub cursor: &'a Buffer,  // [E] i32 scratch
    pub pos: &'a Buffer,     // [n, k] i32 the row of each choice
    pub n: usize,
    pub k: usize,
    pub experts: usize,
}

/// Counts rows per expert, their offsets, and each choice's row.
pub fn moe_dispatch(gpu: &Gpu, d: &Dispatch) -> Result<()> {
    let nk = d.n * d.k;
    i32s(d.idx, nk, "idx", "kiln_moe_count")?;
    i32s(d.pos, nk, "pos", "kiln_moe_place")?;
    i32s(d.counts, d.experts, "counts", "kiln_moe_count")?;
    i32s(d.cursor, d.experts, "cursor", "kiln_moe_offsets")?;
    i32s(d.offsets, d.experts + 1, "offsets", "kiln_moe_offsets")?;
    fill_i32(gpu, d.counts, 0, d.experts)?;
    // SAFETY: kiln_moe_count(const int* idx, int* counts, int nk); expert ids < E (the router's).
    unsafe { gpu.launch("kiln_moe_count", flat(nk), KernelArgs::new().buf(d.idx).buf(d.counts).int(nk))? };
    let args = KernelArgs::new().buf(d.counts).buf(d.offsets).buf(d.cursor).int(d.experts);
    // SAFETY: kiln_moe_offsets(const int* counts, int* offsets, int* cursor, int experts); one
    // thread.
    unsafe { gpu.launch("kiln_moe_offsets", Launch::new(Dim3::x(1), Dim3::x(gpu.wave() as u32)), args)? };
    let args = KernelArgs::new().buf(d.idx).buf(d.cursor).buf(d.pos).int(nk);
    // SAFETY: kiln_moe_place(const int* idx, int* cursor, int* pos, int nk).
    unsafe { gpu.launch("kiln_moe_place", flat(nk), args) }
}

/// x [n, width] -> xs [n * k, width] in expert order.
pub fn moe_gather(gpu: &Gpu, x: &Buffer, pos: &Buffer, xs: &Buffer, n: usize, k: usize, width: usize) -> Result<()> {
    const K: &str = "kiln_moe_gather";
    f32s(x, n * width, "x", K)?;
    i32s(pos, n * k, "pos", K)?;
    f32s(xs, n * k * width, "xs", K)?;
    let args = KernelArgs::new().buf(x).buf(pos).buf(xs).int(n).int(k).int(width);
    // SAFETY: kiln_moe_gather(const float* x, const int* pos, float* xs, int n, int k, int d);
    // pos is a permutation of 0 .. n*k (moe_dispatch).
    unsafe { gpu.launch(K, flat(n * k * width), args) }
}

/// ys [n * k, width], weights [n, k] -> y [n, width] = sum_j weights[t, j] ys[pos[t, j]].
#[allow(clippy::too_many_arguments)]
pub fn moe_combine(
    gpu: &Gpu,
    ys: &Buffer,
    pos: &Buffer,
    weights: &Buffer,
    y: &Buffer,
    n: usize,
    k: usize,
    width: usize,
) -> Result<()> {
    const K: &str = "kiln_moe_combine";
    f32s(ys, n * k * width, "ys", K)?;
    i32s(pos, n * k, "pos", K)?;
    f32s(weights, n * k, "weights", K)?;
    f32s(y, n * width, "y", K)?;
    let args = KernelArgs::new().buf(ys).buf(pos).buf(weights).buf(y).int(n).int(k).int(width);
    // SAFETY: kiln_moe_combine(const float* ys, const int* pos, const float* weights, float* y,
    // int n, int k, int d).
    unsafe { gpu.launch(K, flat(n * width), args) }
}
