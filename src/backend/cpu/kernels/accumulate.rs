//! AVX-512 `accumulate_rows`: out[t, :] += sum over rows r of coef(t, r) * row r, the rows
//! dense (MLA's query absorption through kv_b, attention's weighted sum of entries).

// Tiles are indexed [token][column block] in fixed-size loops.
#![allow(clippy::needless_range_loop)]

use std::arch::x86_64::*;

use super::RowsRef;
use super::avx512::load16;
use super::value_bytes;

/// out[t, :] += sum over r of coefs[t * cstride + r] * row r, dense rows only.
///
/// Register tiles of up to 4 tokens x 64 columns stay in registers across all the rows (one
/// load per row shared by the tile's tokens, no load and store of out per row): MLA's query
/// absorption in a 512-token prefill went from a store-bound pass over out per row to
/// multiply-adds. Each element still takes the rows in order, one fused multiply-add each,
/// so the result is the same whatever tile it falls in.
///
/// # Safety
/// The CPU has AVX-512F; w holds nrows dense rows of `cols`, out is [n, cols] and coefs
/// reach (n - 1) * cstride + nrows.
#[target_feature(enable = "avx512f")]
pub unsafe fn accumulate_rows(
    w: RowsRef<'_>,
    nrows: usize,
    cols: usize,
    coefs: &[f32],
    cstride: usize,
    out: &mut [f32],
) {
    // SAFETY: the caller's guarantees.
    unsafe {
        match w {
            RowsRef::Bf16(b) => accumulate::<true>(b, nrows, cols, coefs, cstride, out),
            RowsRef::F32(b) => accumulate::<false>(b, nrows, cols, coefs, cstride, out),
            RowsRef::Mxfp4 { .. } => {}
        }
    }
}

/// `accumulate_rows` over dense rows of one format.
///
/// # Safety
/// As for `accumulate_rows`.
#[target_feature(enable = "avx512f")]
unsafe fn accumulate<const BF16: bool>(
    bytes: &[u8],
    nrows: usize,
    cols: usize,
    coefs: &[f32],
    cstride: usize,
    out: &mut [f32],
) {
    let n = out.len() / cols.max(1);
    let row_bytes = cols * value_bytes::<BF16>();
    let mut t0 = 0;
    while t0 < n {
        let tn = (n - t0).min(4);
        // SAFETY (each tile): columns c..c + 16 C lie in every row and in each of the tile's
        // tokens' rows of out; coefs reach every (token, row).
        unsafe {
            let mut c = 0;
            // Fewer than four tokens take 256 columns a pass where they can: a latent row of
            // 256 is then read once, whole, not as four strided passes of 64 (MLA's query
            // absorption, one token: 5% of a mid-size decode step). Each output still adds
            // the rows in order, so the bits are the same.
            while tn < 4 && c + 256 <= cols {
                for t in t0..t0 + tn {
                    acc_tile::<1, 16, BF16>(bytes, nrows, cols, c, coefs, cstride, t, out);
                }
                c += 256;
            }
            while c + 64 <= cols {
                if tn == 4 {
                    acc_tile::<4, 4, BF16>(bytes, nrows, cols, c, coefs, cstride, t0, out);
                } else {
                    for t in t0..t0 + tn {
                        acc_tile::<1, 4, BF16>(bytes, nrows, cols, c, coefs, cstride, t, out);
                    }
                }
                c += 64;
            }
            while c + 16 <= cols {
                for t in t0..t0 + tn {
                    acc_tile::<1, 1, BF16>(bytes, nrows, cols, c, coefs, cstride, t, out);
                }
                c += 16;
            }
            for r in 0..nrows {
                let row = &bytes[r * row_bytes..(r + 1) * row_bytes];
                for i in c..cols {
                    let v = super::dense_scalar::<BF16>(row, i);
                    for t in t0..t0 + tn {
                        out[t * cols + i] += coefs[t * cstride + r] * v;
                    }
                }
            }
        }
        t0 += tn;
    }
}

/// Tokens t0..t0 + T, columns c..c + 16 C of `accumulate_rows`, over every row.
///
/// # Safety
/// As for `accumulate_rows`, with c + 16 C <= cols and t0 + T <= n.
#[allow(clippy::too_many_arguments)]
#[target_feature(enable = "avx512f")]
unsafe fn acc_tile<const T: usize, const C: usize, const BF16: bool>(
    bytes: &[u8],
    nrows: usize,
    cols: usize,
    c: usize,
    coefs: &[f32],
    cstride: usize,
    t0: usize,
    out: &mut [f32],
) {
    let op = out.as_mut_ptr();
    let esize = value_bytes::<BF16>();
    // SAFETY (loads and stores): the caller's guarantees.
    unsafe {
        let mut acc = [[_mm512_setzero_ps(); C]; T];
        for t in 0..T {
            for j in 0..C {
                acc[t][j] = _mm512_loadu_ps(op.add((t0 + t) * cols + c + 16 * j));
            }
        }
        for r in 0..nrows {
            let row = &bytes[r * cols * esize..(r + 1) * cols * esize];
            let wv: [__m512; C] = std::array::from_fn(|j| load16::<BF16>(row, c + 16 * j));
            for t in 0..T {
                let k = _mm512_set1_ps(coefs[(t0 + t) * cstride + r]);
                for j in 0..C {
                    acc[t][j] = _mm512_fmadd_ps(k, wv[j], acc[t][j]);
                }
            }
        }
        for t in 0..T {
            for j in 0..C {
                _mm512_storeu_ps(op.add((t0 + t) * cols + c + 16 * j), acc[t][j]);
            }
        }
    }
}
