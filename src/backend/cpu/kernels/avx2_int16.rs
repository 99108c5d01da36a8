//! The int16 form (`int16`) of the AVX2 MXFP4 loop: the loop's two byte shuffles turn a
//! pair's 32 code bytes into its 64 weights as whole numbers (twice the E2M1 values,
//! -12..12), unpacking them under a zero byte makes int16 lanes of 256 times those, and four
//! `vpmaddwd` per token take the 64 products into 8 int32 lanes exactly (four lanes a block,
//! at most 2^30 each). The 256 is taken out of the sum at the end (`SUM_UNIT`), not out of
//! the scales: a row scale of 2^-127 times a small token scale would leave f32's range.

use std::arch::x86_64::*;

use super::avx2_mxfp4::PairForm;
use super::int16::Int16Acts;

impl PairForm for Int16Acts {
    /// [evens 0..14 of g | of g + 1], evens 16..30, odds 1..15, odds 17..31: the order
    /// `int16` stores a pair's activations in.
    type Pair = [__m256i; 4];
    /// [evens 0..14 | odds 1..15], [evens 16..30 | odds 17..31].
    type Lone = [__m256i; 2];
    /// Twice each E2M1 value, as the bytes of an i8.
    const TABLE: [u8; 16] = [0, 1, 2, 3, 4, 6, 8, 12, 0, 255, 254, 253, 252, 250, 248, 244];
    const SUM_UNIT: f32 = 1.0 / 256.0;

    fn blocks(&self) -> usize {
        self.blocks
    }

    fn scales(&self) -> &[f32] {
        &self.scale
    }

    #[inline]
    #[target_feature(enable = "avx2")]
    unsafe fn pair(even: __m256i, odd: __m256i) -> Self::Pair {
        let zero = _mm256_setzero_si256();
        [
            _mm256_unpacklo_epi8(zero, even),
            _mm256_unpackhi_epi8(zero, even),
            _mm256_unpacklo_epi8(zero, odd),
            _mm256_unpackhi_epi8(zero, odd),
        ]
    }

    #[inline]
    #[target_feature(enable = "avx2")]
    unsafe fn pair_sums(&self, w: &Self::Pair, t: usize, g: usize) -> __m256i {
        // SAFETY: q [n, B, 32] holds token t's blocks g and g + 1 (the caller's guarantee).
        let q: [__m256i; 4] = unsafe {
            let p = self.q.as_ptr().add((t * self.blocks + g) * 32);
            std::array::from_fn(|k| _mm256_loadu_si256(p.add(16 * k).cast()))
        };
        _mm256_add_epi32(
            _mm256_add_epi32(_mm256_madd_epi16(w[0], q[0]), _mm256_madd_epi16(w[1], q[1])),
            _mm256_add_epi32(_mm256_madd_epi16(w[2], q[2]), _mm256_madd_epi16(w[3], q[3])),
        )
    }

    #[inline]
    #[target_feature(enable = "avx2")]
    unsafe fn lone(w8: __m256i) -> Self::Lone {
        let zero = _mm256_setzero_si256();
        [_mm256_unpacklo_epi8(zero, w8), _mm256_unpackhi_epi8(zero, w8)]
    }

    #[inline]
    #[target_feature(enable = "avx2")]
    unsafe fn lone_sums(&self, w: &Self::Lone, t: usize, g: usize) -> __m256i {
        // SAFETY: q holds token t's block g (the caller's guarantee).
        let (q0, q1) = unsafe {
            let p = self.q.as_ptr().add((t * self.blocks + g) * 32);
            (_mm256_loadu_si256(p.cast()), _mm256_loadu_si256(p.add(16).cast()))
        };
        _mm256_add_epi32(_mm256_madd_epi16(w[0], q0), _mm256_madd_epi16(w[1], q1))
    }
}
