//! The portable kernels: plain Rust, eight accumulators per token (the compiler vectorizes
//! them with whatever the build targets). They are the reference the SIMD paths are tested
//! against, and what runs on a CPU without AVX2.

// Register tiles are indexed [row][token] in fixed-size loops; iterator chains over several
// such arrays at once would hide which accumulator meets which load.
#![allow(clippy::needless_range_loop)]

use super::{E2M1_SIGNED, RowRef, mxfp4_tail};
use crate::weights::decode::e8m0;

/// x [T, cols] (T = out.len() <= TILE) against one weight row -> out [T].
pub fn row_dots(w: RowRef<'_>, x: &[f32], cols: usize, out: &mut [f32]) {
    match w {
        RowRef::Mxfp4 { codes, scales } => mxfp4(codes, scales, x, cols, out),
        RowRef::Bf16(b) => {
            dense(x, cols, out, |i| f32::from_bits(u32::from(u16::from_le_bytes([b[2 * i], b[2 * i + 1]])) << 16))
        }
        RowRef::F32(b) => {
            dense(x, cols, out, |i| f32::from_le_bytes([b[4 * i], b[4 * i + 1], b[4 * i + 2], b[4 * i + 3]]))
        }
    }
}

fn mxfp4(codes: &[u8], scales: &[u8], x: &[f32], cols: usize, out: &mut [f32]) {
    let mut acc = [[0.0f32; 8]; super::TILE];
    let mut w = [0.0f32; 32]; // one block of the row, decoded
    for g in 0..cols / 32 {
        let s = e8m0(scales[g]);
        for (pair, b) in w.chunks_exact_mut(2).zip(&codes[16 * g..16 * g + 16]) {
            pair[0] = E2M1_SIGNED[(b & 0x0F) as usize] * s;
            pair[1] = E2M1_SIGNED[(b >> 4) as usize] * s;
        }
        for (t, a) in acc.iter_mut().enumerate().take(out.len()) {
            let xb = &x[t * cols + 32 * g..t * cols + 32 * g + 32];
            for (wc, xc) in w.chunks_exact(8).zip(xb.chunks_exact(8)) {
                for j in 0..8 {
                    a[j] += wc[j] * xc[j];
                }
            }
        }
    }
    for (t, o) in out.iter_mut().enumerate() {
        *o = sum8(&acc[t]) + mxfp4_tail(codes, scales, &x[t * cols..(t + 1) * cols], cols);
    }
}

fn dense(x: &[f32], cols: usize, out: &mut [f32], w: impl Fn(usize) -> f32) {
    for (t, o) in out.iter_mut().enumerate() {
        let xr = &x[t * cols..(t + 1) * cols];
        let mut a = [0.0f32; 8];
        let body = cols / 8 * 8;
        for c in (0..body).step_by(8) {
            for j in 0..8 {
                a[j] += w(c + j) * xr[c + j];
            }
        }
        let mut tail = 0.0f32;
        for c in body..cols {
            tail += w(c) * xr[c];
        }
        *o = sum8(&a) + tail;
    }
}

/// a . b with eight accumulators.
pub fn dot(a: &[f32], b: &[f32]) -> f32 {
    let mut acc = [0.0f32; 8];
    let (ac, bc) = (a.chunks_exact(8), b.chunks_exact(8));
    let (ar, br) = (ac.remainder(), bc.remainder());
    for (x, y) in ac.zip(bc) {
        for j in 0..8 {
            acc[j] += x[j] * y[j];
        }
    }
    let mut tail = 0.0f32;
    for (x, y) in ar.iter().zip(br) {
        tail += x * y;
    }
    sum8(&acc) + tail
}

fn sum8(a: &[f32; 8]) -> f32 {
    ((a[0] + a[4]) + (a[1] + a[5])) + ((a[2] + a[6]) + (a[3] + a[7]))
}
