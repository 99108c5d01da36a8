//! fp8 e4m3 (OCP "fn": bias 7, no infinities, max 448) encoding for the KV cache, with one
//! f32 scale per group so each group uses the whole range. No well-kept crate encodes fp8;
//! the format is a few lines of bit arithmetic (decoding lives in weights/decode.rs).

use crate::weights::decode::e4m3;

/// The largest finite e4m3 value.
pub const E4M3_MAX: f32 = 448.0;

/// Nearest e4m3 code (ties to even), saturating at +-448; NaN maps to the NaN code.
pub fn to_e4m3(x: f32) -> u8 {
    if x.is_nan() {
        return 0x7F;
    }
    let sign = if x.is_sign_negative() { 0x80u8 } else { 0 };
    let a = x.abs().min(E4M3_MAX);
    // Subnormals (exponent field 0) step by 2^-9; normals by 2^(e-3) with e = floor(log2 a).
    let (exp_field, step) = if a < 2f32.powi(-6) {
        (0i32, 2f32.powi(-9))
    } else {
        let e = a.log2().floor() as i32;
        // log2 can land one off near powers of two; fix it against the value itself.
        let e = if 2f32.powi(e) > a {
            e - 1
        } else if 2f32.powi(e + 1) <= a {
            e + 1
        } else {
            e
        };
        (e + 7, 2f32.powi(e - 3))
    };
    let q = a / step;
    let mut m = q.round_ties_even() as u32; // multiples of step from 0 (subnormal) or from 2^e (normal)
    let code = if exp_field == 0 {
        // m in 0..=8; 8 becomes the smallest normal (0x08) naturally.
        m
    } else {
        // q in [8, 16): mantissa m - 8, carrying into the exponent at 16.
        if m >= 16 {
            m = 8;
            ((exp_field as u32 + 1) << 3) | (m - 8)
        } else {
            ((exp_field as u32) << 3) | (m - 8)
        }
    };
    sign | (code.min(0x7E) as u8)
}

/// Scale for a group so that its largest magnitude maps to 448 (1 for an all-zero group).
pub fn group_scale(values: &[f32]) -> f32 {
    let amax = values.iter().fold(0.0f32, |m, v| m.max(v.abs()));
    if amax > 0.0 { amax / E4M3_MAX } else { 1.0 }
}

/// Encodes `values` with `scale` into `out` (one byte each).
pub fn encode(values: &[f32], scale: f32, out: &mut [u8]) {
    for (o, v) in out.iter_mut().zip(values) {
        *o = to_e4m3(v / scale);
    }
}

pub fn decode(codes: &[u8], scale: f32, out: &mut [f32]) {
    for (o, c) in out.iter_mut().zip(codes) {
        *o = e4m3(*c) * scale;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_finite_code_round_trips() {
        for c in 0u8..=255 {
            if c & 0x7F == 0x7F {
                continue; // NaN
            }
            let v = e4m3(c);
            let back = to_e4m3(v);
            // -0 encodes as 0x80, +0 as 0x00: both decode to zero.
            assert_eq!(e4m3(back), v, "code {c:#04x} ({v}) came back as {back:#04x}");
        }
    }

    #[test]
    fn rounds_to_nearest_even_and_saturates() {
        assert_eq!(e4m3(to_e4m3(1.0625)), 1.0); // halfway between 1.0 and 1.125: even mantissa
        assert_eq!(e4m3(to_e4m3(1.1875)), 1.25); // halfway between 1.125 and 1.25: even is 1.25
        assert_eq!(e4m3(to_e4m3(1000.0)), 448.0);
        assert_eq!(e4m3(to_e4m3(-1000.0)), -448.0);
        assert_eq!(e4m3(to_e4m3(2f32.powi(-10))), 0.0); // below half the smallest subnormal... ties to 0
        assert_eq!(e4m3(to_e4m3(0.0175)), 0.017578125); // 0.0175 -> nearest 9 x 2^-9
        assert!(e4m3(to_e4m3(f32::NAN)).is_nan());
    }

    #[test]
    fn scaled_groups_keep_relative_error_small() {
        let v: Vec<f32> = (0..128).map(|i| ((i * 7919 % 211) as f32 - 105.0) / 13.0).collect();
        let s = group_scale(&v);
        let mut codes = vec![0u8; v.len()];
        encode(&v, s, &mut codes);
        let mut back = vec![0.0; v.len()];
        decode(&codes, s, &mut back);
        let amax = v.iter().fold(0.0f32, |m, x| m.max(x.abs()));
        for (a, b) in v.iter().zip(&back) {
            assert!((a - b).abs() <= amax / 448.0 * 16.0 + a.abs() / 16.0, "{a} -> {b}");
        }
    }
}
