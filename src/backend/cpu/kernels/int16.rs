//! Activations as int16 per block of 32, the form the AVX2 kernel multiplies MXFP4 codes with
//! (`avx2_int16`): integer multiply-adds take a block of 32 in a few instructions, where
//! expanding each code to f32 first took a table permute per 8 weights and held a core to
//! 2.8 GB/s of weights on Zen 3.
//!
//! Per token and block of 32: s = the power of two at or above amax / 32767, q = round(x / s)
//! (clamped to +-32767, which only a block whose amax rounds to the top can reach). The
//! error is at most amax / 32767 per element, the same bound as the VNNI kernel's two int8
//! terms, and the golden fixtures stay well inside their tolerance. An input already on the
//! MXFP4 grid (W4A4: E2M1 values k/2 times a power of two p, k <= 12) is represented
//! exactly: s < 2 amax / 32767 <= 12 p / 32767 < p / 2, so every k p / 2 is a whole number
//! of s.

use super::aligned::Aligned;

/// Elements per block, the MXFP4 block size.
const BLOCK: usize = 32;

/// x [n, cols] in the kernel's layout. Only whole blocks of 32 are here; the elements past
/// the last whole block stay with the f32 activations.
pub struct Int16Acts {
    pub blocks: usize, // B = cols / 32
    /// [n, B, 32] in the order the kernel's unpacked code bytes give the elements in
    /// (`slot`): blocks go in pairs, 64 slots each, and an odd last block alone.
    pub q: Aligned<i16>,
    /// [n, B]: s / 2 (undoing the doubled E2M1 values of the kernel's weights); NaN for a
    /// block with a non-finite element, 0 for a block of zeros.
    pub scale: Aligned<f32>,
}

impl Int16Acts {
    /// x [n, cols].
    pub fn new(x: &[f32], n: usize, cols: usize) -> Int16Acts {
        let blocks = cols / BLOCK;
        // Every slot and scale is written below (a block with nothing to scale by gets zeros).
        let mut q = Aligned::for_overwrite(n * blocks * BLOCK);
        let mut scale = Aligned::for_overwrite(n * blocks);
        #[cfg(target_arch = "x86_64")]
        if std::arch::is_x86_feature_detected!("avx2") {
            // SAFETY: checked just above that the CPU has AVX2.
            unsafe { quantize_avx2(x, cols, &mut q, &mut scale) };
            return Int16Acts { blocks, q, scale };
        }
        quantize(x, cols, &mut q, &mut scale);
        Int16Acts { blocks, q, scale }
    }
}

/// `quantize` with AVX2 vectors: a block's 32 elements in four registers, its largest
/// magnitude by vector maxima, then each half's 16 integers packed, split into evens and odds
/// and stored as two runs of 8 (the scalar form, element by element through `slot`, was 2.5%
/// of a 512-token mid-size prefill). The bytes are the scalar form's (a test compares them).
///
/// # Safety
/// The CPU has AVX2.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
unsafe fn quantize_avx2(x: &[f32], cols: usize, q: &mut [i16], scale: &mut [f32]) {
    // SAFETY: the CPU has AVX2 (this function's own requirement).
    for_each_block(x, cols, q, scale, |xs, slots, p, alone| unsafe { x86::quantize_block(xs, slots, p, alone) })
}

#[cfg(target_arch = "x86_64")]
pub(super) mod x86 {
    use std::arch::x86_64::*;

    use super::BLOCK;

    /// A block's 32 values in four registers, and `block_amax` of them: its largest
    /// magnitude by vector maxima, or the mark of a block with none to scale by.
    ///
    /// # Panics
    /// xs does not hold 32 values.
    #[target_feature(enable = "avx2")]
    pub(in super::super) fn load_block(xs: &[f32]) -> ([__m256; 4], Result<f32, f32>) {
        assert_eq!(xs.len(), BLOCK, "a block is 32 values");
        // SAFETY: xs holds 32 values (checked above).
        let v: [__m256; 4] = std::array::from_fn(|k| unsafe { _mm256_loadu_ps(xs.as_ptr().add(8 * k)) });
        let magnitude = _mm256_castsi256_ps(_mm256_set1_epi32(0x7FFF_FFFF));
        let abs: [__m256; 4] = std::array::from_fn(|k| _mm256_and_ps(v[k], magnitude));
        // Finite: below infinity, which NaN is not (an ordered comparison).
        let inf = _mm256_set1_ps(f32::INFINITY);
        let finite = abs.iter().fold(0xFF, |m, &a| m & _mm256_movemask_ps(_mm256_cmp_ps::<_CMP_LT_OQ>(a, inf)));
        let top = _mm256_max_ps(_mm256_max_ps(abs[0], abs[1]), _mm256_max_ps(abs[2], abs[3]));
        let top = _mm_max_ps(_mm256_castps256_ps128(top), _mm256_extractf128_ps::<1>(top));
        let top = _mm_max_ps(top, _mm_movehl_ps(top, top));
        let amax = _mm_cvtss_f32(_mm_max_ss(top, _mm_movehdup_ps(top)));
        let amax = match (finite == 0xFF, amax == 0.0) {
            (false, _) => Err(f32::NAN),
            (true, true) => Err(0.0),
            (true, false) => Ok(amax),
        };
        (v, amax)
    }

    /// `quantize_block` for block p (0 or 1) of its pair's 64 slots, or for a lone block's 32.
    ///
    /// # Safety
    /// The CPU has AVX2; xs holds 32 values, slots 64 (a pair) or 32 (`alone`).
    #[target_feature(enable = "avx2")]
    pub(super) unsafe fn quantize_block(xs: &[f32], slots: &mut [i16], p: usize, alone: bool) -> f32 {
        assert!(xs.len() == BLOCK && slots.len() == if alone { BLOCK } else { 2 * BLOCK });
        let (v, amax) = load_block(xs);
        let (s, mark) = match amax {
            Err(mark) => (0.0, Some(mark)),
            Ok(amax) => (super::super::int8x2::pow2_at_least(amax / 32767.0), None),
        };
        // Each half's 16 values as int16 [evens | odds]: the slots' two runs of 8 for that half.
        let runs: [__m256i; 2] = match mark {
            Some(_) => [_mm256_setzero_si256(); 2],
            None => {
                let inv = _mm256_set1_ps(1.0 / s);
                let (lo, hi) = (_mm256_set1_ps(-32767.0), _mm256_set1_ps(32767.0));
                let ints: [__m256i; 4] = std::array::from_fn(|k| {
                    let r =
                        _mm256_round_ps::<{ _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC }>(_mm256_mul_ps(v[k], inv));
                    _mm256_cvtps_epi32(_mm256_min_ps(_mm256_max_ps(r, lo), hi))
                });
                // packs: per 128-bit lane [e0..e3, e8..e11 | e4..e7, e12..e15]; the shuffle puts
                // each lane's evens before its odds; the permute orders the pairs of evens (odds).
                let evens_first = _mm256_setr_epi8(
                    0, 1, 4, 5, 8, 9, 12, 13, 2, 3, 6, 7, 10, 11, 14, 15, 0, 1, 4, 5, 8, 9, 12, 13, 2, 3, 6, 7, 10, 11,
                    14, 15,
                );
                let order = _mm256_setr_epi32(0, 4, 1, 5, 2, 6, 3, 7);
                std::array::from_fn(|h| {
                    let packed = _mm256_packs_epi32(ints[2 * h], ints[2 * h + 1]);
                    _mm256_permutevar8x32_epi32(_mm256_shuffle_epi8(packed, evens_first), order)
                })
            }
        };
        // SAFETY (stores): a lone block's runs are slots [0, 32); a pair's block p has the 8
        // slots at 16 k + 8 p of runs k = half (evens) and half + 2 (odds), all below 64.
        unsafe {
            let out = slots.as_mut_ptr();
            for (h, run) in runs.iter().enumerate() {
                if alone {
                    _mm256_storeu_si256(out.add(16 * h).cast(), *run);
                } else {
                    _mm_storeu_si128(out.add(16 * h + 8 * p).cast(), _mm256_castsi256_si128(*run));
                    _mm_storeu_si128(out.add(16 * (h + 2) + 8 * p).cast(), _mm256_extracti128_si256::<1>(*run));
                }
            }
        }
        mark.unwrap_or(s / 2.0)
    }
}

/// Every token's whole blocks of x [n, cols] into q [n, B, 32] and scale [n, B].
fn quantize(x: &[f32], cols: usize, q: &mut [i16], scale: &mut [f32]) {
    for_each_block(x, cols, q, scale, |xs, slots, p, alone| quantize_block(xs, slots, |e| slot(e, p, alone)))
}

/// Each token's whole blocks of x [n, cols] through `block` (its 32 values, the slots of its
/// pair, or its own for a lone block; its place in the pair; whether lone), which fills its
/// slots and returns its scale into scale [n, B].
#[inline(always)]
fn for_each_block(
    x: &[f32],
    cols: usize,
    q: &mut [i16],
    scale: &mut [f32],
    mut block: impl FnMut(&[f32], &mut [i16], usize, bool) -> f32,
) {
    let blocks = cols / BLOCK;
    if blocks == 0 {
        return;
    }
    for (t, (qt, st)) in q.chunks_exact_mut(blocks * BLOCK).zip(scale.chunks_exact_mut(blocks)).enumerate() {
        let xt = &x[t * cols..t * cols + blocks * BLOCK];
        for (b, (xs, sb)) in xt.chunks_exact(BLOCK).zip(st.iter_mut()).enumerate() {
            let (slots, alone) = block_slots(qt, b, blocks);
            *sb = block(xs, slots, b % 2, alone);
        }
    }
}

/// One block of 32 into its int16 slots among `slots` (element e to slots[slot_of(e)]);
/// returns its scale (s / 2).
#[inline(always)]
fn quantize_block(xs: &[f32], slots: &mut [i16], slot_of: impl Fn(usize) -> usize) -> f32 {
    let amax = match block_amax(xs) {
        Ok(amax) => amax,
        Err(mark) => {
            for e in 0..BLOCK {
                slots[slot_of(e)] = 0;
            }
            return mark;
        }
    };
    let s = super::int8x2::pow2_at_least(amax / 32767.0);
    let inv = 1.0 / s;
    for (e, &v) in xs.iter().enumerate() {
        slots[slot_of(e)] = (v * inv).round_ties_even().clamp(-32767.0, 32767.0) as i16;
    }
    s / 2.0
}

/// A block's largest magnitude, or, for a block that has none to scale by, the scale that
/// marks it (its slots stay 0): NaN for a non-finite element, 0 for a block of zeros.
#[inline(always)]
pub(super) fn block_amax(xs: &[f32]) -> Result<f32, f32> {
    let finite = xs.iter().all(|v| v.is_finite());
    let amax = xs.iter().fold(0.0f32, |m, v| m.max(v.abs()));
    match (finite, amax == 0.0) {
        (false, _) => Err(f32::NAN),
        (true, true) => Err(0.0),
        (true, false) => Ok(amax),
    }
}

/// The slots block b of a token's `blocks` shares with its pair (64, from the pair's first
/// slot) or, an odd last block, its own 32; and whether it is that lone block. q [B, 32] is
/// the token's slots, int16 or int8.
#[inline(always)]
pub(super) fn block_slots<T>(q: &mut [T], b: usize, blocks: usize) -> (&mut [T], bool) {
    let (first, alone) = (b - b % 2, is_alone(b, blocks));
    (&mut q[first * BLOCK..][..if alone { BLOCK } else { 2 * BLOCK }], alone)
}

/// Whether block b of `blocks` is an odd last block, which has no pair.
#[inline(always)]
pub(super) fn is_alone(b: usize, blocks: usize) -> bool {
    b + 1 == blocks && b.is_multiple_of(2)
}

/// The slot of element e of a block, counted from the first slot of its pair of blocks (`p`
/// its place in the pair, 0 or 1) or, `alone` (an odd last block), from its own first slot.
/// A pair's 64 slots are four runs of 16, each run 8 elements of the first block then the
/// same 8 of the second: the even elements 0..14, the even 16..30, the odd 1..15, the odd
/// 17..31. A lone block's 32 are two runs of 16: the even then the odd elements of 0..15,
/// the even then the odd of 16..31.
#[inline(always)]
fn slot(e: usize, p: usize, alone: bool) -> usize {
    let (half, m, odd) = (e / 16, (e % 16) / 2, e % 2);
    if alone { 16 * half + 8 * odd + m } else { 16 * (half + 2 * odd) + 8 * p + m }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Element i of block b of token 0, as the kernel would reconstruct it.
    fn back(a: &Int16Acts, b: usize, i: usize) -> f32 {
        f32::from(a.q[BLOCK * (b - b % 2) + slot(i, b % 2, is_alone(b, a.blocks))]) * a.scale[b] * 2.0
    }

    #[test]
    fn every_element_has_one_slot() {
        let pair: Vec<usize> = (0..2).flat_map(|p| (0..BLOCK).map(move |e| slot(e, p, false))).collect();
        assert_eq!((pair[0], pair[2], pair[4], pair[6]), (0, 1, 2, 3), "the first block's evens open the first run");
        assert_eq!(pair[1], 32, "element 1 opens the third run");
        assert_eq!(pair[BLOCK], 8, "the second block's element 0 follows the first's 0..14");
        assert_eq!(pair[16], 16, "element 16 opens the second run");
        let mut seen = pair.clone();
        seen.sort();
        assert_eq!(seen, (0..2 * BLOCK).collect::<Vec<_>>());
        let mut alone: Vec<usize> = (0..BLOCK).map(|e| slot(e, 0, true)).collect();
        assert_eq!((alone[0], alone[1], alone[2], alone[16]), (0, 8, 1, 16));
        alone.sort();
        assert_eq!(alone, (0..BLOCK).collect::<Vec<_>>());
    }

    #[test]
    fn reconstruction_is_within_the_bound_and_exact_on_the_mxfp4_grid() {
        // A pair of blocks and a tail of 6; then a pair, a lone block and a tail of 4.
        for (cols, blocks) in [(70, 2), (100, 3)] {
            let mut x: Vec<f32> = (0..cols).map(|i| ((i * 37 % 61) as f32 - 30.0) * 0.173).collect();
            x[40] = 6.0;
            x[63] = -0.0001; // a small element in a block with a large one
            let a = Int16Acts::new(&x, 1, cols);
            assert_eq!((a.blocks, a.q.len(), a.scale.len()), (blocks, 32 * blocks, blocks), "the tail stays out");
            for b in 0..blocks {
                let amax = x[32 * b..32 * b + 32].iter().fold(0.0f32, |m, v| m.max(v.abs()));
                for i in 0..32 {
                    let got = back(&a, b, i);
                    assert!((got - x[32 * b + i]).abs() <= amax / 32767.0, "{cols} block {b} element {i}: {got}");
                }
            }
        }
        // W4A4 inputs: E2M1 values times a power of two come back exactly, whatever the
        // block's largest value.
        for top in [6.0f32, 1.0, 0.5] {
            let grid: Vec<f32> = [0.0f32, 0.5, 1.0, 1.5, 2.0, 3.0, 4.0, 6.0]
                .iter()
                .filter(|&&v| v <= top)
                .cycle()
                .take(32)
                .enumerate()
                .map(|(i, &v)| (if i % 3 == 0 { -v } else { v }) * 2f32.powi(-9))
                .collect();
            let a = Int16Acts::new(&grid, 1, 32);
            for (i, &want) in grid.iter().enumerate() {
                assert_eq!(back(&a, 0, i), want, "top {top} element {i}");
            }
        }
    }

    #[test]
    fn the_top_of_the_range_keeps_its_sign() {
        // Block maxima at and just past 32767 times a power of two, where q reaches the
        // int16 limit: no element may wrap to the other sign.
        for amax in [32767.0f32, 32767.004, 32767.5, 65534.0, 65535.0] {
            let x: Vec<f32> = (0..32).map(|i| if i % 2 == 0 { amax } else { -amax * 0.999 }).collect();
            let a = Int16Acts::new(&x, 1, 32);
            for (i, want) in x.iter().enumerate() {
                let got = back(&a, 0, i);
                assert!((got - want).abs() <= amax / 32767.0, "amax {amax} element {i}: {got}");
            }
        }
    }

    #[test]
    fn non_finite_blocks_are_marked_and_zero_blocks_are_zero() {
        let mut x = vec![0.0f32; 2 * 96];
        x[33] = f32::INFINITY;
        x[70] = 1.0;
        x[96 + 5] = f32::NAN;
        let a = Int16Acts::new(&x, 2, 96);
        assert_eq!(a.scale[0], 0.0);
        assert!(a.scale[1].is_nan());
        assert!(a.scale[2] > 0.0);
        assert!(a.scale[3].is_nan(), "token 1's first block");
        assert!(a.scale[4..].iter().all(|&s| s == 0.0), "token 1's zero blocks");
        assert!(a.q[..32].iter().all(|&v| v == 0));
    }

    #[test]
    fn the_simd_build_gives_the_portable_bytes() {
        // Ordinary values, then blocks with a zero block, infinities, NaN, values that round
        // to the int16 limit, halves that round to even, subnormals and huge magnitudes;
        // widths with a lone last block and tails.
        let mut x: Vec<f32> = (0..5 * 100).map(|i| ((i * 7919 % 1013) as f32 - 506.0) * 1.7e-3).collect();
        x[40] = f32::INFINITY;
        x[110] = f32::NAN;
        x[170] = f32::NEG_INFINITY;
        x[200..232].iter_mut().for_each(|v| *v = 0.0);
        x[240] = -0.0;
        for (i, v) in x[300..332].iter_mut().enumerate() {
            *v = [32767.0, -32767.5, 0.5, 1.5, -2.5, 16383.5, -0.0, 65534.0][i % 8];
        }
        for (i, v) in x[400..432].iter_mut().enumerate() {
            *v = (i as f32 - 16.0) * 1e-41;
        }
        x[450] = 3.0e38;
        x[451] = -1.0e38;
        for cols in [100usize, 50, 32, 96, 20] {
            let n = x.len() / cols;
            let a = Int16Acts::new(&x[..n * cols], n, cols);
            let (mut q, mut scale) = (vec![0i16; a.q.len()], vec![0.0f32; a.scale.len()]);
            quantize(&x[..n * cols], cols, &mut q, &mut scale);
            assert_eq!(&a.q[..], &q[..], "cols {cols}");
            assert_eq!(
                a.scale.iter().map(|s| s.to_bits()).collect::<Vec<_>>(),
                scale.iter().map(|s| s.to_bits()).collect::<Vec<_>>(),
                "cols {cols}"
            );
        }
    }
}
