//! The DSA lightning indexer's scores: for one query, per cached key,
//! sum over heads of w_h * ReLU(q_h . k * dot_scale).

use super::{HostKvStore, dot};

/// One query's index scores against `keys` [T, Di]: q [Hi, Di], w [Hi] (already scaled).
pub fn score_row(q: &[f32], w: &[f32], keys: &[f32], dot_scale: f32) -> Vec<f32> {
    let di = q.len() / w.len().max(1);
    keys.chunks(di).map(|k| score_key(q, w, k, dot_scale)).collect()
}

/// The same over the keys stored at `slots` of `layer`, read in place.
pub fn score_slots(
    q: &[f32],
    w: &[f32],
    store: &HostKvStore,
    layer: usize,
    slots: &[usize],
    dot_scale: f32,
) -> Vec<f32> {
    let mut k = vec![0.0f32; store.geometry.index];
    slots
        .iter()
        .map(|&s| {
            store.read_index(layer, s, &mut k);
            score_key(q, w, &k, dot_scale)
        })
        .collect()
}

fn score_key(q: &[f32], w: &[f32], k: &[f32], dot_scale: f32) -> f32 {
    let di = k.len();
    (0..w.len())
        // ReLU before the head weighting; weights may be negative.
        .map(|h| w[h] * (dot(&q[h * di..(h + 1) * di], k) * dot_scale).max(0.0))
        .sum()
}
