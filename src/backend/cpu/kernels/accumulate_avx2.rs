//! AVX2 `accumulate_rows`: out[t, :] += sum over rows r of coef(t, r) * row r, the rows dense
//! (MLA's query absorption through kv_b, attention's weighted sum of entries). Until this
//! loop AVX2 machines took the portable path, which decodes every row into a buffer and adds
//! it to each token's output in a pass of its own: 6.6% of a mid-size decode step's profile
//! on Zen 3, 3.7% with this loop.

// Tiles are indexed [column block] in fixed-size loops.
#![allow(clippy::needless_range_loop)]

use std::arch::x86_64::*;

use super::avx2::{load8, load16_bf16};

/// out[t, :] += sum over r of coefs[t * cstride + r] * row r, for dense rows of one format.
/// The rows are first brought into the caches (`touch`). Mid-size decode steps 0.975-0.991
/// of their time with the touch (three runs, alternated on Zen 2); demo decode and the
/// 512-token prefill within 0.98-1.02.
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
    touch(&w[..nrows * row_bytes]);
    let n = out.len() / cols.max(1);
    let mut t = 0;
    // bf16 rows against two tokens at once (MLA's heads share attention's entries and the
    // absorption's rows): each 32 columns of a row widened once for both.
    while BF16 && t + 2 <= n && cols >= 32 {
        let ks = [&coefs[t * cstride..t * cstride + nrows], &coefs[(t + 1) * cstride..(t + 1) * cstride + nrows]];
        let o = &mut out[t * cols..(t + 2) * cols];
        let mut c = 0;
        while c + 32 <= cols {
            // SAFETY: c + 32 <= cols, in every row and in both tokens' outputs.
            unsafe { bf16_two_tokens(w, row_bytes, ks, c, o, cols) };
            c += 32;
        }
        let (o0, o1) = o.split_at_mut(cols);
        // SAFETY: the caller's guarantees, for each token's output from column c.
        unsafe {
            token_from::<BF16>(w, row_bytes, ks[0], c, o0);
            token_from::<BF16>(w, row_bytes, ks[1], c, o1);
        }
        t += 2;
    }
    for (t, o) in out.chunks_exact_mut(cols).enumerate().skip(t) {
        // SAFETY: the caller's guarantees, for token t's output.
        unsafe { token_from::<BF16>(w, row_bytes, &coefs[t * cstride..t * cstride + nrows], 0, o) };
    }
}

/// One token's output o [cols] from column c0 on, every row (k [nrows] its coefficients) in
/// order into each element.
///
/// # Safety
/// As for `accumulate_rows`, for one token.
#[target_feature(enable = "avx2,fma")]
unsafe fn token_from<const BF16: bool>(w: &[u8], row_bytes: usize, k: &[f32], c0: usize, o: &mut [f32]) {
    let cols = o.len();
    let mut c = c0;
    // SAFETY (all strips): c + 64 (or 16, or 8) <= cols, in every row and in o.
    if BF16 {
        while c + 64 <= cols {
            unsafe { bf16_strip::<4>(w, row_bytes, k, c, o) };
            c += 64;
        }
        while c + 16 <= cols {
            unsafe { bf16_strip::<1>(w, row_bytes, k, c, o) };
            c += 16;
        }
    } else {
        while c + 64 <= cols {
            unsafe { strip::<8, BF16>(w, row_bytes, k, c, o) };
            c += 64;
        }
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

/// Columns c..c + 32 of two tokens' outputs o [2, cols] over every bf16 row (ks their
/// coefficients), as `bf16_strip` holds them (even and odd columns of each 16): a row's 32
/// widened once for both tokens, where a token at a time widened them per token (per 8
/// fused multiply-adds, 4 loads and 8 widening operations, now 2 and 4). The same fused
/// multiply-adds in the same order per element, so the same bits.
///
/// # Safety
/// As for `accumulate_rows`, with c + 32 <= cols and o holding two tokens' outputs.
#[target_feature(enable = "avx2,fma")]
unsafe fn bf16_two_tokens(w: &[u8], row_bytes: usize, ks: [&[f32]; 2], c: usize, o: &mut [f32], cols: usize) {
    let op = o.as_mut_ptr();
    // SAFETY (loads and stores): the caller's guarantees.
    unsafe {
        // [token][16 of the 32] as (even columns, odd columns).
        let mut acc: [[(__m256, __m256); 2]; 2] = std::array::from_fn(|t| {
            std::array::from_fn(|j| {
                let at = op.add(t * cols + c + 16 * j);
                split16(_mm256_loadu_ps(at), _mm256_loadu_ps(at.add(8)))
            })
        });
        for r in 0..ks[0].len() {
            let row = &w[r * row_bytes..(r + 1) * row_bytes];
            let ws = [load16_bf16(row, c), load16_bf16(row, c + 16)];
            for t in 0..2 {
                let kv = _mm256_set1_ps(*ks[t].get_unchecked(r));
                for j in 0..2 {
                    acc[t][j] = (_mm256_fmadd_ps(kv, ws[j].0, acc[t][j].0), _mm256_fmadd_ps(kv, ws[j].1, acc[t][j].1));
                }
            }
        }
        for t in 0..2 {
            for j in 0..2 {
                let (lo, hi) = merge16(acc[t][j].0, acc[t][j].1);
                let at = op.add(t * cols + c + 16 * j);
                _mm256_storeu_ps(at, lo);
                _mm256_storeu_ps(at.add(8), hi);
            }
        }
    }
}

/// Brings `bytes` into the caches by loading a byte of each 64-byte line, in four streams a
/// quarter of the block apart. The strips below read each row a 128-byte slice at a time,
/// and from memory that pattern waited on every line: a decode step's query absorption (a
/// head's 64 x 256 bf16 rows of kv_b, 32 KiB, cold) ran at 7.0-7.9 GB/s on one Zen 2 core;
/// after the touch 11.2-11.7 (software prefetches in the same order 8.1-8.5, rows
/// prefetched ahead 8.1-9.1, eight streams 10.1-10.5). Rows already in cache (attention's
/// entries, just scored) cost a load per line: 1.31-1.37 -> 1.33-1.36 us a head.
fn touch(bytes: &[u8]) {
    const LINE: usize = 64;
    let quarter = bytes.len() / 4 / LINE * LINE;
    for b in (0..quarter).step_by(LINE) {
        for s in 0..4 {
            std::hint::black_box(bytes[s * quarter + b]);
        }
    }
    for b in (4 * quarter..bytes.len()).step_by(LINE) {
        std::hint::black_box(bytes[b]);
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

/// Columns c..c + 16 S of one token's output o over every bf16 row (k [nrows] its
/// coefficients), each 16 held as its even columns and its odd ones: the order in which
/// `load16_bf16` widens a row's 16 with one shift and one AND, where widening each 8 in
/// place took four shuffle-port operations per 16 (Zen 3 runs FMAs on one of those two
/// ports). Each element still takes the rows in order, one fused multiply-add each, so the
/// bits are those of `strip`.
///
/// # Safety
/// As for `accumulate_rows`, with c + 16 S <= cols.
#[target_feature(enable = "avx2,fma")]
unsafe fn bf16_strip<const S: usize>(w: &[u8], row_bytes: usize, k: &[f32], c: usize, o: &mut [f32]) {
    let op = o.as_mut_ptr();
    // SAFETY (loads and stores): the caller's guarantees.
    unsafe {
        // [S] of (even columns, odd columns) of each 16.
        let mut acc: [(__m256, __m256); S] = std::array::from_fn(|j| {
            split16(_mm256_loadu_ps(op.add(c + 16 * j)), _mm256_loadu_ps(op.add(c + 16 * j + 8)))
        });
        for (r, &kr) in k.iter().enumerate() {
            let row = &w[r * row_bytes..(r + 1) * row_bytes];
            let kv = _mm256_set1_ps(kr);
            for j in 0..S {
                let (even, odd) = load16_bf16(row, c + 16 * j);
                acc[j] = (_mm256_fmadd_ps(kv, even, acc[j].0), _mm256_fmadd_ps(kv, odd, acc[j].1));
            }
        }
        for j in 0..S {
            let (lo, hi) = merge16(acc[j].0, acc[j].1);
            _mm256_storeu_ps(op.add(c + 16 * j), lo);
            _mm256_storeu_ps(op.add(c + 16 * j + 8), hi);
        }
    }
}

/// Sixteen columns as two registers of eight (a: 0..8, b: 8..16) -> (the even ones, the odd
/// ones), each in column order.
#[target_feature(enable = "avx2,fma")]
fn split16(a: __m256, b: __m256) -> (__m256, __m256) {
    // Within each 128-bit half: [a0 a2 b0 b2 | a4 a6 b4 b6]; the 64-bit pairs then go 0, 2, 1, 3.
    let even = _mm256_shuffle_ps::<0b10_00_10_00>(a, b);
    let odd = _mm256_shuffle_ps::<0b11_01_11_01>(a, b);
    let order = |v: __m256| _mm256_castpd_ps(_mm256_permute4x64_pd::<0b11_01_10_00>(_mm256_castps_pd(v)));
    (order(even), order(odd))
}

/// The inverse of `split16`: (even columns, odd columns) -> (columns 0..8, columns 8..16).
#[target_feature(enable = "avx2,fma")]
fn merge16(even: __m256, odd: __m256) -> (__m256, __m256) {
    // [c0 c1 c2 c3 | c8 c9 c10 c11] and [c4 c5 c6 c7 | c12 c13 c14 c15].
    let (lo, hi) = (_mm256_unpacklo_ps(even, odd), _mm256_unpackhi_ps(even, odd));
    (_mm256_permute2f128_ps::<0x20>(lo, hi), _mm256_permute2f128_ps::<0x31>(lo, hi))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn split16_and_merge16_take_sixteen_columns_apart_and_back() {
        if !(is_x86_feature_detected!("avx2") && is_x86_feature_detected!("fma")) {
            return;
        }
        let cols: Vec<f32> = (0..16).map(|i| i as f32).collect();
        // SAFETY: checked above that the CPU has AVX2 and FMA; the loads and stores stay in
        // arrays of 8 and 16.
        unsafe {
            let (even, odd) = split16(_mm256_loadu_ps(cols.as_ptr()), _mm256_loadu_ps(cols.as_ptr().add(8)));
            let (mut e, mut o) = ([0.0f32; 8], [0.0f32; 8]);
            _mm256_storeu_ps(e.as_mut_ptr(), even);
            _mm256_storeu_ps(o.as_mut_ptr(), odd);
            assert_eq!(e, [0.0, 2.0, 4.0, 6.0, 8.0, 10.0, 12.0, 14.0]);
            assert_eq!(o, [1.0, 3.0, 5.0, 7.0, 9.0, 11.0, 13.0, 15.0]);
            let (lo, hi) = merge16(even, odd);
            let mut back = [0.0f32; 16];
            _mm256_storeu_ps(back.as_mut_ptr(), lo);
            _mm256_storeu_ps(back.as_mut_ptr().add(8), hi);
            assert_eq!(&back[..], &cols[..]);
        }
    }
}
