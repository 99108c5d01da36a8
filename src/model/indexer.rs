//! The DSA lightning indexer (the GLM-DSA spec's sections 3.5 and 3.6): per query, the
//! index_topk earlier tokens attention may look at. Shared layers reuse the selection of the
//! last full layer in the same forward (IndexShare).

use super::projections::IndexQueries;
use super::weights::IndexerWeights;
use crate::backend::Backend;
use crate::error::Result;
use crate::plan::ModelShape;

/// The indexer key LayerNorm's eps in HF.
pub const INDEX_NORM_EPS: f32 = 1e-6;

/// The step's indexer keys k = wk x [n, Di] (LayerNorm, then RoPE on the first dims) into
/// `layer`.
pub fn write_keys<B: Backend>(
    b: &B,
    w: &IndexerWeights<B>,
    inv_freq: &B::Vector,
    k: &B::Tensor,
    batch: &B::Batch,
    kv: &mut B::KvStore,
    layer: usize,
) -> Result<()> {
    let mut k = b.layer_norm(k, &w.k_norm_w, &w.k_norm_b, INDEX_NORM_EPS)?;
    b.rope(&mut k, batch, inv_freq, 1, 0)?;
    b.write_index(kv, layer, batch, &k)
}

/// Scores each query against its sequence's cached keys (this step's included) and keeps the
/// top index_topk of each; `scoring` holds the step's indexer queries and head weights, None
/// when every query's causal window fits in top-k (then everything is kept).
#[allow(clippy::too_many_arguments)]
pub fn select<B: Backend>(
    b: &B,
    m: &ModelShape,
    inv_freq: &B::Vector,
    scoring: Option<IndexQueries<B>>,
    batch: &B::Batch,
    kv: &B::KvStore,
    layer: usize,
) -> Result<B::Selection> {
    let (hi, di) = (m.index_n_heads as usize, m.index_head_dim as usize);
    let Some(IndexQueries { mut q, weights: mut wts }) = scoring else {
        return b.select_all(batch);
    };
    b.rope(&mut q, batch, inv_freq, hi, 0)?; // [n, Hi * Di]
    b.scale(&mut wts, 1.0 / (hi as f32).sqrt())?; // [n, Hi]
    b.indexer_select(kv, layer, batch, &q, &wts, m.index_topk as usize, 1.0 / (di as f32).sqrt())
}
