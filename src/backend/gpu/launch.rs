//! Every kernel's launch, written once: its parameters in the order and types of its
//! `extern "C"` signature, and its grid and block from the shape. The GPU backend and the op
//! declarations (`ops/`, which check each kernel against its CPU twin) both launch through
//! these, so what the checks run is what the forward runs.
//!
//! Each function checks that every buffer is at least as large as the kernel touches at the
//! given shape before launching; what a kernel reads through indices stored in device memory
//! (slots, page tables, selections, expert ids) is kiln's own bookkeeping and is not checked
//! here.

use crate::backend::RouterConfig;
use crate::device::{Buffer, Dim3, Gpu, KernelArgs, Launch};
use crate::error::{Error, Result};
use crate::kv::KvFormat;

/// Threads per block of the one-thread-per-element kernels and the row kernels.
const BLOCK: usize = 256;
/// Output rows per block of the wave-per-row linear kernels (one wave each: 64 threads on AMD
/// and the emulated device, 32 on CUDA, `Gpu::wave`).
const ROWS_PER_BLOCK: usize = 4;
/// The MXFP4 tile kernel's output tile: weight rows x tokens.
const TILE_N: usize = 64;
const TILE_M: usize = 32;
/// Threads per block of the per-token KV writes (the fp8 scale group is 128 values).
const KV_BLOCK: usize = 128;

fn grid(n: usize, per_block: usize) -> u32 {
    u32::try_from(n.div_ceil(per_block.max(1))).expect("grid beyond u32")
}

fn count(n: usize) -> u32 {
    u32::try_from(n).expect("grid beyond u32")
}

fn flat(n: usize) -> Launch {
    Launch::new(Dim3::x(grid(n, BLOCK)), Dim3::x(BLOCK as u32))
}

fn per_row(rows: usize) -> Launch {
    Launch::new(Dim3::x(count(rows)), Dim3::x(BLOCK as u32))
}

/// Fails unless `b` holds `n` elements of `size` bytes.
fn need(b: &Buffer, n: usize, size: usize, what: &str, kernel: &str) -> Result<()> {
    if b.bytes() < n * size {
        return Err(Error::Device {
            device: "launch".into(),
            message: format!("{kernel}: {what} holds {} bytes but the shape needs {}", b.bytes(), n * size),
        });
    }
    Ok(())
}

fn f32s(b: &Buffer, n: usize, what: &str, kernel: &str) -> Result<()> {
    need(b, n, 4, what, kernel)
}

fn i32s(b: &Buffer, n: usize, what: &str, kernel: &str) -> Result<()> {
    need(b, n, 4, what, kernel)
}

/// How a dense weight's elements are stored.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Dense {
    Bf16,
    F32,
}

impl Dense {
    pub fn bytes(self) -> usize {
        match self {
            Dense::Bf16 => 2,
            Dense::F32 => 4,
        }
    }
}

/// A weight in device memory as the kernels read it.
pub enum WeightBufs {
    /// [G, N, K] elements.
    Dense { format: Dense, w: Buffer },
    /// codes [G, N, K/2], E8M0 scales [G, N, K/32].
    Mxfp4 { codes: Buffer, scales: Buffer },
}

impl WeightBufs {
    pub fn view(&self) -> WeightView<'_> {
        match self {
            WeightBufs::Dense { format, w } => WeightView::Dense { format: *format, w },
            WeightBufs::Mxfp4 { codes, scales } => WeightView::Mxfp4 { codes, scales },
        }
    }
}

/// A weight's buffers, borrowed for a launch.
#[derive(Clone, Copy)]
pub enum WeightView<'a> {
    Dense { format: Dense, w: &'a Buffer },
    Mxfp4 { codes: &'a Buffer, scales: &'a Buffer },
}

/// A weight matrix on the device: its buffers and each group's shape [n, k] (a stack of
/// groups for grouped linears, one for the rest).
#[derive(Clone, Copy)]
pub struct Matrix<'a> {
    pub view: WeightView<'a>,
    pub n: usize,
    pub k: usize,
}

/// x [rows, d] -> y [rows, d]: x * rsqrt(mean(x^2) + eps) * w.
pub fn rms_norm(gpu: &Gpu, x: &Buffer, w: &Buffer, y: &Buffer, rows: usize, d: usize, eps: f32) -> Result<()> {
    const K: &str = "kiln_rmsnorm_f32";
    f32s(x, rows * d, "x", K)?;
    f32s(w, d, "w", K)?;
    f32s(y, rows * d, "y", K)?;
    let args = KernelArgs::new().buf(x).buf(w).buf(y).int(d).f32(eps);
    // SAFETY: kiln_rmsnorm_f32(const float* x, const float* w, float* y, int d, float eps);
    // one block per row; sizes checked above.
    unsafe { gpu.launch(K, per_row(rows), args) }
}

/// x [rows, d] -> y [rows, d]: (x - mean) / sqrt(var + eps) * w + b.
#[allow(clippy::too_many_arguments)]
pub fn layer_norm(
    gpu: &Gpu,
    x: &Buffer,
    w: &Buffer,
    b: &Buffer,
    y: &Buffer,
    rows: usize,
    d: usize,
    eps: f32,
) -> Result<()> {
    const K: &str = "kiln_layernorm_f32";
    f32s(x, rows * d, "x", K)?;
    f32s(w, d, "w", K)?;
    f32s(b, d, "b", K)?;
    f32s(y, rows * d, "y", K)?;
    let args = KernelArgs::new().buf(x).buf(w).buf(b).buf(y).int(d).f32(eps);
    // SAFETY: kiln_layernorm_f32(const float* x, const float* w, const float* b, float* y, int d,
    // float eps); one block per row; sizes checked above.
    unsafe { gpu.launch(K, per_row(rows), args) }
}

/// table [V, d] rows for tokens [n] -> y [n, d].
pub fn embed(gpu: &Gpu, table: Matrix, tokens: &Buffer, y: &Buffer, n: usize) -> Result<()> {
    let (vocab, d) = (table.n, table.k);
    let WeightView::Dense { format, w: table } = table.view else {
        return Err(Error::Usage("an MXFP4 embedding table has no kernel".into()));
    };
    let k = match format {
        Dense::Bf16 => "kiln_embed_bf16",
        Dense::F32 => "kiln_embed_f32",
    };
    need(table, vocab * d, format.bytes(), "table", k)?;
    i32s(tokens, n, "tokens", k)?;
    f32s(y, n * d, "y", k)?;
    let args = KernelArgs::new().buf(table).buf(tokens).buf(y).int(n).int(d);
    // SAFETY: kiln_embed_{bf16,f32}(const T* table, const int* tokens, float* y, int n, int d);
    // one thread per element; token ids were checked against the vocabulary on the host.
    unsafe { gpu.launch(k, flat(n * d), args) }
}

/// acc [n] += x [n].
pub fn add(gpu: &Gpu, acc: &Buffer, x: &Buffer, n: usize) -> Result<()> {
    const K: &str = "kiln_add_f32";
    f32s(acc, n, "acc", K)?;
    f32s(x, n, "x", K)?;
    // SAFETY: kiln_add_f32(float* acc, const float* x, int n); one thread per element.
    unsafe { gpu.launch(K, flat(n), KernelArgs::new().buf(acc).buf(x).int(n)) }
}

/// x [n] *= s.
pub fn scale(gpu: &Gpu, x: &Buffer, s: f32, n: usize) -> Result<()> {
    const K: &str = "kiln_scale_f32";
    f32s(x, n, "x", K)?;
    // SAFETY: kiln_scale_f32(float* x, float s, int n); one thread per element.
    unsafe { gpu.launch(K, flat(n), KernelArgs::new().buf(x).f32(s).int(n)) }
}

/// y [n] = silu(g) * u.
pub fn silu_mul(gpu: &Gpu, g: &Buffer, u: &Buffer, y: &Buffer, n: usize) -> Result<()> {
    const K: &str = "kiln_silu_mul_f32";
    for (b, what) in [(g, "g"), (u, "u"), (y, "y")] {
        f32s(b, n, what, K)?;
    }
    // SAFETY: kiln_silu_mul_f32(const float* g, const float* u, float* y, int n).
    unsafe { gpu.launch(K, flat(n), KernelArgs::new().buf(g).buf(u).buf(y).int(n)) }
}

/// x [n] = v.
pub fn fill_i32(gpu: &Gpu, x: &Buffer, v: i32, n: usize) -> Result<()> {
    const K: &str = "kiln_fill_i32";
    i32s(x, n, "x", K)?;
    // SAFETY: kiln_fill_i32(int* x, int v, int n).
    unsafe { gpu.launch(K, flat(n), KernelArgs::new().buf(x).i32(v).int(n)) }
}

/// Columns: y [rows, y_width] at [y_offset, +cols) = x [rows, x_width] at [x_offset, +cols).
pub struct Columns {
    pub rows: usize,
    pub x_width: usize,
    pub x_offset: usize,
    pub y_width: usize,
    pub y_offset: usize,
    pub cols: usize,
}

pub fn copy_cols(gpu: &Gpu, x: &Buffer, y: &Buffer, c: &Columns) -> Result<()> {
    const K: &str = "kiln_copy_cols_f32";
    if c.x_offset + c.cols > c.x_width || c.y_offset + c.cols > c.y_width {
        return Err(Error::Device { device: "launch".into(), message: format!("{K}: columns out of the rows") });
    }
    f32s(x, c.rows * c.x_width, "x", K)?;
    f32s(y, c.rows * c.y_width, "y", K)?;
    let args = KernelArgs::new()
        .buf(x)
        .buf(y)
        .int(c.rows)
        .int(c.x_width)
        .int(c.x_offset)
        .int(c.y_width)
        .int(c.y_offset)
        .int(c.cols);
    // SAFETY: kiln_copy_cols_f32(const float* x, float* y, int rows, int x_width, int x_offset,
    // int y_width, int y_offset, int cols); one thread per (row, column); bounds checked above.
    unsafe { gpu.launch(K, flat(c.rows * c.cols), args) }
}

/// y [n, width] = x [rows[i]] for i < n; x holds `x_rows` rows.
pub fn gather_rows(
    gpu: &Gpu,
    x: &Buffer,
    x_rows: usize,
    rows: &Buffer,
    y: &Buffer,
    n: usize,
    width: usize,
) -> Result<()> {
    const K: &str = "kiln_gather_rows_f32";
    f32s(x, x_rows * width, "x", K)?;
    i32s(rows, n, "rows", K)?;
    f32s(y, n * width, "y", K)?;
    let args = KernelArgs::new().buf(x).buf(rows).buf(y).int(n).int(width);
    // SAFETY: kiln_gather_rows_f32(const float* x, const int* rows, float* y, int n, int width);
    // row ids come from the host, checked against x_rows by the caller.
    unsafe { gpu.launch(K, flat(n * width), args) }
}

/// x [rows, k] onto the MXFP4 grid (W4A4) -> y [rows, k]; k % 32 == 0.
pub fn mxfp4_quantize(gpu: &Gpu, x: &Buffer, y: &Buffer, rows: usize, k: usize) -> Result<()> {
    const K: &str = "kiln_mxfp4_quantize_act";
    f32s(x, rows * k, "x", K)?;
    f32s(y, rows * k, "y", K)?;
    let args = KernelArgs::new().buf(x).buf(y).int(rows).int(k);
    // SAFETY: kiln_mxfp4_quantize_act(const float* x, float* y, int rows, int k); one thread
    // per 32-group.
    unsafe { gpu.launch(K, flat(rows * k / 32), args) }
}

/// Which kernel of a linear family serves a launch (the kernel map's choice).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LinearKernel {
    /// One wave per output row, the row reused from cache for each token of its group.
    WavePerRow,
    /// MXFP4 only: a 64 x 32 output tile through shared memory.
    Tile,
}

/// The rows of x each weight group multiplies.
pub enum Groups<'a> {
    /// One matrix over all `m` rows.
    One { m: usize },
    /// `groups` matrices; offsets [groups + 1] on the device, rows 0 .. m in all, and no group
    /// holds more than `most` rows (the tile kernel's grid).
    Many { offsets: &'a Buffer, groups: usize, m: usize, most: usize },
}

impl Groups<'_> {
    fn count(&self) -> usize {
        match self {
            Groups::One { .. } => 1,
            Groups::Many { groups, .. } => *groups,
        }
    }

    fn rows(&self) -> usize {
        match self {
            Groups::One { m } | Groups::Many { m, .. } => *m,
        }
    }

    fn most(&self) -> usize {
        match self {
            Groups::One { m } => *m,
            Groups::Many { most, .. } => *most,
        }
    }

    fn offsets(&self) -> Option<&Buffer> {
        match self {
            Groups::One { .. } => None,
            Groups::Many { offsets, .. } => Some(offsets),
        }
    }
}

/// y [M, n] = x [M, k] W_g^T per group g of rows; W holds the groups' [n, k] matrices.
pub fn linear(gpu: &Gpu, kernel: LinearKernel, w: Matrix, x: &Buffer, groups: &Groups, y: &Buffer) -> Result<()> {
    let (n, k) = (w.n, w.k);
    let w = w.view;
    let (g, m) = (groups.count(), groups.rows());
    if let Some(o) = groups.offsets() {
        i32s(o, g + 1, "offsets", "linear")?;
    }
    let grouped_args = |a: KernelArgs| a.buf(x).buf_or_null(groups.offsets()).buf(y).int(n).int(k).int(m);
    let wave = Launch::new(Dim3::xy(grid(n, ROWS_PER_BLOCK), count(g)), Dim3::x((ROWS_PER_BLOCK * gpu.wave()) as u32));
    match w {
        WeightView::Dense { format, w } => {
            let sym = match format {
                Dense::Bf16 => "kiln_linear_bf16",
                Dense::F32 => "kiln_linear_f32",
            };
            need(w, g * n * k, format.bytes(), "w", sym)?;
            f32s(x, m * k, "x", sym)?;
            f32s(y, m * n, "y", sym)?;
            let args = grouped_args(KernelArgs::new().buf(w));
            // SAFETY: kiln_linear_{bf16,f32}(const T* w, const float* x, const int* offsets,
            // float* y, int n, int k, int m_rows); one wave per output row, blockIdx.y the
            // group; offsets (or 0 .. m) index rows of x and y, sizes checked above.
            unsafe { gpu.launch(sym, wave, args) }
        }
        WeightView::Mxfp4 { codes, scales } => {
            let sym = match kernel {
                LinearKernel::WavePerRow => "kiln_moe_mxfp4_decode",
                LinearKernel::Tile => "kiln_moe_mxfp4_prefill",
            };
            need(codes, g * n * k / 2, 1, "codes", sym)?;
            need(scales, g * n * k / 32, 1, "scales", sym)?;
            f32s(x, m * k, "x", sym)?;
            f32s(y, m * n, "y", sym)?;
            let args = grouped_args(KernelArgs::new().buf(codes).buf(scales));
            let launch = match kernel {
                LinearKernel::WavePerRow => wave,
                LinearKernel::Tile => Launch::new(
                    Dim3::xyz(grid(n, TILE_N), grid(groups.most(), TILE_M).max(1), count(g)),
                    Dim3::x(BLOCK as u32),
                ),
            };
            // SAFETY: kiln_moe_mxfp4_{decode,prefill}(const uint8_t* codes, const uint8_t*
            // scales, const float* x, const int* offsets, float* y, int n, int k, int m_rows);
            // blockIdx.y (decode) or blockIdx.z (tile) the group; tails are masked.
            unsafe { gpu.launch(sym, launch, args) }
        }
    }
}

/// x [rows, heads, stride] rotated in place on dims [offset, offset + rot) of each head at
/// positions [rows].
#[allow(clippy::too_many_arguments)]
pub fn rope(
    gpu: &Gpu,
    x: &Buffer,
    positions: &Buffer,
    inv_freq: &Buffer,
    rows: usize,
    heads: usize,
    stride: usize,
    offset: usize,
    rot: usize,
) -> Result<()> {
    const K: &str = "kiln_rope_interleaved_f32";
    if offset + rot > stride {
        return Err(Error::Device { device: "launch".into(), message: format!("{K}: dims beyond the head") });
    }
    f32s(x, rows * heads * stride, "x", K)?;
    i32s(positions, rows, "positions", K)?;
    f32s(inv_freq, rot / 2, "inv_freq", K)?;
    let args =
        KernelArgs::new().buf(x).buf(positions).buf(inv_freq).int(rows).int(heads).int(stride).int(offset).int(rot);
    // SAFETY: kiln_rope_interleaved_f32(float* x, const int* positions, const float* inv_freq,
    // int rows, int heads, int stride, int offset, int rot); one thread per (row, head, pair).
    unsafe { gpu.launch(K, flat(rows * heads * rot / 2), args) }
}

/// Where a layer's entries live: `slots` entries of `entry` bytes.
pub struct Paged<'a> {
    pub store: &'a Buffer,
    pub slots: usize,
    pub entry: usize,
}

impl Paged<'_> {
    fn check(&self, kernel: &str) -> Result<()> {
        need(self.store, self.slots, self.entry, "the KV store", kernel)
    }
}

/// latent [n, r], rope [n, dr] into the entries at slots [n].
#[allow(clippy::too_many_arguments)]
pub fn kv_write(
    gpu: &Gpu,
    format: KvFormat,
    latent: &Buffer,
    rope: &Buffer,
    slots: &Buffer,
    kv: &Paged,
    n: usize,
    r: usize,
    dr: usize,
) -> Result<()> {
    let k = match format {
        KvFormat::F32 => "kiln_kv_write_f32",
        KvFormat::Bf16 => "kiln_kv_write_bf16",
        KvFormat::Fp8E4m3 => "kiln_kv_write_fp8",
    };
    f32s(latent, n * r, "latent", k)?;
    f32s(rope, n * dr, "rope", k)?;
    i32s(slots, n, "slots", k)?;
    kv.check(k)?;
    let args = KernelArgs::new().buf(latent).buf(rope).buf(slots).buf(kv.store).int(r).int(dr).int(kv.entry);
    // SAFETY: kiln_kv_write_{f32,bf16,fp8}(const float* latent, const float* rope, const int*
    // slots, uint8_t* kv, int r, int dr, int entry); one block per token; slots come from the
    // page table, within the store.
    unsafe { gpu.launch(k, Launch::new(Dim3::x(count(n)), Dim3::x(KV_BLOCK as u32)), args) }
}

/// key [n, di] into the indexer entries at slots [n].
pub fn index_write(
    gpu: &Gpu,
    format: KvFormat,
    key: &Buffer,
    slots: &Buffer,
    keys: &Paged,
    n: usize,
    di: usize,
) -> Result<()> {
    let k = match format {
        KvFormat::F32 => "kiln_index_write_f32",
        KvFormat::Bf16 => "kiln_index_write_bf16",
        KvFormat::Fp8E4m3 => "kiln_index_write_fp8",
    };
    f32s(key, n * di, "key", k)?;
    i32s(slots, n, "slots", k)?;
    keys.check(k)?;
    let args = KernelArgs::new().buf(key).buf(slots).buf(keys.store).int(di).int(keys.entry);
    // SAFETY: kiln_index_write_*(const float* key, const int* slots, uint8_t* keys, int di, int
    // entry); one block per token.
    unsafe { gpu.launch(k, Launch::new(Dim3::x(count(n)), Dim3::x(KV_BLOCK as u32)), args) }
}

/// Each query's page table and visible length.
pub struct Tables<'a> {
    pub pages: &'a Buffer, // [T, max_pages] i32
    pub lens: &'a Buffer,  // [T] i32
    pub page: usize,
    pub max_pages: usize,
}

impl Tables<'_> {
    fn check(&self, t: usize, kernel: &str) -> Result<()> {
        i32s(self.pages, t * self.max_pages, "pages", kernel)?;
        i32s(self.lens, t, "lens", kernel)
    }
}

/// Indexer scores of queries q [T, hi, di] with head weights w [T, hi] over each one's keys
/// -> scores [T, stride] (positions at or past its length are -inf); stride >= every length.
#[allow(clippy::too_many_arguments)]
pub fn indexer_scores(
    gpu: &Gpu,
    format: KvFormat,
    q: &Buffer,
    w: &Buffer,
    keys: &Paged,
    tables: &Tables,
    scores: &Buffer,
    t: usize,
    hi: usize,
    di: usize,
    stride: usize,
    dot_scale: f32,
) -> Result<()> {
    let k = match format {
        KvFormat::F32 => "kiln_indexer_scores_f32",
        KvFormat::Bf16 => "kiln_indexer_scores_bf16",
        KvFormat::Fp8E4m3 => "kiln_indexer_scores_fp8",
    };
    if hi * di > 8192 {
        return Err(Error::Device { device: "launch".into(), message: format!("{k}: {hi} x {di} query beyond 8192") });
    }
    f32s(q, t * hi * di, "q", k)?;
    f32s(w, t * hi, "w", k)?;
    f32s(scores, t * stride, "scores", k)?;
    keys.check(k)?;
    tables.check(t, k)?;
    let args = KernelArgs::new()
        .buf(q)
        .buf(w)
        .buf(keys.store)
        .buf(tables.pages)
        .buf(tables.lens)
        .buf(scores)
        .int(hi)
        .int(di)
        .int(keys.entry)
        .int(tables.page)
        .int(tables.max_pages)
        .int(stride)
        .f32(dot_scale);
    // SAFETY: kiln_indexer_scores_*(const float* q, const float* w, const uint8_t* keys, const
    // int* pages, const int* lens, float* scores, int hi, int di, int entry, int page, int
    // max_pages, int stride, float dot_scale); grid (T, ceil(stride / 256)), one key a thread.
    unsafe { gpu.launch(k, Launch::new(Dim3::xy(count(t), grid(stride, BLOCK)), Dim3::x(BLOCK as u32)), args) }
}

/// The `k` first positions of each row of scores [T, stride] under the ranking rule ->
/// idx [T, k] (unused = -1); rows no longer than k keep every position.
pub fn top_k(gpu: &Gpu, scores: &Buffer, lens: &Buffer, idx: &Buffer, t: usize, stride: usize, k: usize) -> Result<()> {
    const K: &str = "kiln_topk_f32";
    f32s(scores, t * stride, "scores", K)?;
    i32s(lens, t, "lens", K)?;
    i32s(idx, t * k, "idx", K)?;
    let args = KernelArgs::new().buf(scores).buf(lens).buf(idx).int(stride).int(k);
    // SAFETY: kiln_topk_f32(const float* scores, const int* lens, int* idx, int stride, int k);
    // one block per row; lens <= stride (the caller sizes stride to the longest).
    unsafe { gpu.launch(K, per_row(t), args) }
}

/// Absorbed MLA attention: q_abs [T, H, r], q_rope [T, H, dr] over each query's keys (its
/// selection sel [T, topk] of positions, or every visible key) -> out [T, H, r].
pub struct Attention<'a> {
    pub q_abs: &'a Buffer,
    pub q_rope: &'a Buffer,
    pub sel: Option<(&'a Buffer, usize)>,
    pub out: &'a Buffer,
    pub t: usize,
    pub heads: usize,
    pub r: usize,
    pub dr: usize,
    pub scale: f32,
}

pub fn mla_decode(gpu: &Gpu, format: KvFormat, a: &Attention, kv: &Paged, tables: &Tables) -> Result<()> {
    let k = match format {
        KvFormat::F32 => "kiln_mla_decode_f32",
        KvFormat::Bf16 => "kiln_mla_decode_bf16",
        KvFormat::Fp8E4m3 => "kiln_mla_decode_fp8",
    };
    if a.r > 1024 || a.dr > 128 {
        return Err(Error::Device {
            device: "launch".into(),
            message: format!("{k}: r {} > 1024 or dr {} > 128", a.r, a.dr),
        });
    }
    f32s(a.q_abs, a.t * a.heads * a.r, "q_abs", k)?;
    f32s(a.q_rope, a.t * a.heads * a.dr, "q_rope", k)?;
    f32s(a.out, a.t * a.heads * a.r, "out", k)?;
    kv.check(k)?;
    tables.check(a.t, k)?;
    let topk = match a.sel {
        Some((sel, topk)) => {
            i32s(sel, a.t * topk, "sel", k)?;
            topk
        }
        None => 0,
    };
    let args = KernelArgs::new()
        .buf(a.q_abs)
        .buf(a.q_rope)
        .buf(kv.store)
        .buf(tables.pages)
        .buf(tables.lens)
        .buf_or_null(a.sel.map(|s| s.0))
        .buf(a.out)
        .int(a.heads)
        .int(a.r)
        .int(a.dr)
        .int(kv.entry)
        .int(tables.page)
        .int(tables.max_pages)
        .int(topk)
        .f32(a.scale);
    // SAFETY: kiln_mla_decode_*(const float* q_abs, const float* q_rope, const uint8_t* kv,
    // const int* pages, const int* lens, const int* sel, float* out, int heads, int r, int dr,
    // int entry, int page, int max_pages, int topk, float scale); grid (T, H), block 256.
    unsafe { gpu.launch(k, Launch::new(Dim3::xy(count(a.t), count(a.heads)), Dim3::x(BLOCK as u32)), args) }
}

/// kv_b [H * (nope + v), r] in its stored format.
pub struct KvB<'a> {
    pub w: WeightView<'a>,
    pub heads: usize,
    pub nope: usize,
    pub rope: usize,
    pub v: usize,
    pub r: usize,
}

impl KvB<'_> {
    /// (absorb symbol, expand symbol, codes or elements, MXFP4 scales, bytes of w).
    fn parts(&self) -> (&'static str, &'static str, &Buffer, Option<&Buffer>, usize) {
        let elems = self.heads * (self.nope + self.v) * self.r;
        match self.w {
            WeightView::Dense { format: Dense::Bf16, w } => {
                ("kiln_absorb_q_bf16", "kiln_expand_v_bf16", w, None, elems * 2)
            }
            WeightView::Dense { format: Dense::F32, w } => {
                ("kiln_absorb_q_f32", "kiln_expand_v_f32", w, None, elems * 4)
            }
            WeightView::Mxfp4 { codes, scales } => {
                ("kiln_absorb_q_mxfp4", "kiln_expand_v_mxfp4", codes, Some(scales), elems / 2)
            }
        }
    }
}

/// q [n, H, nope + rope] -> q_abs [n, H, r] through kv_b's key half.
pub fn absorb_q(gpu: &Gpu, kv_b: &KvB, q: &Buffer, q_abs: &Buffer, n: usize) -> Result<()> {
    let (sym, _, w, scales, bytes) = kv_b.parts();
    need(w, bytes, 1, "kv_b", sym)?;
    f32s(q, n * kv_b.heads * (kv_b.nope + kv_b.rope), "q", sym)?;
    f32s(q_abs, n * kv_b.heads * kv_b.r, "q_abs", sym)?;
    let args = KernelArgs::new()
        .buf(w)
        .buf_or_null(scales)
        .buf(q)
        .buf(q_abs)
        .int(n)
        .int(kv_b.heads)
        .int(kv_b.nope)
        .int(kv_b.rope)
        .int(kv_b.v)
        .int(kv_b.r);
    // SAFETY: kiln_absorb_q_*(const void* w, const uint8_t* scales, const float* q, float*
    // q_abs, int n, int heads, int nope, int rope, int v, int r); one thread per output.
    unsafe { gpu.launch(sym, flat(n * kv_b.heads * kv_b.r), args) }
}

/// o_lat [n, H, r] -> out [n, H, v] through kv_b's value half.
pub fn expand_v(gpu: &Gpu, kv_b: &KvB, o_lat: &Buffer, out: &Buffer, n: usize) -> Result<()> {
    let (_, sym, w, scales, bytes) = kv_b.parts();
    need(w, bytes, 1, "kv_b", sym)?;
    f32s(o_lat, n * kv_b.heads * kv_b.r, "o_lat", sym)?;
    f32s(out, n * kv_b.heads * kv_b.v, "out", sym)?;
    let args = KernelArgs::new()
        .buf(w)
        .buf_or_null(scales)
        .buf(o_lat)
        .buf(out)
        .int(n)
        .int(kv_b.heads)
        .int(kv_b.nope)
        .int(kv_b.v)
        .int(kv_b.r);
    // SAFETY: kiln_expand_v_*(const void* w, const uint8_t* scales, const float* o_lat, float*
    // out, int n, int heads, int nope, int v, int r); one thread per output.
    unsafe { gpu.launch(sym, flat(n * kv_b.heads * kv_b.v), args) }
}

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
    if s.experts > 1024 || s.top_k > 16 || s.groups > 64 || s.groups == 0 || s.experts % s.groups != 0 {
        return Err(Error::Device {
            device: "launch".into(),
            message: format!("{K}: {} experts, top {}, {} groups beyond the kernel", s.experts, s.top_k, s.groups),
        });
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

/// logits [T, V] -> out [T]: the first under the ranking rule.
pub fn sample_greedy(gpu: &Gpu, logits: &Buffer, out: &Buffer, t: usize, vocab: usize) -> Result<()> {
    const K: &str = "kiln_sample_greedy";
    f32s(logits, t * vocab, "logits", K)?;
    i32s(out, t, "out", K)?;
    // SAFETY: kiln_sample_greedy(const float* logits, int* out, int v); one block per row.
    unsafe { gpu.launch(K, per_row(t), KernelArgs::new().buf(logits).buf(out).int(vocab)) }
}

/// logits [T, V], uniform draws u [T] -> out [T] under temperature and top-p.
#[allow(clippy::too_many_arguments)]
pub fn sample_top_p(
    gpu: &Gpu,
    logits: &Buffer,
    u: &Buffer,
    out: &Buffer,
    t: usize,
    vocab: usize,
    temperature: f32,
    top_p: f32,
) -> Result<()> {
    const K: &str = "kiln_sample_top_p";
    f32s(logits, t * vocab, "logits", K)?;
    f32s(u, t, "u", K)?;
    i32s(out, t, "out", K)?;
    let args = KernelArgs::new().buf(logits).buf(u).buf(out).int(vocab).f32(temperature).f32(top_p);
    // SAFETY: kiln_sample_top_p(const float* logits, const float* u, int* out, int v, float
    // temperature, float top_p); one block per row.
    unsafe { gpu.launch(K, per_row(t), args) }
}
