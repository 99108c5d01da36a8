//! Activations on the MXFP4 grid (a W4A4 plan's, rounded per group of 32 before its MXFP4
//! linears) as int8 per block of 32, the form the AVX2 kernel multiplies MXFP4 codes with
//! one `vpmaddubsw` per 32 products (`avx2_int8`), where int16 (`int16`) takes two
//! `vpmaddwd` and unpacking.
//!
//! Per token and block: s = the power of two at or above amax / 127 and q = x / s, which on
//! the grid is a whole number: the block's values are E2M1 values k/2 (k <= 12) times its
//! power of two p, its amax is 4p or 6p (the grid's rounding keeps the top), so s <= p / 16
//! and every k p / 2 is a whole number of s. Nothing is rounded, so the dot products are
//! exact. An input off the grid is not made into this form (`on_grid` answers None) and
//! goes as int16.
//!
//! `vpmaddubsw` multiplies unsigned bytes with signed ones, so the kernel's weights are
//! twice the E2M1 values plus 12 (0..24) and each block's sum carries 12 times the sum of
//! its q, taken off again from `bias`.

use super::aligned::Aligned;
use super::int16::{block_amax, block_slots};

/// Elements per block, the MXFP4 block size.
const BLOCK: usize = 32;

/// What the kernel's weights carry beyond twice their E2M1 values.
pub const WEIGHT_OFFSET: i32 = 12;

/// x [n, cols] in the kernel's layout. Only whole blocks of 32 are here; the elements past
/// the last whole block stay with the f32 activations.
pub struct Int8Acts {
    pub blocks: usize, // B = cols / 32
    /// [n, B, 32] in the order the kernel's code bytes give the elements in (`slot`): blocks
    /// go in pairs, 64 slots each, and an odd last block alone.
    pub q: Aligned<i8>,
    /// [n, B, 4]: WEIGHT_OFFSET times the sum of the block's q in the first of its four
    /// int32 lanes, zero in the others (the lanes the kernel sums the block in).
    pub bias: Aligned<i32>,
    /// [n, B]: s / 2 (undoing the doubled E2M1 values of the kernel's weights); NaN for a
    /// block with a non-finite element, 0 for a block of zeros.
    pub scale: Vec<f32>,
}

impl Int8Acts {
    /// x [n, cols] as int8 if every whole block is on a power-of-two grid of at most 127
    /// steps (as every block of MXFP4-rounded activations is), else None.
    pub fn on_grid(x: &[f32], n: usize, cols: usize) -> Option<Int8Acts> {
        let blocks = cols / BLOCK;
        let mut a = Int8Acts {
            blocks,
            // Every slot of q is written when every block is on its grid; of bias only each
            // block's first lane.
            q: Aligned::for_overwrite(n * blocks * BLOCK),
            bias: Aligned::zeroed(n * blocks * 4),
            scale: vec![0.0f32; n * blocks],
        };
        #[cfg(target_arch = "x86_64")]
        if std::arch::is_x86_feature_detected!("avx2") {
            // SAFETY: checked just above that the CPU has AVX2.
            return unsafe { quantize_avx2(x, n, cols, &mut a) }.then_some(a);
        }
        quantize(x, n, cols, &mut a).then_some(a)
    }
}

/// `quantize` with AVX2 vectors: a block's 32 elements in four registers, its largest
/// magnitude by vector maxima, the grid check by one comparison per 8, its integers packed to
/// bytes and split into its evens and odds by a shuffle, a lane swap and two unpacks (the
/// scalar form, element by element through `slot`, was 4% of a 512-token W4A4 prefill).
/// The bytes are the scalar form's (a test compares them).
///
/// # Safety
/// The CPU has AVX2.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
unsafe fn quantize_avx2(x: &[f32], n: usize, cols: usize, a: &mut Int8Acts) -> bool {
    // SAFETY: the CPU has AVX2 (this function's own requirement).
    for_each_block(x, n, cols, a, |xs, slots, p, alone| unsafe { x86::quantize_block(xs, slots, p, alone) })
}

/// Every token's whole blocks of x [n, cols] into `a`; false at the first element off its
/// block's grid.
fn quantize(x: &[f32], n: usize, cols: usize, a: &mut Int8Acts) -> bool {
    for_each_block(x, n, cols, a, |xs, slots, p, alone| quantize_block(xs, slots, |e| slot(e, p, alone)))
}

/// Each token's whole blocks of x [n, cols] through `block` (its 32 values, the slots of its
/// pair, or its own for a lone block; its place in the pair; whether lone), which fills its
/// slots and returns its scale and the sum of its q; false at the first block it refuses.
#[inline(always)]
fn for_each_block(
    x: &[f32],
    n: usize,
    cols: usize,
    a: &mut Int8Acts,
    mut block: impl FnMut(&[f32], &mut [i8], usize, bool) -> Option<(f32, i32)>,
) -> bool {
    let blocks = a.blocks;
    for t in 0..n {
        let qt = &mut a.q[t * blocks * BLOCK..(t + 1) * blocks * BLOCK];
        for b in 0..blocks {
            let xs = &x[t * cols + b * BLOCK..t * cols + (b + 1) * BLOCK];
            let (slots, alone) = block_slots(qt, b, blocks);
            let Some((scale, sum)) = block(xs, slots, b % 2, alone) else { return false };
            a.scale[t * blocks + b] = scale;
            a.bias[(t * blocks + b) * 4] = WEIGHT_OFFSET * sum;
        }
    }
    true
}

#[cfg(target_arch = "x86_64")]
mod x86 {
    use std::arch::x86_64::*;

    use super::BLOCK;

    /// `quantize_block` for block p (0 or 1) of its pair's 64 slots, or for a lone block's 32.
    ///
    /// # Safety
    /// The CPU has AVX2; xs holds 32 values, slots 64 (a pair) or 32 (`alone`).
    #[target_feature(enable = "avx2")]
    pub(super) unsafe fn quantize_block(xs: &[f32], slots: &mut [i8], p: usize, alone: bool) -> Option<(f32, i32)> {
        assert!(xs.len() == BLOCK && slots.len() == if alone { BLOCK } else { 2 * BLOCK });
        // Where the block's 16 evens and 16 odds go.
        let (evens, odds) = if alone { (0, 16) } else { (16 * p, 32 + 16 * p) };
        let (v, amax) = super::super::int16::x86::load_block(xs);
        let out = slots.as_mut_ptr();
        let amax = match amax {
            Ok(amax) => amax,
            Err(mark) => {
                // SAFETY: evens + 16 and odds + 16 lie inside slots.
                unsafe {
                    _mm_storeu_si128(out.add(evens).cast(), _mm_setzero_si128());
                    _mm_storeu_si128(out.add(odds).cast(), _mm_setzero_si128());
                }
                return Some((mark, 0));
            }
        };
        let s = super::super::int8x2::pow2_at_least(amax / 127.0);
        let inv = _mm256_set1_ps(1.0 / s);
        let q: [__m256; 4] = std::array::from_fn(|k| _mm256_mul_ps(v[k], inv));
        let whole = q.iter().fold(0xFF, |m, &y| {
            let r = _mm256_round_ps::<{ _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC }>(y);
            m & _mm256_movemask_ps(_mm256_cmp_ps::<_CMP_EQ_OQ>(y, r))
        });
        if whole != 0xFF {
            return None;
        }
        let ints: [__m256i; 4] = std::array::from_fn(|k| _mm256_cvtps_epi32(q[k]));
        let sum = _mm256_add_epi32(_mm256_add_epi32(ints[0], ints[1]), _mm256_add_epi32(ints[2], ints[3]));
        let sum = _mm_add_epi32(_mm256_castsi256_si128(sum), _mm256_extracti128_si256::<1>(sum));
        let sum = _mm_add_epi32(sum, _mm_shuffle_epi32::<0b01_00_11_10>(sum));
        let sum = _mm_cvtsi128_si32(_mm_add_epi32(sum, _mm_shuffle_epi32::<0b10_11_00_01>(sum)));
        // Bytes per 128-bit lane [e0..e3, e8..e11, e16..e19, e24..e27 | e4..e7, ..e28..e31];
        // the shuffle puts each lane's evens first; unpacking 16-bit pairs of the two lanes
        // then gives the evens (odds) in order.
        let bytes = _mm256_packs_epi16(_mm256_packs_epi32(ints[0], ints[1]), _mm256_packs_epi32(ints[2], ints[3]));
        let evens_first = _mm256_setr_epi8(
            0, 2, 4, 6, 8, 10, 12, 14, 1, 3, 5, 7, 9, 11, 13, 15, 0, 2, 4, 6, 8, 10, 12, 14, 1, 3, 5, 7, 9, 11, 13, 15,
        );
        let split = _mm256_shuffle_epi8(bytes, evens_first);
        let swapped = _mm256_permute4x64_epi64::<0b01_00_11_10>(split);
        // SAFETY: evens + 16 and odds + 16 lie inside slots.
        unsafe {
            _mm_storeu_si128(out.add(evens).cast(), _mm256_castsi256_si128(_mm256_unpacklo_epi16(split, swapped)));
            _mm_storeu_si128(out.add(odds).cast(), _mm256_castsi256_si128(_mm256_unpackhi_epi16(split, swapped)));
        }
        Some((s / 2.0, sum))
    }
}

/// One block into its int8 slots among `slots` (element e to slots[slot_of(e)]): its scale
/// (s / 2) and the sum of its q, or None if an element is not a whole number of s.
#[inline(always)]
fn quantize_block(xs: &[f32], slots: &mut [i8], slot_of: impl Fn(usize) -> usize) -> Option<(f32, i32)> {
    let amax = match block_amax(xs) {
        Ok(amax) => amax,
        Err(mark) => {
            for e in 0..BLOCK {
                slots[slot_of(e)] = 0;
            }
            return Some((mark, 0));
        }
    };
    let s = super::int8x2::pow2_at_least(amax / 127.0);
    let inv = 1.0 / s;
    let mut sum = 0;
    for (e, &v) in xs.iter().enumerate() {
        let q = v * inv;
        if q != q.round_ties_even() {
            return None;
        }
        slots[slot_of(e)] = q as i8;
        sum += q as i32;
    }
    Some((s / 2.0, sum))
}

/// The slot of element e of a block, counted from the first slot of its pair of blocks (`p`
/// its place in the pair, 0 or 1) or, `alone` (an odd last block), from its own first slot.
/// A pair's 64 slots are the first block's 16 even elements, the second's, the first's 16
/// odd ones, the second's; a lone block's 32 are its even elements, then its odd ones.
#[inline(always)]
fn slot(e: usize, p: usize, alone: bool) -> usize {
    let (m, odd) = (e / 2, e % 2);
    if alone { 16 * odd + m } else { 32 * odd + 16 * p + m }
}

#[cfg(test)]
mod tests {
    use super::super::int16::is_alone;
    use super::*;
    use crate::backend::cpu::quantize_mxfp4_activations;

    /// Element i of block b of token 0, as the kernel would reconstruct it.
    fn back(a: &Int8Acts, b: usize, i: usize) -> f32 {
        f32::from(a.q[BLOCK * (b - b % 2) + slot(i, b % 2, is_alone(b, a.blocks))]) * a.scale[b] * 2.0
    }

    #[test]
    fn every_element_has_one_slot() {
        let mut pair: Vec<usize> = (0..2).flat_map(|p| (0..BLOCK).map(move |e| slot(e, p, false))).collect();
        assert_eq!((pair[0], pair[2], pair[1], pair[BLOCK], pair[BLOCK + 1]), (0, 1, 32, 16, 48));
        pair.sort();
        assert_eq!(pair, (0..2 * BLOCK).collect::<Vec<_>>());
        let mut alone: Vec<usize> = (0..BLOCK).map(|e| slot(e, 0, true)).collect();
        assert_eq!((alone[0], alone[1], alone[2], alone[31]), (0, 16, 1, 31));
        alone.sort();
        assert_eq!(alone, (0..BLOCK).collect::<Vec<_>>());
    }

    #[test]
    fn mxfp4_rounded_inputs_come_back_exactly_with_their_bias() {
        // A pair, a lone block and a tail of 4, at scales from tiny to large.
        let cols = 100;
        for exp in [-60, -9, 0, 7, 40] {
            let raw: Vec<f32> = (0..cols)
                .map(|i| ((i * 37 % 61) as f32 - 30.0) * 0.173 * 2f32.powi(exp) * (1 + i % 5) as f32)
                .collect();
            let x = quantize_mxfp4_activations(&raw, cols);
            let a = Int8Acts::on_grid(&x, 1, cols).expect("MXFP4-rounded blocks are on the grid");
            assert_eq!((a.blocks, a.q.len(), a.scale.len()), (3, 96, 3), "the tail stays out");
            for b in 0..3 {
                let mut sum = 0;
                for i in 0..BLOCK {
                    assert_eq!(back(&a, b, i), x[BLOCK * b + i], "2^{exp}: block {b} element {i}");
                    sum += i32::from(a.q[BLOCK * (b - b % 2) + slot(i, b % 2, is_alone(b, a.blocks))]);
                }
                assert_eq!(&a.bias[4 * b..4 * b + 4], &[WEIGHT_OFFSET * sum, 0, 0, 0], "2^{exp}: block {b}");
            }
        }
    }

    #[test]
    fn the_simd_build_gives_the_portable_bytes() {
        // MXFP4-rounded values at several scales, with a zero block, a non-finite block and
        // widths that leave a lone last block and tails; then an input off the grid.
        let raw: Vec<f32> =
            (0..6 * 100).map(|i| ((i * 7919 % 1013) as f32 - 506.0) * 1.7e-3 * 2f32.powi((i % 9) * 5 - 20)).collect();
        let mut x = quantize_mxfp4_activations(&raw, 100);
        x[100..132].iter_mut().for_each(|v| *v = 0.0);
        x[140] = f32::NAN;
        x[230] = f32::NEG_INFINITY;
        for cols in [100usize, 50, 32, 96, 20] {
            let n = x.len() / cols;
            let grid = quantize_mxfp4_activations(&x[..n * cols], cols);
            let simd = Int8Acts::on_grid(&grid, n, cols).expect("on the grid");
            let mut scalar = Int8Acts {
                blocks: cols / BLOCK,
                q: Aligned::zeroed(simd.q.len()),
                bias: Aligned::zeroed(simd.bias.len()),
                scale: vec![0.0; simd.scale.len()],
            };
            assert!(quantize(&grid, n, cols, &mut scalar));
            assert_eq!(&simd.q[..], &scalar.q[..], "cols {cols}");
            assert_eq!(&simd.bias[..], &scalar.bias[..], "cols {cols}");
            let bits = |v: &[f32]| v.iter().map(|s| s.to_bits()).collect::<Vec<_>>();
            assert_eq!(bits(&simd.scale), bits(&scalar.scale), "cols {cols}");
        }
        // A thousandth of the block's largest value is under a step (at least amax / 127).
        let mut off = quantize_mxfp4_activations(&raw[..64], 64);
        let amax = off[32..].iter().fold(0.0f32, |m, v| m.max(v.abs()));
        off[37] += amax / 1000.0;
        assert!(Int8Acts::on_grid(&off, 1, 64).is_none());
    }

    #[test]
    fn inputs_off_the_grid_are_refused_and_odd_blocks_are_marked() {
        let mut x: Vec<f32> = (0..64).map(|i| (i % 7) as f32 - 3.0).collect(); // on a grid of 1
        assert!(Int8Acts::on_grid(&x, 2, 32).is_some());
        x[40] = 0.3;
        assert!(Int8Acts::on_grid(&x, 2, 32).is_none(), "token 1 has an element between the steps");
        x[40] = 1.0;
        x[3] = f32::NAN;
        x[33..64].fill(0.0);
        x[32] = 0.0;
        let a = Int8Acts::on_grid(&x, 2, 32).expect("non-finite and zero blocks are marked, not refused");
        assert!(a.scale[0].is_nan());
        assert_eq!(a.scale[1], 0.0);
        assert!(a.q.iter().all(|&v| v == 0) && a.bias.iter().all(|&v| v == 0));
    }
}
