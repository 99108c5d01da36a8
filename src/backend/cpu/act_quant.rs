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
    for row in out.chunks_mut(k) {
        for g in row.chunks_mut(32) {
            quantize_mxfp4_group(g);
        }
    }
}

/// One group in place: x <- E2M1(x / 2^e) * 2^e.
pub fn quantize_mxfp4_group(g: &mut [f32]) {
    let amax = g.iter().fold(0.0f32, |m, v| m.max(v.abs()));
    // Round amax up when its top two mantissa bits are set (add 0x200000 to the bits), keep
    // the exponent: floor(log2) of the rounded value, minus emax(E2M1) = 2.
    let rounded = (amax.to_bits().wrapping_add(0x0020_0000)) & 0x7F80_0000;
    let exp = if rounded == 0 { -127 } else { ((rounded >> 23) as i32 - 127 - 2).clamp(-127, 127) };
    let scale = 2f64.powi(exp) as f32;
    for v in g.iter_mut() {
        *v = round_e2m1(*v / scale) * scale;
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
