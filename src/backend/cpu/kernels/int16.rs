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
    /// [n, B, 32]: per half of a block (elements 16h..16h + 16) its 8 even elements, then its
    /// 8 odd ones: the order the kernel's unpacked code bytes give them in.
    pub q: Aligned<i16>,
    /// [n, B]: s / 2 (undoing the doubled E2M1 values of the kernel's weights); NaN for a
    /// block with a non-finite element, 0 for a block of zeros.
    pub scale: Vec<f32>,
}

impl Int16Acts {
    /// x [n, cols].
    pub fn new(x: &[f32], n: usize, cols: usize) -> Int16Acts {
        let blocks = cols / BLOCK;
        let mut q = Aligned::zeroed(n * blocks * BLOCK);
        let mut scale = vec![0.0f32; n * blocks];
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

/// `quantize` compiled for AVX2, where rounding is one instruction, not a library call.
///
/// # Safety
/// The CPU has AVX2.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
unsafe fn quantize_avx2(x: &[f32], cols: usize, q: &mut [i16], scale: &mut [f32]) {
    quantize(x, cols, q, scale)
}

/// Every token's whole blocks of x [n, cols] into q [n, B, 32] and scale [n, B].
#[inline(always)]
fn quantize(x: &[f32], cols: usize, q: &mut [i16], scale: &mut [f32]) {
    let blocks = cols / BLOCK;
    if blocks == 0 {
        return;
    }
    for (t, (qt, st)) in q.chunks_exact_mut(blocks * BLOCK).zip(scale.chunks_exact_mut(blocks)).enumerate() {
        let xt = &x[t * cols..t * cols + blocks * BLOCK];
        for ((xs, qb), sb) in xt.chunks_exact(BLOCK).zip(qt.chunks_exact_mut(BLOCK)).zip(st.iter_mut()) {
            *sb = quantize_block(xs, qb);
        }
    }
}

/// One block of 32 into its int16 slots (`Int16Acts::q`); returns its scale (s / 2).
#[inline(always)]
fn quantize_block(xs: &[f32], qb: &mut [i16]) -> f32 {
    if !xs.iter().all(|v| v.is_finite()) {
        qb.fill(0);
        return f32::NAN;
    }
    let amax = xs.iter().fold(0.0f32, |m, v| m.max(v.abs()));
    if amax == 0.0 {
        qb.fill(0);
        return 0.0;
    }
    let s = super::int8x2::pow2_at_least(amax / 32767.0);
    let inv = 1.0 / s;
    for (i, q) in qb.iter_mut().enumerate() {
        *q = (xs[slot_element(i)] * inv).round_ties_even().clamp(-32767.0, 32767.0) as i16;
    }
    s / 2.0
}

/// The element of a block that int16 slot i holds: slots 16h..16h + 8 the even elements of
/// half h, then its odd ones.
#[inline(always)]
fn slot_element(i: usize) -> usize {
    let (h, j) = (i / 16, i % 16);
    16 * h + if j < 8 { 2 * j } else { 2 * (j - 8) + 1 }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Element i of block b of token 0, as the kernel would reconstruct it.
    fn back(a: &Int16Acts, b: usize, i: usize) -> f32 {
        let slot = (0..BLOCK).find(|&j| slot_element(j) == i).expect("every element has a slot");
        f32::from(a.q[BLOCK * b + slot]) * a.scale[b] * 2.0
    }

    #[test]
    fn every_element_has_one_slot() {
        let mut seen: Vec<usize> = (0..BLOCK).map(slot_element).collect();
        assert_eq!(&seen[..4], &[0, 2, 4, 6]);
        assert_eq!(&seen[8..10], &[1, 3]);
        assert_eq!(seen[16], 16);
        seen.sort();
        assert_eq!(seen, (0..BLOCK).collect::<Vec<_>>());
    }

    #[test]
    fn reconstruction_is_within_the_bound_and_exact_on_the_mxfp4_grid() {
        let mut x: Vec<f32> = (0..70).map(|i| ((i * 37 % 61) as f32 - 30.0) * 0.173).collect();
        x[40] = 6.0;
        x[63] = -0.0001; // a small element in a block with a large one
        let a = Int16Acts::new(&x, 1, 70);
        assert_eq!((a.blocks, a.q.len(), a.scale.len()), (2, 64, 2), "the tail of 6 stays out");
        for b in 0..2 {
            let amax = x[32 * b..32 * b + 32].iter().fold(0.0f32, |m, v| m.max(v.abs()));
            for i in 0..32 {
                let got = back(&a, b, i);
                assert!((got - x[32 * b + i]).abs() <= amax / 32767.0, "block {b} element {i}: {got}");
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
        let x: Vec<f32> = (0..5 * 100).map(|i| ((i * 7919 % 1013) as f32 - 506.0) * 1.7e-3).collect();
        let a = Int16Acts::new(&x, 5, 100);
        let (mut q, mut scale) = (vec![0i16; a.q.len()], vec![0.0f32; a.scale.len()]);
        quantize(&x, 100, &mut q, &mut scale);
        assert_eq!(&a.q[..], &q[..]);
        assert_eq!(
            a.scale.iter().map(|s| s.to_bits()).collect::<Vec<_>>(),
            scale.iter().map(|s| s.to_bits()).collect::<Vec<_>>()
        );
    }
}
