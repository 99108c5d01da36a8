//! The indexer's query heads against a run of its keys, as outer products: each key value
//! broadcast times eight heads' query values at once, so a (key, head) dot ends in a lane of
//! its own and no horizontal sum. In the dot-product form every (key, head) pair ended in
//! one: for keys of 64 values that was about as much work as the pair's multiply-adds.
//! Measured on Zen 2 (EPYC family 23 model 49), the mid-size bench model, old and new form
//! on alternate steps (prefills) of one run: one-token decode at a context of 3900-4000
//! 0.93-0.97 of the step time, two tokens 0.88-0.91; prefill of 2048 tokens 0.94, of 512
//! 0.98-0.99.
//!
//! A (key, head) dot is a chain of multiply-adds over the key's values in order, whatever
//! else is in the call, so a query's scores do not depend on the queries scored with it.

use super::kernels::Isa;
use super::kernels::aligned::Aligned;

/// Heads per column block of the AVX2 kernel: four vectors of eight.
const BLOCK_COLS: usize = 32;

/// The query heads transposed in groups of eight, the form the outer products read:
/// [cols / 8, di, 8] for cols = queries x heads, a multiple of 8. Each group's values are
/// contiguous: a prompt chunk's thousands of heads as one [di, cols] matrix put a group's
/// rows 64 KiB and more apart, on the same few cache sets, and the prefill ran slower than
/// with the dot products.
pub struct HeadsT {
    cols: usize,
    di: usize,
    data: Aligned<f32>, // [cols / 8, di, 8]
}

impl HeadsT {
    /// q [cols, di] (each query's heads, in order), cols a multiple of 8.
    pub fn new(q: &[f32], cols: usize, di: usize) -> HeadsT {
        assert!(cols.is_multiple_of(8) && q.len() == cols * di, "HeadsT: q is not [{cols}, {di}], cols by 8");
        let mut data = Aligned::<f32>::for_overwrite(cols * di); // [cols / 8, di, 8], every value written below
        for (c, row) in q.chunks_exact(di).enumerate() {
            let group = &mut data[c / 8 * di * 8..];
            for (j, &v) in row.iter().enumerate() {
                group[j * 8 + c % 8] = v;
            }
        }
        HeadsT { cols, di, data }
    }

    /// Group g's values [di, 8] onwards.
    fn group(&self, g: usize) -> &[f32] {
        &self.data[g * self.di * 8..]
    }
}

/// keys [run, di] (decoded) against heads columns [c0, cols) -> out[k * ostride + (c - c0)];
/// c0 a multiple of 8.
pub fn dots(keys: &[f32], run: usize, h: &HeadsT, c0: usize, out: &mut [f32], ostride: usize) {
    let di = h.di;
    assert!(c0.is_multiple_of(8) && keys.len() >= run * di, "index_dots: columns from {c0}, {run} keys of {di}");
    assert!(run == 0 || out.len() >= (run - 1) * ostride + h.cols - c0, "index_dots: out too short");
    #[cfg(target_arch = "x86_64")]
    if Isa::current() != Isa::Portable
        && std::arch::is_x86_feature_detected!("avx2")
        && std::arch::is_x86_feature_detected!("fma")
    {
        let mut c = c0;
        while c < h.cols {
            let width = (h.cols - c).min(BLOCK_COLS);
            let (o, q) = (&mut out[c - c0..], h.group(c / 8));
            // SAFETY: AVX2 and FMA were detected just above; keys hold run x di values, q
            // holds the block's groups of di x 8, and out reaches (run - 1) * ostride + the
            // block's columns (checked above).
            unsafe {
                match width / 8 {
                    4 => x86::dots::<4>(keys, run, di, q, o, ostride),
                    3 => x86::dots::<3>(keys, run, di, q, o, ostride),
                    2 => x86::dots::<2>(keys, run, di, q, o, ostride),
                    _ => x86::dots::<1>(keys, run, di, q, o, ostride),
                }
            }
            c += width;
        }
        return;
    }
    portable(keys, run, h, c0, out, ostride);
}

/// `dots` without SIMD: the same fused chains, so the same bits.
fn portable(keys: &[f32], run: usize, h: &HeadsT, c0: usize, out: &mut [f32], ostride: usize) {
    let di = h.di;
    for k in 0..run {
        let o = &mut out[k * ostride..k * ostride + h.cols - c0];
        o.fill(0.0);
        for (g, og) in o.chunks_exact_mut(8).enumerate() {
            let q = h.group(c0 / 8 + g);
            for (j, &kv) in keys[k * di..(k + 1) * di].iter().enumerate() {
                for (a, &qv) in og.iter_mut().zip(&q[j * 8..j * 8 + 8]) {
                    *a = kv.mul_add(qv, *a);
                }
            }
        }
    }
}

/// sum over heads of w_h * ReLU(dot_h * dot_scale) (ReLU before the head weighting, as the
/// weights may be negative): eight lanes over whole eights of heads, summed in a fixed
/// tree, then the heads past them in order. The same arithmetic on every machine.
pub fn weigh(w: &[f32], dots: &[f32], dot_scale: f32) -> f32 {
    let whole = w.len() / 8 * 8;
    let mut lanes = [0.0f32; 8];
    for (wc, dc) in w[..whole].chunks_exact(8).zip(dots[..whole].chunks_exact(8)) {
        for i in 0..8 {
            lanes[i] += wc[i] * (dc[i] * dot_scale).max(0.0);
        }
    }
    let l = lanes;
    let mut s = ((l[0] + l[4]) + (l[2] + l[6])) + ((l[1] + l[5]) + (l[3] + l[7]));
    for (wh, d) in w[whole..].iter().zip(&dots[whole..]) {
        s += wh * (d * dot_scale).max(0.0);
    }
    s
}

#[cfg(target_arch = "x86_64")]
mod x86 {
    // Tiles are indexed [key][vector] in fixed-size loops.
    #![allow(clippy::needless_range_loop)]

    use std::arch::x86_64::*;

    /// Keys two at a time against V groups of eight heads (q [V, di, 8]): 2 V
    /// accumulators, a broadcast per key value shared by the V loads of its heads.
    ///
    /// # Safety
    /// The CPU has AVX2 and FMA; keys hold run x di values; q holds V groups of di x 8; out
    /// reaches (run - 1) * ostride + 8 V.
    #[target_feature(enable = "avx2,fma")]
    pub unsafe fn dots<const V: usize>(
        keys: &[f32],
        run: usize,
        di: usize,
        q: &[f32],
        out: &mut [f32],
        ostride: usize,
    ) {
        let mut k = 0;
        while k < run {
            let two = k + 2 <= run;
            let mut acc = [[_mm256_setzero_ps(); V]; 2];
            // SAFETY (pointers): keys k and k + 1 (when `two`) lie in keys; group v's row j
            // lies in q.
            unsafe {
                let (k0, k1) = (keys.as_ptr().add(k * di), keys.as_ptr().add((k + usize::from(two)) * di));
                for j in 0..di {
                    let (b0, b1) = (_mm256_broadcast_ss(&*k0.add(j)), _mm256_broadcast_ss(&*k1.add(j)));
                    for v in 0..V {
                        let qv = _mm256_loadu_ps(q.as_ptr().add((v * di + j) * 8));
                        acc[0][v] = _mm256_fmadd_ps(b0, qv, acc[0][v]);
                        acc[1][v] = _mm256_fmadd_ps(b1, qv, acc[1][v]);
                    }
                }
                for v in 0..V {
                    _mm256_storeu_ps(out.as_mut_ptr().add(k * ostride + 8 * v), acc[0][v]);
                    if two {
                        _mm256_storeu_ps(out.as_mut_ptr().add((k + 1) * ostride + 8 * v), acc[1][v]);
                    }
                }
            }
            k += if two { 2 } else { 1 };
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::{Rng, SeedableRng};
    use rand_chacha::ChaCha8Rng;

    #[test]
    fn dots_are_fused_chains_over_the_key_in_any_column_block_with_or_without_simd() {
        // 8 to 56 columns: whole blocks of 32 and every remainder of 8; odd key counts; keys
        // of 1, 20 and 64 values.
        let mut rng = ChaCha8Rng::seed_from_u64(5);
        for di in [1, 20, 64] {
            for cols in [8, 16, 24, 32, 40, 56] {
                let run = 7;
                let q: Vec<f32> = (0..cols * di).map(|_| rng.random_range(-1.0..1.0)).collect(); // [cols, di]
                let keys: Vec<f32> = (0..run * di).map(|_| rng.random_range(-1.0..1.0)).collect(); // [run, di]
                let h = HeadsT::new(&q, cols, di);
                for c0 in (0..cols).step_by(8) {
                    let (mut simd, mut plain) = (vec![f32::NAN; run * cols], vec![f32::NAN; run * cols]); // [run, cols - c0], stride cols
                    dots(&keys, run, &h, c0, &mut simd, cols);
                    portable(&keys, run, &h, c0, &mut plain, cols);
                    for k in 0..run {
                        for c in c0..cols {
                            let mut want = 0.0f32;
                            for j in 0..di {
                                want = keys[k * di + j].mul_add(q[c * di + j], want);
                            }
                            for (form, got) in [("dots", &simd), ("portable", &plain)] {
                                let got = got[k * cols + c - c0];
                                assert_eq!(
                                    got.to_bits(),
                                    want.to_bits(),
                                    "{form}: di {di} cols {cols} from {c0}: key {k} col {c}"
                                );
                            }
                        }
                    }
                }
            }
        }
    }

    #[test]
    fn weigh_applies_relu_before_the_weights_and_sums_every_head() {
        // 19 heads: two eights and a tail of three.
        let w: Vec<f32> = (0..19).map(|i| if i % 3 == 0 { -0.5 } else { 0.25 * i as f32 }).collect();
        let d: Vec<f32> = (0..19).map(|i| (i as f32 - 9.0) * 0.5).collect();
        let want: f64 = w.iter().zip(&d).map(|(&wh, &dh)| f64::from(wh) * f64::from((dh * 2.0).max(0.0))).sum();
        assert!((f64::from(weigh(&w, &d, 2.0)) - want).abs() < 1e-4, "{} vs {want}", weigh(&w, &d, 2.0));
        // Negative dots contribute nothing, negative weights subtract.
        assert_eq!(weigh(&[1.0, -1.0], &[-3.0, 2.0], 1.0), -2.0);
    }
}
