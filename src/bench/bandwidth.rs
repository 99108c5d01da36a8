//! The machine's read bandwidth, measured the way a decode step reads its weights: every
//! thread of the pool streams its share of a buffer far larger than the caches, once.

use rayon::prelude::*;
use std::time::Instant;

/// Bytes streamed per pass: far past any L3.
const BUFFER_BYTES: usize = 512 << 20;
const PASSES: usize = 5;

/// Best GB/s (1e9 bytes per second) of a few passes of a parallel sum over 512 MiB.
pub fn read_gb_s() -> f64 {
    let words: Vec<u64> = (0..BUFFER_BYTES / 8).into_par_iter().map(|i| i as u64).collect(); // [BUFFER_BYTES / 8]
    let chunk = words.len() / (rayon::current_num_threads() * 16).max(1);
    let mut best = 0.0f64;
    for _ in 0..PASSES {
        let t = Instant::now();
        let sum: u64 = words.par_chunks(chunk.max(1)).map(sum_words).reduce(|| 0, u64::wrapping_add);
        let s = t.elapsed().as_secs_f64();
        std::hint::black_box(sum);
        best = best.max(BUFFER_BYTES as f64 / s / 1e9);
    }
    best
}

/// Eight independent lanes, so the loop is bound by loads, not by one add chain.
fn sum_words(c: &[u64]) -> u64 {
    let mut acc = [0u64; 8];
    let chunks = c.chunks_exact(8);
    let tail: u64 = chunks.remainder().iter().fold(0, |a, &b| a.wrapping_add(b));
    for w in chunks {
        for j in 0..8 {
            acc[j] = acc[j].wrapping_add(w[j]);
        }
    }
    acc.iter().fold(tail, |a, &b| a.wrapping_add(b))
}
