//! AVX-512F kernels: 16 lanes; an MXFP4 block of 32 is two permutes of a 16-entry table that
//! already carries the block's scale. Register tiles of R rows x T tokens: each activation
//! load serves R rows, each decoded weight T tokens. Two accumulators per (row, token) (one
//! per half block, or per 16-lane half of a 32-element step) hide the FMA latency when a tile
//! is one token, and make a result the same whatever tile it was computed in.

// Register tiles are indexed [row][token] in fixed-size loops; iterator chains over several
// such arrays at once would hide which accumulator meets which load.
#![allow(clippy::needless_range_loop)]

use std::arch::x86_64::*;

use super::hsum::{hsum8, tile_sums};
use super::{E2M1_SIGNED, RowRef, RowsRef, mxfp4_tail, value_bytes};

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
    // Long rows against one token (decode) go one row at a time, prefetched into L2 like
    // the tiles' (`DENSE_PREFETCH_AHEAD`). Against more
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
    // Many tokens against long rows: quads of rows against two tokens at a time. Once the
    // call's activation rows outgrow L1, each (row, token) multiply-add fetches its
    // activations from L2, and four rows share each fetch where a pair's tile shared it
    // between two (measured on Zen 5, one core, bf16: [1024 x 1024] against 32 tokens 52-54 ->
    // 74 G multiply-adds a second, [1024 x 2048] against 64 from memory 53-58 -> 73-77). With
    // the activations in L1 the pairs' wider token tiles stay faster ([1024 x 1024] against
    // 8 tokens: 75 against 69-71; [512 x 512] against 8: 76-78 against 55), as they do on
    // short rows ([3072 x 384] against 64: 55-56 against 52). The same `dense` arithmetic for
    // every (row, token), so the same bits in either tiling.
    let quads = dense_rows && cols >= QUAD_MIN_COLS && tb * cols * size_of::<f32>() > L1_ACTIVATIONS;
    while quads && nrows - r >= 4 {
        let mut t = 0;
        for tile in [2, 1] {
            while tb - t >= tile {
                let (xs, o) = (&x[t * cols..], &mut out[r * ostride + t..]);
                let rows = [w.row(r, cols), w.row(r + 1, cols), w.row(r + 2, cols), w.row(r + 3, cols)];
                // SAFETY: the caller's guarantees, for rows r..r + 4 and tokens t..t + tile.
                unsafe { tile_dots::<4>(rows, tile, xs, cols, o, ostride) };
                t += tile;
            }
        }
        r += 4;
    }
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

/// Activation bytes of one `block_dots` call past which rows go in quads (about an L1 data
/// cache: 48 KiB on Zen 5, 32 on Zen 4); `vnni_whole::whole_rows` uses it too.
pub(super) const L1_ACTIVATIONS: usize = 48 << 10;

/// Rows shorter than this keep the pairs' tiles whatever the activations' size: a quad's
/// call and four rows' conversions cost more than its shared fetches save ([768 x 256]
/// against 64 tokens: 41 against 53 G multiply-adds a second).
const QUAD_MIN_COLS: usize = 512;

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

/// Bytes ahead of dense rows read from memory that each step asks the L2 cache for. Measured
/// on Zen 4, one core streaming bf16 rows in pairs (two prefetched rows; `_MM_HINT_T0` 4 KiB
/// ahead filled L1's few fill buffers): against 2 tokens 20 GB/s, 3 tokens 16, 4 tokens 15.
/// One token (`dense_one_token`) on Zen 5, 256 MB of bf16 rows from memory: one core
/// 32-33 -> 36-42 GB/s, two 41-43 -> 49-53 (1 and 2 KiB into L1, or 4 KiB into L2, gained
/// less; the hardware prefetcher alone had been best on Zen 4); the mid-size decode step
/// 3.73-5.07 -> 3.33-3.90 ms, alternated.
const DENSE_PREFETCH_AHEAD: usize = 8192;

/// 16 weights at element `c` of a dense row: bf16 widened by a shift, or f32 as stored.
#[inline]
#[target_feature(enable = "avx512f")]
pub(super) unsafe fn load16<const BF16: bool>(w: &[u8], c: usize) -> __m512 {
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

// Out of line, like vnni_whole::whole_group_dots: inlined, such loops spill registers.
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
                    w[r].as_ptr().wrapping_add(DENSE_PREFETCH_AHEAD + c * value_bytes::<BF16>()).cast(),
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
    let esize = value_bytes::<BF16>();
    let row_bytes = cols * esize;
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
                    // Each 32 values' cache lines (one of bf16, two of f32), asked of L2 a
                    // fixed distance ahead; past the row's end that is the next rows'.
                    let ahead = row.as_ptr().wrapping_add(c * esize + DENSE_PREFETCH_AHEAD);
                    _mm_prefetch::<_MM_HINT_T1>(ahead.cast());
                    if !BF16 {
                        _mm_prefetch::<_MM_HINT_T1>(ahead.wrapping_add(64).cast());
                    }
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
