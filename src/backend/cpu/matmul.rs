//! y = x W^T against a weight kept in its checkpoint format (bf16, f32, MXFP4, ...).

use rayon::prelude::*;

use super::quantize_mxfp4_activations;
use crate::weights::Linear;

/// Rows of W decoded and applied per rayon task.
const ROW_BLOCK: usize = 16;
/// Below this many multiply-adds the threads cost more than they save.
const PARALLEL_MIN_WORK: usize = 1 << 16;

/// x [n, cols] -> y [n, rows]. With `quantize_input` and an MXFP4 weight, x first goes
/// through dynamic MXFP4 quantization (W4A4); otherwise it is used as it is.
pub fn matmul(x: &[f32], n: usize, w: &Linear, quantize_input: bool) -> Vec<f32> {
    let (rows, cols) = (w.rows, w.cols);
    assert_eq!(x.len(), n * cols, "matmul: x is not [{n}, {cols}]");
    if n == 0 {
        return Vec::new();
    }
    let quantized;
    let x = if quantize_input && w.is_mxfp4() {
        quantized = quantize_mxfp4_activations(x, cols);
        &quantized[..]
    } else {
        x
    };
    // out_t [rows, n]: each task owns whole rows, decodes each once and applies it to every
    // token, so a weight row is read once per call whatever n is.
    let mut out_t = vec![0.0f32; rows * n];
    let block = |(b, chunk): (usize, &mut [f32])| {
        let mut row = vec![0.0f32; cols];
        for (i, o) in chunk.chunks_mut(n).enumerate() {
            w.row_into(b * ROW_BLOCK + i, &mut row);
            for (t, y) in o.iter_mut().enumerate() {
                *y = dot(&row, &x[t * cols..(t + 1) * cols]);
            }
        }
    };
    if rows * cols * n >= PARALLEL_MIN_WORK {
        out_t.par_chunks_mut(ROW_BLOCK * n).enumerate().for_each(block);
    } else {
        out_t.chunks_mut(ROW_BLOCK * n).enumerate().for_each(block);
    }
    if n == 1 {
        return out_t;
    }
    let mut out = vec![0.0f32; n * rows];
    for r in 0..rows {
        for t in 0..n {
            out[t * rows + r] = out_t[r * n + t];
        }
    }
    out
}

/// Dot product with eight independent accumulators (vectorizes; order differs from a
/// plain loop only in rounding).
#[inline]
pub fn dot(a: &[f32], b: &[f32]) -> f32 {
    let mut acc = [0.0f32; 8];
    let (ac, bc) = (a.chunks_exact(8), b.chunks_exact(8));
    let (ar, br) = (ac.remainder(), bc.remainder());
    for (x, y) in ac.zip(bc) {
        for j in 0..8 {
            acc[j] += x[j] * y[j];
        }
    }
    let mut s: f32 = acc.iter().sum();
    for (x, y) in ar.iter().zip(br) {
        s += x * y;
    }
    s
}
