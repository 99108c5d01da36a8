//! AVX2 MXFP4 rows against activations in an integer form (`PairForm`: int16 per block, or
//! int8 where the plan puts them on the MXFP4 grid), two blocks at a time: one 32-byte load
//! holds a pair's codes, the form turns them into whole numbers (byte shuffles through a
//! table of twice the E2M1 values) and multiplies them with each token's integers into 8
//! int32 lanes, four a block, exactly; one fused multiply-add then applies each block's
//! weight and token scales.

// Register tiles are indexed [row][token] in fixed-size loops.
#![allow(clippy::needless_range_loop)]

use std::arch::x86_64::*;

use super::avx2::hsum;
use super::mxfp4_tail;
use crate::weights::decode::e8m0;

/// Activations in a form whose integers the loop multiplies with MXFP4 code bytes, a pair
/// of blocks (or an odd last block alone) at a time.
pub(super) trait PairForm {
    /// A row's pair of blocks as the form multiplies them, made once for a tile's tokens.
    type Pair: Copy;
    /// A row's odd last block, likewise.
    type Lone: Copy;
    /// The byte each 4-bit code (bit 3 the sign) stands for in this form's weights.
    const TABLE: [u8; 16];
    /// What each integer sum is worth beyond the block's weight and token scales.
    const SUM_UNIT: f32;
    /// Whole blocks per token (B).
    fn blocks(&self) -> usize;
    /// [n, B]: each token's block scales.
    fn scales(&self) -> &[f32];
    /// Blocks g, g + 1 of a row from their weights as `TABLE` bytes: `even` [evens of g |
    /// evens of g + 1], `odd` likewise.
    ///
    /// # Safety
    /// The CPU has AVX2.
    unsafe fn pair(even: __m256i, odd: __m256i) -> Self::Pair;
    /// Token t's products with a pair of blocks starting at block g (even), summed into
    /// [block g x 4 | block g + 1 x 4] int32 lanes.
    ///
    /// # Safety
    /// The CPU has AVX2; t is a token of this form and g + 1 < B.
    unsafe fn pair_sums(&self, w: &Self::Pair, t: usize, g: usize) -> __m256i;
    /// An odd last block of a row from its weights as `TABLE` bytes, [evens | odds].
    ///
    /// # Safety
    /// The CPU has AVX2.
    unsafe fn lone(values: __m256i) -> Self::Lone;
    /// Token t's products with the odd last block g, summed into 8 int32 lanes.
    ///
    /// # Safety
    /// The CPU has AVX2; t is a token of this form and g the odd last block.
    unsafe fn lone_sums(&self, w: &Self::Lone, t: usize, g: usize) -> __m256i;
}

/// Bytes ahead of the codes being read that each pair of blocks asks the L2 cache for: at
/// this kernel's pace the hardware prefetcher alone left a core waiting on its loads.
/// Measured on Zen 3 (`kernel_read_speed`, one core from memory): against one token
/// 3.4 -> 6.5-6.7 GB/s in blocks of 16 rows and 3.6 -> 5.1-5.4 row by row; the mid-size
/// decode step 13.7-17.0 -> 10.8-13.9 ms (median 14.9 -> 12.5), alternated.
const PREFETCH_AHEAD: usize = 8192;

/// `nrows` MXFP4 rows (codes [rows, cols/2], scales [rows, cols/32]) against tokens
/// [t0, t0 + tb) of `a` -> out[r * ostride + t]; `x` holds those tokens' f32 rows
/// [tb, cols], read only past the last whole block. One call for a block of rows: a decode
/// step's rows are short, and the calls around a row cost a third of it.
///
/// # Safety
/// The CPU has AVX2 and FMA; codes and scales hold `nrows` rows of `cols`, `a` was made
/// from x [n, cols] with t0 + tb <= n, and out reaches (nrows - 1) * ostride + tb.
#[target_feature(enable = "avx2,fma")]
#[allow(clippy::too_many_arguments)]
pub unsafe fn block_dots<F: PairForm>(
    codes: &[u8],
    scales: &[u8],
    nrows: usize,
    a: &F,
    x: &[f32],
    t0: usize,
    tb: usize,
    cols: usize,
    out: &mut [f32],
    ostride: usize,
) {
    let (cb, sb) = (cols.div_ceil(2), cols.div_ceil(32));
    // One token takes rows in pairs: each row's loop is short against one token, and a pair
    // shares the activation loads and the fixed costs around the loop.
    let rows_at = |r: usize| if tb == 1 && r + 2 <= nrows { 2 } else { 1 };
    // Token tiles outside, rows inside: a tile's activations stay in L1 while every row passes
    // over them (rows outside streamed all tb tokens from L2 for each row; see `avx2::dense_block_dots`).
    let mut t = 0;
    for tile in [4usize, 2, 1] {
        while tb - t >= tile {
            let mut r = 0;
            while r < nrows {
                let rows = rows_at(r);
                let (c, s, o) = (&codes[r * cb..], &scales[r * sb..], &mut out[r * ostride + t..]);
                // SAFETY: the caller's guarantees, for rows r..r + rows and tokens
                // t0 + t .. t0 + t + tile.
                unsafe {
                    match (rows, tile) {
                        (2, _) => tile_dots::<F, 2, 1>(c, s, cb, sb, a, t0 + t, o, ostride, t == 0),
                        (_, 4) => tile_dots::<F, 1, 4>(c, s, cb, sb, a, t0 + t, o, ostride, t == 0),
                        (_, 2) => tile_dots::<F, 1, 2>(c, s, cb, sb, a, t0 + t, o, ostride, t == 0),
                        _ => tile_dots::<F, 1, 1>(c, s, cb, sb, a, t0 + t, o, ostride, t == 0),
                    }
                }
                r += rows;
            }
            t += tile;
        }
    }
    if !cols.is_multiple_of(32) {
        for i in 0..nrows {
            let (c, s) = (&codes[i * cb..(i + 1) * cb], &scales[i * sb..(i + 1) * sb]);
            for (j, v) in out[i * ostride..i * ostride + tb].iter_mut().enumerate() {
                *v += mxfp4_tail(c, s, &x[j * cols..(j + 1) * cols], cols);
            }
        }
    }
}

/// Blocks whose scale products (`combine_scales`) a tile works out at once: its buffer,
/// R x T x 32 f32 (at most 512 bytes), lives on the stack.
const SCALE_CHUNK: usize = 32;

/// The whole blocks of rows [0, R) (codes and scales from the first of them, rows cb and sb
/// bytes apart) against tokens [t0, t0 + T) -> out[r * ostride + t]. One accumulator per
/// (row, token), its pairs of blocks added in order, the same in any tile. Two (pairs in
/// turn), to keep the adds off one latency chain, left a 1 x 4 tile's eight accumulators
/// and four weight registers short of registers: spilled accumulators went through the stack
/// on every pair (Zen 2, `kernel_tile_speed`, 64 rows in L2, best of 20, one core: 4 to 64
/// tokens 27.1-27.3 -> 28.0-28.3 G multiply-adds/s, W4A4 33.1-33.2 -> 33.9-34.0; one token,
/// where the rows go in pairs, 21.1-21.4 -> 21.4-21.6). The pair's own chain is not what
/// bounds it: each accumulator takes one fused multiply-add per pair and token.
/// `ahead`: the rows' first tile of tokens, which prefetches them (`PREFETCH_AHEAD`); the
/// later tiles find them in cache.
#[target_feature(enable = "avx2,fma")]
#[allow(clippy::too_many_arguments)]
unsafe fn tile_dots<F: PairForm, const R: usize, const T: usize>(
    codes: &[u8],
    scales: &[u8],
    cb: usize,
    sb: usize,
    a: &F,
    t0: usize,
    out: &mut [f32],
    ostride: usize,
    ahead: bool,
) {
    let nb = a.blocks();
    // SAFETY: the table is 16 bytes.
    let lut = _mm256_broadcastsi128_si256(unsafe { _mm_loadu_si128(F::TABLE.as_ptr().cast()) });
    let nib = _mm256_set1_epi8(0x0F);
    let values = |codes: __m256i| _mm256_shuffle_epi8(lut, _mm256_and_si256(codes, nib));
    // [R][T][SCALE_CHUNK]: row r's scale times token t's, for the chunk's blocks.
    let mut combined = [[[0.0f32; SCALE_CHUNK]; T]; R];
    // Blocks g and g + 1 at once: one 32-byte load holds both blocks' codes, and each
    // int32 lane sums one block's products ([block g x 4 | block g + 1 x 4]), so the
    // nibble split, the conversion and the scaling each take one instruction per pair.
    // Zen 3, 64 rows of 1024 in L2, alternated with the loop over single blocks, best of
    // 400: 1 token 1.13-1.17x, 2 tokens 1.10-1.18x, 4 tokens 1.04-1.09x, 64 tokens 1.03-1.05x.
    // Chunks start at multiples of SCALE_CHUNK (a multiple of four), so a pair's products
    // sit side by side at g % SCALE_CHUNK.
    let add_pair = |g: usize, combined: &[[[f32; SCALE_CHUNK]; T]; R], acc: &mut [[__m256; T]; R]| {
        let j = g % SCALE_CHUNK;
        // SAFETY (both): block g + 1 < B of rows 0..R lies inside codes, and tokens
        // t0..t0 + T are the form's (the caller's guarantees).
        let w: [F::Pair; R] = std::array::from_fn(|r| unsafe {
            let b = _mm256_loadu_si256(codes.as_ptr().add(r * cb + 16 * g).cast());
            F::pair(values(b), values(_mm256_srli_epi16::<4>(b)))
        });
        for t in 0..T {
            for r in 0..R {
                unsafe {
                    let d = a.pair_sums(&w[r], t0 + t, g);
                    let c = &combined[r][t];
                    let s = _mm256_blend_ps::<0xF0>(
                        _mm256_broadcast_ss(c.get_unchecked(j)),
                        _mm256_broadcast_ss(c.get_unchecked(j + 1)),
                    );
                    acc[r][t] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(d), s, acc[r][t]);
                }
            }
        }
    };
    let add_lone = |g: usize, combined: &[[[f32; SCALE_CHUNK]; T]; R], acc: &mut [[__m256; T]; R]| {
        let j = g % SCALE_CHUNK;
        // SAFETY (both): as in add_pair, for the odd last block. Its 16 code bytes go to
        // both lanes, the high nibbles' lane blended in (an insert would take a shuffle port).
        let w: [F::Lone; R] = std::array::from_fn(|r| unsafe {
            let b = _mm256_broadcastsi128_si256(_mm_loadu_si128(codes.as_ptr().add(r * cb + 16 * g).cast()));
            F::lone(values(_mm256_blend_epi32::<0xF0>(b, _mm256_srli_epi16::<4>(b))))
        });
        for t in 0..T {
            for r in 0..R {
                unsafe {
                    let d = a.lone_sums(&w[r], t0 + t, g);
                    let s = _mm256_broadcast_ss(combined[r][t].get_unchecked(j));
                    acc[r][t] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(d), s, acc[r][t]);
                }
            }
        }
    };
    let mut acc = [[_mm256_setzero_ps(); T]; R];
    let mut c0 = 0;
    while c0 < nb {
        let len = SCALE_CHUNK.min(nb - c0);
        for r in 0..R {
            for t in 0..T {
                let (rs, ts) = (
                    &scales[r * sb + c0..r * sb + c0 + len],
                    &a.scales()[(t0 + t) * nb + c0..(t0 + t) * nb + c0 + len],
                );
                // SAFETY: the CPU has AVX2 (this function's own requirement).
                unsafe { combine_scales(rs, ts, &mut combined[r][t][..len]) };
            }
        }
        let end = c0 + len;
        let mut g = c0;
        while g + 4 <= end {
            if ahead {
                for r in 0..R {
                    _mm_prefetch::<_MM_HINT_T1>(codes.as_ptr().wrapping_add(r * cb + 16 * g + PREFETCH_AHEAD).cast());
                }
            }
            add_pair(g, &combined, &mut acc);
            add_pair(g + 2, &combined, &mut acc);
            g += 4;
        }
        if g + 2 <= end {
            add_pair(g, &combined, &mut acc);
            g += 2;
        }
        if g < end {
            add_lone(g, &combined, &mut acc);
        }
        c0 = end;
    }
    for r in 0..R {
        for t in 0..T {
            out[r * ostride + t] = hsum(acc[r][t]) * F::SUM_UNIT;
        }
    }
}

/// out[g] = e8m0(row_scales[g]) * token_scales[g], the factor of block g's integer sum for
/// one (row, token), eight blocks at a time before the loop that uses them. Worked out per
/// block inside that loop (a byte to a float register, a multiply, a broadcast: scalar and
/// shuffle work beside a loop short of shuffle ports) it cost the one-token loop a sixth of
/// its pace. Measured on Zen 3 in one process, alternated with the per-block form, best of
/// 30 (with the broadcast code load below): one token 1.18-1.26x with the rows in L2,
/// 1.06-1.21x from memory; 4 and 64 tokens 1.01-1.08x. The products are the scalar ones, bit
/// for bit: exponents 0 and 0xFF become 2^-127 and NaN as in `e8m0`, then one IEEE multiply.
///
/// # Safety
/// The CPU has AVX2.
#[target_feature(enable = "avx2,fma")]
unsafe fn combine_scales(row_scales: &[u8], token_scales: &[f32], out: &mut [f32]) {
    let n = out.len();
    debug_assert!(row_scales.len() == n && token_scales.len() == n);
    let (ff, zero) = (_mm256_set1_epi32(0xFF), _mm256_setzero_si256());
    let (nan, tiny) = (_mm256_set1_ps(f32::NAN), _mm256_castsi256_ps(_mm256_set1_epi32(1 << 22)));
    let mut g = 0;
    // SAFETY (loads and stores): g + 8 <= n, the length of all three.
    while g + 8 <= n {
        unsafe {
            let b = _mm256_cvtepu8_epi32(_mm_loadl_epi64(row_scales.as_ptr().add(g).cast()));
            let mut w = _mm256_castsi256_ps(_mm256_slli_epi32::<23>(b));
            w = _mm256_blendv_ps(w, nan, _mm256_castsi256_ps(_mm256_cmpeq_epi32(b, ff)));
            w = _mm256_blendv_ps(w, tiny, _mm256_castsi256_ps(_mm256_cmpeq_epi32(b, zero)));
            _mm256_storeu_ps(out.as_mut_ptr().add(g), _mm256_mul_ps(w, _mm256_loadu_ps(token_scales.as_ptr().add(g))));
        }
        g += 8;
    }
    for g in g..n {
        out[g] = e8m0(row_scales[g]) * token_scales[g];
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn combined_scales_are_the_scalar_products_bit_for_bit() {
        if !(is_x86_feature_detected!("avx2") && is_x86_feature_detected!("fma")) {
            return;
        }
        // Every exponent byte (0 and 0xFF included) against token scales that are zero,
        // NaN, subnormal, tiny and large, at lengths that leave tails of 0 to 7.
        let token = [0.0f32, 1.5e-5, f32::NAN, 1e-40, 3.0e-39, 0.5, 2.0f32.powi(60), -0.25];
        let bytes: Vec<u8> = (0..=255u8).collect();
        for len in [1usize, 3, 7, 8, 9, 11, 16, 23, 32] {
            for start in 0..=256 - len {
                let rs = &bytes[start..start + len];
                let ts: Vec<f32> = (0..len).map(|i| token[(start + i + len) % token.len()]).collect();
                let mut got = vec![0.0f32; len];
                // SAFETY: checked above that the CPU has AVX2 and FMA.
                unsafe { combine_scales(rs, &ts, &mut got) };
                for i in 0..len {
                    let want = e8m0(rs[i]) * ts[i];
                    assert_eq!(got[i].to_bits(), want.to_bits(), "byte {} token scale {}", rs[i], ts[i]);
                }
            }
        }
    }
}
