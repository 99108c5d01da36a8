//! The one ranking rule of every top-k in kiln (the indexer's keys, the router's experts,
//! sampling's candidates), on the CPU and in the kernels (kernels/compat.h,
//! `kiln_ranks_before`): larger values first, -0 equal to +0, NaN after every number, and
//! among equal values the lower index first. A selection is then a function of its scores
//! alone, so the CPU and a device pick the same set whatever order they visit it in.

use std::cmp::Ordering;

use super::kernels::aligned::Aligned;

/// How (value, index) `a` ranks against `b`: Less when `a` comes first.
pub fn rank_order(a: (f32, u32), b: (f32, u32)) -> Ordering {
    match (a.0.is_nan(), b.0.is_nan()) {
        (false, true) => Ordering::Less,
        (true, false) => Ordering::Greater,
        (true, true) => a.1.cmp(&b.1),
        (false, false) => b.0.partial_cmp(&a.0).unwrap_or(Ordering::Equal).then(a.1.cmp(&b.1)),
    }
}

/// Indices of the `k` first scores under the ranking rule, ascending.
pub fn top_k(scores: &[f32], k: usize) -> Vec<u32> {
    let mut idx = vec![0u32; k.min(scores.len())];
    top_k_into(scores, k, &mut idx);
    idx
}

/// `top_k` written to the front of `out` (at least min(k, scores.len()) long); how many.
/// Its scratch comes from the scratch pool, so a step's per-query selections allocate
/// nothing.
pub fn top_k_into(scores: &[f32], k: usize, out: &mut [u32]) -> usize {
    // Each (score, index) as one integer that sorts in rank order, so the selection compares
    // plain u64s (a closure of NaN checks per comparison cost more than the scoring).
    let mut keys = Aligned::<u64>::for_overwrite(scores.len()); // [T], every key written below
    for (key, (i, &v)) in keys.iter_mut().zip(scores.iter().enumerate()) {
        *key = (u64::from(rank_key(v)) << 32) | i as u64;
    }
    let k = k.min(keys.len());
    if k < keys.len() {
        keys.select_nth_unstable(k);
    }
    for (o, &key) in out[..k].iter_mut().zip(&keys[..k]) {
        *o = key as u32;
    }
    out[..k].sort_unstable();
    k
}

/// A score as a u32 that orders as `rank_order` does, ties aside: larger values smaller
/// keys, -0 the same key as +0, every NaN the largest key.
fn rank_key(v: f32) -> u32 {
    if v.is_nan() {
        return u32::MAX;
    }
    let bits = if v == 0.0 { 0 } else { v.to_bits() };
    // Ascending in v: negative values have every bit flipped, positive ones the sign set.
    let ascending = if bits >> 31 == 1 { !bits } else { bits | 1 << 31 };
    !ascending
}

/// The first index under the ranking rule (0 for an empty slice).
///
/// The largest number, then the first index holding it: a NaN never compares larger nor
/// equal, so it ranks after every number; `==` holds -0 equal to +0; a slice of NaN alone
/// gives 0. The search for the largest is a plain maximum in 16 lanes, which vectorizes: a
/// greedy step over every row of a batch or a verification (4096 to 154,880 logits each)
/// spent as long comparing pairs under the rule as its lm_head took to compute them.
pub fn arg_first(values: &[f32]) -> u32 {
    let mut lanes = [f32::NEG_INFINITY; 16];
    let chunks = values.chunks_exact(16);
    let rest = chunks.remainder();
    for chunk in chunks {
        for (m, &v) in lanes.iter_mut().zip(chunk) {
            *m = if v > *m { v } else { *m };
        }
    }
    let largest = lanes.iter().chain(rest).fold(f32::NEG_INFINITY, |m, &v| if v > m { v } else { m });
    values.iter().position(|&v| v == largest).unwrap_or(0) as u32
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn picks_the_largest() {
        assert_eq!(top_k(&[0.1, 5.0, -1.0, 3.0, 2.0], 2), vec![1, 3]);
        assert_eq!(top_k(&[1.0, 2.0], 5), vec![0, 1]);
    }

    #[test]
    fn nan_ranks_after_every_number_and_ties_go_to_the_lower_index() {
        assert_eq!(top_k(&[f32::NAN, 1.0, f32::NEG_INFINITY], 2), vec![1, 2]);
        assert_eq!(top_k(&[f32::NAN, f32::NAN, 0.0], 2), vec![0, 2]);
        assert_eq!(top_k(&[2.0, 1.0, 2.0, 2.0, 1.0], 2), vec![0, 2]);
        assert_eq!(top_k(&[-0.0, 0.0, -0.0], 1), vec![0]);
        // Many ties: the set is the lowest indices, whatever select_nth visits first.
        let flat = vec![0.5f32; 1000];
        assert_eq!(top_k(&flat, 10), (0..10).collect::<Vec<u32>>());
        assert_eq!(arg_first(&[f32::NAN, 3.0, 3.0]), 1);
        assert_eq!(arg_first(&[f32::NAN, f32::NAN]), 0);
    }

    #[test]
    fn agrees_with_the_ranking_rule() {
        // Every pair of these values (and their order under rank_order) across k.
        let special =
            [f32::NAN, -f32::NAN, f32::INFINITY, f32::NEG_INFINITY, 0.0, -0.0, f32::MIN_POSITIVE, -1e-40, 1e-40];
        let mut scores: Vec<f32> = special.to_vec();
        let mut state = 0x2545_f491_u32;
        for _ in 0..200 {
            state ^= state << 13;
            state ^= state >> 17;
            state ^= state << 5;
            // Few distinct values, so ties are common.
            scores.push(((state % 41) as f32 - 20.0) / 8.0);
        }
        // arg_first is the first of them, on every prefix (all lengths around the 16 lanes).
        for n in 0..scores.len() {
            let first = (0..n as u32).min_by(|&a, &b| rank_order((scores[a as usize], a), (scores[b as usize], b)));
            assert_eq!(arg_first(&scores[..n]), first.unwrap_or(0), "first {n}");
            let reversed: Vec<f32> = scores[..n].iter().rev().copied().collect();
            let first = (0..n as u32).min_by(|&a, &b| rank_order((reversed[a as usize], a), (reversed[b as usize], b)));
            assert_eq!(arg_first(&reversed), first.unwrap_or(0), "first {n}, reversed");
        }
        for k in [0, 1, 5, 64, 150, 209, 300] {
            let mut expect: Vec<u32> = (0..scores.len() as u32).collect();
            expect.sort_by(|&a, &b| rank_order((scores[a as usize], a), (scores[b as usize], b)));
            expect.truncate(k);
            expect.sort_unstable();
            assert_eq!(top_k(&scores, k), expect, "k = {k}");
        }
    }
}
