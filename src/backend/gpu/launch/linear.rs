//! Launches of the linear kernels: dense (bf16, f32) and MXFP4, one matrix or a group.

use super::*;

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
