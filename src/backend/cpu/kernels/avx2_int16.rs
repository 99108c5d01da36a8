//! The int16 form (`int16`) of the AVX2 MXFP4 loop: two byte shuffles turn a pair's 32
//! code bytes into its 64 weights as whole numbers (twice the E2M1 values, -12..12),
//! unpacking them under a zero byte makes int16 lanes of 256 times those, and four
//! `vpmaddwd` per token take the 64 products into 8 int32 lanes exactly (four lanes a block,
//! at most 2^30 each). The 256 is taken out of the sum at the end (`SUM_UNIT`), not out of
//! the scales: a row scale of 2^-127 times a small token scale would leave f32's range.

use std::arch::x86_64::*;

use super::avx2_mxfp4::PairForm;
use super::int16::Int16Acts;

/// Twice each E2M1 value by 4-bit code (bit 3 the sign), the table the shuffle reads.
const E2M1_DOUBLED: [i8; 16] = [0, 1, 2, 3, 4, 6, 8, 12, 0, -1, -2, -3, -4, -6, -8, -12];

/// A code register's low nibbles as the doubled E2M1 values they code, a byte each.
#[inline(always)]
unsafe fn doubled(codes: __m256i) -> __m256i {
    // SAFETY: the table is 16 bytes; the caller's target has AVX2.
    unsafe {
        let lut = _mm256_broadcastsi128_si256(_mm_loadu_si128(E2M1_DOUBLED.as_ptr().cast()));
        _mm256_shuffle_epi8(lut, _mm256_and_si256(codes, _mm256_set1_epi8(0x0F)))
    }
}

impl PairForm for Int16Acts {
    /// [evens 0..14 of g | of g + 1], evens 16..30, odds 1..15, odds 17..31: the order
    /// `int16` stores a pair's activations in.
    type Pair = [__m256i; 4];
    /// [evens 0..14 | odds 1..15], [evens 16..30 | odds 17..31].
    type Lone = [__m256i; 2];
    const SUM_UNIT: f32 = 1.0 / 256.0;

    fn blocks(&self) -> usize {
        self.blocks
    }

    fn scales(&self) -> &[f32] {
        &self.scale
    }

    #[inline]
    #[target_feature(enable = "avx2")]
    unsafe fn pair(codes: *const u8) -> Self::Pair {
        // SAFETY: the caller's guarantee.
        let b = unsafe { _mm256_loadu_si256(codes.cast()) };
        let (even, odd) = unsafe { (doubled(b), doubled(_mm256_srli_epi16::<4>(b))) };
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

    /// The 16 code bytes broadcast to both lanes, the high nibbles' lane blended in (an
    /// insert would take a shuffle port).
    #[inline]
    #[target_feature(enable = "avx2")]
    unsafe fn lone(codes: *const u8) -> Self::Lone {
        // SAFETY: the caller's guarantee.
        let b = _mm256_broadcastsi128_si256(unsafe { _mm_loadu_si128(codes.cast()) });
        // SAFETY: this function's target has AVX2.
        let w8 = unsafe { doubled(_mm256_blend_epi32::<0xF0>(b, _mm256_srli_epi16::<4>(b))) };
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
