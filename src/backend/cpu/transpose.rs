//! A multi-token matmul's outputs from the kernels' [rows, n] (each weight row against the
//! tokens) to the [n, rows] the model reads (each token's outputs).

use rayon::prelude::*;

/// Side of the square tiles `transpose_into` moves: 32 x 32 f32 read and written a cache
/// line at a time. Element by element over the whole matrix, each write of a prefill chunk's
/// outputs missed the cache (8% of a 512-token prefill's time on the mid-size bench model).
const TILE: usize = 32;

/// a [rows, n] -> out [n, rows], in tiles, a thread's share of the tokens at a time when
/// large.
pub fn transpose_into(a: &[f32], rows: usize, n: usize, out: &mut [f32]) {
    assert!(
        a.len() == rows * n && out.len() == rows * n,
        "transpose of [{rows}, {n}]: buffers of {} and {}",
        a.len(),
        out.len()
    );
    #[cfg(target_arch = "x86_64")]
    let avx = std::arch::is_x86_feature_detected!("avx");
    let tile = |(b, chunk): (usize, &mut [f32])| {
        let t0 = b * TILE;
        let tn = chunk.len() / rows;
        for r0 in (0..rows).step_by(TILE) {
            let r1 = (r0 + TILE).min(rows);
            #[cfg(target_arch = "x86_64")]
            if avx {
                // SAFETY: checked above that the CPU has AVX; rows r0..r1 and tokens
                // t0..t0 + tn lie inside a [rows, n], and chunk holds tn tokens' rows.
                unsafe { x86::tile(a, n, t0, tn, r0, r1, chunk, rows) };
                continue;
            }
            scalar_tile(a, n, t0, 0..tn, r0..r1, chunk, rows);
        }
    };
    if rows * n >= super::PARALLEL_MIN_WORK {
        out.par_chunks_mut(TILE * rows).enumerate().for_each(tile);
    } else {
        out.chunks_mut(TILE * rows).enumerate().for_each(tile);
    }
}

/// Tokens `ts` (from t0 in a) of rows `rs` of a [rows, n] into chunk [tokens, rows].
fn scalar_tile(
    a: &[f32],
    n: usize,
    t0: usize,
    ts: std::ops::Range<usize>,
    rs: std::ops::Range<usize>,
    chunk: &mut [f32],
    rows: usize,
) {
    for t in ts {
        for r in rs.clone() {
            chunk[t * rows + r] = a[r * n + t0 + t];
        }
    }
}

#[cfg(target_arch = "x86_64")]
mod x86 {
    use std::arch::x86_64::*;

    /// `scalar_tile` over tokens [0, tn) and rows [r0, r1), 8 x 8 at a time in registers
    /// (eight loads, 24 shuffles, eight stores), the edges that are not whole eights as
    /// scalars: one element at a time, each a bounds-checked load and store, was 3% of a
    /// 512-token mid-size prefill.
    ///
    /// # Safety
    /// The CPU has AVX; a is [rows, n] with t0 + tn <= n and r1 <= rows, chunk is [tn, rows].
    #[target_feature(enable = "avx")]
    #[allow(clippy::too_many_arguments)]
    pub(super) unsafe fn tile(
        a: &[f32],
        n: usize,
        t0: usize,
        tn: usize,
        r0: usize,
        r1: usize,
        chunk: &mut [f32],
        rows: usize,
    ) {
        debug_assert!(t0 + tn <= n && r1 <= rows && a.len() >= rows * n && chunk.len() >= tn * rows);
        let (t8, r8) = (tn - tn % 8, r0 + (r1 - r0) / 8 * 8);
        for t in (0..t8).step_by(8) {
            for r in (r0..r8).step_by(8) {
                // SAFETY: rows r..r + 8 <= r1 and tokens t0 + t..t0 + t + 8 <= t0 + tn lie
                // inside a; tokens t..t + 8 <= tn, rows r..r + 8 inside chunk.
                unsafe {
                    let src = a.as_ptr().add(r * n + t0 + t);
                    let v: [__m256; 8] = std::array::from_fn(|i| _mm256_loadu_ps(src.add(i * n)));
                    let m = transpose8(v);
                    let dst = chunk.as_mut_ptr().add(t * rows + r);
                    for (j, mj) in m.iter().enumerate() {
                        _mm256_storeu_ps(dst.add(j * rows), *mj);
                    }
                }
            }
            super::scalar_tile(a, n, t0, t..t + 8, r8..r1, chunk, rows);
        }
        super::scalar_tile(a, n, t0, t8..tn, r0..r1, chunk, rows);
    }

    /// Rows v[i] = (x[i][0..8]) -> out[j] = (x[0][j], .., x[7][j]).
    #[inline]
    #[target_feature(enable = "avx")]
    fn transpose8(v: [__m256; 8]) -> [__m256; 8] {
        // Pairs of rows interleaved, then pairs of pairs, then 128-bit halves swapped.
        let u: [__m256; 8] = std::array::from_fn(|k| {
            let (i, hi) = (2 * (k / 2), k % 2 == 1);
            if hi { _mm256_unpackhi_ps(v[i], v[i + 1]) } else { _mm256_unpacklo_ps(v[i], v[i + 1]) }
        });
        // u[0] = a0 b0 a1 b1 | a4 b4 a5 b5, u[1] = a2 b2 a3 b3 | a6 b6 a7 b7 (rows a, b), likewise
        // u[2], u[3] for rows c, d; u[4..8] for rows e..h.
        let s: [__m256; 8] = std::array::from_fn(|k| {
            let (q, which) = (4 * (k / 4), k % 4);
            let (x, y) = (u[q + which / 2], u[q + 2 + which / 2]);
            if which % 2 == 0 { _mm256_shuffle_ps::<0x44>(x, y) } else { _mm256_shuffle_ps::<0xEE>(x, y) }
        });
        // s[0] = a0 b0 c0 d0 | a4 b4 c4 d4, s[1] = a1 .. d1 | a5 .. d5, s[2] = col 2 | 6,
        // s[3] = col 3 | 7; s[4..8] likewise for rows e..h.
        std::array::from_fn(|j| {
            let (lo, hi) = (s[j % 4], s[4 + j % 4]);
            if j < 4 { _mm256_permute2f128_ps::<0x20>(lo, hi) } else { _mm256_permute2f128_ps::<0x31>(lo, hi) }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::transpose_into;

    #[test]
    fn transpose_moves_every_element_once() {
        // Edges that are not whole eights or tiles on both sides, eights exactly, and one
        // large enough to split over the threads.
        for (rows, n) in [(1, 2), (8, 8), (37, 70), (64, 32), (16, 9), (9, 16), (1100, 67)] {
            let a: Vec<f32> = (0..rows * n).map(|i| i as f32).collect(); // [rows, n]
            let mut t = vec![f32::NAN; rows * n]; // [n, rows]
            transpose_into(&a, rows, n, &mut t);
            for r in 0..rows {
                for c in 0..n {
                    assert_eq!(t[c * rows + r], a[r * n + c], "rows {rows} n {n}: ({r}, {c})");
                }
            }
        }
    }
}
