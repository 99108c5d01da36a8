//! y = x W^T against a weight kept in its checkpoint format (bf16, f32, MXFP4, ...): each
//! weight row goes through the SIMD kernels in its stored format, against a block of tokens
//! at a time, so no matrix (nor row) is expanded to f32 in memory and a row read from memory
//! serves every token of the call.

use rayon::prelude::*;

use super::kernels::aligned::Aligned;
use super::kernels::{Acts, CACHED_WEIGHT_BYTES, Isa, RowsRef, block_dots, dot};
use super::quantize_mxfp4_activations_into;
use super::transpose::transpose_into;
use crate::weights::{Linear, Stored};
use safetensors::Dtype;

/// Weight rows per rayon task at least.
const ROW_BLOCK: usize = 16;
/// Multiply-adds per rayon task at least, while each thread still gets a share of a weight's
/// rows: a task's split, steal and calls cost a sizeable part of a small one. At 16 rows a
/// task, the demo model's one-token matrices (256 wide) went in tasks of 4K multiply-adds.
/// Measured on Zen 3 by steps alternating in one process (old and new form in turns), six
/// runs: demo decode of one / two / three tokens 0.89-0.96 / 0.91-0.95 / 0.90-0.98 of the
/// step time, mid-size one / two / four tokens 0.95-1.01 / 0.97-1.00 / 0.95-0.98. A
/// prefill's tasks (64 tokens and more) keep 16 rows.
const TASK_WORK: usize = 1 << 16;
/// Tokens per pass over a task's rows: that many activation rows (at most 64 x 4 KiB for a
/// hidden size of 1024) stay in L2 while the task's weight rows are applied to them.
const TOKEN_BLOCK: usize = 64;

/// x [n, cols] -> y [n, rows]. With `quantize_input` and an MXFP4 weight, x first goes
/// through dynamic MXFP4 quantization (W4A4); otherwise it is used as it is.
pub fn matmul(x: &[f32], n: usize, w: &Linear, quantize_input: bool) -> Vec<f32> {
    matmul_many(x, n, &[w], quantize_input).pop().expect("one weight, one output")
}

/// x [n, cols] through each of `ws` (all `cols` wide, of any formats) -> one [n, w.rows]
/// each, the bits of `matmul` for each: the input is prepared once per format, and every
/// weight's row blocks go in one parallel pass. A decode step's projections of one input
/// (q_a, kv_a and the indexer's two) are small, and each pass of its own paid a fork, a
/// join and a thread idle at its end.
pub fn matmul_many(x: &[f32], n: usize, ws: &[&Linear], quantize_input: bool) -> Vec<Vec<f32>> {
    let mut outs: Vec<Vec<f32>> = ws.iter().map(|w| vec![0.0f32; n * w.rows]).collect(); // [n, w.rows] each
    let mut views: Vec<&mut [f32]> = outs.iter_mut().map(|o| &mut o[..]).collect();
    matmul_into(x, n, ws, quantize_input, &mut views);
    outs
}

/// `matmul_many` into `outs` ([n, w.rows] for each of `ws`), with every buffer of its own
/// from the scratch pool: an MoE step's experts call this per expert, and so
/// allocate nothing however many experts the step's tokens reach.
pub fn matmul_into(x: &[f32], n: usize, ws: &[&Linear], quantize_input: bool, outs: &mut [&mut [f32]]) {
    let Some(cols) = ws.first().map(|w| w.cols) else { return };
    assert!(ws.iter().all(|w| w.cols == cols), "matmul_many: weights of different widths");
    assert_eq!(x.len(), n * cols, "matmul: x is not [{n}, {cols}]");
    assert!(
        outs.len() == ws.len() && outs.iter().zip(ws).all(|(o, w)| o.len() == n * w.rows),
        "matmul_into: an output is not [{n}, rows] of its weight"
    );
    if n == 0 {
        return;
    }
    let any_mxfp4 = ws.iter().any(|w| w.is_mxfp4());
    let mut quantized = Aligned::<f32>::for_overwrite(if quantize_input && any_mxfp4 { x.len() } else { 0 }); // [n, cols], all written
    let xq = if quantize_input && any_mxfp4 {
        quantize_mxfp4_activations_into(x, cols, &mut quantized);
        &quantized[..]
    } else {
        x
    };
    // The input as each kind of weight reads it (MXFP4, dense), made once per kind.
    let isa = Isa::current();
    let mxfp4_acts = any_mxfp4.then(|| match quantize_input {
        true => Acts::on_mxfp4_grid(isa, xq, n, cols),
        false => Acts::new(isa, true, xq, n, cols),
    });
    let dense_acts = ws.iter().any(|w| !w.is_mxfp4()).then(|| Acts::new(isa, false, x, n, cols));
    // (activations, x as given) for weight i.
    let input = |i: usize| match ws[i].is_mxfp4() {
        true => (mxfp4_acts.as_ref().expect("made for MXFP4 weights"), xq),
        false => (dense_acts.as_ref().expect("made for dense weights"), x),
    };
    let work: usize = ws.iter().map(|w| w.rows * cols * n).sum();
    let parallel = work >= super::PARALLEL_MIN_WORK;
    if parallel {
        // A long step (prefill) outlasts the spinners' grace: each parallel matmul renews it.
        super::warm::renew();
    }
    let threads = rayon::current_num_threads();
    // Weight i's rows into out_t [rows, n], in tasks of whole rows.
    let run_weight = |i: usize, out_t: &mut [f32]| {
        let (acts, xs) = input(i);
        let w = ws[i];
        let rows = task_rows(w.rows, cols, n, threads);
        let cached = w.stored_bytes() <= CACHED_WEIGHT_BYTES;
        let task = |(b, chunk): (usize, &mut [f32])| row_block(acts, xs, w, cached, b * rows, chunk);
        if parallel {
            out_t.par_chunks_mut(rows * n).enumerate().for_each(task);
        } else {
            out_t.chunks_mut(rows * n).enumerate().for_each(task);
        }
    };
    if n == 1 {
        // [1, rows] is [rows, 1]: the tasks write the outputs themselves.
        for_each_part(parallel, 0, ws, n, outs, &run_weight);
        return;
    }
    // out_t [rows, n] per weight, one after the other, then each transposed into its output.
    let total: usize = ws.iter().map(|w| w.rows * n).sum();
    let mut out_t = Aligned::<f32>::for_overwrite(total); // [sum of rows, n], every value a kernel's output
    for_each_part(parallel, 0, ws, n, &mut out_t[..], &run_weight);
    let mut at = 0;
    for (w, out) in ws.iter().zip(outs.iter_mut()) {
        transpose_into(&out_t[at..at + w.rows * n], w.rows, n, out);
        at += w.rows * n;
    }
}

/// Buffers handed out a weight's [rows, n] at a time, in order: one buffer holding them one
/// after the other, or one buffer per weight.
trait Parts<'a>: Send + Sized {
    fn split_first(self, len: usize) -> (&'a mut [f32], Self);
}

impl<'a> Parts<'a> for &'a mut [f32] {
    fn split_first(self, len: usize) -> (&'a mut [f32], Self) {
        self.split_at_mut(len)
    }
}

impl<'a> Parts<'a> for &'a mut [&mut [f32]] {
    fn split_first(self, _len: usize) -> (&'a mut [f32], Self) {
        let (first, rest) = self.split_first_mut().expect("a part per weight");
        (first, rest)
    }
}

/// `run(first + i, part)` for each weight i of `ws` on its [rows, n] part, side by side on
/// the threads when `parallel` (a join per weight, which allocates nothing).
fn for_each_part<'a>(
    parallel: bool,
    first: usize,
    ws: &[&Linear],
    n: usize,
    parts: impl Parts<'a>,
    run: &(impl Fn(usize, &mut [f32]) + Sync),
) {
    let Some((w, more)) = ws.split_first() else { return };
    let (mine, rest) = parts.split_first(w.rows * n);
    if parallel && !more.is_empty() {
        rayon::join(|| run(first, mine), || for_each_part(parallel, first + 1, more, n, rest, run));
    } else {
        run(first, mine);
        for_each_part(parallel, first + 1, more, n, rest, run);
    }
}

/// Rows per rayon task of a weight [rows, cols] against n tokens: TASK_WORK multiply-adds,
/// at least ROW_BLOCK rows, at most an even share of the rows per thread.
fn task_rows(rows: usize, cols: usize, n: usize, threads: usize) -> usize {
    let share = rows.div_ceil(threads.max(1));
    (TASK_WORK / (cols * n).max(1)).min(share).max(ROW_BLOCK)
}

/// Rows [r0, r0 + chunk.len() / n) of `w` against every token of `acts` (x [n, cols] as
/// stored, for formats the kernels do not read) -> chunk [rows, n]; `cached` as for
/// `block_dots`.
fn row_block(acts: &Acts<'_>, x: &[f32], w: &Linear, cached: bool, r0: usize, chunk: &mut [f32]) {
    let (cols, n) = (w.cols, acts.n);
    let nrows = chunk.len() / n;
    let mut decoded = Vec::new(); // [cols], only for formats the kernels do not read
    for t0 in (0..n).step_by(TOKEN_BLOCK) {
        let tb = TOKEN_BLOCK.min(n - t0);
        let xs = &x[t0 * cols..(t0 + tb) * cols]; // plain rows, for the decoded fallback
        match rows_ref(w, r0) {
            Some(rr) => block_dots(acts, rr, cached, nrows, t0, tb, &mut chunk[t0..], n),
            None => {
                for (i, o) in chunk.chunks_mut(n).enumerate() {
                    decoded.resize(cols, 0.0);
                    w.row_into(r0 + i, &mut decoded);
                    for (t, y) in o[t0..t0 + tb].iter_mut().enumerate() {
                        *y = dot(&decoded, &xs[t * cols..(t + 1) * cols]);
                    }
                }
            }
        }
    }
}

/// Rows of `w` from `r` on, in a format the kernels read in place; None for f16 and fp8.
pub fn rows_ref(w: &Linear, r: usize) -> Option<RowsRef<'_>> {
    let c = w.cols;
    match w.stored() {
        Stored::Mxfp4 { codes, scales } => {
            Some(RowsRef::Mxfp4 { codes: &codes[r * c.div_ceil(2)..], scales: &scales[r * c.div_ceil(32)..] })
        }
        Stored::Dense { dtype: Dtype::BF16, bytes } => Some(RowsRef::Bf16(&bytes[r * c * 2..])),
        Stored::Dense { dtype: Dtype::F32, bytes } => Some(RowsRef::F32(&bytes[r * c * 4..])),
        Stored::Dense { .. } => None,
    }
}

#[cfg(test)]
mod tests {
    use super::{ROW_BLOCK, TASK_WORK, task_rows};

    #[test]
    fn tasks_hold_enough_work_and_every_thread_gets_rows() {
        for threads in [1, 2, 16] {
            for (rows, cols, n) in [(4096, 256, 1), (128, 256, 1), (1024, 1024, 2), (1024, 1024, 512), (8, 64, 1)] {
                let r = task_rows(rows, cols, n, threads);
                assert!(r >= ROW_BLOCK, "{rows}x{cols}, {n} tokens, {threads} threads: {r} rows");
                let tasks = rows.div_ceil(r);
                // Enough work in a task, or else every thread already has a task of its own.
                assert!(
                    r * cols * n >= TASK_WORK || tasks >= threads.min(rows.div_ceil(ROW_BLOCK)),
                    "{rows}x{cols}, {n}: {r}"
                );
                // No thread left without rows while another holds two shares.
                assert!(r <= rows.div_ceil(threads).max(ROW_BLOCK), "{rows}x{cols}, {n}, {threads}: {r}");
            }
        }
        // A prefill's tasks keep ROW_BLOCK rows; a demo-sized decode matrix goes in 256 rows.
        assert_eq!(task_rows(1024, 1024, 512, 2), ROW_BLOCK);
        assert_eq!(task_rows(4096, 256, 1, 2), TASK_WORK / 256);
    }
}
