//! Horizontal sums of AVX-512 accumulators: a lone vector's by halving, and eight at once
//! (a register tile's results) with the shuffles shared and each sum's additions in the same
//! order, so a result has the same bits in any tile.

// Tiles are indexed [row][token] in fixed-size loops.
#![allow(clippy::needless_range_loop)]

use std::arch::x86_64::*;

/// Each accumulator's lane sum, [r][t]: eight at a time through `hsum8` when the tile is
/// whole eights, `hsum` else (the same bits either way).
#[inline]
#[target_feature(enable = "avx512f")]
pub(super) fn tile_sums<const R: usize, const T: usize>(acc: [[__m512; T]; R]) -> [[f32; T]; R] {
    let mut sums = [[0.0f32; T]; R];
    if (R * T).is_multiple_of(8) {
        for e in (0..R * T).step_by(8) {
            let h = hsum8(std::array::from_fn(|i| acc[(e + i) / T][(e + i) % T]));
            for (i, v) in h.into_iter().enumerate() {
                sums[(e + i) / T][(e + i) % T] = v;
            }
        }
    } else {
        for r in 0..R {
            for t in 0..T {
                sums[r][t] = hsum(acc[r][t]);
            }
        }
    }
    sums
}

/// The sum of v's 16 lanes, by halving: lanes i and i + 8, then i and i + 4, i and i + 2,
/// then the last two. `hsum8` gives each of its vectors these same bits.
#[inline]
#[target_feature(enable = "avx512f")]
pub(super) fn hsum(v: __m512) -> f32 {
    let a = _mm256_add_ps(_mm512_castps512_ps256(v), _mm256_castpd_ps(_mm512_extractf64x4_pd(_mm512_castps_pd(v), 1)));
    let b = _mm_add_ps(_mm256_castps256_ps128(a), _mm256_extractf128_ps(a, 1));
    let c = _mm_add_ps(b, _mm_movehl_ps(b, b));
    _mm_cvtss_f32(_mm_add_ss(c, _mm_shuffle_ps(c, c, 1)))
}

/// `hsum` of eight vectors at once (a register tile's results): the same additions in the
/// same order for each, with the shuffles shared.
#[inline]
#[target_feature(enable = "avx512f")]
pub(super) fn hsum8(v: [__m512; 8]) -> [f32; 8] {
    // Lanes 0..8: v[2k]'s i + (i + 8); lanes 8..16: v[2k + 1]'s.
    let halves =
        |p: __m512, q: __m512| _mm512_add_ps(_mm512_shuffle_f32x4::<0x44>(p, q), _mm512_shuffle_f32x4::<0xEE>(p, q));
    let (s01, s23, s45, s67) = (halves(v[0], v[1]), halves(v[2], v[3]), halves(v[4], v[5]), halves(v[6], v[7]));
    // 128-bit block k: vector k's (of four) i + (i + 4).
    let quarters =
        |p: __m512, q: __m512| _mm512_add_ps(_mm512_shuffle_f32x4::<0x88>(p, q), _mm512_shuffle_f32x4::<0xDD>(p, q));
    let (t0, t1) = (quarters(s01, s23), quarters(s45, s67));
    // Block k: vector k's lanes 0 + 2 and 1 + 3, then vector k + 4's.
    let w = _mm512_add_ps(_mm512_shuffle_ps::<0x44>(t0, t1), _mm512_shuffle_ps::<0xEE>(t0, t1));
    // Block k: vector k's total in lane 0, vector k + 4's in lane 1.
    let e = _mm512_add_ps(_mm512_shuffle_ps::<0x88>(w, w), _mm512_shuffle_ps::<0xDD>(w, w));
    let mut lanes = [0.0f32; 16];
    // SAFETY: 16 f32.
    unsafe { _mm512_storeu_ps(lanes.as_mut_ptr(), e) };
    std::array::from_fn(|k| if k < 4 { lanes[4 * k] } else { lanes[4 * (k - 4) + 1] })
}
