//! Activations as two int8 terms per element, the form the VNNI kernel multiplies MXFP4
//! codes with.
//!
//! Per token and block of 32: s = the power of two at or above amax / 127, q1 = round(x / s)
//! and q2 = round((x - q1 s) * 256 / s) (clamped to +-127), so x ~ (256 q1 + q2) * s / 256.
//! The error is at most s / 512, about 3e-5 of the block's amax: the golden fixtures move by
//! about 2e-4 against a tolerance of 5e-3, where one int8 term moves them by 0.36. An input
//! already on the MXFP4 grid (W4A4) is represented exactly (q2 = 0).
//!
//! The kernel reads the codes with `vpdpbusd`, which wants one side unsigned: it takes the
//! E2M1 codes as u = 2 * value + 12 (0..24), so each int32 lane starts from a bias of
//! -12 times its own elements' (256 q1 + q2) sum, computed here once per token.

use super::aligned::Aligned;

/// Blocks of 32 per group: one 64-byte load of codes is four blocks.
pub const GROUP_BLOCKS: usize = 4;
/// Bytes of one token's group: q1 even, q1 odd, q2 even, q2 odd, 64 each.
pub const GROUP_BYTES: usize = 256;

/// x [n, cols] in the VNNI layout. Only whole blocks of 32 are here; the elements past the
/// last whole block stay with the f32 activations.
pub struct Int8x2 {
    pub groups: usize, // G = ceil(blocks / 4)
    /// [n, G, 256]: per group, q1 of each block's even elements (block k at bytes 16k..),
    /// then q1's odd elements, then q2 even, q2 odd.
    pub q: Aligned<i8>,
    /// [n, G, 16] int32: lane 4k + j (block k, elements 8j..8j+8) = -12 (256 sum q1 + sum q2).
    pub bias: Aligned<i32>,
    /// [n, G, 16] f32: lane 4k + j = s / 512 of block k (the 1/2 undoes u's doubling); NaN
    /// for a block with a non-finite element, 0 for padding.
    pub scale: Aligned<f32>,
    /// Every q2 is zero: x is on the MXFP4 grid (a W4A4 layer's input), and the kernels may
    /// skip the second term's products, which would all be zero.
    pub one_term: bool,
}

impl Int8x2 {
    /// x [n, cols].
    pub fn new(x: &[f32], n: usize, cols: usize) -> Int8x2 {
        let blocks = cols / 32;
        let groups = blocks.div_ceil(GROUP_BLOCKS);
        let mut q = Aligned::zeroed(n * groups * GROUP_BYTES);
        let mut bias = Aligned::zeroed(n * groups * 16);
        let mut scale = Aligned::zeroed(n * groups * 16);
        #[cfg(target_arch = "x86_64")]
        let simd = std::arch::is_x86_feature_detected!("avx512f") && std::arch::is_x86_feature_detected!("avx512bw");
        for t in 0..n {
            for b in 0..blocks {
                let (g, k) = (t * groups + b / GROUP_BLOCKS, b % GROUP_BLOCKS);
                let xs = &x[t * cols + 32 * b..t * cols + 32 * b + 32];
                let gq = &mut q[g * GROUP_BYTES..(g + 1) * GROUP_BYTES];
                let (bi, sc) =
                    (&mut bias[g * 16 + 4 * k..g * 16 + 4 * k + 4], &mut scale[g * 16 + 4 * k..g * 16 + 4 * k + 4]);
                #[cfg(target_arch = "x86_64")]
                if simd {
                    // SAFETY: checked just above that the CPU has AVX-512F and BW.
                    unsafe { super::vnni::quantize_block(xs, k, gq, bi, sc) };
                    continue;
                }
                quantize_block(xs, k, gq, bi, sc);
            }
        }
        let one_term = q.chunks_exact(GROUP_BYTES).all(|g| g[GROUP_BYTES / 2..].iter().all(|&v| v == 0));
        Int8x2 { groups, q, bias, scale, one_term }
    }

    /// Bytes the kernels read for one token: its groups' terms, bias lanes and scale lanes.
    pub fn token_bytes(&self) -> usize {
        self.groups * (GROUP_BYTES + 16 * (size_of::<i32>() + size_of::<f32>()))
    }
}

/// One block of 32 into its slots of a token's group (block k of the group). The reference
/// for `vnni::quantize_block`, which must give the same bytes.
pub(super) fn quantize_block(xs: &[f32], k: usize, gq: &mut [i8], bias: &mut [i32], scale: &mut [f32]) {
    let amax = xs.iter().fold(0.0f32, |m, v| m.max(v.abs()));
    if !xs.iter().all(|v| v.is_finite()) {
        scale.fill(f32::NAN);
        return;
    }
    if amax == 0.0 {
        return;
    }
    let s = pow2_at_least(amax / 127.0);
    let (inv, fine) = (1.0 / s, 256.0 / s);
    let mut q1 = [0i32; 32];
    let mut q2 = [0i32; 32];
    for i in 0..32 {
        let a = (xs[i] * inv).round_ties_even();
        q1[i] = a as i32;
        q2[i] = ((xs[i] - a * s) * fine).round_ties_even().clamp(-127.0, 127.0) as i32;
    }
    for i in 0..16 {
        gq[16 * k + i] = q1[2 * i] as i8;
        gq[64 + 16 * k + i] = q1[2 * i + 1] as i8;
        gq[128 + 16 * k + i] = q2[2 * i] as i8;
        gq[192 + 16 * k + i] = q2[2 * i + 1] as i8;
    }
    for (j, b) in bias.iter_mut().enumerate() {
        let r = 8 * j..8 * j + 8;
        *b = -12 * (256 * q1[r.clone()].iter().sum::<i32>() + q2[r].iter().sum::<i32>());
    }
    scale.fill(s / 512.0);
}

/// The smallest power of two >= v, for a positive finite v, and at least 2^-100 (so that
/// 256 / s stays finite; a block that small is zero to within 2^-109).
pub(super) fn pow2_at_least(v: f32) -> f32 {
    const FLOOR: u32 = (127 - 100) << 23; // 2^-100
    let bits = v.to_bits().max(FLOOR);
    if bits & 0x007F_FFFF == 0 { f32::from_bits(bits) } else { f32::from_bits((bits & 0x7F80_0000) + 0x0080_0000) }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reconstruction_is_within_the_bound_and_exact_on_the_mxfp4_grid() {
        let mut x: Vec<f32> = (0..64).map(|i| ((i * 37 % 61) as f32 - 30.0) * 0.173).collect();
        x[40] = 6.0;
        let a = Int8x2::new(&x, 1, 64);
        for b in 0..2 {
            let amax = x[32 * b..32 * b + 32].iter().fold(0.0f32, |m, v| m.max(v.abs()));
            let s = a.scale[4 * b] * 512.0;
            for i in 0..32 {
                let half = if i % 2 == 0 { 0 } else { 64 };
                let (q1, q2) = (a.q[half + 16 * b + i / 2], a.q[128 + half + 16 * b + i / 2]);
                let back = (256.0 * f32::from(q1) + f32::from(q2)) * s / 256.0;
                assert!((back - x[32 * b + i]).abs() <= amax / 32000.0, "block {b} element {i}: {back}");
            }
        }
        // W4A4 inputs: E2M1 values times a power of two come back exactly, with q2 = 0.
        let grid: Vec<f32> =
            [0.0f32, 0.5, 1.0, 1.5, 2.0, 3.0, 4.0, 6.0].iter().cycle().take(32).map(|v| -v * 0.25).collect();
        let a = Int8x2::new(&grid, 1, 32);
        assert!(a.q[128..].iter().all(|&v| v == 0));
        assert!(a.one_term);
        for (i, &want) in grid.iter().enumerate() {
            let half = if i % 2 == 0 { 0 } else { 64 };
            assert_eq!(f32::from(a.q[half + i / 2]) * a.scale[0] * 512.0, want);
        }
        // Each lane's bias is -12 times its eight elements' combined sum.
        for j in 0..4 {
            let mut sum = 0i32;
            for e in 8 * j..8 * j + 8 {
                let half = if e % 2 == 0 { 0 } else { 64 };
                sum += 256 * i32::from(a.q[half + e / 2]) + i32::from(a.q[128 + half + e / 2]);
            }
            assert_eq!(a.bias[j], -12 * sum);
        }
    }

    #[test]
    fn non_finite_blocks_are_marked_and_zero_blocks_are_zero() {
        let mut x = vec![0.0f32; 96];
        x[33] = f32::INFINITY;
        x[70] = 1.0;
        let a = Int8x2::new(&x, 1, 96);
        assert_eq!(a.groups, 1);
        assert!(a.scale[0..4].iter().all(|&s| s == 0.0));
        assert!(a.scale[4..8].iter().all(|s| s.is_nan()));
        assert!(a.scale[8..12].iter().all(|&s| s > 0.0));
        assert!(a.scale[12..16].iter().all(|&s| s == 0.0), "padding block");
    }

    #[cfg(target_arch = "x86_64")]
    #[test]
    fn the_simd_quantizer_gives_the_reference_bytes() {
        if !(std::arch::is_x86_feature_detected!("avx512f") && std::arch::is_x86_feature_detected!("avx512bw")) {
            return;
        }
        let mut x: Vec<f32> = (0..32 * 6).map(|i| ((i * 7919 % 1013) as f32 - 506.0) * 1.7e-3).collect();
        x[32 * 2 + 5] = f32::NAN;
        x[32 * 3..32 * 4].fill(0.0);
        x[32 * 4..32 * 5].fill(1e-39); // a subnormal block
        x[32 * 4 + 3] = -3e-38;
        x[32 * 5 + 1] = 12.0;
        for (b, xs) in x.chunks(32).enumerate() {
            let k = b % 4;
            let (mut gq1, mut gq2) = (vec![0i8; GROUP_BYTES], vec![0i8; GROUP_BYTES]);
            let (mut b1, mut b2) = ([0i32; 4], [0i32; 4]);
            let (mut s1, mut s2) = ([0f32; 4], [0f32; 4]);
            quantize_block(xs, k, &mut gq1, &mut b1, &mut s1);
            // SAFETY: checked above.
            unsafe { super::super::vnni::quantize_block(xs, k, &mut gq2, &mut b2, &mut s2) };
            assert_eq!(gq1, gq2, "block {b}");
            assert_eq!(b1, b2, "block {b}");
            assert_eq!(s1.map(f32::to_bits), s2.map(f32::to_bits), "block {b}");
        }
    }
}
