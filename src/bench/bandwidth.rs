//! The machine's read bandwidth, the ceiling a decode step's weight reads are judged against:
//! every thread of the pool streams one contiguous share of a buffer far larger than the
//! caches, with the widest loads the CPU has, cache-line aligned; and, on AVX2, also reads
//! its share as `STREAMS` parts at once (a line of each in turn). The ceiling is the higher.
//! On Zen 3 one stream per core left the hardware prefetcher too few misses in flight: C
//! loops over both cores read 19.1-19.6 GB/s as one stream per core, 21.7-23.0 as four,
//! 23.3-23.7 as eight and 22.0-22.8 as sixteen; the AVX2 dense kernels read their rows
//! from memory as four streams per core.
//!
//! Until 2026-12-01 each thread summed u64 words as the baseline x86-64 target compiles
//! them (16-byte loads) over rayon's chunks of an 8-byte-aligned buffer. On Zen 5 that
//! measured 62-69 GB/s where this loop, in the same process, measured 75-77 (and a C loop
//! of the same kind 77-89): fewer loads in flight per core left the ceiling under what the
//! memory delivers, and a decode step could read its weights at "over 100%" of it.

use std::time::Instant;

use crate::backend::cpu::kernels::Isa;

/// Bytes streamed per pass: far past any L3.
const BUFFER_BYTES: usize = 512 << 20;
/// Passes of each form (one stream, `STREAMS` streams per thread).
const PASSES: usize = 3;
/// Streams per thread of the second form.
const STREAMS: usize = 8;

/// One cache line of the buffer: 64-byte aligned, so no load splits a line.
#[repr(C, align(64))]
struct Line([u64; 8]);

/// Best GB/s (1e9 bytes per second) of a few passes over 512 MiB, all threads at once.
pub fn read_gb_s() -> f64 {
    let lines = BUFFER_BYTES / size_of::<Line>();
    let buffer = filled(lines); // [lines]
    let wide = Isa::current();
    let mut best = 0.0f64;
    for _ in 0..PASSES {
        for parts in [false, true] {
            let t = Instant::now();
            let sums = rayon::broadcast(|ctx| {
                let (i, n) = (ctx.index(), ctx.num_threads());
                let share = &buffer[i * lines / n..(i + 1) * lines / n];
                if parts { sum_streams(share) } else { sum_lines(share, wide) }
            }); // [threads]
            let s = t.elapsed().as_secs_f64();
            std::hint::black_box(sums);
            best = best.max(BUFFER_BYTES as f64 / s / 1e9);
        }
    }
    best
}

/// `lines` lines of distinct words, written in parallel: every page is backed by memory of
/// its own (an untouched page would read as the shared zero page, from cache).
fn filled(lines: usize) -> Vec<Line> {
    use rayon::prelude::*;
    (0..lines).into_par_iter().map(|i| Line(std::array::from_fn(|j| (8 * i + j) as u64))).collect()
}

/// The wrapping sum of every word of `lines`, on the widest vectors `isa` allows.
fn sum_lines(lines: &[Line], isa: Isa) -> u64 {
    #[cfg(target_arch = "x86_64")]
    {
        if isa.is_avx512() {
            // SAFETY: `Isa::current` gives AVX-512 only where the CPU has AVX-512F.
            return unsafe { x86::sum_avx512(lines) };
        }
        if isa.is_avx2() {
            // SAFETY: `Isa::current` gives AVX2 only where the CPU has it; one slice.
            return unsafe { x86::sum_avx2_streams([lines]) };
        }
    }
    #[cfg(not(target_arch = "x86_64"))]
    let _ = isa;
    sum_portable(lines)
}

/// The wrapping sum of every word of `lines`, split in `STREAMS` equal parts read a line
/// of each in turn (AVX2), or in one pass where the CPU has no AVX2.
fn sum_streams(lines: &[Line]) -> u64 {
    #[cfg(target_arch = "x86_64")]
    if std::arch::is_x86_feature_detected!("avx2") {
        let q = lines.len() / STREAMS;
        let parts: [&[Line]; STREAMS] = std::array::from_fn(|k| &lines[k * q..(k + 1) * q]);
        // SAFETY: checked just above that the CPU has AVX2; the parts are equally long.
        return sum_portable(&lines[STREAMS * q..]).wrapping_add(unsafe { x86::sum_avx2_streams(parts) });
    }
    sum_portable(lines)
}

/// Eight independent lanes, so the loop is bound by loads, not by one add chain.
fn sum_portable(lines: &[Line]) -> u64 {
    let mut acc = [0u64; 8];
    for l in lines {
        for (a, w) in acc.iter_mut().zip(&l.0) {
            *a = a.wrapping_add(*w);
        }
    }
    acc.iter().fold(0, |a, &b| a.wrapping_add(b))
}

#[cfg(target_arch = "x86_64")]
mod x86 {
    use super::Line;
    use std::arch::x86_64::*;

    /// Four lines a round, one 64-byte load and one add per line into four accumulators.
    ///
    /// # Safety
    /// The CPU has AVX-512F.
    #[target_feature(enable = "avx512f")]
    pub unsafe fn sum_avx512(lines: &[Line]) -> u64 {
        let mut acc = [_mm512_setzero_si512(); 4];
        let rounds = lines.chunks_exact(4);
        let rest = rounds.remainder();
        for round in rounds {
            for (a, l) in acc.iter_mut().zip(round) {
                // SAFETY: a Line is 64 bytes, 64-byte aligned.
                *a = _mm512_add_epi64(*a, unsafe { _mm512_load_si512(l.0.as_ptr().cast()) });
            }
        }
        let total = _mm512_add_epi64(_mm512_add_epi64(acc[0], acc[1]), _mm512_add_epi64(acc[2], acc[3]));
        (_mm512_reduce_add_epi64(total) as u64).wrapping_add(super::sum_portable(rest))
    }

    /// S slices of equal length read side by side: a line of each a round, two 32-byte
    /// loads per line, an accumulator per slice.
    ///
    /// # Safety
    /// The CPU has AVX2; every slice is as long as the first.
    #[target_feature(enable = "avx2")]
    pub unsafe fn sum_avx2_streams<const S: usize>(parts: [&[Line]; S]) -> u64 {
        let n = parts[0].len();
        debug_assert!(parts.iter().all(|p| p.len() == n));
        let mut acc = [_mm256_setzero_si256(); S];
        for i in 0..n {
            for (a, part) in acc.iter_mut().zip(&parts) {
                // SAFETY: i < n, the length of every part (the caller's guarantee); a Line is
                // 64 bytes, 64-byte aligned: two aligned halves.
                unsafe {
                    let p = part.get_unchecked(i).0.as_ptr().cast::<__m256i>();
                    *a = _mm256_add_epi64(*a, _mm256_add_epi64(_mm256_load_si256(p), _mm256_load_si256(p.add(1))));
                }
            }
        }
        let total = acc.iter().fold(_mm256_setzero_si256(), |t, &a| _mm256_add_epi64(t, a));
        let mut words = [0u64; 4];
        // SAFETY: words holds 32 bytes.
        unsafe { _mm256_storeu_si256(words.as_mut_ptr().cast(), total) };
        words.iter().fold(0u64, |a, &b| a.wrapping_add(b))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_path_reads_every_word() {
        // Lengths that leave a remainder after the vector loops' rounds of four and two
        // lines. A loop that skipped a line, or read one twice, would miss the closed form.
        for n in [0usize, 1, 3, 4, 5, 7, 64, 1001] {
            let lines = filled(n);
            let words = 8 * n as u64;
            let want = words * words.saturating_sub(1) / 2; // 0 + 1 + ... + (8n - 1)
            for isa in Isa::available() {
                assert_eq!(sum_lines(&lines, isa), want, "{} over {n} lines", isa.name());
            }
            assert_eq!(sum_streams(&lines), want, "{STREAMS} streams over {n} lines");
        }
    }

    #[test]
    fn the_buffer_is_line_aligned() {
        let lines = filled(3);
        assert_eq!(lines.as_ptr() as usize % 64, 0);
        assert_eq!(size_of::<Line>(), 64);
    }
}
