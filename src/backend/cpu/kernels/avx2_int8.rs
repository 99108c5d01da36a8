//! The int8 form (`int8`) of the AVX2 MXFP4 loop, for activations on the MXFP4 grid: two
//! byte shuffles turn a pair's 32 code bytes into its 64 weights as unsigned bytes (twice
//! the E2M1 values plus 12, 0..24), two `vpmaddubsw` per token multiply them with the
//! token's int8 values into int16 sums of two products (at most 2 x 24 x 127), one add and
//! one `vpmaddwd` by ones take those into 8 int32 lanes (four a block), and the bias the
//! offset of 12 put in is taken off. Three multiplier instructions per 64 products where
//! int16 takes four, and no unpacking.

use std::arch::x86_64::*;

use super::avx2_mxfp4::PairForm;
use super::int8::{Int8Acts, WEIGHT_OFFSET};

/// Twice each E2M1 value plus `WEIGHT_OFFSET`, by 4-bit code (bit 3 the sign): the table the
/// shuffle reads.
const E2M1_DOUBLED_OFFSET: [u8; 16] = {
    let doubled: [i32; 16] = [0, 1, 2, 3, 4, 6, 8, 12, 0, -1, -2, -3, -4, -6, -8, -12];
    let mut t = [0u8; 16];
    let mut i = 0;
    while i < 16 {
        t[i] = (doubled[i] + WEIGHT_OFFSET) as u8;
        i += 1;
    }
    t
};

/// A code register's low nibbles as the offset doubled E2M1 values they code, a byte each.
#[inline(always)]
unsafe fn offset_doubled(codes: __m256i) -> __m256i {
    // SAFETY: the table is 16 bytes; the caller's target has AVX2.
    unsafe {
        let lut = _mm256_broadcastsi128_si256(_mm_loadu_si128(E2M1_DOUBLED_OFFSET.as_ptr().cast()));
        _mm256_shuffle_epi8(lut, _mm256_and_si256(codes, _mm256_set1_epi8(0x0F)))
    }
}

/// 16-bit sums of products into 32-bit lanes: each pair of neighbours added.
#[inline(always)]
unsafe fn widen(sums: __m256i) -> __m256i {
    // SAFETY: the caller's target has AVX2.
    unsafe { _mm256_madd_epi16(sums, _mm256_set1_epi16(1)) }
}

impl PairForm for Int8Acts {
    /// [evens of g | evens of g + 1], [odds of g | odds of g + 1]: the order `int8` stores a
    /// pair's activations in.
    type Pair = [__m256i; 2];
    /// [evens | odds].
    type Lone = __m256i;
    const SUM_UNIT: f32 = 1.0;

    fn blocks(&self) -> usize {
        self.blocks
    }

    fn scales(&self) -> &[f32] {
        &self.scale
    }

    #[inline]
    #[target_feature(enable = "avx2")]
    unsafe fn pair(codes: *const u8) -> Self::Pair {
        // SAFETY: the caller's guarantee; this function's target has AVX2.
        unsafe {
            let b = _mm256_loadu_si256(codes.cast());
            [offset_doubled(b), offset_doubled(_mm256_srli_epi16::<4>(b))]
        }
    }

    #[inline]
    #[target_feature(enable = "avx2")]
    unsafe fn pair_sums(&self, w: &Self::Pair, t: usize, g: usize) -> __m256i {
        // SAFETY: q [n, B, 32] and bias [n, B, 4] hold token t's blocks g and g + 1 (the
        // caller's guarantee).
        unsafe {
            let p = self.q.as_ptr().add((t * self.blocks + g) * 32);
            let (even, odd) = (_mm256_loadu_si256(p.cast()), _mm256_loadu_si256(p.add(32).cast()));
            let sums = _mm256_add_epi16(_mm256_maddubs_epi16(w[0], even), _mm256_maddubs_epi16(w[1], odd));
            let bias = _mm256_loadu_si256(self.bias.as_ptr().add((t * self.blocks + g) * 4).cast());
            _mm256_sub_epi32(widen(sums), bias)
        }
    }

    /// The 16 code bytes broadcast to both lanes, the high nibbles' lane blended in.
    #[inline]
    #[target_feature(enable = "avx2")]
    unsafe fn lone(codes: *const u8) -> Self::Lone {
        // SAFETY: the caller's guarantee; this function's target has AVX2.
        unsafe {
            let b = _mm256_broadcastsi128_si256(_mm_loadu_si128(codes.cast()));
            offset_doubled(_mm256_blend_epi32::<0xF0>(b, _mm256_srli_epi16::<4>(b)))
        }
    }

    #[inline]
    #[target_feature(enable = "avx2")]
    unsafe fn lone_sums(&self, w: &Self::Lone, t: usize, g: usize) -> __m256i {
        // SAFETY: q and bias hold token t's block g (the caller's guarantee); the bias's
        // four lanes go in the low half, zeros above.
        unsafe {
            let x = _mm256_loadu_si256(self.q.as_ptr().add((t * self.blocks + g) * 32).cast());
            let bias = _mm_loadu_si128(self.bias.as_ptr().add((t * self.blocks + g) * 4).cast());
            _mm256_sub_epi32(widen(_mm256_maddubs_epi16(*w, x)), _mm256_zextsi128_si256(bias))
        }
    }
}
