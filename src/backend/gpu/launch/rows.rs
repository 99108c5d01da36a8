//! Launches of the row and element kernels: norms, the embedding gather, elementwise ops,
//! column copies, row gathers and the W4A4 activation rounding.

use super::*;

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
        return Err(refused(format!("{K}: columns out of the rows")));
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
