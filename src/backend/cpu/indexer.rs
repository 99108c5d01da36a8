//! The DSA lightning indexer's scores: for one query, per cached key,
//! sum over heads of w_h * ReLU(q_h . k * dot_scale).

use super::index_dots::{self, HeadsT, weigh};
use super::kernels::aligned::Aligned;
use super::kernels::{Acts, Isa, block_dots, decode_range};
use super::{HostKvStore, dot};

/// One query's index scores against `keys` [T, Di]: q [Hi, Di], w [Hi] (already scaled).
pub fn score_row(q: &[f32], w: &[f32], keys: &[f32], dot_scale: f32) -> Vec<f32> {
    let di = q.len() / w.len().max(1);
    keys.chunks(di).map(|k| score_key(q, w, k, dot_scale)).collect()
}

/// The query heads as a form of the kernels reads them. One lives on the stack per span
/// (not boxed: a batched decode step scores a span or more per sequence).
#[allow(clippy::large_enum_variant)]
enum Heads<'a> {
    /// Transposed for the outer products (`index_dots`).
    Outer(HeadsT),
    /// As the dot-product kernels' tokens.
    Dots(Acts<'a>),
}

/// Keys scored per kernel call at most: a run of consecutive slots (a page or more).
const RUN: usize = 64;

/// Query heads per kernel call at most: 64 of them are 16 KiB of activations for keys of 64
/// values.
const QUERY_BLOCK_ROWS: usize = 64;

/// One query's scores against the keys stored at `slots` of `layer`, read in place: q [Hi,
/// Di], w [Hi] (already scaled) -> [T].
pub fn score_slots(
    q: &[f32],
    w: &[f32],
    store: &HostKvStore,
    layer: usize,
    slots: &[usize],
    dot_scale: f32,
) -> Vec<f32> {
    let mut row = vec![0.0f32; slots.len()]; // [T]
    score_span(q, w, store, layer, slots, 0, &[slots.len()], dot_scale, &mut row);
    row
}

/// How many of a span of `keys` keys from k0 a query of `limit` scores: k0..min(limit, k0 + keys).
pub fn span_part(k0: usize, keys: usize, limit: usize) -> usize {
    limit.min(k0 + keys).saturating_sub(k0)
}

/// Scores `score_span` writes: every query's part, one after the other.
pub fn span_scores(k0: usize, keys: usize, limits: &[usize]) -> usize {
    limits.iter().map(|&l| span_part(k0, keys, l)).sum()
}

/// Queries of one sequence against a span of its keys, `slots` holding keys k0.. of `layer`:
/// q [k, Hi * Di] (query j's heads), w [k, Hi] (already scaled); query j scores the keys
/// below `limits[j]` (its position + 1), and the limits ascend. Writes, per query, the scores
/// of keys k0..min(limits[j], k0 + slots.len()) (none when limits[j] <= k0; `span_part` of
/// them) into `out` [span_scores(...)], each query's after those of the queries before it.
///
/// Each run of consecutive slots goes through the kernels once, with the heads of every
/// query that scores any of its keys: a verification step's or a prompt chunk's queries
/// then read each key once, not once each. Heads by eights (the models' 32) go through the
/// outer products of `index_dots`, fewer (the demo's 4) as the tokens of the dot-product
/// kernels, where eight lanes would be half empty. A (key, query, head) dot is the same
/// arithmetic in any tile of either (and `dot` on a decoded fp8 key is that of one query
/// alone), so a query's scores are the same bits whatever else is scored with it.
#[allow(clippy::too_many_arguments)]
pub fn score_span(
    q: &[f32],
    w: &[f32],
    store: &HostKvStore,
    layer: usize,
    slots: &[usize],
    k0: usize,
    limits: &[usize],
    dot_scale: f32,
    out: &mut [f32],
) {
    let (k, di) = (limits.len(), store.geometry.index);
    let hi = w.len() / k.max(1);
    assert!(q.len() == k * hi * di && w.len() == k * hi, "score_span: q or w is not [{k}, {hi}, {di}]");
    assert!(limits.is_sorted(), "score_span: limits not ascending");
    let heads = match hi > 0 && hi.is_multiple_of(8) {
        true => Heads::Outer(HeadsT::new(q, k * hi, di)),
        false => Heads::Dots(Acts::new(Isa::current(), false, q, k * hi, di)),
    };
    assert_eq!(out.len(), span_scores(k0, slots.len(), limits), "score_span: out is not every query's part");
    let mut next = Aligned::<usize>::zeroed(k); // [k]: where query j's next score goes in `out`
    for j in 1..k {
        next[j] = next[j - 1] + span_part(k0, slots.len(), limits[j - 1]);
    }
    let mut dots = Aligned::<f32>::zeroed(RUN * k * hi); // [run, active queries x Hi]
    let mut keys = Aligned::<f32>::zeroed(RUN * di); // [run, Di] decoded (one at a time for the dot products)
    let mut i = 0;
    while i < slots.len() {
        // The queries that score key k0 + i, and so every key of this run they may see.
        let first = limits.partition_point(|&l| l <= k0 + i);
        if first == k {
            break;
        }
        let mut j = i + 1;
        while j < slots.len() && j - i < RUN && slots[j] == slots[j - 1] + 1 {
            j += 1;
        }
        let (t0, tb) = (first * hi, (k - first) * hi);
        match &heads {
            Heads::Outer(h) => {
                // The run's keys as f32: in place formats in one pass over the run, fp8 key by key.
                let n = (j - i) * di;
                match store.index_rows(layer, slots[i], j - i) {
                    Some(rows) => decode_range(rows.row(0, n), 0, &mut keys[..n]),
                    None => {
                        for (r, &s) in slots[i..j].iter().enumerate() {
                            store.read_index(layer, s, &mut keys[r * di..(r + 1) * di]);
                        }
                    }
                }
                index_dots::dots(&keys, j - i, h, t0, &mut dots, tb);
            }
            Heads::Dots(acts) => match store.index_rows(layer, slots[i], j - i) {
                // The kernels sweep all their tokens for each pair of keys: in blocks that
                // stay in L1 beside the run's keys (a prompt chunk's queries would not).
                Some(rows) => {
                    let block = (QUERY_BLOCK_ROWS / hi.max(1)).max(1) * hi;
                    for b0 in (0..tb).step_by(block) {
                        let bn = block.min(tb - b0);
                        block_dots(acts, rows, false, j - i, t0 + b0, bn, &mut dots[b0..], tb);
                    }
                }
                None => {
                    for (r, &s) in slots[i..j].iter().enumerate() {
                        store.read_index(layer, s, &mut keys[..di]);
                        for t in 0..tb {
                            dots[r * tb + t] = dot(&q[(t0 + t) * di..(t0 + t + 1) * di], &keys[..di]);
                        }
                    }
                }
            },
        }
        for (r, d) in dots[..(j - i) * tb].chunks(tb).enumerate() {
            // The queries that see key k0 + i + r: a suffix, the limits ascending.
            for qj in limits.partition_point(|&l| l <= k0 + i + r)..k {
                let (wq, dq) = (&w[qj * hi..(qj + 1) * hi], &d[(qj - first) * hi..(qj - first + 1) * hi]);
                out[next[qj]] = weigh(wq, dq, dot_scale);
                next[qj] += 1;
            }
        }
        i = j;
    }
}

fn score_key(q: &[f32], w: &[f32], k: &[f32], dot_scale: f32) -> f32 {
    let di = k.len();
    let dots: Vec<f32> = (0..w.len()).map(|h| dot(&q[h * di..(h + 1) * di], k)).collect(); // [Hi]
    weigh(w, &dots, dot_scale)
}

#[cfg(test)]
mod tests {
    use rand::{Rng, SeedableRng};
    use rand_chacha::ChaCha8Rng;

    use super::*;
    use crate::kv::{KvFormat, KvGeometry};

    /// Values in [-1, 1), seeded.
    fn values(n: usize, seed: u64) -> Vec<f32> {
        let mut rng = ChaCha8Rng::seed_from_u64(seed);
        (0..n).map(|_| rng.random_range(-1.0..1.0)).collect()
    }

    #[test]
    fn queries_scored_together_get_the_bits_of_each_alone() {
        // 3 x 20 and 4 x 32 heads (the dot-product kernels; 40 queries are 120 and 160
        // query heads, more than one kernel call's block), 8 x 20 and 40 x 64 (the outer
        // products: 40 heads are a block of 32 and one of 8). Pages of 8 in shuffled order
        // break the runs of consecutive slots; limits repeat, and some end before a span
        // starts.
        for (hi, di) in [(3, 20), (4, 32), (8, 20), (40, 64)] {
            for format in [KvFormat::F32, KvFormat::Bf16, KvFormat::Fp8E4m3] {
                let keys = 300;
                let g = KvGeometry { latent: 4, rope: 2, index: di, indexed: vec![true] };
                let mut store = HostKvStore::new(format, g, keys + 8);
                let pages: Vec<usize> = (0..keys.div_ceil(8)).map(|p| (p * 17) % keys.div_ceil(8)).collect();
                let slots: Vec<usize> = (0..keys).map(|t| pages[t / 8] * 8 + t % 8).collect();
                let raw = values(keys * di, 1);
                for (t, &s) in slots.iter().enumerate() {
                    store.write_index(0, s, &raw[t * di..(t + 1) * di]);
                }
                let k = 40;
                let q = values(k * hi * di, 2); // [k, Hi * Di]
                let w = values(k * hi, 3); // [k, Hi]
                let mut limits: Vec<usize> = (0..k).map(|j| 1 + (j * 37) % keys).collect();
                limits.sort_unstable();
                limits[5] = limits[4];
                let alone: Vec<Vec<f32>> = (0..k)
                    .map(|j| {
                        let (qj, wj) = (&q[j * hi * di..(j + 1) * hi * di], &w[j * hi..(j + 1) * hi]);
                        score_slots(qj, wj, &store, 0, &slots[..limits[j]], 0.125)
                    })
                    .collect();
                for bounds in [vec![0, keys], vec![0, 64, 100, 171, keys]] {
                    let mut together = vec![Vec::new(); k];
                    for span in bounds.windows(2) {
                        let (k0, k1) = (span[0], span[1]);
                        let mut out = vec![f32::NAN; span_scores(k0, k1 - k0, &limits)];
                        score_span(&q, &w, &store, 0, &slots[k0..k1], k0, &limits, 0.125, &mut out);
                        let mut at = 0;
                        for (row, &l) in together.iter_mut().zip(&limits) {
                            let part = span_part(k0, k1 - k0, l);
                            assert!(part <= k1 - k0);
                            row.extend_from_slice(&out[at..at + part]);
                            at += part;
                        }
                    }
                    for j in 0..k {
                        let bits = |r: &[f32]| r.iter().map(|v| v.to_bits()).collect::<Vec<_>>();
                        assert_eq!(together[j].len(), limits[j], "{format:?} {hi}x{di} query {j}");
                        assert_eq!(
                            bits(&together[j]),
                            bits(&alone[j]),
                            "{format:?} {hi}x{di} query {j} spans {bounds:?}"
                        );
                    }
                }
            }
        }
    }
}
