//! The machine's f32 multiply-add rate, measured the way a prefill computes: every thread of
//! the pool runs independent chains of vector FMAs at once, on the widest vectors the CPU
//! kernels use. A compute-bound forward (a long prefill) is judged against it, as decode is
//! against the streaming read.

use std::time::Instant;

use crate::backend::cpu::kernels::Isa;

/// FMA instructions per chain per pass: long enough to dwarf the start-up, short enough
/// that a pass takes tens of milliseconds.
const ROUNDS: usize = 2_000_000;
/// Independent chains per thread: more than an FMA's latency times the FMA units, so the
/// loop is bound by throughput.
const CHAINS: usize = 12;
const PASSES: usize = 3;

/// Best G multiply-adds per second (f32 lanes x FMAs, all threads together) of a few passes.
pub fn fma_gmacs() -> f64 {
    best_rate(|lanes| rayon::broadcast(|_| chains(lanes)))
}

/// The same for the calling thread alone: what one core's kernel is measured against.
pub fn fma_gmacs_one_thread() -> f64 {
    best_rate(|lanes| vec![chains(lanes)])
}

/// Best rate of a few passes of `run`, which runs one set of chains per thread it uses and
/// returns their sums (one per thread).
fn best_rate(run: impl Fn(usize) -> Vec<f32>) -> f64 {
    let lanes = lanes();
    let mut best = 0.0f64;
    for _ in 0..PASSES {
        let t = Instant::now();
        let sums = run(lanes); // [threads]
        let s = t.elapsed().as_secs_f64();
        let macs = (sums.len() * CHAINS * ROUNDS * lanes) as f64;
        std::hint::black_box(sums);
        best = best.max(macs / s / 1e9);
    }
    best
}

/// f32 lanes per FMA of the kernels' instruction set (`Isa::current`, so `KILN_CPU_ISA`
/// lowers the peak as it lowers the kernels).
pub fn lanes() -> usize {
    match Isa::current() {
        isa if isa.is_avx512() => 16,
        isa if isa.is_avx2() => 8,
        _ => 1,
    }
}

/// One thread's chains on `lanes`-wide vectors; returns a value that depends on all of them.
fn chains(lanes: usize) -> f32 {
    #[cfg(target_arch = "x86_64")]
    {
        // SAFETY: `lanes` gives 16 or 8 only where the CPU has AVX-512F, or AVX2 and FMA.
        match lanes {
            16 => return unsafe { x86::chains_avx512() },
            8 => return unsafe { x86::chains_avx2() },
            _ => {}
        }
    }
    chains_scalar()
}

/// The portable kernels' arithmetic: scalar multiply-adds.
fn chains_scalar() -> f32 {
    // Distinct starting values, so no two chains are the same computation.
    let mut acc: [f32; CHAINS] = std::array::from_fn(|i| i as f32);
    let (a, b) = (std::hint::black_box(0.999_999f32), std::hint::black_box(1e-7f32));
    for _ in 0..ROUNDS {
        for v in &mut acc {
            *v = *v * a + b;
        }
    }
    acc.iter().sum()
}

#[cfg(target_arch = "x86_64")]
mod x86 {
    use super::{CHAINS, ROUNDS};
    use std::arch::x86_64::*;

    /// # Safety
    /// The CPU has AVX-512F.
    #[target_feature(enable = "avx512f")]
    pub unsafe fn chains_avx512() -> f32 {
        let mut acc: [__m512; CHAINS] = std::array::from_fn(|i| _mm512_set1_ps(i as f32));
        let (a, b) = (_mm512_set1_ps(std::hint::black_box(0.999_999)), _mm512_set1_ps(std::hint::black_box(1e-7)));
        for _ in 0..ROUNDS {
            for v in &mut acc {
                *v = _mm512_fmadd_ps(*v, a, b);
            }
        }
        acc.iter().map(|&v| _mm512_reduce_add_ps(v)).sum()
    }

    /// # Safety
    /// The CPU has AVX2 and FMA.
    #[target_feature(enable = "avx2,fma")]
    pub unsafe fn chains_avx2() -> f32 {
        let mut acc: [__m256; CHAINS] = std::array::from_fn(|i| _mm256_set1_ps(i as f32));
        let (a, b) = (_mm256_set1_ps(std::hint::black_box(0.999_999)), _mm256_set1_ps(std::hint::black_box(1e-7)));
        for _ in 0..ROUNDS {
            for v in &mut acc {
                *v = _mm256_fmadd_ps(*v, a, b);
            }
        }
        let mut out = [0.0f32; 8];
        acc.iter()
            .map(|&v| {
                // SAFETY: out holds 8 f32.
                unsafe { _mm256_storeu_ps(out.as_mut_ptr(), v) };
                out.iter().sum::<f32>()
            })
            .sum()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_path_computes_its_chains() {
        // Chain i ends at a^n i + b (1 - a^n) / (1 - a): about 10 summed over the twelve, per
        // lane. A path that skipped its work would leave 66 (0 + 1 + ... + 11).
        let (a, b, n) = (0.999_999f64, 1e-7f64, ROUNDS as i32);
        let want: f64 = (0..CHAINS).map(|i| a.powi(n) * i as f64 + b * (1.0 - a.powi(n)) / (1.0 - a)).sum();
        let per_lane = |sum: f32, lanes: usize| f64::from(sum) / lanes as f64;
        for (name, lanes, sum) in [("scalar", 1, chains_scalar()), ("widest", lanes(), chains(lanes()))] {
            let got = per_lane(sum, lanes);
            assert!((got - want).abs() <= 0.05 * want, "{name} ({lanes} lanes): {got} per lane, want about {want}");
        }
        assert!(fma_gmacs() > 0.0);
    }
}
