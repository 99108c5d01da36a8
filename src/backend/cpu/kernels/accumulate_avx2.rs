//! AVX2 `accumulate_rows`: out[t, :] += sum over rows r of coef(t, r) * row r, the rows dense
//! (MLA's query absorption through kv_b, attention's weighted sum of entries). Until this
//! loop AVX2 machines took the portable path, which decodes every row into a buffer and adds
//! it to each token's output in a pass of its own: 6.6% of a mid-size decode step's profile
//! on Zen 3, 3.7% with this loop.

// Tiles are indexed [column block] in fixed-size loops.
#![allow(clippy::needless_range_loop)]

use std::arch::x86_64::*;

use super::avx2::load8;

/// out[t, :] += sum over r of coefs[t * cstride + r] * row r, for dense rows of one format.
///
/// Per token, 64 columns (then 8) stay in registers across all the rows: one load of each
/// row's strip and no load and store of out per row, and eight independent chains of fused
/// multiply-adds (four left the FMA units half idle on their latency). Each element takes
/// the rows in order, one fused multiply-add each, whatever the number of tokens, so a
/// token's bits do not depend on its batch.
///
/// # Safety
/// The CPU has AVX2 and FMA; w holds nrows rows of `cols`, out is [n, cols] and coefs reach
/// (n - 1) * cstride + nrows.
#[target_feature(enable = "avx2,fma")]
pub unsafe fn accumulate_rows<const BF16: bool>(
    w: &[u8],
    nrows: usize,
    cols: usize,
    coefs: &[f32],
    cstride: usize,
    out: &mut [f32],
) {
    let row_bytes = cols * super::value_bytes::<BF16>();
    for (t, o) in out.chunks_exact_mut(cols).enumerate() {
        let k = &coefs[t * cstride..t * cstride + nrows];
        let mut c = 0;
        // SAFETY (both strips): c + 64 (or 8) <= cols, in every row and in o.
        while c + 64 <= cols {
            unsafe { strip::<8, BF16>(w, row_bytes, k, c, o) };
            c += 64;
        }
        while c + 8 <= cols {
            unsafe { strip::<1, BF16>(w, row_bytes, k, c, o) };
            c += 8;
        }
        for (r, &kr) in k.iter().enumerate() {
            let row = &w[r * row_bytes..(r + 1) * row_bytes];
            for i in c..cols {
                o[i] = kr.mul_add(super::dense_scalar::<BF16>(row, i), o[i]);
            }
        }
    }
}

/// Columns c..c + 8 C of one token's output o, over every row (k [nrows] its coefficients).
///
/// # Safety
/// As for `accumulate_rows`, with c + 8 C <= cols.
#[target_feature(enable = "avx2,fma")]
unsafe fn strip<const C: usize, const BF16: bool>(w: &[u8], row_bytes: usize, k: &[f32], c: usize, o: &mut [f32]) {
    let op = o.as_mut_ptr();
    // SAFETY (loads and stores): the caller's guarantees.
    unsafe {
        let mut acc: [__m256; C] = std::array::from_fn(|j| _mm256_loadu_ps(op.add(c + 8 * j)));
        for (r, &kr) in k.iter().enumerate() {
            let row = &w[r * row_bytes..(r + 1) * row_bytes];
            let kv = _mm256_set1_ps(kr);
            for j in 0..C {
                acc[j] = _mm256_fmadd_ps(kv, load8::<BF16>(row, c + 8 * j), acc[j]);
            }
        }
        for j in 0..C {
            _mm256_storeu_ps(op.add(c + 8 * j), acc[j]);
        }
    }
}
