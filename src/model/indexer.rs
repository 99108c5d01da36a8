//! The DSA lightning indexer (reference/glm-dsa-spec.md 3.5 and 3.6): per query, the
//! index_topk earlier tokens attention may look at. Shared layers reuse the selection of the
//! last full layer in the same forward (IndexShare).

use rayon::prelude::*;

use super::weights::IndexerWeights;
use crate::backend::cpu::{Rope, dot, layer_norm_rows, matmul, top_k};
use crate::plan::ModelShape;

/// The indexer key LayerNorm's eps in HF.
pub const INDEX_NORM_EPS: f32 = 1e-6;

/// What each query of a forward may attend to.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Selection {
    /// Per query: `None` = every causal key (the query has at most index_topk of them, so
    /// top-k keeps all, as in HF); `Some` = the chosen key positions, ascending.
    pub rows: Vec<Option<Vec<u32>>>,
}

impl Selection {
    pub fn row(&self, i: usize) -> Option<&[u32]> {
        self.rows.get(i).and_then(|r| r.as_deref())
    }
}

/// The indexer keys of S tokens (any sequences): LayerNorm, then RoPE on the first dims.
pub fn keys(w: &IndexerWeights, m: &ModelShape, rope: &Rope, x: &[f32], positions: &[usize], aq: bool) -> Vec<f32> {
    let (di, dr) = (m.index_head_dim as usize, m.qk_rope_head_dim as usize);
    let mut k = matmul(x, positions.len(), &w.wk, aq); // [S, Di]
    layer_norm_rows(&mut k, &w.k_norm_w, &w.k_norm_b, INDEX_NORM_EPS);
    for (t, &pos) in positions.iter().enumerate() {
        rope.apply(&mut k[t * di..t * di + dr], pos);
    }
    k
}

/// One query's index scores against `keys` [T, Di] (the GPU `indexer` kernel's twin):
/// sum over heads of w_h * ReLU(q_h . k_t * dot_scale). q [Hi, Di], w [Hi] (already scaled).
pub fn score_row(q: &[f32], w: &[f32], keys: &[f32], dot_scale: f32) -> Vec<f32> {
    let hi = w.len();
    let di = q.len() / hi.max(1);
    keys.chunks(di)
        .map(|k| {
            (0..hi)
                // ReLU before the head weighting; weights may be negative.
                .map(|h| w[h] * (dot(&q[h * di..(h + 1) * di], k) * dot_scale).max(0.0))
                .sum()
        })
        .collect()
}

/// Scores one sequence's S queries against its cached indexer keys (the new ones included)
/// and keeps the top index_topk causal keys of each.
#[allow(clippy::too_many_arguments)]
pub fn select(
    w: &IndexerWeights,
    m: &ModelShape,
    rope: &Rope,
    x: &[f32],     // [S, D], input-normed
    q_lat: &[f32], // [S, q_lora]
    positions: &[usize],
    keys: &[f32], // [T, Di]: the sequence's cached indexer keys
    aq: bool,
) -> Selection {
    let s = positions.len();
    let (hi, di, dr) = (m.index_n_heads as usize, m.index_head_dim as usize, m.qk_rope_head_dim as usize);
    let k_top = m.index_topk as usize;

    // Queries whose causal window fits in top-k keep everything: skip their scoring.
    if positions.iter().all(|&p| p < k_top) {
        return Selection { rows: vec![None; s] };
    }
    let mut q = matmul(q_lat, s, &w.wq_b, aq); // [S, Hi, Di]
    for (t, &pos) in positions.iter().enumerate() {
        for head in 0..hi {
            let base = (t * hi + head) * di;
            rope.apply(&mut q[base..base + dr], pos);
        }
    }
    let mut wts = matmul(x, s, &w.weights_proj, aq); // [S, Hi]
    let head_scale = 1.0 / (hi as f32).sqrt();
    wts.iter_mut().for_each(|v| *v *= head_scale);
    let dot_scale = 1.0 / (di as f32).sqrt();

    let row = |(i, &pos): (usize, &usize)| -> Option<Vec<u32>> {
        if pos < k_top {
            return None;
        }
        let scores = score_row(
            &q[i * hi * di..(i + 1) * hi * di],
            &wts[i * hi..(i + 1) * hi],
            &keys[..(pos + 1) * di],
            dot_scale,
        );
        Some(top_k(&scores, k_top))
    };
    let rows = if s > 1 {
        positions.par_iter().enumerate().map(row).collect()
    } else {
        positions.iter().enumerate().map(row).collect()
    };
    Selection { rows }
}
