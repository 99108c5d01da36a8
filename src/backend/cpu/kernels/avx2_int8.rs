//! The int8 form (`int8`) of the AVX2 MXFP4 loop, for activations on the MXFP4 grid: the
//! loop's two byte shuffles turn a pair's 32 code bytes into its 64 weights as unsigned
//! bytes (twice the E2M1 values plus 12, 0..24), two `vpmaddubsw` per token multiply them
//! with the token's int8 values into int16 sums of two products (at most 2 x 24 x 127), one add and
//! one `vpmaddwd` by ones take those into 8 int32 lanes (four a block), and the bias the
//! offset of 12 put in is taken off. Three multiplier instructions per 64 products where
//! int16 takes four, and no unpacking.

use std::arch::x86_64::*;

use super::avx2_mxfp4::PairForm;
use super::int8::{Int8Acts, WEIGHT_OFFSET};

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
    /// Twice each E2M1 value plus `WEIGHT_OFFSET`.
    const TABLE: [u8; 16] = {
        let doubled: [i32; 16] = [0, 1, 2, 3, 4, 6, 8, 12, 0, -1, -2, -3, -4, -6, -8, -12];
        let mut t = [0u8; 16];
        let mut i = 0;
        while i < 16 {
            t[i] = (doubled[i] + WEIGHT_OFFSET) as u8;
            i += 1;
        }
        t
    };
    const SUM_UNIT: f32 = 1.0;

    fn blocks(&self) -> usize {
        self.blocks
    }

    fn scales(&self) -> &[f32] {
        &self.scale
    }

    #[inline]
    unsafe fn pair(even: __m256i, odd: __m256i) -> Self::Pair {
        [even, odd]
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

    #[inline]
    unsafe fn lone(values: __m256i) -> Self::Lone {
        values
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
