//! The CPU backend: ops in f32, each documenting its buffer shapes (row-major), and their
//! `Backend` implementation (`backend.rs`).

use rayon::prelude::*;

mod act_quant;
mod attention;
mod backend;
mod cpu_batch;
pub mod heap;
mod index_dots;
mod index_select;
mod indexer;
pub mod kernels;
mod key_selection;
mod kv_store;
mod matmul;
pub mod moe;
mod norm;
pub mod pool;
mod rope;
mod router;
mod topk;
mod transpose;
pub mod warm;

/// Multiply-adds below which splitting an op over the threads costs more than it saves. With
/// the other workers kept spinning through a step (`warm`), a split costs a steal, not a
/// wake-up, and ops of 16K to 64K multiply-adds (the demo model's attention heads, its
/// projections of one token) gain from it. Measured on Zen 2 (EPYC family 23 model 49), steps
/// alternating 16K and 64K in one `kiln bench decode`, five runs: demo one token 0.89-0.93 of
/// the step, three tokens 0.96-0.97, sixteen 0.98-0.99; the mid-size model 0.99-1.01. Of the
/// gain at one token, the per-head ops (`par_map`) took 0.93-0.94 alone and the matmuls 0.97.
/// On Zen 3 an earlier session read 0.95-1.07 for 16K, no steady gain.
const PARALLEL_MIN_WORK: usize = 1 << 14;

pub use act_quant::{quantize_mxfp4_activations, quantize_mxfp4_activations_into, quantize_mxfp4_group};
pub use attention::{KeySet, attend_heads, latent_attention};
pub use backend::{Cpu, Rows};
pub use cpu_batch::CpuBatch;
pub use indexer::{score_row, score_slots, score_span, span_part, span_scores};
pub use kernels::dot;
pub use key_selection::KeySelection;
pub use kv_store::HostKvStore;
pub use matmul::{matmul, matmul_into, matmul_many};
pub use norm::{layer_norm_rows, rms_norm_rows};
pub use rope::Rope;
pub use router::{Route, RouterConfig, Routing, route, routing};
pub use topk::{arg_first, rank_order, top_k, top_k_into};

/// Maps `f` over 0..n items of `work_each` multiply-adds each, in parallel when there is more
/// than one item and enough work to share.
fn par_map<T: Send>(n: usize, work_each: usize, f: impl Fn(usize) -> T + Sync + Send) -> Vec<T> {
    if splits(n, work_each) { (0..n).into_par_iter().map(f).collect() } else { (0..n).map(f).collect() }
}

/// Whether `par_map` runs n items of `work_each` multiply-adds in parallel.
fn splits(n: usize, work_each: usize) -> bool {
    n >= 2 && n * work_each >= PARALLEL_MIN_WORK
}

/// silu(g) * u, elementwise; g and u are [n, w], the result replaces g.
pub fn silu_mul(g: &mut [f32], u: &[f32]) {
    for (a, b) in g.iter_mut().zip(u) {
        *a = *a / (1.0 + (-*a).exp()) * b;
    }
}

/// In-place softmax over one row, in f32; entries equal to -inf get probability 0.
pub fn softmax(row: &mut [f32]) {
    let max = row.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    if max == f32::NEG_INFINITY {
        row.fill(0.0);
        return;
    }
    let mut sum = 0.0;
    for v in row.iter_mut() {
        *v = (*v - max).exp();
        sum += *v;
    }
    for v in row.iter_mut() {
        *v /= sum;
    }
}
