//! The DSA lightning indexer's scores: for one query, per cached key,
//! sum over heads of w_h * ReLU(q_h . k * dot_scale).

use super::kernels::{Acts, Isa, block_dots};
use super::{HostKvStore, dot};

/// One query's index scores against `keys` [T, Di]: q [Hi, Di], w [Hi] (already scaled).
pub fn score_row(q: &[f32], w: &[f32], keys: &[f32], dot_scale: f32) -> Vec<f32> {
    let di = q.len() / w.len().max(1);
    keys.chunks(di).map(|k| score_key(q, w, k, dot_scale)).collect()
}

/// Keys scored per kernel call at most: a run of consecutive slots (a page or more).
const RUN: usize = 64;

/// The same over the keys stored at `slots` of `layer`, read in place: each run of
/// consecutive slots goes through the dot-product kernels with the query's heads as the
/// tokens (the same arithmetic as `dot` on the decoded key).
pub fn score_slots(
    q: &[f32],
    w: &[f32],
    store: &HostKvStore,
    layer: usize,
    slots: &[usize],
    dot_scale: f32,
) -> Vec<f32> {
    let (hi, di) = (w.len(), store.geometry.index);
    let acts = Acts::new(Isa::current(), false, q, hi, di);
    let mut scores = Vec::with_capacity(slots.len()); // [T]
    let mut dots = vec![0.0f32; RUN * hi]; // [run, Hi]
    let mut k = vec![0.0f32; di]; // [Di], a decoded fp8 key
    let mut i = 0;
    while i < slots.len() {
        let mut j = i + 1;
        while j < slots.len() && j - i < RUN && slots[j] == slots[j - 1] + 1 {
            j += 1;
        }
        match store.index_rows(layer, slots[i], j - i) {
            Some(rows) => block_dots(&acts, rows, j - i, 0, hi, &mut dots, hi),
            None => {
                for (r, &s) in slots[i..j].iter().enumerate() {
                    store.read_index(layer, s, &mut k);
                    for h in 0..hi {
                        dots[r * hi + h] = dot(&q[h * di..(h + 1) * di], &k);
                    }
                }
            }
        }
        for d in dots[..(j - i) * hi].chunks(hi) {
            scores.push(weigh(w, d, dot_scale));
        }
        i = j;
    }
    scores
}

/// sum over heads of w_h * ReLU(dot_h * dot_scale); ReLU before the head weighting, as the
/// weights may be negative.
fn weigh(w: &[f32], dots: &[f32], dot_scale: f32) -> f32 {
    w.iter().zip(dots).map(|(wh, d)| wh * (d * dot_scale).max(0.0)).sum()
}

fn score_key(q: &[f32], w: &[f32], k: &[f32], dot_scale: f32) -> f32 {
    let di = k.len();
    let dots: Vec<f32> = (0..w.len()).map(|h| dot(&q[h * di..(h + 1) * di], k)).collect(); // [Hi]
    weigh(w, &dots, dot_scale)
}
