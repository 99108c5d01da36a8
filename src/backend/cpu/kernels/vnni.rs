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

/// Bytes ahead of the codes being read that each group asks the L2 cache for: a pass over
/// one token is too short per byte for the hardware prefetcher alone. Measured on Zen 4,
/// one core streaming two rows against one token: 8.5 GB/s with none, 9.5 with 4 or 8 KiB
/// into L1 (`_MM_HINT_T0`, whose misses hold L1's few fill buffers), 12.5 with 4 KiB and
/// 12.8 with 8 KiB into L2 (`_MM_HINT_T1`).
const PREFETCH_AHEAD: usize = 8192;

/// E2M1 code -> 2 * value + 12 (0..24), the unsigned form `vpdpbusd` takes; the int8x2
/// biases take the 12 back out.
const U_TABLE: [i8; 16] = [12, 13, 14, 15, 16, 18, 20, 24, 12, 11, 10, 9, 8, 6, 4, 0];

/// U_TABLE in every 128-bit lane, for `unsigned_codes`.
#[target_feature(enable = "avx512f")]
fn code_table() -> __m512i {
    // SAFETY: U_TABLE is 16 bytes.
    _mm512_broadcast_i32x4(unsafe { _mm_loadu_si128(U_TABLE.as_ptr().cast()) })
}

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

/// `block_dots`' long rows when they are whole groups: pairs of rows against tiles of up to
/// four tokens, by `whole_group_dots`, or by `tile_dots` for a pair whose scales need its
/// fix-ups.
///
/// This loop is its own small function: in `block_dots`, the same loop ran a third slower
/// per row (one core streaming two rows and a token from memory: 9 -> 13 GB/s, the bare
/// calls 14).
///
/// # Safety
/// As `block_dots`, and `cols` is whole groups.
#[allow(clippy::too_many_arguments)]
#[inline(never)]
#[target_feature(enable = "avx512f,avx512bw,avx512vnni")]
unsafe fn whole_rows(
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
    if tb == 1 {
        // SAFETY: the caller's guarantees.
        return unsafe {
            if q.one_term {
                whole_rows_one_token::<true>(codes, scales, nrows, q, x, t0, cols, out, ostride)
            } else {
                whole_rows_one_token::<false>(codes, scales, nrows, q, x, t0, cols, out, ostride)
            }
        };
    }
    let (cb, sb) = (cols / 2, cols / 32);
    let mut r = 0;
    while r < nrows {
        let pair = nrows - r >= 2;
        let (c, s) = (&codes[r * cb..], &scales[r * sb..]);
        let mut t = 0;
        while t < tb {
            let tile = match tb - t {
                1 => 1,
                2 | 3 => 2,
                _ => 4,
            };
            let (tok, o) = (t0 + t, &mut out[r * ostride + t..]);
            // SAFETY: the caller's guarantees, for rows r.. and tokens tok..tok + tile.
            unsafe {
                match (pair, tile) {
                    (true, 4) => whole_or_fixed_up::<2, 4>(rows(c, s, cols), q, x, tok, cols, o, ostride),
                    (true, 2) => whole_or_fixed_up::<2, 2>(rows(c, s, cols), q, x, tok, cols, o, ostride),
                    (true, _) => whole_or_fixed_up::<2, 1>(rows(c, s, cols), q, x, tok, cols, o, ostride),
                    (false, 4) => whole_or_fixed_up::<1, 4>(rows(c, s, cols), q, x, tok, cols, o, ostride),
                    (false, 2) => whole_or_fixed_up::<1, 2>(rows(c, s, cols), q, x, tok, cols, o, ostride),
                    (false, _) => whole_or_fixed_up::<1, 1>(rows(c, s, cols), q, x, tok, cols, o, ostride),
                }
            }
            t += tile;
        }
        r += if pair { 2 } else { 1 };
    }
}

/// R rows of whole groups x T tokens: `whole_group_dots`, or `tile_dots` when a scale needs
/// its fix-ups.
///
/// # Safety
/// As `whole_group_dots`, with x holding the tokens.
#[allow(clippy::too_many_arguments)]
#[target_feature(enable = "avx512f,avx512bw,avx512vnni")]
unsafe fn whole_or_fixed_up<const R: usize, const T: usize>(
    (codes, scales): ([&[u8]; R], [&[u8]; R]),
    q: &Int8x2,
    x: &[f32],
    t0: usize,
    cols: usize,
    out: &mut [f32],
    ostride: usize,
) {
    // SAFETY: the caller's guarantees.
    unsafe {
        let whole = if q.one_term {
            whole_group_dots::<R, T, true>(codes, scales, q, t0, out, ostride)
        } else {
            whole_group_dots::<R, T, false>(codes, scales, q, t0, out, ostride)
        };
        if !whole {
            tile_dots::<R, T>(codes, scales, q, x, t0, cols, out, ostride);
        }
    }
}

/// One token's group of four blocks as the kernels take it.
struct GroupActs {
    q1e: __m512i,
    q1o: __m512i,
    q2e: __m512i,
    q2o: __m512i,
    bias: __m512i,
    scale: __m512,
}

/// Token `t`'s group `g` of q: its int8 terms (q1 even, q1 odd, q2 even, q2 odd), the bias
/// lanes and the scale lanes.
#[target_feature(enable = "avx512f")]
fn group_acts(q: &Int8x2, t: usize, g: usize) -> GroupActs {
    let base = t * q.groups + g;
    assert!(g < q.groups && (base + 1) * GROUP_BYTES <= q.q.len(), "group_acts: token {t} group {g} outside q");
    // SAFETY: group `base` lies within q, its bias and its scale (checked above; bias and
    // scale hold 16 lanes per group).
    unsafe { group_acts_at(q, base) }
}

/// `group_acts` for group `base` of q counted over all tokens, unchecked.
///
/// # Safety
/// Group `base` lies within q (and so within its bias and scale, 16 lanes per group).
#[target_feature(enable = "avx512f")]
unsafe fn group_acts_at(q: &Int8x2, base: usize) -> GroupActs {
    // SAFETY: the caller's guarantee.
    unsafe {
        let p = q.q.as_ptr().add(base * GROUP_BYTES);
        GroupActs {
            q1e: _mm512_loadu_si512(p.cast()),
            q1o: _mm512_loadu_si512(p.add(64).cast()),
            q2e: _mm512_loadu_si512(p.add(128).cast()),
            q2o: _mm512_loadu_si512(p.add(192).cast()),
            bias: _mm512_loadu_si512(q.bias.as_ptr().add(base * 16).cast()),
            scale: _mm512_loadu_ps(q.scale.as_ptr().add(base * 16)),
        }
    }
}

/// A group's 64 code bytes as unsigned bytes (2 x value + 12) for `vpdpbusd`: the even
/// elements (each byte's low nibble), then the odd ones (its high nibble). Masked-off bytes
/// are code 0 (u = 12), against activations of 0.
#[target_feature(enable = "avx512f,avx512bw")]
fn unsigned_codes(raw: __m512i, lut: __m512i) -> (__m512i, __m512i) {
    let nib = _mm512_set1_epi8(0x0F);
    (
        _mm512_shuffle_epi8(lut, _mm512_and_si512(raw, nib)),
        _mm512_shuffle_epi8(lut, _mm512_and_si512(_mm512_srli_epi16(raw, 4), nib)),
    )
}

/// `acc` + a row's group (`ue`, `uo`, scales `sw`) against a token's group `a`: the exact
/// integer dot of each block, as f32, times weight scale x activation scale. Every kernel
/// goes through here, so a (row, token) gets the same bits in any of them.
#[target_feature(enable = "avx512f,avx512bw,avx512vnni")]
fn add_group(acc: __m512, ue: __m512i, uo: __m512i, sw: __m512, a: &GroupActs) -> __m512 {
    let d1 = _mm512_dpbusd_epi32(_mm512_dpbusd_epi32(_mm512_setzero_si512(), ue, a.q1e), uo, a.q1o);
    let d2 = _mm512_dpbusd_epi32(_mm512_dpbusd_epi32(a.bias, ue, a.q2e), uo, a.q2o);
    let sum = _mm512_cvtepi32_ps(_mm512_add_epi32(_mm512_slli_epi32(d1, 8), d2));
    _mm512_fmadd_ps(sum, _mm512_mul_ps(sw, a.scale), acc)
}

/// `add_group` for activations whose second term is zero (`Int8x2::one_term`): its two
/// products against q2 only add zeros to the bias, so without them the integer sum, and so
/// the result, is the same bits, in 7 operations instead of 9.
#[target_feature(enable = "avx512f,avx512bw,avx512vnni")]
fn add_group_one_term(acc: __m512, ue: __m512i, uo: __m512i, sw: __m512, a: &GroupActs) -> __m512 {
    let d1 = _mm512_dpbusd_epi32(_mm512_dpbusd_epi32(_mm512_setzero_si512(), ue, a.q1e), uo, a.q1o);
    let sum = _mm512_cvtepi32_ps(_mm512_add_epi32(_mm512_slli_epi32(d1, 8), a.bias));
    _mm512_fmadd_ps(sum, _mm512_mul_ps(sw, a.scale), acc)
}

/// The first N rows of MXFP4 `codes` / `scales`, `cols` wide, one slice each.
fn rows<'a, const N: usize>(codes: &'a [u8], scales: &'a [u8], cols: usize) -> ([&'a [u8]; N], [&'a [u8]; N]) {
    let (cb, sb) = (cols.div_ceil(2), cols.div_ceil(32));
    (std::array::from_fn(|i| &codes[i * cb..(i + 1) * cb]), std::array::from_fn(|i| &scales[i * sb..(i + 1) * sb]))
}

/// Four blocks' E8M0 scales (the first `m` of `bytes`) as f32 per int32 lane (block k in
/// lanes 4k..4k+4); 0 is 2^-127 and 0xFF NaN, as `e8m0` decodes them.
#[target_feature(enable = "avx512f,avx512bw")]
fn group_scales(bytes: &[u8], m: usize) -> __m512 {
    let word = if m == GROUP_BLOCKS {
        u32::from_le_bytes([bytes[0], bytes[1], bytes[2], bytes[3]])
    } else {
        let mut raw = [0u8; 4];
        raw[..m].copy_from_slice(&bytes[..m]);
        u32::from_le_bytes(raw)
    };
    // Exponents 0 and 0xFF need fixing up (2^-127, NaN); checked on the word, they are rare.
    if special_scales(word) != 0 {
        super::avx512::e8m0_lanes(spread_scales(word, scale_spread()))
    } else {
        ordinary_scales(word, scale_spread())
    }
}

/// Byte k of `word` into each int32 lane of 128-bit lane k (`spread` is `scale_spread()`).
#[target_feature(enable = "avx512f,avx512bw")]
fn spread_scales(word: u32, spread: __m512i) -> __m512i {
    _mm512_shuffle_epi8(_mm512_set1_epi32(word as i32), spread)
}

/// `group_scales` for four exponents none of which is 0 or 0xFF: each one's bits moved into
/// an f32's exponent field.
#[target_feature(enable = "avx512f,avx512bw")]
fn ordinary_scales(word: u32, spread: __m512i) -> __m512 {
    _mm512_castsi512_ps(_mm512_slli_epi32(spread_scales(word, spread), 23))
}

/// The `vpshufb` control that takes byte k of a broadcast 32-bit word into each int32 lane of
/// 128-bit lane k (index -1 gives zero).
#[target_feature(enable = "avx512f")]
fn scale_spread() -> __m512i {
    _mm512_set_epi8(
        -1, -1, -1, 3, -1, -1, -1, 3, -1, -1, -1, 3, -1, -1, -1, 3, -1, -1, -1, 2, -1, -1, -1, 2, -1, -1, -1, 2, -1,
        -1, -1, 2, -1, -1, -1, 1, -1, -1, -1, 1, -1, -1, -1, 1, -1, -1, -1, 1, -1, -1, -1, 0, -1, -1, -1, 0, -1, -1,
        -1, 0, -1, -1, -1, 0,
    )
}

/// Whether rows `cols` wide are whole groups of four blocks, with no tail.
fn whole_groups(cols: usize) -> bool {
    cols.is_multiple_of(32 * GROUP_BLOCKS)
}

/// The high bit of each byte of `word` that is 0 or 0xFF: an exponent `group_scales` has to
/// fix up (2^-127, NaN).
fn special_scales(word: u32) -> u32 {
    let zero = |w: u32| w.wrapping_sub(0x0101_0101) & !w & 0x8080_8080;
    zero(word) | zero(!word)
}

/// R rows x T tokens (from token `t0` of q) whose rows are whole groups: `tile_dots::<R,
/// T>`'s arithmetic, in the same order, so the same bits, in a loop with no bounds checks,
/// masks or branches inside. Most weights are such rows, and `tile_dots`' checks and
/// fix-ups kept its loop at about two thirds of this one's rate (one core, two rows and one
/// token: 10.8 -> 16 GB/s in cache, 9 -> 14 from memory). An exponent of 0 or 0xFF (which
/// `group_scales` fixes up) is only noted on the way; then nothing is written and the
/// result is false, for `tile_dots` to do these rows again. ONE_TERM: q is `one_term`
/// (each variant its own function: both loops in one measured 8% slower in prefill).
///
/// # Safety
/// The CPU has AVX-512F, BW and VNNI; each row's codes hold q.groups groups of 64 bytes and
/// its scales 4 bytes a group; out reaches (R - 1) * ostride + T.
// Out of line: inlined into `whole_rows` (six of it), its loop ran at 11.5 GB/s, not 13.
#[inline(never)]
#[target_feature(enable = "avx512f,avx512bw,avx512vnni")]
unsafe fn whole_group_dots<const R: usize, const T: usize, const ONE_TERM: bool>(
    codes: [&[u8]; R],
    scales: [&[u8]; R],
    q: &Int8x2,
    t0: usize,
    out: &mut [f32],
    ostride: usize,
) -> bool {
    // SAFETY: the caller's guarantees.
    let (acc, special) = unsafe { whole_group_acc::<R, T, ONE_TERM>(codes, scales, q, t0) };
    if special != 0 {
        return false;
    }
    let sums = super::avx512::tile_sums(acc);
    for r in 0..R {
        for t in 0..T {
            // As tile_dots, which adds a tail of 0.0 (and so turns -0.0 into 0.0).
            out[r * ostride + t] = sums[r][t] + 0.0;
        }
    }
    true
}

/// `whole_group_dots`' accumulators, [r][t], before their lane sums, and the special
/// exponents it met (nonzero when a scale needs `tile_dots`' fix-ups). ONE_TERM: the
/// groups go through `add_group_one_term` (q must be `one_term`).
///
/// # Safety
/// As `whole_group_dots`.
#[inline]
#[target_feature(enable = "avx512f,avx512bw,avx512vnni")]
unsafe fn whole_group_acc<const R: usize, const T: usize, const ONE_TERM: bool>(
    codes: [&[u8]; R],
    scales: [&[u8]; R],
    q: &Int8x2,
    t0: usize,
) -> ([[__m512; T]; R], u32) {
    let groups = q.groups;
    for r in 0..R {
        assert!(
            codes[r].len() >= 64 * groups && scales[r].len() >= GROUP_BLOCKS * groups,
            "whole_group_dots: short row"
        );
    }
    assert!((t0 + T) * groups * GROUP_BYTES <= q.q.len(), "whole_group_dots: tokens outside q");
    let lut = code_table();
    let spread = scale_spread();
    let mut acc = [[_mm512_setzero_ps(); T]; R];
    let mut special = 0u32;
    for g in 0..groups {
        let mut ue = [_mm512_setzero_si512(); R];
        let mut uo = [_mm512_setzero_si512(); R];
        let mut sw = [_mm512_setzero_ps(); R];
        for r in 0..R {
            _mm_prefetch::<_MM_HINT_T1>(codes[r].as_ptr().wrapping_add(64 * g + PREFETCH_AHEAD).cast());
            // SAFETY: group g of row r lies within its codes and scales (checked above).
            let (raw, word) = unsafe {
                (
                    _mm512_loadu_si512(codes[r].as_ptr().add(64 * g).cast()),
                    scales[r].as_ptr().add(GROUP_BLOCKS * g).cast::<u32>().read_unaligned(),
                )
            };
            (ue[r], uo[r]) = unsigned_codes(raw, lut);
            special |= special_scales(word);
            sw[r] = ordinary_scales(word, spread);
        }
        for t in 0..T {
            // SAFETY: token t0 + t's group g lies within q (checked above).
            let a = unsafe { group_acts_at(q, (t0 + t) * groups + g) };
            for r in 0..R {
                acc[r][t] = if ONE_TERM {
                    add_group_one_term(acc[r][t], ue[r], uo[r], sw[r], &a)
                } else {
                    add_group(acc[r][t], ue[r], uo[r], sw[r], &a)
                };
            }
        }
    }
    (acc, special)
}

/// `whole_rows` against one token (decode): `whole_group_dots::<2, 1>`'s arithmetic for
/// each pair of rows, the same bits, with the pairs of one call in one loop and each four
/// pairs sharing one reduction (`hsum8`). A call per pair, with its checks, its setup and two
/// reductions, cost about a fifth of a pair of expert rows (8 or 4 groups each) on the
/// mid-size bench model.
///
/// # Safety
/// As `block_dots`, with `cols` whole groups and one token.
#[allow(clippy::too_many_arguments)]
#[inline(never)]
#[target_feature(enable = "avx512f,avx512bw,avx512vnni")]
unsafe fn whole_rows_one_token<const ONE_TERM: bool>(
    codes: &[u8],
    scales: &[u8],
    nrows: usize,
    q: &Int8x2,
    x: &[f32],
    t0: usize,
    cols: usize,
    out: &mut [f32],
    ostride: usize,
) {
    let mut r0 = 0;
    while nrows - r0 >= 8 {
        let mut acc = [_mm512_setzero_ps(); 8];
        let mut special = [0u32; 4];
        for p in 0..4 {
            let (c, s) = rows::<2>(&codes[(r0 + 2 * p) * cols / 2..], &scales[(r0 + 2 * p) * cols / 32..], cols);
            // SAFETY: the caller's guarantees, for rows r0 + 2p and the next.
            let ([[a0], [a1]], sp) = unsafe { whole_group_acc::<2, 1, ONE_TERM>(c, s, q, t0) };
            (acc[2 * p], acc[2 * p + 1], special[p]) = (a0, a1, sp);
        }
        let h = super::avx512::hsum8(acc);
        for p in 0..4 {
            let (r, o) = (r0 + 2 * p, &mut out[(r0 + 2 * p) * ostride..]);
            if special[p] == 0 {
                // As whole_group_dots.
                (o[0], o[ostride]) = (h[2 * p] + 0.0, h[2 * p + 1] + 0.0);
            } else {
                let (c, s) = rows::<2>(&codes[r * cols / 2..], &scales[r * cols / 32..], cols);
                // SAFETY: the caller's guarantees, for rows r and r + 1.
                unsafe { tile_dots::<2, 1>(c, s, q, x, t0, cols, o, ostride) };
            }
        }
        r0 += 8;
    }
    while r0 < nrows {
        let (c, s, o) = (&codes[r0 * cols / 2..], &scales[r0 * cols / 32..], &mut out[r0 * ostride..]);
        // SAFETY: the caller's guarantees, for the rows named.
        unsafe {
            if nrows - r0 >= 2 {
                whole_or_fixed_up::<2, 1>(rows(c, s, cols), q, x, t0, cols, o, ostride);
                r0 += 2;
            } else {
                whole_or_fixed_up::<1, 1>(rows(c, s, cols), q, x, t0, cols, o, ostride);
                r0 += 1;
            }
        }
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
    let sums = super::avx512::tile_sums(acc);
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
unsafe fn tile_dots<const R: usize, const T: usize>(
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
    let sums = super::avx512::tile_sums(acc);
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
