//! Element decoders: checkpoint bytes to f32.
//!
//! bf16 and f16 go through the `half` crate. fp8 e4m3 (OCP "fn": no infinities, 0x7F/0xFF
//! NaN, max 448) and the MX formats (E2M1 codes, E8M0 scales) have no well-kept decoder crate,
//! and each is a table of a few entries from the OCP MX v1.0 spec, so they are written here.

use half::{bf16, f16};
use safetensors::Dtype;

/// E2M1 magnitudes by code & 7; bit 3 is the sign.
pub const E2M1_VALUES: [f32; 8] = [0.0, 0.5, 1.0, 1.5, 2.0, 3.0, 4.0, 6.0];

/// One E2M1 code (low 4 bits) as f32.
#[inline]
pub fn e2m1(code: u8) -> f32 {
    let v = E2M1_VALUES[(code & 7) as usize];
    if code & 8 != 0 { -v } else { v }
}

/// An E8M0 scale byte: 2^(b - 127); 0xFF is NaN.
#[inline]
pub fn e8m0(b: u8) -> f32 {
    if b == 0xFF {
        f32::NAN
    } else if b == 0 {
        // 2^-127 is below f32's normal range; build the subnormal directly.
        f32::from_bits(1 << 22)
    } else {
        f32::from_bits(u32::from(b) << 23)
    }
}

/// fp8 e4m3 (OCP e4m3fn): bias 7, no infinities, S.1111.111 is NaN.
#[inline]
pub fn e4m3(b: u8) -> f32 {
    let sign = if b & 0x80 != 0 { -1.0 } else { 1.0 };
    let exp = (b >> 3) & 0xF;
    let man = (b & 7) as f32;
    let mag = match (exp, b & 0x7F) {
        (_, 0x7F) => f32::NAN,
        (0, _) => man / 8.0 * 2f32.powi(-6),
        _ => (1.0 + man / 8.0) * 2f32.powi(i32::from(exp) - 7),
    };
    sign * mag
}

/// Bytes per element of the dense dtypes kiln reads.
pub fn dense_size(dtype: Dtype) -> Option<usize> {
    match dtype {
        Dtype::F32 => Some(4),
        Dtype::BF16 | Dtype::F16 => Some(2),
        Dtype::F8_E4M3 => Some(1),
        _ => None,
    }
}

/// Decodes `out.len()` elements of a dense dtype starting at element `start` of `bytes`.
/// Callers check the dtype with `dense_size` first; other dtypes decode to NaN.
pub fn decode_into(dtype: Dtype, bytes: &[u8], start: usize, out: &mut [f32]) {
    let n = out.len();
    match dtype {
        Dtype::F32 => {
            for (o, c) in out.iter_mut().zip(bytes[start * 4..(start + n) * 4].chunks_exact(4)) {
                *o = f32::from_le_bytes([c[0], c[1], c[2], c[3]]);
            }
        }
        Dtype::BF16 => {
            for (o, c) in out.iter_mut().zip(bytes[start * 2..(start + n) * 2].chunks_exact(2)) {
                *o = bf16::from_le_bytes([c[0], c[1]]).to_f32();
            }
        }
        Dtype::F16 => {
            for (o, c) in out.iter_mut().zip(bytes[start * 2..(start + n) * 2].chunks_exact(2)) {
                *o = f16::from_le_bytes([c[0], c[1]]).to_f32();
            }
        }
        Dtype::F8_E4M3 => {
            for (o, b) in out.iter_mut().zip(&bytes[start..start + n]) {
                *o = e4m3(*b);
            }
        }
        _ => out.fill(f32::NAN),
    }
}

/// One row of an MXFP4 matrix: `codes` is the row's cols/2 packed bytes (low nibble = even
/// element), `scales` its cols/32 E8M0 bytes.
pub fn mxfp4_row(codes: &[u8], scales: &[u8], out: &mut [f32]) {
    for (g, (o, c)) in out.chunks_mut(32).zip(codes.chunks(16)).enumerate() {
        let s = e8m0(scales[g]);
        for (pair, b) in o.chunks_mut(2).zip(c) {
            pair[0] = e2m1(b & 0x0F) * s;
            if let Some(hi) = pair.get_mut(1) {
                *hi = e2m1(b >> 4) * s;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn e2m1_table_matches_the_spec() {
        let want = [0.0, 0.5, 1.0, 1.5, 2.0, 3.0, 4.0, 6.0, -0.0, -0.5, -1.0, -1.5, -2.0, -3.0, -4.0, -6.0];
        for (code, w) in want.iter().enumerate() {
            assert_eq!(e2m1(code as u8), *w, "code {code}");
        }
    }

    #[test]
    fn e8m0_is_a_power_of_two() {
        assert_eq!(e8m0(127), 1.0);
        assert_eq!(e8m0(128), 2.0);
        assert_eq!(e8m0(120), 2f32.powi(-7));
        assert_eq!(e8m0(254), 2f32.powi(127));
        assert_eq!(e8m0(0), 2f32.powi(-127));
        assert!(e8m0(255).is_nan());
    }

    #[test]
    fn e4m3_known_values() {
        assert_eq!(e4m3(0x00), 0.0);
        assert_eq!(e4m3(0x38), 1.0); // exp 7, man 0
        assert_eq!(e4m3(0x7E), 448.0); // the largest finite
        assert_eq!(e4m3(0xBC), -1.5);
        assert_eq!(e4m3(0x01), 2f32.powi(-9)); // smallest subnormal
        assert!(e4m3(0x7F).is_nan() && e4m3(0xFF).is_nan());
    }

    #[test]
    fn mxfp4_row_unpacks_low_nibble_first() {
        // Row of 32: element 0 = code 0x2 (1.0), element 1 = code 0xB (-1.5), rest 0; scale 2^1.
        let mut codes = [0u8; 16];
        codes[0] = 0xB2;
        let mut out = [9.0f32; 32];
        mxfp4_row(&codes, &[128], &mut out);
        assert_eq!(&out[..3], &[2.0, -3.0, 0.0]);
    }

    #[test]
    fn dense_decoders() {
        let mut out = [0.0f32; 2];
        decode_into(Dtype::BF16, &[0x80, 0x3F, 0x00, 0xC0], 0, &mut out);
        assert_eq!(out, [1.0, -2.0]);
        decode_into(Dtype::F16, &[0x00, 0x3C, 0x00, 0xB8], 0, &mut out);
        assert_eq!(out, [1.0, -0.5]);
        decode_into(Dtype::F32, &[0, 0, 0x80, 0x3F, 0, 0, 0, 0x40], 0, &mut out);
        assert_eq!(out, [1.0, 2.0]);
        decode_into(Dtype::F8_E4M3, &[0x38, 0x40], 0, &mut out);
        assert_eq!(out, [1.0, 2.0]);
    }
}
