//! The VNNI loops for MXFP4 rows of whole groups of four blocks (every weight of the
//! mid-size bench model and of GLM-5.2): no bounds checks, masks or branches inside, special
//! exponents only noted on the way and their rows redone by `vnni::tile_dots`.

// Tiles are indexed [row][token] in fixed-size loops.
#![allow(clippy::needless_range_loop)]

use std::arch::x86_64::*;

use super::int8x2::{GROUP_BLOCKS, GROUP_BYTES, Int8x2};
use super::vnni::tile_dots;
use super::vnni_group::*;

/// `block_dots`' long rows when they are whole groups: pairs of rows against tiles of up to
/// eight tokens, by `whole_group_dots`, or by `tile_dots` for a pair whose scales need its
/// fix-ups.
///
/// A pair's tile of eight tokens (16 accumulators, 28 registers in all) unpacks the pair's
/// codes and scales once for eight tokens instead of four: 10 operations per row, token and
/// group instead of 11, measured on Zen 4 from memory, one core, 3.2 -> 3.9 GB/s against 8
/// tokens and 1.6 -> 1.8 against 16 (a prefill's experts see dozens of tokens each).
/// One-term activations (W4A4) keep tiles of four: with eight, a W4A4 prefill measured no
/// faster (512 tokens, alternated: 437-461 tok/s against 443-466).
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
pub(super) unsafe fn whole_rows(
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
    // Two-term activations that outgrow L1 (more than 16 tokens of 1024 columns): quads of
    // rows against two tokens, so that four rows share each fetch of a token's group from L2
    // where a pair shared it between two (one core, 64 rows of 1024 in L2, against 32 and
    // 64 tokens: 82-83 -> 100-101 G multiply-adds a second; against 8 and 16, in L1, the
    // pairs' wider tiles stay faster: 104-133 and 118 against 101-107). The mid-size
    // model's 512-token prefill: 666-687 -> 696-739 tok/s. The same arithmetic per (row,
    // token), so the same bits. One-term activations (W4A4) keep the pairs (not measured).
    let quads = !q.one_term && tb * q.token_bytes() > super::avx512::L1_ACTIVATIONS;
    while quads && nrows - r >= 4 {
        let (c, s) = (&codes[r * cb..], &scales[r * sb..]);
        let mut t = 0;
        while t < tb {
            let tile = if tb - t >= 2 { 2 } else { 1 };
            let (tok, o) = (t0 + t, &mut out[r * ostride + t..]);
            // SAFETY: the caller's guarantees, for rows r..r + 4 and tokens tok..tok + tile.
            unsafe {
                if tile == 2 {
                    whole_or_fixed_up::<4, 2>(rows(c, s, cols), q, x, tok, cols, o, ostride)
                } else {
                    whole_or_fixed_up::<4, 1>(rows(c, s, cols), q, x, tok, cols, o, ostride)
                }
            }
            t += tile;
        }
        r += 4;
    }
    while r < nrows {
        let pair = nrows - r >= 2;
        let (c, s) = (&codes[r * cb..], &scales[r * sb..]);
        let mut t = 0;
        while t < tb {
            let tile = match tb - t {
                1 => 1,
                2 | 3 => 2,
                4..=7 => 4,
                _ if pair && !q.one_term => 8,
                _ => 4,
            };
            let (tok, o) = (t0 + t, &mut out[r * ostride + t..]);
            // SAFETY: the caller's guarantees, for rows r.. and tokens tok..tok + tile.
            unsafe {
                match (pair, tile) {
                    (true, 8) => whole_or_fixed_up::<2, 8>(rows(c, s, cols), q, x, tok, cols, o, ostride),
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
    let sums = super::hsum::tile_sums(acc);
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
        let h = super::hsum::hsum8(acc);
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
