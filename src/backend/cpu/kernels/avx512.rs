//! AVX-512F kernels: 16 lanes; an MXFP4 block of 32 is two permutes of a 16-entry table that
//! already carries the block's scale. Two accumulators per token (one per half block, or per
//! 16-lane half of a 32-element step) hide the FMA latency when a tile is one token.

use std::arch::x86_64::*;

use super::{E2M1_SIGNED, RowRef, RowsRef, mxfp4_tail};

/// x [T, cols] (T = out.len() <= TILE) against one weight row -> out [T]; for MXFP4, x in
/// the split layout (`Acts`).
///
/// # Safety
/// The CPU has AVX-512F; the row holds `cols` elements and x holds out.len() rows of `cols`.
#[target_feature(enable = "avx512f")]
pub unsafe fn row_dots(w: RowRef<'_>, x: &[f32], cols: usize, out: &mut [f32]) {
    let mut t0 = 0;
    for tile in [8usize, 4, 2, 1] {
        while out.len() - t0 >= tile {
            let (xs, o) = (&x[t0 * cols..], &mut out[t0..t0 + tile]);
            // SAFETY: the caller's guarantees, for the tokens t0..t0 + tile.
            unsafe {
                match (w, tile) {
                    (RowRef::Mxfp4 { codes, scales }, 8) => mxfp4::<8>(codes, scales, xs, cols, o),
                    (RowRef::Mxfp4 { codes, scales }, 4) => mxfp4::<4>(codes, scales, xs, cols, o),
                    (RowRef::Mxfp4 { codes, scales }, 2) => mxfp4::<2>(codes, scales, xs, cols, o),
                    (RowRef::Mxfp4 { codes, scales }, _) => mxfp4::<1>(codes, scales, xs, cols, o),
                    (RowRef::Bf16(b), 8) => dense::<8, true>(b, xs, cols, o),
                    (RowRef::Bf16(b), 4) => dense::<4, true>(b, xs, cols, o),
                    (RowRef::Bf16(b), 2) => dense::<2, true>(b, xs, cols, o),
                    (RowRef::Bf16(b), _) => dense::<1, true>(b, xs, cols, o),
                    (RowRef::F32(b), 8) => dense::<8, false>(b, xs, cols, o),
                    (RowRef::F32(b), 4) => dense::<4, false>(b, xs, cols, o),
                    (RowRef::F32(b), 2) => dense::<2, false>(b, xs, cols, o),
                    (RowRef::F32(b), _) => dense::<1, false>(b, xs, cols, o),
                }
            }
            t0 += tile;
        }
    }
}

/// Rows of `w` against x [tb, cols] -> out[r * ostride + t], each row as `row_dots`.
///
/// # Safety
/// The CPU has AVX-512F; w holds nrows rows of `cols`, x holds tb rows of `cols`, and out
/// reaches (nrows - 1) * ostride + tb.
#[target_feature(enable = "avx512f")]
pub unsafe fn block_dots(
    w: RowsRef<'_>,
    nrows: usize,
    x: &[f32],
    tb: usize,
    cols: usize,
    out: &mut [f32],
    ostride: usize,
) {
    for r in 0..nrows {
        // SAFETY: the caller's guarantees, for row r.
        unsafe { row_dots(w.row(r, cols), x, cols, &mut out[r * ostride..r * ostride + tb]) };
    }
}

/// Sixteen E8M0 scale bytes as f32 (0 is 2^-127, 0xFF NaN, as `e8m0` decodes them).
#[target_feature(enable = "avx512f")]
fn e8m0x16(bytes: &[u8; 16]) -> __m512 {
    // SAFETY: 16 bytes.
    let s = _mm512_cvtepu8_epi32(unsafe { _mm_loadu_si128(bytes.as_ptr().cast()) });
    let bits = _mm512_slli_epi32(s, 23);
    let bits =
        _mm512_mask_mov_epi32(bits, _mm512_cmpeq_epi32_mask(s, _mm512_setzero_si512()), _mm512_set1_epi32(1 << 22));
    let bits = _mm512_mask_mov_epi32(
        bits,
        _mm512_cmpeq_epi32_mask(s, _mm512_set1_epi32(0xFF)),
        _mm512_set1_epi32(0x7FC0_0000),
    );
    _mm512_castsi512_ps(bits)
}

/// One row x T tokens. x is in the split layout (`Acts`): each whole block of 32 as its 16
/// even elements, then its 16 odd ones, which is the order the two table lookups of a
/// block's code bytes give. Each token has its own two accumulators and the same block order
/// whatever T is.
#[target_feature(enable = "avx512f")]
unsafe fn mxfp4<const T: usize>(codes: &[u8], scales: &[u8], x: &[f32], cols: usize, out: &mut [f32]) {
    // SAFETY: E2M1_SIGNED is 16 f32.
    let lut = unsafe { _mm512_loadu_ps(E2M1_SIGNED.as_ptr()) };
    let mut acc0 = [_mm512_setzero_ps(); T];
    let mut acc1 = [_mm512_setzero_ps(); T];
    let xp = x.as_ptr();
    let blocks = cols / 32;
    let mut scale = [0.0f32; 16]; // this group of 16 blocks' scales
    for g0 in (0..blocks).step_by(16) {
        let mut raw = [0u8; 16];
        let m = (blocks - g0).min(16);
        raw[..m].copy_from_slice(&scales[g0..g0 + m]);
        // SAFETY: 16 f32.
        unsafe { _mm512_storeu_ps(scale.as_mut_ptr(), e8m0x16(&raw)) };
        for (g, &s) in (g0..g0 + m).zip(&scale) {
            let table = _mm512_mul_ps(lut, _mm512_set1_ps(s));
            // SAFETY: block g's 16 code bytes are inside the row (g < cols / 32).
            let b = _mm512_cvtepu8_epi32(unsafe { _mm_loadu_si128(codes.as_ptr().add(16 * g).cast()) });
            // The permute reads each lane's low 4 bits: byte i's low nibble is element 2i,
            // and shifted down, its high nibble element 2i + 1.
            let w_even = _mm512_permutexvar_ps(b, table);
            let w_odd = _mm512_permutexvar_ps(_mm512_srli_epi32(b, 4), table);
            for t in 0..T {
                // SAFETY: token t's block g lies within x (t < T rows of cols).
                unsafe {
                    let p = xp.add(t * cols + 32 * g);
                    acc0[t] = _mm512_fmadd_ps(w_even, _mm512_loadu_ps(p), acc0[t]);
                    acc1[t] = _mm512_fmadd_ps(w_odd, _mm512_loadu_ps(p.add(16)), acc1[t]);
                }
            }
        }
    }
    for t in 0..T {
        let xt = &x[t * cols..(t + 1) * cols];
        out[t] = _mm512_reduce_add_ps(_mm512_add_ps(acc0[t], acc1[t])) + mxfp4_tail(codes, scales, xt, cols);
    }
}

/// 16 weights at element `c` of a dense row: bf16 widened by a shift, or f32 as stored.
#[target_feature(enable = "avx512f")]
unsafe fn load16<const BF16: bool>(w: &[u8], c: usize) -> __m512 {
    // SAFETY: the caller keeps c + 16 <= cols.
    unsafe {
        if BF16 {
            let h = _mm256_loadu_si256(w.as_ptr().add(2 * c).cast());
            _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(h), 16))
        } else {
            _mm512_loadu_ps(w.as_ptr().add(4 * c).cast())
        }
    }
}

fn scalar<const BF16: bool>(w: &[u8], c: usize) -> f32 {
    if BF16 {
        f32::from_bits(u32::from(u16::from_le_bytes([w[2 * c], w[2 * c + 1]])) << 16)
    } else {
        f32::from_le_bytes([w[4 * c], w[4 * c + 1], w[4 * c + 2], w[4 * c + 3]])
    }
}

#[target_feature(enable = "avx512f")]
unsafe fn dense<const T: usize, const BF16: bool>(w: &[u8], x: &[f32], cols: usize, out: &mut [f32]) {
    let mut acc0 = [_mm512_setzero_ps(); T];
    let mut acc1 = [_mm512_setzero_ps(); T];
    let xp = x.as_ptr();
    let mut c = 0;
    // SAFETY (all loads below): c + 32 <= cols, or c + 16 <= cols for the half step, and
    // t < T rows of x.
    while c + 32 <= cols {
        let (w0, w1) = unsafe { (load16::<BF16>(w, c), load16::<BF16>(w, c + 16)) };
        for t in 0..T {
            unsafe {
                let p = xp.add(t * cols + c);
                acc0[t] = _mm512_fmadd_ps(w0, _mm512_loadu_ps(p), acc0[t]);
                acc1[t] = _mm512_fmadd_ps(w1, _mm512_loadu_ps(p.add(16)), acc1[t]);
            }
        }
        c += 32;
    }
    if c + 16 <= cols {
        let w0 = unsafe { load16::<BF16>(w, c) };
        for t in 0..T {
            unsafe { acc0[t] = _mm512_fmadd_ps(w0, _mm512_loadu_ps(xp.add(t * cols + c)), acc0[t]) };
        }
        c += 16;
    }
    for t in 0..T {
        let mut tail = 0.0f32;
        for i in c..cols {
            tail += scalar::<BF16>(w, i) * x[t * cols + i];
        }
        out[t] = _mm512_reduce_add_ps(_mm512_add_ps(acc0[t], acc1[t])) + tail;
    }
}

/// a . b, a.len() == b.len().
///
/// # Safety
/// The CPU has AVX-512F.
#[target_feature(enable = "avx512f")]
pub unsafe fn dot(a: &[f32], b: &[f32]) -> f32 {
    let n = a.len();
    let (mut acc0, mut acc1) = (_mm512_setzero_ps(), _mm512_setzero_ps());
    let mut c = 0;
    // SAFETY (loads): c + 32 <= n, or c + 16 <= n for the half step.
    while c + 32 <= n {
        unsafe {
            acc0 = _mm512_fmadd_ps(_mm512_loadu_ps(a.as_ptr().add(c)), _mm512_loadu_ps(b.as_ptr().add(c)), acc0);
            acc1 =
                _mm512_fmadd_ps(_mm512_loadu_ps(a.as_ptr().add(c + 16)), _mm512_loadu_ps(b.as_ptr().add(c + 16)), acc1);
        }
        c += 32;
    }
    if c + 16 <= n {
        unsafe { acc0 = _mm512_fmadd_ps(_mm512_loadu_ps(a.as_ptr().add(c)), _mm512_loadu_ps(b.as_ptr().add(c)), acc0) };
        c += 16;
    }
    let mut tail = 0.0f32;
    for i in c..n {
        tail += a[i] * b[i];
    }
    _mm512_reduce_add_ps(_mm512_add_ps(acc0, acc1)) + tail
}
