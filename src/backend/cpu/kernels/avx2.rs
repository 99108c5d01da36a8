//! AVX2 + FMA kernels: 8 lanes; an MXFP4 block of 32 is four permutes of the 8 magnitudes
//! (scaled) with the sign bit moved into place. Tiles of 4 dense rows x 1 token, 2 x 2,
//! 1 x 6 or 1 x 4 (MXFP4: 1 row x up to 4 tokens) keep two accumulators per (row, token) in
//! the 16 registers.

// Register tiles are indexed [row][token] in fixed-size loops; iterator chains over several
// such arrays at once would hide which accumulator meets which load.
#![allow(clippy::needless_range_loop)]

use std::arch::x86_64::*;

use super::{E2M1_SIGNED, RowRef, mxfp4_tail};
use crate::weights::decode::e8m0;

/// Bytes ahead of dense rows read from memory (not `cached`) that each step of a row's first
/// token tile asks the L2 cache for. Measured on Zen 3, both cores streaming bf16 rows
/// against one token in blocks of 16: 7.4-11.1 -> 10.2-13.5 GB/s, alternated in one run;
/// the mid-size decode step median 14.9 -> 13.8 ms (one core alone gained nothing).
const PREFETCH_AHEAD: usize = 8192;

/// x [T, cols] (T = out.len() <= TILE; bf16 rows: in `Acts`'s split order) against one
/// weight row -> out [T].
///
/// # Safety
/// The CPU has AVX2 and FMA; the row holds `cols` elements and x holds out.len() rows of `cols`.
#[target_feature(enable = "avx2,fma")]
pub unsafe fn row_dots(w: RowRef<'_>, x: &[f32], cols: usize, out: &mut [f32]) {
    let mut t0 = 0;
    for tile in [4usize, 2, 1] {
        while out.len() - t0 >= tile {
            let (xs, o) = (&x[t0 * cols..], &mut out[t0..t0 + tile]);
            // SAFETY: the caller's guarantees, for the tokens t0..t0 + tile.
            unsafe {
                match (w, tile) {
                    (RowRef::Mxfp4 { codes, scales }, 4) => mxfp4::<4>(codes, scales, xs, cols, o),
                    (RowRef::Mxfp4 { codes, scales }, 2) => mxfp4::<2>(codes, scales, xs, cols, o),
                    (RowRef::Mxfp4 { codes, scales }, _) => mxfp4::<1>(codes, scales, xs, cols, o),
                    (RowRef::Bf16(b), 4) => dense::<1, 4, true>(b, b.len(), xs, cols, o, 1, false),
                    (RowRef::Bf16(b), 2) => dense::<1, 2, true>(b, b.len(), xs, cols, o, 1, false),
                    (RowRef::Bf16(b), _) => dense::<1, 1, true>(b, b.len(), xs, cols, o, 1, false),
                    (RowRef::F32(b), 4) => dense::<1, 4, false>(b, b.len(), xs, cols, o, 1, false),
                    (RowRef::F32(b), 2) => dense::<1, 2, false>(b, b.len(), xs, cols, o, 1, false),
                    (RowRef::F32(b), _) => dense::<1, 1, false>(b, b.len(), xs, cols, o, 1, false),
                }
            }
            t0 += tile;
        }
    }
}

/// `nrows` dense rows (bf16 or f32) against tokens x [tb, cols] (bf16 rows: in `Acts`'s
/// split order) -> out[r * ostride + t], the row loop inside one call: the demo model's rows
/// are 256 wide, and a call per row cost more than the row's multiply-adds. `ahead`: the
/// rows come from memory, so prefetch them.
///
/// # Safety
/// The CPU has AVX2 and FMA; `w` holds `nrows` rows of `cols`, x holds tb rows of `cols`,
/// and out reaches (nrows - 1) * ostride + tb.
#[target_feature(enable = "avx2,fma")]
#[allow(clippy::too_many_arguments)]
pub unsafe fn dense_block_dots<const BF16: bool>(
    w: &[u8],
    nrows: usize,
    x: &[f32],
    tb: usize,
    cols: usize,
    out: &mut [f32],
    ostride: usize,
    ahead: bool,
) {
    let row_bytes = cols * super::value_bytes::<BF16>();
    // One token takes rows four at a time, two or three tokens two (see `dense`); four and
    // more share each row enough alone. Rows from memory (`ahead`) are taken from the
    // quarters (halves) of the block: tile i holds rows i, i + q, i + 2q and i + 3q (q =
    // nrows / 4), so a core reads four streams at once, each far from the others. One stream
    // per core left the hardware prefetcher too few misses in flight, and four rows side by
    // side (2 KiB apart for rows of 1024) were worse still. Measured on Zen 3 with a
    // stand-alone copy of the one-token loop over 128 MB of bf16 rows, both cores: rows of
    // 1024, one at a time 16.7-18.1 GB/s, four far apart 22.2-23.3; rows of 384, four side by
    // side 13.8-17.6, four far apart 22.7-24.5. The mid-size decode step, alternated: one
    // token 0.86-0.91 of its time, two 0.90-0.93, three 0.92-0.93. A (row, token)'s sum is
    // the same in any tile.
    let rows_per_tile = match tb {
        1 => 4,
        2 | 3 => 2,
        _ => 1,
    };
    let tiles = nrows / rows_per_tile;
    // Tile i's first row is i * step, its rows `apart` rows from each other.
    let (step, apart) = if ahead { (1, tiles) } else { (rows_per_tile, 1) };
    // Token tiles outside, rows inside: a tile's activations (4 x cols f32) stay in L1 while
    // every row passes over them. Rows outside streamed all tb tokens from L2 for each row,
    // and L2's bandwidth, not the multiply-adds, set a prefill's pace. With the int16 kernel
    // likewise: mid-size 512-token prefill on Zen 3, three alternated runs, 154-168 ->
    // 165-194 tok/s.
    let mut t = 0;
    while t < tb {
        let tile = token_tile(tb - t, rows_per_tile);
        let (xs, pf) = (&x[t * cols..], ahead && t == 0);
        // (rows in the tile, its first row, rows between its rows): the whole tiles, then
        // the rows past the last of them one at a time.
        let units = (0..tiles).map(|i| (rows_per_tile, i * step, apart));
        for (rows, r, apart) in units.chain((tiles * rows_per_tile..nrows).map(|r| (1, r, 1))) {
            let (rw, ot) = (&w[r * row_bytes..], &mut out[r * ostride + t..]);
            let (stride, ostep) = (apart * row_bytes, apart * ostride);
            // SAFETY: the caller's guarantees, for rows r + k * apart (k < rows) and tokens
            // t..t + tile.
            unsafe {
                match (rows, tile) {
                    (4, _) => dense::<4, 1, BF16>(rw, stride, xs, cols, ot, ostep, pf),
                    (2, 2) => dense::<2, 2, BF16>(rw, stride, xs, cols, ot, ostep, pf),
                    (2, _) => dense::<2, 1, BF16>(rw, stride, xs, cols, ot, ostep, pf),
                    (_, 6) => dense::<1, 6, BF16>(rw, stride, xs, cols, ot, ostep, pf),
                    (_, 4) => dense::<1, 4, BF16>(rw, stride, xs, cols, ot, ostep, pf),
                    (_, 2) => dense::<1, 2, BF16>(rw, stride, xs, cols, ot, ostep, pf),
                    _ => dense::<1, 1, BF16>(rw, stride, xs, cols, ot, ostep, pf),
                }
            }
        }
        t += tile;
    }
}

/// Tokens in the next tile of `dense_block_dots` with `left` tokens to go: tiles of several
/// rows take at most two tokens (`dense` keeps two accumulators per (row, token) in 16
/// registers); single rows take six, else four, two, one. Six tokens' two accumulators are
/// twelve multiply-add chains: on Zen 2 (an FMA's latency 5 cycles, two issued a cycle) the
/// eight of four tokens left the FMA units waiting. Measured on Zen 2 (EPYC family 23 model
/// 49), bf16 rows in L2 (`kernel_tile_speed`, six and four alternated, best of 20 rounds):
/// 6 tokens 53 -> 70% of one core's FMA peak, 12 61 -> 69%, 16 61 -> 67%, 64 60 -> 69%;
/// 8 tokens as 6 + 2 lost (60 -> 59%), so they stay 4 + 4. The mid-size 512-token prefill,
/// alternated: 0.95-0.97 of its time.
fn token_tile(left: usize, rows_per_tile: usize) -> usize {
    match left {
        _ if rows_per_tile > 1 => left.min(2),
        6.. if left != 8 => 6,
        4.. => 4,
        2.. => 2,
        _ => 1,
    }
}

#[target_feature(enable = "avx2,fma")]
pub(super) fn hsum(v: __m256) -> f32 {
    let s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
    let s = _mm_add_ps(s, _mm_movehl_ps(s, s));
    _mm_cvtss_f32(_mm_add_ss(s, _mm_shuffle_ps(s, s, 1)))
}

/// Eight E2M1 codes (one per lane) through the scaled magnitude table, sign from bit 3.
#[target_feature(enable = "avx2,fma")]
fn e2m1x8(codes: __m128i, table: __m256) -> __m256 {
    let idx = _mm256_cvtepu8_epi32(codes);
    let mag = _mm256_permutevar8x32_ps(table, idx);
    let sign = _mm256_and_si256(_mm256_slli_epi32(idx, 28), _mm256_set1_epi32(i32::MIN));
    _mm256_xor_ps(mag, _mm256_castsi256_ps(sign))
}

#[target_feature(enable = "avx2,fma")]
unsafe fn mxfp4<const T: usize>(codes: &[u8], scales: &[u8], x: &[f32], cols: usize, out: &mut [f32]) {
    // SAFETY: the first 8 entries of E2M1_SIGNED are the magnitudes.
    let mags = unsafe { _mm256_loadu_ps(E2M1_SIGNED.as_ptr()) };
    let nib = _mm_set1_epi8(0x0F);
    let mut acc0 = [_mm256_setzero_ps(); T];
    let mut acc1 = [_mm256_setzero_ps(); T];
    let xp = x.as_ptr();
    for g in 0..cols / 32 {
        let table = _mm256_mul_ps(mags, _mm256_set1_ps(e8m0(scales[g])));
        // SAFETY: block g's 16 code bytes are inside the row (g < cols / 32).
        let b = unsafe { _mm_loadu_si128(codes.as_ptr().add(16 * g).cast()) };
        let lo = _mm_and_si128(b, nib);
        let hi = _mm_and_si128(_mm_srli_epi16(b, 4), nib);
        let (u0, u1) = (_mm_unpacklo_epi8(lo, hi), _mm_unpackhi_epi8(lo, hi));
        let w0 = e2m1x8(u0, table);
        let w1 = e2m1x8(_mm_srli_si128(u0, 8), table);
        let w2 = e2m1x8(u1, table);
        let w3 = e2m1x8(_mm_srli_si128(u1, 8), table);
        for t in 0..T {
            // SAFETY: token t's block g lies within x.
            unsafe {
                let p = xp.add(t * cols + 32 * g);
                acc0[t] = _mm256_fmadd_ps(w0, _mm256_loadu_ps(p), acc0[t]);
                acc1[t] = _mm256_fmadd_ps(w1, _mm256_loadu_ps(p.add(8)), acc1[t]);
                acc0[t] = _mm256_fmadd_ps(w2, _mm256_loadu_ps(p.add(16)), acc0[t]);
                acc1[t] = _mm256_fmadd_ps(w3, _mm256_loadu_ps(p.add(24)), acc1[t]);
            }
        }
    }
    for t in 0..T {
        let xt = &x[t * cols..(t + 1) * cols];
        out[t] = hsum(_mm256_add_ps(acc0[t], acc1[t])) + mxfp4_tail(codes, scales, xt, cols);
    }
}

/// 16 bf16 weights from element `c` as f32: (the 8 even ones, the 8 odd ones), each dword's
/// low half shifted up and its high half masked. Widening 8 in their order took a
/// zero-extend and a shift each, four operations per 16 on Zen 3's two shuffle ports (one of
/// them also an FMA port) where this takes one and an AND. Measured on Zen 3, old and new
/// on alternate steps of one run: demo decode one token 0.91-0.94 of the step time, two to
/// four 0.95-1.02; the mid-size model's decode and prefill within 0.97-1.03 (its rows come
/// from memory). Against rows not 32-byte aligned the one 32-byte load spans two cache lines
/// more often than the two 16-byte ones did, which is why the gain is not larger.
///
/// # Safety
/// The CPU has AVX2; c + 16 <= the row's length.
#[target_feature(enable = "avx2,fma")]
pub(super) unsafe fn load16_bf16(w: &[u8], c: usize) -> (__m256, __m256) {
    // SAFETY: the caller keeps c + 16 <= cols.
    let v = unsafe { _mm256_loadu_si256(w.as_ptr().add(2 * c).cast()) };
    let high = _mm256_set1_epi32(0xFFFF_0000u32 as i32);
    (_mm256_castsi256_ps(_mm256_slli_epi32::<16>(v)), _mm256_castsi256_ps(_mm256_and_si256(v, high)))
}

/// 8 weights at element `c` of a dense row: bf16 widened by a shift, or f32 as stored.
#[target_feature(enable = "avx2,fma")]
pub(super) unsafe fn load8<const BF16: bool>(w: &[u8], c: usize) -> __m256 {
    // SAFETY: the caller keeps c + 8 <= cols.
    unsafe {
        if BF16 {
            let h = _mm_loadu_si128(w.as_ptr().add(2 * c).cast());
            _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_cvtepu16_epi32(h), 16))
        } else {
            _mm256_loadu_ps(w.as_ptr().add(4 * c).cast())
        }
    }
}

/// Rows [0, R) (each `stride` bytes after the one before) against tokens x [T, cols] ->
/// out[r * ostride + t]; against bf16 rows, x's whole 16s hold their even elements and then
/// their odd ones (`Acts`). Each (row, token) pair keeps two accumulators (the first and
/// second 8 of each 16 of x) and sums them the same way in any tile, so a row's result does
/// not depend on the rows beside it; R rows of one token share its loads and hide the FMA
/// latency that one row's two chains wait on.
///
/// # Safety
/// The CPU has AVX2 and FMA; w holds R rows of `cols` `stride` bytes apart, x holds T rows
/// of `cols`, out reaches (R - 1) * ostride + T.
#[target_feature(enable = "avx2,fma")]
#[allow(clippy::too_many_arguments)]
unsafe fn dense<const R: usize, const T: usize, const BF16: bool>(
    w: &[u8],
    stride: usize,
    x: &[f32],
    cols: usize,
    out: &mut [f32],
    ostride: usize,
    ahead: bool,
) {
    let mut acc0 = [[_mm256_setzero_ps(); T]; R];
    let mut acc1 = [[_mm256_setzero_ps(); T]; R];
    let xp = x.as_ptr();
    let row = |r: usize| &w[r * stride..r * stride + cols * super::value_bytes::<BF16>()];
    let mut c = 0;
    // SAFETY (all loads below): c + 16 <= cols, or c + 8 <= cols for the half step, in rows
    // r < R of w and t < T of x.
    while c + 16 <= cols {
        for r in 0..R {
            if ahead {
                _mm_prefetch::<_MM_HINT_T1>(
                    w.as_ptr().wrapping_add(r * stride + c * super::value_bytes::<BF16>() + PREFETCH_AHEAD).cast(),
                );
            }
            // bf16: the even and odd elements of the 16, which x holds in that order.
            let (w0, w1) = unsafe {
                if BF16 { load16_bf16(row(r), c) } else { (load8::<BF16>(row(r), c), load8::<BF16>(row(r), c + 8)) }
            };
            for t in 0..T {
                unsafe {
                    let p = xp.add(t * cols + c);
                    acc0[r][t] = _mm256_fmadd_ps(w0, _mm256_loadu_ps(p), acc0[r][t]);
                    acc1[r][t] = _mm256_fmadd_ps(w1, _mm256_loadu_ps(p.add(8)), acc1[r][t]);
                }
            }
        }
        c += 16;
    }
    if c + 8 <= cols {
        for r in 0..R {
            let w0 = unsafe { load8::<BF16>(row(r), c) };
            for t in 0..T {
                unsafe { acc0[r][t] = _mm256_fmadd_ps(w0, _mm256_loadu_ps(xp.add(t * cols + c)), acc0[r][t]) };
            }
        }
        c += 8;
    }
    for r in 0..R {
        for t in 0..T {
            let mut tail = 0.0f32;
            for i in c..cols {
                tail += super::dense_scalar::<BF16>(row(r), i) * x[t * cols + i];
            }
            out[r * ostride + t] = hsum(_mm256_add_ps(acc0[r][t], acc1[r][t])) + tail;
        }
    }
}

/// a . b, a.len() == b.len().
///
/// # Safety
/// The CPU has AVX2 and FMA.
#[target_feature(enable = "avx2,fma")]
pub unsafe fn dot(a: &[f32], b: &[f32]) -> f32 {
    let n = a.len();
    let (mut acc0, mut acc1) = (_mm256_setzero_ps(), _mm256_setzero_ps());
    let mut c = 0;
    // SAFETY (loads): c + 16 <= n, or c + 8 <= n for the half step.
    while c + 16 <= n {
        unsafe {
            acc0 = _mm256_fmadd_ps(_mm256_loadu_ps(a.as_ptr().add(c)), _mm256_loadu_ps(b.as_ptr().add(c)), acc0);
            acc1 =
                _mm256_fmadd_ps(_mm256_loadu_ps(a.as_ptr().add(c + 8)), _mm256_loadu_ps(b.as_ptr().add(c + 8)), acc1);
        }
        c += 16;
    }
    if c + 8 <= n {
        unsafe { acc0 = _mm256_fmadd_ps(_mm256_loadu_ps(a.as_ptr().add(c)), _mm256_loadu_ps(b.as_ptr().add(c)), acc0) };
        c += 8;
    }
    let mut tail = 0.0f32;
    for i in c..n {
        tail += a[i] * b[i];
    }
    hsum(_mm256_add_ps(acc0, acc1)) + tail
}
