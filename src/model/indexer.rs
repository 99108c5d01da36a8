//! The DSA lightning indexer (the GLM-DSA spec's sections 3.5 and 3.6): per query, the
//! index_topk earlier tokens attention may look at. Shared layers reuse the selection of the
//! last full layer in the same forward (IndexShare).

use super::weights::IndexerWeights;
use crate::backend::{Backend, StepBatch};
use crate::error::Result;
use crate::plan::ModelShape;

/// The indexer key LayerNorm's eps in HF.
pub const INDEX_NORM_EPS: f32 = 1e-6;

/// The step's indexer keys (LayerNorm, then RoPE on the first dims) into `layer`.
#[allow(clippy::too_many_arguments)]
pub fn write_keys<B: Backend>(
    b: &B,
    w: &IndexerWeights<B>,
    inv_freq: &B::Vector,
    x: &B::Tensor, // [n, D], input-normed
    batch: &B::Batch,
    kv: &mut B::KvStore,
    layer: usize,
    aq: bool,
) -> Result<()> {
    let k = b.linear(x, &w.wk, aq)?; // [n, Di]
    let mut k = b.layer_norm(&k, &w.k_norm_w, &w.k_norm_b, INDEX_NORM_EPS)?;
    b.rope(&mut k, batch, inv_freq, 1, 0)?;
    b.write_index(kv, layer, batch, &k)
}

/// Scores each query against its sequence's cached keys (this step's included) and keeps the
/// top index_topk of each.
#[allow(clippy::too_many_arguments)]
pub fn select<B: Backend>(
    b: &B,
    w: &IndexerWeights<B>,
    m: &ModelShape,
    inv_freq: &B::Vector,
    x: &B::Tensor,     // [n, D], input-normed
    q_lat: &B::Tensor, // [n, q_lora]
    step: &StepBatch,
    batch: &B::Batch,
    kv: &B::KvStore,
    layer: usize,
    aq: bool,
) -> Result<B::Selection> {
    let (hi, di) = (m.index_n_heads as usize, m.index_head_dim as usize);
    let k_top = m.index_topk as usize;
    // Queries whose causal window fits in top-k keep everything: skip their scoring.
    if step.positions.iter().all(|&p| p < k_top) {
        return b.select_all(batch);
    }
    let mut q = b.linear(q_lat, &w.wq_b, aq)?; // [n, Hi * Di]
    b.rope(&mut q, batch, inv_freq, hi, 0)?;
    let mut wts = b.linear(x, &w.weights_proj, aq)?; // [n, Hi]
    b.scale(&mut wts, 1.0 / (hi as f32).sqrt())?;
    b.indexer_select(kv, layer, batch, &q, &wts, k_top, 1.0 / (di as f32).sqrt())
}
