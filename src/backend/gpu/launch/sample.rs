//! Launches of the sampling kernels.

use super::*;

/// logits [T, V] -> out [T]: the first under the ranking rule.
pub fn sample_greedy(gpu: &Gpu, logits: &Buffer, out: &Buffer, t: usize, vocab: usize) -> Result<()> {
    const K: &str = "kiln_sample_greedy";
    f32s(logits, t * vocab, "logits", K)?;
    i32s(out, t, "out", K)?;
    // SAFETY: kiln_sample_greedy(const float* logits, int* out, int v); one block per row.
    unsafe { gpu.launch(K, per_row(t), KernelArgs::new().buf(logits).buf(out).int(vocab)) }
}

/// logits [T, V], uniform draws u [T] -> out [T] under temperature and top-p.
#[allow(clippy::too_many_arguments)]
pub fn sample_top_p(
    gpu: &Gpu,
    logits: &Buffer,
    u: &Buffer,
    out: &Buffer,
    t: usize,
    vocab: usize,
    temperature: f32,
    top_p: f32,
) -> Result<()> {
    const K: &str = "kiln_sample_top_p";
    f32s(logits, t * vocab, "logits", K)?;
    f32s(u, t, "u", K)?;
    i32s(out, t, "out", K)?;
    let args = KernelArgs::new().buf(logits).buf(u).buf(out).int(vocab).f32(temperature).f32(top_p);
    // SAFETY: kiln_sample_top_p(const float* logits, const float* u, int* out, int v, float
    // temperature, float top_p); one block per row.
    unsafe { gpu.launch(K, per_row(t), args) }
}
