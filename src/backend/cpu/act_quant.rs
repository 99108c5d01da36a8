//! Dynamic MXFP4 activation quantization (the A4 of Quark's W4A4), the GLM-DSA spec's
//! section 6.5: per row, per group of 32 along K, a power-of-two scale from the group's amax
//! ("even" rounding of amax), then each element rounded to E2M1 and saturated at +-6.

/// x [n, k] -> quantize-dequantized copy, groups of 32 along each row.
pub fn quantize_mxfp4_activations(x: &[f32], k: usize) -> Vec<f32> {
    let mut out = vec![0.0f32; x.len()]; // [n, k]
    quantize_mxfp4_activations_into(x, k, &mut out);
    out
}

/// `quantize_mxfp4_activations` into out [n, k].
pub fn quantize_mxfp4_activations_into(x: &[f32], k: usize, out: &mut [f32]) {
    out.copy_from_slice(x);
    #[cfg(target_arch = "x86_64")]
    let avx2 = std::arch::is_x86_feature_detected!("avx2");
    for row in out.chunks_mut(k) {
        for g in row.chunks_mut(32) {
            #[cfg(target_arch = "x86_64")]
            if avx2 && g.len() == 32 {
                // SAFETY: checked above that the CPU has AVX2; g holds 32 values.
                unsafe { x86::quantize_group(g) };
                continue;
            }
            quantize_mxfp4_group(g);
        }
    }
}

/// One group in place: x <- E2M1(x / 2^e) * 2^e.
pub fn quantize_mxfp4_group(g: &mut [f32]) {
    let scale = group_scale(g.iter().fold(0.0f32, |m, v| m.max(v.abs())));
    for v in g.iter_mut() {
        *v = round_e2m1(*v / scale) * scale;
    }
}

/// 2^e for a group of largest magnitude `amax`: amax rounded up when its top two mantissa
/// bits are set (0x200000 added to its bits), the exponent kept: floor(log2) of the rounded
/// value, minus emax(E2M1) = 2.
fn group_scale(amax: f32) -> f32 {
    let rounded = (amax.to_bits().wrapping_add(0x0020_0000)) & 0x7F80_0000;
    let exp = if rounded == 0 { -127 } else { ((rounded >> 23) as i32 - 127 - 2).clamp(-127, 127) };
    2f64.powi(exp) as f32
}

#[cfg(target_arch = "x86_64")]
mod x86 {
    use std::arch::x86_64::*;

    /// `quantize_mxfp4_group` for a whole group of 32, eight elements a vector: its largest
    /// magnitude by vector maxima (a NaN element left out, as the scalar fold does), then
    /// `round_e2m1` as seven comparisons and blends against its midpoints. Element by element
    /// it was 2.6% of a 512-token W4A4 prefill. Dividing by a power of two and multiplying by
    /// its inverse (exact, 2^-127..2^127) round the same real number, so the values are the
    /// scalar form's (a test compares their bits).
    ///
    /// # Safety
    /// The CPU has AVX2; g holds 32 values.
    #[target_feature(enable = "avx2")]
    pub(super) unsafe fn quantize_group(g: &mut [f32]) {
        assert_eq!(g.len(), 32);
        let p = g.as_mut_ptr();
        // SAFETY (loads and stores): g holds 32 values (checked above).
        let v: [__m256; 4] = std::array::from_fn(|k| unsafe { _mm256_loadu_ps(p.add(8 * k)) });
        let sign = _mm256_set1_ps(-0.0);
        let abs: [__m256; 4] = std::array::from_fn(|k| _mm256_andnot_ps(sign, v[k]));
        // max(new, so far): a NaN first operand yields the second, so NaN elements drop out.
        let top = abs.iter().fold(_mm256_setzero_ps(), |m, &a| _mm256_max_ps(a, m));
        let top = _mm_max_ps(_mm256_castps256_ps128(top), _mm256_extractf128_ps::<1>(top));
        let top = _mm_max_ps(top, _mm_movehl_ps(top, top));
        let amax = _mm_cvtss_f32(_mm_max_ss(top, _mm_movehdup_ps(top)));
        let scale = super::group_scale(amax);
        let (s, inv) = (_mm256_set1_ps(scale), _mm256_set1_ps(1.0 / scale));
        // (midpoint, value above it, whether a tie goes up): the scalar chain's bounds.
        const STEPS: [(f32, f32, bool); 7] = [
            (0.25, 0.5, false),
            (0.75, 1.0, true),
            (1.25, 1.5, false),
            (1.75, 2.0, true),
            (2.5, 3.0, false),
            (3.5, 4.0, true),
            (5.0, 6.0, false),
        ];
        for (k, &vk) in v.iter().enumerate() {
            let y = _mm256_mul_ps(vk, inv);
            let a = _mm256_andnot_ps(sign, y);
            let mut r = _mm256_setzero_ps();
            for (mid, above, tie_up) in STEPS {
                let m = _mm256_set1_ps(mid);
                // Ordered comparisons: NaN stays 0.
                let past = if tie_up { _mm256_cmp_ps::<_CMP_GE_OQ>(a, m) } else { _mm256_cmp_ps::<_CMP_GT_OQ>(a, m) };
                r = _mm256_blendv_ps(r, _mm256_set1_ps(above), past);
            }
            // The sign of a negative input (-0.0 for one that rounds to 0), none for -0.0 or NaN.
            let negative = _mm256_and_ps(_mm256_cmp_ps::<_CMP_LT_OQ>(y, _mm256_setzero_ps()), sign);
            // SAFETY: as above.
            unsafe { _mm256_storeu_ps(p.add(8 * k), _mm256_mul_ps(_mm256_or_ps(r, negative), s)) };
        }
    }
}

/// Nearest E2M1 value, ties to the even code (the one whose mantissa bit is 0), saturating;
/// NaN gives 0. Decided by the midpoints between neighbouring values, each tie on the side
/// of its even code: a search over the eight values per element took 11% of a W4A4 decode
/// step. `nearest_by_search` in the tests is the definition it is checked against.
fn round_e2m1(x: f32) -> f32 {
    let a = x.abs();
    let v = if a.is_nan() || a <= 0.25 {
        0.0 // tie at 0.25 to 0 (code 0)
    } else if a < 0.75 {
        0.5 // tie at 0.75 to 1.0 (code 2)
    } else if a <= 1.25 {
        1.0 // tie at 1.25 to 1.0 (code 2)
    } else if a < 1.75 {
        1.5 // tie at 1.75 to 2.0 (code 4)
    } else if a <= 2.5 {
        2.0 // tie at 2.5 to 2.0 (code 4)
    } else if a < 3.5 {
        3.0 // tie at 3.5 to 4.0 (code 6)
    } else if a <= 5.0 {
        4.0 // tie at 5.0 to 4.0 (code 6)
    } else {
        6.0
    };
    if x < 0.0 { -v } else { v }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::weights::decode::E2M1_VALUES;

    /// The rounding rule as defined: the nearest of the eight values, a tie to the even code.
    fn nearest_by_search(x: f32) -> f32 {
        let a = x.abs();
        let mut best = 0usize;
        for (i, v) in E2M1_VALUES.iter().enumerate().skip(1) {
            let (d_best, d) = ((a - E2M1_VALUES[best]).abs(), (a - v).abs());
            if d < d_best || (d == d_best && i % 2 == 0) {
                best = i;
            }
        }
        let v = if a >= 6.0 { 6.0 } else { E2M1_VALUES[best] };
        if x < 0.0 { -v } else { v }
    }

    #[test]
    fn rounding_by_midpoints_is_the_nearest_value_search() {
        // Every midpoint and its neighbouring floats, a fine sweep of both signs, and the
        // specials.
        let mut xs = vec![0.0f32, -0.0, f32::NAN, f32::INFINITY, f32::NEG_INFINITY, f32::MIN_POSITIVE, 1e-30];
        for m in [0.25f32, 0.75, 1.25, 1.75, 2.5, 3.5, 5.0, 6.0] {
            xs.extend([m, f32::from_bits(m.to_bits() - 1), f32::from_bits(m.to_bits() + 1)]);
        }
        xs.extend((0..=16000).map(|i| i as f32 / 2000.0));
        for x in xs {
            for x in [x, -x] {
                assert_eq!(round_e2m1(x).to_bits(), nearest_by_search(x).to_bits(), "{x}");
            }
        }
    }

    #[test]
    fn the_simd_groups_are_the_scalar_ones_bit_for_bit() {
        // Groups at many scales whose elements sit on, just below and just above every
        // midpoint (after scaling), with zeros of both signs, NaN, infinities, subnormals and
        // values that saturate; each group once through each path.
        // The specials last: a group with an infinity takes the largest scale.
        let mut values = Vec::new();
        for m in [0.25f32, 0.75, 1.25, 1.75, 2.5, 3.5, 5.0, 6.0] {
            values.extend([m, f32::from_bits(m.to_bits() - 1), f32::from_bits(m.to_bits() + 1), -m]);
        }
        values.extend((0..400).map(|i| (i as f32 - 200.0) * 0.0371));
        values.extend([0.0f32, -0.0, 1e-42, -3e-39, 7.0, 6.5, f32::NAN, f32::INFINITY, f32::NEG_INFINITY]);
        // Every value in a group of each largest magnitude (scales 2^e for 4, 6 and 5.9, 2^(e+1)
        // for 7.5, which rounds up), at each exponent.
        let mut x = Vec::new();
        for exp in (-130..130).step_by(7) {
            for top in [4.0f32, 6.0, 7.5, 5.9] {
                for chunk in values.chunks(31) {
                    x.push(top * 2f32.powi(exp));
                    x.extend(chunk.iter().map(|v| v * 2f32.powi(exp)));
                    x.extend(std::iter::repeat_n(0.0, 31 - chunk.len()));
                }
            }
        }
        let mut scalar = x.clone();
        scalar.chunks_mut(32).for_each(quantize_mxfp4_group);
        let simd = quantize_mxfp4_activations(&x, 32);
        for (i, (a, b)) in simd.iter().zip(&scalar).enumerate() {
            assert_eq!(a.to_bits(), b.to_bits(), "element {i} ({}): {a} vs {b}", x[i]);
        }
    }

    fn group(values: &[f32]) -> Vec<f32> {
        let mut g = vec![0.0; 32];
        g[..values.len()].copy_from_slice(values);
        quantize_mxfp4_group(&mut g);
        g
    }

    #[test]
    fn exact_grid_values_survive() {
        // amax 6 = 1.5 x 2^2: the top mantissa bits are 10, no round-up, floor(log2 6) = 2,
        // scale 2^0, and every E2M1 value is kept.
        let v = [6.0, -4.0, 3.0, 2.0, -1.5, 1.0, 0.5, 0.0];
        assert_eq!(&group(&v)[..8], &v);
    }

    #[test]
    fn scale_follows_amax() {
        // amax 12 -> scale 2: 12 -> 6*2, 5 -> 5/2 = 2.5 ties between 2 (even) and 3 -> 2*2 = 4,
        // 0.9 -> 0.45 nearest 0.5 -> 1.0.
        assert_eq!(&group(&[12.0, 5.0, 0.9])[..3], &[12.0, 4.0, 1.0]);
    }

    #[test]
    fn amax_rounds_up_when_mantissa_is_high() {
        // amax 7.5 = 1.875 x 2^2: top mantissa bits 11, so it rounds to 8 and the scale is 2^1.
        // 7.5 / 2 = 3.75 -> 4 -> 8; 1.0 / 2 = 0.5 -> 0.5 -> 1.0; 0.7/2 = 0.35 -> 0.5 -> 1.0.
        assert_eq!(&group(&[7.5, 1.0, 0.7])[..3], &[8.0, 1.0, 1.0]);
        // amax 7.0 = 1.11b x 2^2 also rounds up: scale 2, 3.5 ties to 4 (even code) -> 8.
        assert_eq!(&group(&[7.0, 2.5])[..2], &[8.0, 2.0]);
        // amax 6.5 = 1.101b x 2^2 (top bits 10): scale 2^0, 6.5 saturates to 6.
        assert_eq!(&group(&[6.5, 2.5])[..2], &[6.0, 2.0]);
    }

    #[test]
    fn ties_go_to_even_codes() {
        // scale 2^0 (amax 4): 0.25 -> 0 (code 0), 0.75 -> 1.0 (code 2), 1.25 -> 1.0,
        // 1.75 -> 2.0, 2.5 -> 2.0, 3.5 -> 4.0, -2.5 -> -2.0.
        let q = group(&[4.0, 0.25, 0.75, 1.25, 1.75, 2.5, 3.5, -2.5]);
        assert_eq!(&q[..8], &[4.0, 0.0, 1.0, 1.0, 2.0, 2.0, 4.0, -2.0]);
    }

    #[test]
    fn zero_group_stays_zero() {
        assert!(group(&[]).iter().all(|v| *v == 0.0));
    }

    #[test]
    fn groups_are_independent() {
        let mut x = vec![0.0f32; 64];
        x[0] = 100.0;
        x[1] = 1.0;
        x[32] = 1.0;
        let q = quantize_mxfp4_activations(&x, 64);
        // Group 0: amax 100 -> scale 2^4 = 16; 1/16 rounds to 0. Group 1: scale 2^-2, 1 is exact.
        assert_eq!((q[0], q[1], q[32]), (96.0, 0.0, 1.0));
    }
}
