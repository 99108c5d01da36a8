//! AVX-512F kernels: 16 lanes; an MXFP4 block of 32 is two permutes of a 16-entry table that
//! already carries the block's scale. Register tiles of R rows x T tokens: each activation
//! load serves R rows, each decoded weight T tokens. Two accumulators per (row, token) (one
//! per half block, or per 16-lane half of a 32-element step) hide the FMA latency when a tile
//! is one token, and make a result the same whatever tile it was computed in.

// Register tiles are indexed [row][token] in fixed-size loops; iterator chains over several
// such arrays at once would hide which accumulator meets which load.
#![allow(clippy::needless_range_loop)]

use std::arch::x86_64::*;

use super::{E2M1_SIGNED, RowRef, RowsRef, mxfp4_tail};

/// Rows of `w` against x [tb, cols] -> out[r * ostride + t]: rows in pairs, tokens in tiles
/// of 4 (4 tokens of a 1024-wide row are 16 KiB, which stays in L1 beside the weights).
/// For MXFP4, x is in the split layout (`Acts`).
///
/// # Safety
/// The CPU has AVX-512F; w holds nrows rows of `cols`, x holds tb rows of `cols`, and out
/// reaches (nrows - 1) * ostride + tb.
#[allow(clippy::too_many_arguments)]
#[target_feature(enable = "avx512f")]
pub unsafe fn block_dots(
    w: RowsRef<'_>,
    nrows: usize,
    x: &[f32],
    tb: usize,
    cols: usize,
    out: &mut [f32],
    ostride: usize,
    cached: bool,
) {
    // Long rows against one token (decode) go one row at a time. Against more
    // (verification, batches, prefill) they go in register tiles of two rows that share
    // each activation load, dense rows prefetched into L2 (`DENSE_PREFETCH_AHEAD`):
    // measured on Zen 4 from memory, bf16 against 2 tokens 17.6 -> 20 GB/s per core and
    // against 4 10 -> 15 over one token at a time on a row that stays in L1 (which, before
    // the prefetch, beat the tiles' 8-9). Rows that come from cache (`cached`: a small
    // weight, which stays in cache from one step to the next) and short rows (an indexer
    // key, an attention entry, a demo-size weight), where a row's reduction and call cost as
    // much as its multiply-adds, go in wider tiles below.
    let dense_rows = !matches!(w, RowsRef::Mxfp4 { .. });
    let short = cols <= SHORT_ROW;
    // One to three tokens against short or cached dense rows: tiles of eight (row, token)
    // pairs (8 x 1, 4 x 2), so that the rows' multiply-adds overlap and their sums share one
    // reduction (`hsum8`); one row at a time is bound by the row's chain of additions and its
    // reduction. The rows are in cache, so each token tile may sweep them again.
    if tb < 4 && dense_rows && (cached || short) {
        let mut t = 0;
        for tile in [2usize, 1] {
            while tb - t >= tile {
                let (xs, o) = (&x[t * cols..], &mut out[t..]);
                // SAFETY: the caller's guarantees, for tokens t..t + tile.
                unsafe {
                    if tile == 2 {
                        resident_tile::<4>(w, nrows, 2, xs, cols, o, ostride);
                    } else {
                        resident_tile::<8>(w, nrows, 1, xs, cols, o, ostride);
                    }
                }
                t += tile;
            }
        }
        return;
    }
    if tb == 1 {
        // SAFETY: the caller's guarantees, for the one token.
        unsafe {
            match w {
                RowsRef::Bf16(b) => return dense_one_token::<true>(b, nrows, x, cols, out, ostride),
                RowsRef::F32(b) => return dense_one_token::<false>(b, nrows, x, cols, out, ostride),
                RowsRef::Mxfp4 { .. } => {}
            }
        }
    }
    let mut r = 0;
    while r < nrows {
        // Pairs of rows only when there are tokens to share the pair's activation loads: a
        // single token's tile runs faster one row at a time.
        let pair = nrows - r >= 2 && tb >= 2;
        let mut t = 0;
        for tile in [4, 2, 1] {
            while tb - t >= tile {
                let (xs, o) = (&x[t * cols..], &mut out[r * ostride + t..]);
                // SAFETY: the caller's guarantees, for rows r.. and tokens t..t + tile.
                unsafe {
                    if pair {
                        tile_dots::<2>([w.row(r, cols), w.row(r + 1, cols)], tile, xs, cols, o, ostride);
                    } else {
                        tile_dots::<1>([w.row(r, cols)], tile, xs, cols, o, ostride);
                    }
                }
                t += tile;
            }
        }
        r += if pair { 2 } else { 1 };
    }
}

/// Every row against `t` tokens: R rows per register tile, the rows left over one at a time.
///
/// # Safety
/// As for `block_dots`, with x holding t tokens.
#[target_feature(enable = "avx512f")]
unsafe fn resident_tile<const R: usize>(
    w: RowsRef<'_>,
    nrows: usize,
    t: usize,
    x: &[f32],
    cols: usize,
    out: &mut [f32],
    ostride: usize,
) {
    let mut r = 0;
    // SAFETY (each call): the caller's guarantees, for the rows it names and the t tokens.
    unsafe {
        while nrows - r >= R {
            tile_dots::<R>(std::array::from_fn(|i| w.row(r + i, cols)), t, x, cols, &mut out[r * ostride..], ostride);
            r += R;
        }
        for r in r..nrows {
            tile_dots::<1>([w.row(r, cols)], t, x, cols, &mut out[r * ostride..], ostride);
        }
    }
}

/// R rows (all of one format) x `t` tokens (4, 2 or 1) -> out[r * ostride + token].
#[target_feature(enable = "avx512f")]
unsafe fn tile_dots<const R: usize>(
    w: [RowRef<'_>; R],
    t: usize,
    x: &[f32],
    cols: usize,
    out: &mut [f32],
    ostride: usize,
) {
    // SAFETY (every arm): the caller's guarantees.
    unsafe {
        match (w[0], t) {
            (RowRef::Mxfp4 { .. }, _) => {
                let mut codes = [&[][..]; R];
                let mut scales = [&[][..]; R];
                for (i, row) in w.iter().enumerate() {
                    if let RowRef::Mxfp4 { codes: c, scales: s } = row {
                        (codes[i], scales[i]) = (c, s);
                    }
                }
                match t {
                    4 => mxfp4::<R, 4>(codes, scales, x, cols, out, ostride),
                    2 => mxfp4::<R, 2>(codes, scales, x, cols, out, ostride),
                    _ => mxfp4::<R, 1>(codes, scales, x, cols, out, ostride),
                }
            }
            (RowRef::Bf16(_), 4) => dense::<R, 4, true>(bytes(w), x, cols, out, ostride),
            (RowRef::Bf16(_), 2) => dense::<R, 2, true>(bytes(w), x, cols, out, ostride),
            (RowRef::Bf16(_), _) => dense::<R, 1, true>(bytes(w), x, cols, out, ostride),
            (RowRef::F32(_), 4) => dense::<R, 4, false>(bytes(w), x, cols, out, ostride),
            (RowRef::F32(_), 2) => dense::<R, 2, false>(bytes(w), x, cols, out, ostride),
            (RowRef::F32(_), _) => dense::<R, 1, false>(bytes(w), x, cols, out, ostride),
        }
    }
}

/// The stored bytes of dense rows.
fn bytes<const R: usize>(w: [RowRef<'_>; R]) -> [&[u8]; R] {
    w.map(|r| match r {
        RowRef::Bf16(b) | RowRef::F32(b) => b,
        RowRef::Mxfp4 { codes, .. } => codes,
    })
}

/// Rows at most this long are short: a row's fixed costs (its reduction, the call) are a
/// large share of its multiply-adds, so several rows go together even for one token
/// (measured on the demo model: a 4096 x 256 bf16 lm_head against one token 79 -> 33 us).
pub(super) const SHORT_ROW: usize = 256;

/// Sixteen E8M0 scale bytes as f32 (0 is 2^-127, 0xFF NaN, as `e8m0` decodes them).
#[target_feature(enable = "avx512f")]
fn e8m0x16(bytes: &[u8; 16]) -> __m512 {
    // SAFETY: 16 bytes.
    e8m0_lanes(_mm512_cvtepu8_epi32(unsafe { _mm_loadu_si128(bytes.as_ptr().cast()) }))
}

/// E8M0 exponents, one per int32 lane (0..=255), as f32 scales: 0 is 2^-127, 0xFF NaN.
#[target_feature(enable = "avx512f")]
pub(super) fn e8m0_lanes(e: __m512i) -> __m512 {
    let bits = _mm512_slli_epi32(e, 23);
    let bits =
        _mm512_mask_mov_epi32(bits, _mm512_cmpeq_epi32_mask(e, _mm512_setzero_si512()), _mm512_set1_epi32(1 << 22));
    let bits = _mm512_mask_mov_epi32(
        bits,
        _mm512_cmpeq_epi32_mask(e, _mm512_set1_epi32(0xFF)),
        _mm512_set1_epi32(0x7FC0_0000),
    );
    _mm512_castsi512_ps(bits)
}

/// R rows x T tokens of MXFP4. x is in the split layout (`Acts`): each whole block of 32 as
/// its 16 even elements, then its 16 odd ones, which is the order the two table lookups of a
/// block's code bytes give.
#[target_feature(enable = "avx512f")]
unsafe fn mxfp4<const R: usize, const T: usize>(
    codes: [&[u8]; R],
    scales: [&[u8]; R],
    x: &[f32],
    cols: usize,
    out: &mut [f32],
    ostride: usize,
) {
    // SAFETY: E2M1_SIGNED is 16 f32.
    let lut = unsafe { _mm512_loadu_ps(E2M1_SIGNED.as_ptr()) };
    let mut acc0 = [[_mm512_setzero_ps(); T]; R];
    let mut acc1 = [[_mm512_setzero_ps(); T]; R];
    let xp = x.as_ptr();
    let blocks = cols / 32;
    let mut scale = [[0.0f32; 16]; R]; // this group of 16 blocks' scales, per row
    for g0 in (0..blocks).step_by(16) {
        let m = (blocks - g0).min(16);
        for r in 0..R {
            let mut raw = [0u8; 16];
            raw[..m].copy_from_slice(&scales[r][g0..g0 + m]);
            // SAFETY: 16 f32.
            unsafe { _mm512_storeu_ps(scale[r].as_mut_ptr(), e8m0x16(&raw)) };
        }
        for g in g0..g0 + m {
            let mut w_even = [_mm512_setzero_ps(); R];
            let mut w_odd = [_mm512_setzero_ps(); R];
            for r in 0..R {
                let table = _mm512_mul_ps(lut, _mm512_set1_ps(scale[r][g - g0]));
                // As for dense rows: only a 4-token tile is slow enough per byte to gain from
                // prefetching (measured 3.5 -> 4.5 GB/s per core; one token 6.7 -> 6.1).
                if T >= 4 && g % 4 == 0 {
                    _mm_prefetch::<_MM_HINT_T0>(codes[r].as_ptr().wrapping_add(16 * g + PREFETCH_AHEAD).cast());
                }
                // SAFETY: block g's 16 code bytes are inside row r (g < cols / 32).
                let b = _mm512_cvtepu8_epi32(unsafe { _mm_loadu_si128(codes[r].as_ptr().add(16 * g).cast()) });
                // The permute reads each lane's low 4 bits: byte i's low nibble is element
                // 2i, and shifted down, its high nibble element 2i + 1.
                w_even[r] = _mm512_permutexvar_ps(b, table);
                w_odd[r] = _mm512_permutexvar_ps(_mm512_srli_epi32(b, 4), table);
            }
            for t in 0..T {
                // SAFETY: token t's block g lies within x (t < T rows of cols).
                let (x0, x1) = unsafe {
                    let p = xp.add(t * cols + 32 * g);
                    (_mm512_loadu_ps(p), _mm512_loadu_ps(p.add(16)))
                };
                for r in 0..R {
                    acc0[r][t] = _mm512_fmadd_ps(w_even[r], x0, acc0[r][t]);
                    acc1[r][t] = _mm512_fmadd_ps(w_odd[r], x1, acc1[r][t]);
                }
            }
        }
    }
    let sums = tile_sums(std::array::from_fn::<_, R, _>(|r| {
        std::array::from_fn::<_, T, _>(|t| _mm512_add_ps(acc0[r][t], acc1[r][t]))
    }));
    for r in 0..R {
        for t in 0..T {
            let xt = &x[t * cols..(t + 1) * cols];
            out[r * ostride + t] = sums[r][t] + mxfp4_tail(codes[r], scales[r], xt, cols);
        }
    }
}

/// Bytes ahead of a wide tile's MXFP4 rows that each step asks the cache for. A tile of 4
/// tokens spends long enough per byte that the hardware prefetcher falls behind: measured
/// on Zen 4 from memory, bf16 against 8 tokens 4.9 -> 7.2 GB/s per core and against 16
/// 3.3 -> 4.4 (when dense rows used it too).
const PREFETCH_AHEAD: usize = 4096;

/// Bytes ahead of a tile's dense rows that each step asks the L2 cache for, when the tile
/// has two tokens or more. Measured on Zen 4, one core streaming bf16 rows from memory in
/// pairs (two prefetched rows; `_MM_HINT_T0` 4 KiB ahead filled L1's few fill buffers):
/// against 2 tokens 20 GB/s, 3 tokens 16, 4 tokens 15. One token runs fastest one row at
/// a time, left to the hardware prefetcher (22 GB/s; 21 with this prefetch).
const DENSE_PREFETCH_AHEAD: usize = 8192;

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

// Out of line, like vnni::whole_group_dots: inlined, such loops spill registers.
#[inline(never)]
#[target_feature(enable = "avx512f")]
unsafe fn dense<const R: usize, const T: usize, const BF16: bool>(
    w: [&[u8]; R],
    x: &[f32],
    cols: usize,
    out: &mut [f32],
    ostride: usize,
) {
    let mut acc0 = [[_mm512_setzero_ps(); T]; R];
    let mut acc1 = [[_mm512_setzero_ps(); T]; R];
    let xp = x.as_ptr();
    let mut c = 0;
    // SAFETY (all loads below): c + 32 <= cols, or c + 16 <= cols for the half step, and
    // t < T rows of x.
    while c + 32 <= cols {
        let mut w0 = [_mm512_setzero_ps(); R];
        let mut w1 = [_mm512_setzero_ps(); R];
        for r in 0..R {
            if T >= 2 {
                _mm_prefetch::<_MM_HINT_T1>(
                    w[r].as_ptr()
                        .wrapping_add(DENSE_PREFETCH_AHEAD + c * size_of::<u16>() * if BF16 { 1 } else { 2 })
                        .cast(),
                );
            }
            unsafe { (w0[r], w1[r]) = (load16::<BF16>(w[r], c), load16::<BF16>(w[r], c + 16)) };
        }
        for t in 0..T {
            let (x0, x1) = unsafe {
                let p = xp.add(t * cols + c);
                (_mm512_loadu_ps(p), _mm512_loadu_ps(p.add(16)))
            };
            for r in 0..R {
                acc0[r][t] = _mm512_fmadd_ps(w0[r], x0, acc0[r][t]);
                acc1[r][t] = _mm512_fmadd_ps(w1[r], x1, acc1[r][t]);
            }
        }
        c += 32;
    }
    if c + 16 <= cols {
        for r in 0..R {
            let w0 = unsafe { load16::<BF16>(w[r], c) };
            for t in 0..T {
                unsafe { acc0[r][t] = _mm512_fmadd_ps(w0, _mm512_loadu_ps(xp.add(t * cols + c)), acc0[r][t]) };
            }
        }
        c += 16;
    }
    let sums = tile_sums(std::array::from_fn::<_, R, _>(|r| {
        std::array::from_fn::<_, T, _>(|t| _mm512_add_ps(acc0[r][t], acc1[r][t]))
    }));
    for r in 0..R {
        for t in 0..T {
            let mut tail = 0.0f32;
            for i in c..cols {
                tail += super::dense_scalar::<BF16>(w[r], i) * x[t * cols + i];
            }
            out[r * ostride + t] = sums[r][t] + tail;
        }
    }
}

/// `dense::<1, 1, BF16>` of each of `nrows` rows (`w` [nrows, cols] as stored) against one
/// token x [cols] -> out[r * ostride], the same bits, in one call: the rows are read one
/// after another (one stream for the prefetcher), and each eight share one reduction
/// (`hsum8`). A call per row cost more than its reduction (a fifth of the time in bf16 rows
/// of a mid-size decode step, rows of 384 to 2048 values).
///
/// # Safety
/// The CPU has AVX-512F; w holds nrows rows of `cols`, x holds `cols`, and out reaches
/// (nrows - 1) * ostride + 1.
#[inline(never)]
#[target_feature(enable = "avx512f")]
unsafe fn dense_one_token<const BF16: bool>(
    w: &[u8],
    nrows: usize,
    x: &[f32],
    cols: usize,
    out: &mut [f32],
    ostride: usize,
) {
    let row_bytes = cols * if BF16 { 2 } else { 4 };
    assert!(w.len() >= nrows * row_bytes && x.len() >= cols, "dense_one_token: short rows or token");
    assert!(nrows == 0 || out.len() > (nrows - 1) * ostride, "dense_one_token: out too short");
    let xp = x.as_ptr();
    let whole = cols / 16 * 16;
    let mut r0 = 0;
    while r0 < nrows {
        let m = (nrows - r0).min(8);
        let mut sums = [_mm512_setzero_ps(); 8];
        for (i, sum) in sums.iter_mut().enumerate().take(m) {
            let row = &w[(r0 + i) * row_bytes..(r0 + i + 1) * row_bytes];
            let (mut acc0, mut acc1) = (_mm512_setzero_ps(), _mm512_setzero_ps());
            let mut c = 0;
            // SAFETY (loads): c + 32 <= cols, or c + 16 for the half step, within the row and x.
            unsafe {
                while c + 32 <= cols {
                    acc0 = _mm512_fmadd_ps(load16::<BF16>(row, c), _mm512_loadu_ps(xp.add(c)), acc0);
                    acc1 = _mm512_fmadd_ps(load16::<BF16>(row, c + 16), _mm512_loadu_ps(xp.add(c + 16)), acc1);
                    c += 32;
                }
                if c + 16 <= cols {
                    acc0 = _mm512_fmadd_ps(load16::<BF16>(row, c), _mm512_loadu_ps(xp.add(c)), acc0);
                }
            }
            *sum = _mm512_add_ps(acc0, acc1);
        }
        let h = hsum8(sums);
        for i in 0..m {
            let row = &w[(r0 + i) * row_bytes..(r0 + i + 1) * row_bytes];
            let mut tail = 0.0f32;
            for c in whole..cols {
                tail += super::dense_scalar::<BF16>(row, c) * x[c];
            }
            out[(r0 + i) * ostride] = h[i] + tail;
        }
        r0 += m;
    }
}

/// Each accumulator's lane sum, [r][t]: through `hsum8` for a tile of eight, `hsum` else (the
/// same bits either way).
#[target_feature(enable = "avx512f")]
pub(super) fn tile_sums<const R: usize, const T: usize>(acc: [[__m512; T]; R]) -> [[f32; T]; R] {
    let mut sums = [[0.0f32; T]; R];
    if R * T == 8 {
        let mut v = [_mm512_setzero_ps(); 8];
        for r in 0..R {
            for t in 0..T {
                v[r * T + t] = acc[r][t];
            }
        }
        let h = hsum8(v);
        for r in 0..R {
            for t in 0..T {
                sums[r][t] = h[r * T + t];
            }
        }
    } else {
        for r in 0..R {
            for t in 0..T {
                sums[r][t] = hsum(acc[r][t]);
            }
        }
    }
    sums
}

/// The sum of v's 16 lanes, by halving: lanes i and i + 8, then i and i + 4, i and i + 2,
/// then the last two. `hsum8` gives each of its vectors these same bits.
#[target_feature(enable = "avx512f")]
pub(super) fn hsum(v: __m512) -> f32 {
    let a = _mm256_add_ps(_mm512_castps512_ps256(v), _mm256_castpd_ps(_mm512_extractf64x4_pd(_mm512_castps_pd(v), 1)));
    let b = _mm_add_ps(_mm256_castps256_ps128(a), _mm256_extractf128_ps(a, 1));
    let c = _mm_add_ps(b, _mm_movehl_ps(b, b));
    _mm_cvtss_f32(_mm_add_ss(c, _mm_shuffle_ps(c, c, 1)))
}

/// `hsum` of eight vectors at once (a register tile's results): the same additions in the
/// same order for each, with the shuffles shared.
#[target_feature(enable = "avx512f")]
pub(super) fn hsum8(v: [__m512; 8]) -> [f32; 8] {
    // Lanes 0..8: v[2k]'s i + (i + 8); lanes 8..16: v[2k + 1]'s.
    let halves =
        |p: __m512, q: __m512| _mm512_add_ps(_mm512_shuffle_f32x4::<0x44>(p, q), _mm512_shuffle_f32x4::<0xEE>(p, q));
    let (s01, s23, s45, s67) = (halves(v[0], v[1]), halves(v[2], v[3]), halves(v[4], v[5]), halves(v[6], v[7]));
    // 128-bit block k: vector k's (of four) i + (i + 4).
    let quarters =
        |p: __m512, q: __m512| _mm512_add_ps(_mm512_shuffle_f32x4::<0x88>(p, q), _mm512_shuffle_f32x4::<0xDD>(p, q));
    let (t0, t1) = (quarters(s01, s23), quarters(s45, s67));
    // Block k: vector k's lanes 0 + 2 and 1 + 3, then vector k + 4's.
    let w = _mm512_add_ps(_mm512_shuffle_ps::<0x44>(t0, t1), _mm512_shuffle_ps::<0xEE>(t0, t1));
    // Block k: vector k's total in lane 0, vector k + 4's in lane 1.
    let e = _mm512_add_ps(_mm512_shuffle_ps::<0x88>(w, w), _mm512_shuffle_ps::<0xDD>(w, w));
    let mut lanes = [0.0f32; 16];
    // SAFETY: 16 f32.
    unsafe { _mm512_storeu_ps(lanes.as_mut_ptr(), e) };
    std::array::from_fn(|k| if k < 4 { lanes[4 * k] } else { lanes[4 * (k - 4) + 1] })
}

/// out[t, :] += sum over r of coefs[t * cstride + r] * row r, dense rows only.
///
/// Register tiles of up to 4 tokens x 64 columns stay in registers across all the rows (one
/// load per row shared by the tile's tokens, no load and store of out per row): MLA's query
/// absorption in a 512-token prefill went from a store-bound pass over out per row to
/// multiply-adds. Each element still takes the rows in order, one fused multiply-add each,
/// so the result is the same whatever tile it falls in.
///
/// # Safety
/// The CPU has AVX-512F; w holds nrows dense rows of `cols`, out is [n, cols] and coefs
/// reach (n - 1) * cstride + nrows.
#[target_feature(enable = "avx512f")]
pub unsafe fn accumulate_rows(
    w: RowsRef<'_>,
    nrows: usize,
    cols: usize,
    coefs: &[f32],
    cstride: usize,
    out: &mut [f32],
) {
    // SAFETY: the caller's guarantees.
    unsafe {
        match w {
            RowsRef::Bf16(b) => accumulate::<true>(b, nrows, cols, coefs, cstride, out),
            RowsRef::F32(b) => accumulate::<false>(b, nrows, cols, coefs, cstride, out),
            RowsRef::Mxfp4 { .. } => {}
        }
    }
}

/// `accumulate_rows` over dense rows of one format.
///
/// # Safety
/// As for `accumulate_rows`.
#[target_feature(enable = "avx512f")]
unsafe fn accumulate<const BF16: bool>(
    bytes: &[u8],
    nrows: usize,
    cols: usize,
    coefs: &[f32],
    cstride: usize,
    out: &mut [f32],
) {
    let n = out.len() / cols.max(1);
    let row_bytes = cols * if BF16 { 2 } else { 4 };
    let mut t0 = 0;
    while t0 < n {
        let tn = (n - t0).min(4);
        // SAFETY (each tile): columns c..c + 16 C lie in every row and in each of the tile's
        // tokens' rows of out; coefs reach every (token, row).
        unsafe {
            let mut c = 0;
            // Fewer than four tokens take 256 columns a pass where they can: a latent row of
            // 256 is then read once, whole, not as four strided passes of 64 (MLA's query
            // absorption, one token: 5% of a mid-size decode step). Each output still adds
            // the rows in order, so the bits are the same.
            while tn < 4 && c + 256 <= cols {
                for t in t0..t0 + tn {
                    acc_tile::<1, 16, BF16>(bytes, nrows, cols, c, coefs, cstride, t, out);
                }
                c += 256;
            }
            while c + 64 <= cols {
                if tn == 4 {
                    acc_tile::<4, 4, BF16>(bytes, nrows, cols, c, coefs, cstride, t0, out);
                } else {
                    for t in t0..t0 + tn {
                        acc_tile::<1, 4, BF16>(bytes, nrows, cols, c, coefs, cstride, t, out);
                    }
                }
                c += 64;
            }
            while c + 16 <= cols {
                for t in t0..t0 + tn {
                    acc_tile::<1, 1, BF16>(bytes, nrows, cols, c, coefs, cstride, t, out);
                }
                c += 16;
            }
            for r in 0..nrows {
                let row = &bytes[r * row_bytes..(r + 1) * row_bytes];
                for i in c..cols {
                    let v = super::dense_scalar::<BF16>(row, i);
                    for t in t0..t0 + tn {
                        out[t * cols + i] += coefs[t * cstride + r] * v;
                    }
                }
            }
        }
        t0 += tn;
    }
}

/// Tokens t0..t0 + T, columns c..c + 16 C of `accumulate_rows`, over every row.
///
/// # Safety
/// As for `accumulate_rows`, with c + 16 C <= cols and t0 + T <= n.
#[allow(clippy::too_many_arguments)]
#[target_feature(enable = "avx512f")]
unsafe fn acc_tile<const T: usize, const C: usize, const BF16: bool>(
    bytes: &[u8],
    nrows: usize,
    cols: usize,
    c: usize,
    coefs: &[f32],
    cstride: usize,
    t0: usize,
    out: &mut [f32],
) {
    let op = out.as_mut_ptr();
    let esize = if BF16 { 2 } else { 4 };
    // SAFETY (loads and stores): the caller's guarantees.
    unsafe {
        let mut acc = [[_mm512_setzero_ps(); C]; T];
        for t in 0..T {
            for j in 0..C {
                acc[t][j] = _mm512_loadu_ps(op.add((t0 + t) * cols + c + 16 * j));
            }
        }
        for r in 0..nrows {
            let row = &bytes[r * cols * esize..(r + 1) * cols * esize];
            let wv: [__m512; C] = std::array::from_fn(|j| load16::<BF16>(row, c + 16 * j));
            for t in 0..T {
                let k = _mm512_set1_ps(coefs[(t0 + t) * cstride + r]);
                for j in 0..C {
                    acc[t][j] = _mm512_fmadd_ps(k, wv[j], acc[t][j]);
                }
            }
        }
        for t in 0..T {
            for j in 0..C {
                _mm512_storeu_ps(op.add((t0 + t) * cols + c + 16 * j), acc[t][j]);
            }
        }
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
