//! One group of four MXFP4 blocks (64 code bytes, four E8M0 scales) against one token's
//! `Int8x2` group, as every VNNI kernel computes it: the codes as unsigned bytes, the scales
//! as f32 lanes, and the exact integer dot of each block scaled once into an f32 accumulator.

use std::arch::x86_64::*;

use super::int8x2::{GROUP_BLOCKS, GROUP_BYTES, Int8x2};

/// Bytes ahead of the codes being read that each group asks the L2 cache for: a pass over
/// one token is too short per byte for the hardware prefetcher alone. Measured on Zen 4,
/// one core streaming two rows against one token: 8.5 GB/s with none, 9.5 with 4 or 8 KiB
/// into L1 (`_MM_HINT_T0`, whose misses hold L1's few fill buffers), 12.5 with 4 KiB and
/// 12.8 with 8 KiB into L2 (`_MM_HINT_T1`).
pub(super) const PREFETCH_AHEAD: usize = 8192;

/// E2M1 code -> 2 * value + 12 (0..24), the unsigned form `vpdpbusd` takes; the int8x2
/// biases take the 12 back out.
pub(super) const U_TABLE: [i8; 16] = [12, 13, 14, 15, 16, 18, 20, 24, 12, 11, 10, 9, 8, 6, 4, 0];

/// U_TABLE in every 128-bit lane, for `unsigned_codes`.
#[inline]
#[target_feature(enable = "avx512f")]
pub(super) fn code_table() -> __m512i {
    // SAFETY: U_TABLE is 16 bytes.
    _mm512_broadcast_i32x4(unsafe { _mm_loadu_si128(U_TABLE.as_ptr().cast()) })
}

/// One token's group of four blocks as the kernels take it.
pub(super) struct GroupActs {
    pub(super) q1e: __m512i,
    pub(super) q1o: __m512i,
    pub(super) q2e: __m512i,
    pub(super) q2o: __m512i,
    pub(super) bias: __m512i,
    pub(super) scale: __m512,
}

/// Token `t`'s group `g` of q: its int8 terms (q1 even, q1 odd, q2 even, q2 odd), the bias
/// lanes and the scale lanes.
#[inline]
#[target_feature(enable = "avx512f")]
pub(super) fn group_acts(q: &Int8x2, t: usize, g: usize) -> GroupActs {
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
#[inline]
#[target_feature(enable = "avx512f")]
pub(super) unsafe fn group_acts_at(q: &Int8x2, base: usize) -> GroupActs {
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
#[inline]
#[target_feature(enable = "avx512f,avx512bw")]
pub(super) fn unsigned_codes(raw: __m512i, lut: __m512i) -> (__m512i, __m512i) {
    let nib = _mm512_set1_epi8(0x0F);
    (
        _mm512_shuffle_epi8(lut, _mm512_and_si512(raw, nib)),
        _mm512_shuffle_epi8(lut, _mm512_and_si512(_mm512_srli_epi16(raw, 4), nib)),
    )
}

/// `acc` + a row's group (`ue`, `uo`, scales `sw`) against a token's group `a`: the exact
/// integer dot of each block, as f32, times weight scale x activation scale. Every kernel
/// goes through here, so a (row, token) gets the same bits in any of them.
#[inline]
#[target_feature(enable = "avx512f,avx512bw,avx512vnni")]
pub(super) fn add_group(acc: __m512, ue: __m512i, uo: __m512i, sw: __m512, a: &GroupActs) -> __m512 {
    let d1 = _mm512_dpbusd_epi32(_mm512_dpbusd_epi32(_mm512_setzero_si512(), ue, a.q1e), uo, a.q1o);
    let d2 = _mm512_dpbusd_epi32(_mm512_dpbusd_epi32(a.bias, ue, a.q2e), uo, a.q2o);
    let sum = _mm512_cvtepi32_ps(_mm512_add_epi32(_mm512_slli_epi32(d1, 8), d2));
    _mm512_fmadd_ps(sum, _mm512_mul_ps(sw, a.scale), acc)
}

/// `add_group` for activations whose second term is zero (`Int8x2::one_term`): its two
/// products against q2 only add zeros to the bias, so without them the integer sum, and so
/// the result, is the same bits, in 7 operations instead of 9.
#[inline]
#[target_feature(enable = "avx512f,avx512bw,avx512vnni")]
pub(super) fn add_group_one_term(acc: __m512, ue: __m512i, uo: __m512i, sw: __m512, a: &GroupActs) -> __m512 {
    let d1 = _mm512_dpbusd_epi32(_mm512_dpbusd_epi32(_mm512_setzero_si512(), ue, a.q1e), uo, a.q1o);
    let sum = _mm512_cvtepi32_ps(_mm512_add_epi32(_mm512_slli_epi32(d1, 8), a.bias));
    _mm512_fmadd_ps(sum, _mm512_mul_ps(sw, a.scale), acc)
}

/// The first N rows of MXFP4 `codes` / `scales`, `cols` wide, one slice each.
pub(super) fn rows<'a, const N: usize>(
    codes: &'a [u8],
    scales: &'a [u8],
    cols: usize,
) -> ([&'a [u8]; N], [&'a [u8]; N]) {
    let (cb, sb) = (cols.div_ceil(2), cols.div_ceil(32));
    (std::array::from_fn(|i| &codes[i * cb..(i + 1) * cb]), std::array::from_fn(|i| &scales[i * sb..(i + 1) * sb]))
}

/// Four blocks' E8M0 scales (the first `m` of `bytes`) as f32 per int32 lane (block k in
/// lanes 4k..4k+4); 0 is 2^-127 and 0xFF NaN, as `e8m0` decodes them.
#[inline]
#[target_feature(enable = "avx512f,avx512bw")]
pub(super) fn group_scales(bytes: &[u8], m: usize) -> __m512 {
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
#[inline]
#[target_feature(enable = "avx512f,avx512bw")]
pub(super) fn spread_scales(word: u32, spread: __m512i) -> __m512i {
    _mm512_shuffle_epi8(_mm512_set1_epi32(word as i32), spread)
}

/// `group_scales` for four exponents none of which is 0 or 0xFF: each one's bits moved into
/// an f32's exponent field.
#[inline]
#[target_feature(enable = "avx512f,avx512bw")]
pub(super) fn ordinary_scales(word: u32, spread: __m512i) -> __m512 {
    _mm512_castsi512_ps(_mm512_slli_epi32(spread_scales(word, spread), 23))
}

/// The `vpshufb` control that takes byte k of a broadcast 32-bit word into each int32 lane of
/// 128-bit lane k (index -1 gives zero).
#[inline]
#[target_feature(enable = "avx512f")]
pub(super) fn scale_spread() -> __m512i {
    _mm512_set_epi8(
        -1, -1, -1, 3, -1, -1, -1, 3, -1, -1, -1, 3, -1, -1, -1, 3, -1, -1, -1, 2, -1, -1, -1, 2, -1, -1, -1, 2, -1,
        -1, -1, 2, -1, -1, -1, 1, -1, -1, -1, 1, -1, -1, -1, 1, -1, -1, -1, 1, -1, -1, -1, 0, -1, -1, -1, 0, -1, -1,
        -1, 0, -1, -1, -1, 0,
    )
}

/// Whether rows `cols` wide are whole groups of four blocks, with no tail.
#[inline]
pub(super) fn whole_groups(cols: usize) -> bool {
    cols.is_multiple_of(32 * GROUP_BLOCKS)
}

/// The high bit of each byte of `word` that is 0 or 0xFF: an exponent `group_scales` has to
/// fix up (2^-127, NaN).
#[inline]
pub(super) fn special_scales(word: u32) -> u32 {
    let zero = |w: u32| w.wrapping_sub(0x0101_0101) & !w & 0x8080_8080;
    zero(word) | zero(!word)
}
