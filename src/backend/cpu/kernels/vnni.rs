//! AVX-512 VNNI kernel for MXFP4 rows: the codes of four blocks (64 bytes) become unsigned
//! bytes through two in-lane table lookups (`vpshufb`), and `vpdpbusd` multiplies them with
//! the activations' two int8 terms (`Int8x2`), 64 products an instruction, exactly, in
//! int32. Each block's integer sum is then scaled once (weight scale x activation scale)
//! into an f32 accumulator. Against the f32 kernel this trades three 512-bit cross-lane
//! shuffles per block (which bound it on Zen 4) for two in-lane ones per four blocks.
//!
//! Every (row, token) has its own accumulator and the same group order in any tile, so a
//! token's result does not depend on its batch.

#![allow(clippy::needless_range_loop)]

use std::arch::x86_64::*;

use super::int8x2::{GROUP_BLOCKS, GROUP_BYTES, Int8x2, pow2_at_least};
use super::mxfp4_tail;
use super::vnni_group::*;
use super::vnni_whole::whole_rows;

/// Rows of MXFP4 `codes` [nrows, cols/2] / `scales` [nrows, cols/32] against tokens
/// [t0, t0 + tb) of `q` (x [n, cols] f32 for the elements past the last whole block) ->
/// out[r * ostride + t].
///
/// # Safety
/// The CPU has AVX-512F, BW and VNNI; codes and scales hold nrows rows of `cols`, q and x
/// hold the tokens, and out reaches (nrows - 1) * ostride + tb.
#[allow(clippy::too_many_arguments)]
#[target_feature(enable = "avx512f,avx512bw,avx512vnni")]
pub unsafe fn block_dots(
    codes: &[u8],
    scales: &[u8],
    nrows: usize,
    q: &Int8x2,
    x: &[f32],
    t0: usize,
    tb: usize,
    cols: usize,
    out: &mut [f32],
    ostride: usize,
) {
    let (cb, sb) = (cols.div_ceil(2), cols.div_ceil(32));
    // One to three tokens against short rows: tiles of eight (row, token) pairs, as in
    // avx512::block_dots. Not for longer rows, even of a small weight: a model whose experts
    // are each small still streams them all from memory, where one or two rows at a time
    // measured faster (the mid-size bench model: 6.5 -> 7.3 ms a step with eight).
    if tb < 4 && cols <= super::avx512::SHORT_ROW {
        let mut t = 0;
        for tile in [2usize, 1] {
            while tb - t >= tile {
                let (group, tok) = (8 / tile, t0 + t);
                let mut r = 0;
                while r < nrows {
                    let k = if nrows - r >= group { group } else { 1 };
                    let o = &mut out[r * ostride + t..];
                    let (c, s) = (&codes[r * cb..], &scales[r * sb..]);
                    // SAFETY: the caller's guarantees, for rows r..r + k and tokens tok..tok + tile.
                    unsafe {
                        match (k, tile) {
                            (8, _) => eight_rows_one_token(c, s, q, x, tok, cols, o, ostride),
                            (4, _) => {
                                let (rc, rs) = rows::<4>(c, s, cols);
                                tile_dots::<4, 2>(rc, rs, q, x, tok, cols, o, ostride)
                            }
                            (_, 2) => {
                                let (rc, rs) = rows::<1>(c, s, cols);
                                tile_dots::<1, 2>(rc, rs, q, x, tok, cols, o, ostride)
                            }
                            _ => {
                                let (rc, rs) = rows::<1>(c, s, cols);
                                tile_dots::<1, 1>(rc, rs, q, x, tok, cols, o, ostride)
                            }
                        }
                    }
                    r += k;
                }
                t += tile;
            }
        }
        return;
    }
    if whole_groups(cols) {
        // SAFETY: the caller's guarantees.
        unsafe { whole_rows(codes, scales, nrows, q, x, t0, tb, cols, out, ostride) };
        return;
    }
    // Rows with a tail: pairs of rows against tiles of up to four tokens.
    let mut r = 0;
    while r < nrows {
        let pair = nrows - r >= 2;
        let mut t = 0;
        for tile in [4usize, 2, 1] {
            while tb - t >= tile {
                let o = &mut out[r * ostride + t..];
                let tok = t0 + t;
                // SAFETY: the caller's guarantees, for rows r.. and tokens tok..tok + tile.
                unsafe {
                    if pair {
                        let c = [&codes[r * cb..(r + 1) * cb], &codes[(r + 1) * cb..(r + 2) * cb]];
                        let s = [&scales[r * sb..(r + 1) * sb], &scales[(r + 1) * sb..(r + 2) * sb]];
                        match tile {
                            4 => tile_dots::<2, 4>(c, s, q, x, tok, cols, o, ostride),
                            2 => tile_dots::<2, 2>(c, s, q, x, tok, cols, o, ostride),
                            _ => tile_dots::<2, 1>(c, s, q, x, tok, cols, o, ostride),
                        }
                    } else {
                        let c = [&codes[r * cb..(r + 1) * cb]];
                        let s = [&scales[r * sb..(r + 1) * sb]];
                        match tile {
                            4 => tile_dots::<1, 4>(c, s, q, x, tok, cols, o, ostride),
                            2 => tile_dots::<1, 2>(c, s, q, x, tok, cols, o, ostride),
                            _ => tile_dots::<1, 1>(c, s, q, x, tok, cols, o, ostride),
                        }
                    }
                }
                t += tile;
            }
        }
        r += if pair { 2 } else { 1 };
    }
}

/// Eight consecutive rows (`codes` [8, cols/2], `scales` [8, cols/32] from the first) x
/// token `t0` of q: `tile_dots::<8, 1>`'s arithmetic with each group's activations loaded
/// once, then row after row. Written as `tile_dots`, the eight rows' decoded codes and
/// scales were spilled to the stack every group; here only the accumulators live across
/// rows (short rows against one token: 5.9 -> 3.3 us for the demo's 128 x 256 expert gate
/// and up; eight named accumulators, fully unrolled, measured slower at 4.5).
#[allow(clippy::too_many_arguments)]
#[target_feature(enable = "avx512f,avx512bw,avx512vnni")]
unsafe fn eight_rows_one_token(
    codes: &[u8],
    scales: &[u8],
    q: &Int8x2,
    x: &[f32],
    t0: usize,
    cols: usize,
    out: &mut [f32],
    ostride: usize,
) {
    let (cb, sb) = (cols.div_ceil(2), cols.div_ceil(32));
    assert!(codes.len() >= 8 * cb && scales.len() >= 8 * sb, "eight_rows_one_token: short rows");
    let lut = code_table();
    let blocks = cols / 32;
    let mut acc = [[_mm512_setzero_ps(); 1]; 8];
    for g in 0..q.groups {
        let m = (blocks - g * GROUP_BLOCKS).min(GROUP_BLOCKS);
        let load_mask: u64 = if m == GROUP_BLOCKS { !0 } else { (1u64 << (16 * m)) - 1 };
        let a = group_acts(q, t0, g);
        for r in 0..8 {
            // SAFETY: the mask keeps the load inside block g*4 + m of row r (checked above).
            let raw = unsafe { _mm512_maskz_loadu_epi8(load_mask, codes.as_ptr().add(r * cb + 64 * g).cast()) };
            let (ue, uo) = unsigned_codes(raw, lut);
            let sw = group_scales(&scales[r * sb + g * GROUP_BLOCKS..], m);
            acc[r][0] = add_group(acc[r][0], ue, uo, sw, &a);
        }
    }
    let sums = super::hsum::tile_sums(acc);
    let xt = &x[t0 * cols..(t0 + 1) * cols];
    for r in 0..8 {
        let tail = if blocks * 32 == cols {
            0.0
        } else {
            mxfp4_tail(&codes[r * cb..(r + 1) * cb], &scales[r * sb..(r + 1) * sb], xt, cols)
        };
        out[r * ostride] = sums[r][0] + tail;
    }
}

/// R rows x T tokens (from token `t0` of q).
// Out of line, so that `whole_rows`' loop, which falls back on it for rows whose scales
// need fixing up, stays small.
#[allow(clippy::too_many_arguments)]
#[inline(never)]
#[target_feature(enable = "avx512f,avx512bw,avx512vnni")]
pub(super) unsafe fn tile_dots<const R: usize, const T: usize>(
    codes: [&[u8]; R],
    scales: [&[u8]; R],
    q: &Int8x2,
    x: &[f32],
    t0: usize,
    cols: usize,
    out: &mut [f32],
    ostride: usize,
) {
    let lut = code_table();
    let blocks = cols / 32;
    let mut acc = [[_mm512_setzero_ps(); T]; R];
    for g in 0..q.groups {
        let m = (blocks - g * GROUP_BLOCKS).min(GROUP_BLOCKS);
        let load_mask: u64 = if m == GROUP_BLOCKS { !0 } else { (1u64 << (16 * m)) - 1 };
        let mut ue = [_mm512_setzero_si512(); R];
        let mut uo = [_mm512_setzero_si512(); R];
        let mut sw = [_mm512_setzero_ps(); R];
        for r in 0..R {
            _mm_prefetch::<_MM_HINT_T1>(codes[r].as_ptr().wrapping_add(64 * g + PREFETCH_AHEAD).cast());
            // SAFETY: the mask keeps the load inside block g*4 + m of row r.
            let raw = unsafe { _mm512_maskz_loadu_epi8(load_mask, codes[r].as_ptr().add(64 * g).cast()) };
            (ue[r], uo[r]) = unsigned_codes(raw, lut);
            sw[r] = group_scales(&scales[r][g * GROUP_BLOCKS..], m);
        }
        for t in 0..T {
            let a = group_acts(q, t0 + t, g);
            for r in 0..R {
                acc[r][t] = add_group(acc[r][t], ue[r], uo[r], sw[r], &a);
            }
        }
    }
    let sums = super::hsum::tile_sums(acc);
    for r in 0..R {
        for t in 0..T {
            let xt = &x[(t0 + t) * cols..(t0 + t + 1) * cols];
            out[r * ostride + t] = sums[r][t] + mxfp4_tail(codes[r], scales[r], xt, cols);
        }
    }
}

/// `int8x2::quantize_block` in AVX-512 (the same bytes: both round to nearest even, and
/// x - q1 s is exact either way because q1 s is).
///
/// # Safety
/// The CPU has AVX-512F and BW; xs holds 32 values, gq 256 bytes, bias and scale 4 lanes.
#[target_feature(enable = "avx512f,avx512bw")]
pub unsafe fn quantize_block(xs: &[f32], k: usize, gq: &mut [i8], bias: &mut [i32], scale: &mut [f32]) {
    assert!(xs.len() >= 32 && gq.len() >= GROUP_BYTES && bias.len() >= 4 && scale.len() >= 4);
    // SAFETY: 32 values.
    let (lo, hi) = unsafe { (_mm512_loadu_ps(xs.as_ptr()), _mm512_loadu_ps(xs.as_ptr().add(16))) };
    let even =
        _mm512_permutex2var_ps(lo, _mm512_set_epi32(30, 28, 26, 24, 22, 20, 18, 16, 14, 12, 10, 8, 6, 4, 2, 0), hi);
    let odd =
        _mm512_permutex2var_ps(lo, _mm512_set_epi32(31, 29, 27, 25, 23, 21, 19, 17, 15, 13, 11, 9, 7, 5, 3, 1), hi);
    let (ae, ao) = (_mm512_abs_ps(even), _mm512_abs_ps(odd));
    let max = _mm512_set1_ps(f32::MAX);
    // Ordered <= MAX is false for NaN and infinities.
    if _mm512_cmp_ps_mask::<_CMP_LE_OQ>(ae, max) & _mm512_cmp_ps_mask::<_CMP_LE_OQ>(ao, max) != 0xFFFF {
        scale[..4].fill(f32::NAN);
        return;
    }
    let amax = _mm512_reduce_max_ps(_mm512_max_ps(ae, ao));
    if amax == 0.0 {
        return;
    }
    let s = pow2_at_least(amax / 127.0);
    let (vs, inv, fine) = (_mm512_set1_ps(s), _mm512_set1_ps(1.0 / s), _mm512_set1_ps(256.0 / s));
    let (lim_lo, lim_hi) = (_mm512_set1_ps(-127.0), _mm512_set1_ps(127.0));
    let terms = |v: __m512| {
        let q1 = _mm512_cvtps_epi32(_mm512_mul_ps(v, inv));
        let r = _mm512_fnmadd_ps(_mm512_cvtepi32_ps(q1), vs, v);
        let q2 = _mm512_cvtps_epi32(_mm512_min_ps(_mm512_max_ps(_mm512_mul_ps(r, fine), lim_lo), lim_hi));
        (q1, q2)
    };
    let ((q1e, q2e), (q1o, q2o)) = (terms(even), terms(odd));
    // SAFETY: gq holds 256 bytes; each store is 16 of them.
    unsafe {
        let p = gq.as_mut_ptr().add(16 * k);
        _mm_storeu_si128(p.cast(), _mm512_cvtepi32_epi8(q1e));
        _mm_storeu_si128(p.add(64).cast(), _mm512_cvtepi32_epi8(q1o));
        _mm_storeu_si128(p.add(128).cast(), _mm512_cvtepi32_epi8(q2e));
        _mm_storeu_si128(p.add(192).cast(), _mm512_cvtepi32_epi8(q2o));
    }
    // Lane i of `pairs` is elements 2i and 2i + 1 combined; int32 lane j of the kernel holds
    // pairs 4j..4j+4.
    let pairs = _mm512_add_epi32(_mm512_slli_epi32(_mm512_add_epi32(q1e, q1o), 8), _mm512_add_epi32(q2e, q2o));
    let mut y = [0i32; 16];
    // SAFETY: 16 lanes.
    unsafe { _mm512_storeu_si512(y.as_mut_ptr().cast(), pairs) };
    for (j, b) in bias[..4].iter_mut().enumerate() {
        *b = -12 * y[4 * j..4 * j + 4].iter().sum::<i32>();
    }
    scale[..4].fill(s / 512.0);
}
