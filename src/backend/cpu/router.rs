//! The MoE router: fp32 sigmoid scores, the correction bias used only to choose,
//! group-limited top-k, renormalized and scaled weights.

use rayon::prelude::*;

use super::{dot, top_k};

/// One token's routing: expert ids (ascending) and their weights.
#[derive(Debug, Clone, PartialEq)]
pub struct Route {
    pub experts: Vec<u32>,
    pub weights: Vec<f32>,
}

/// The model's routing rule.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct RouterConfig {
    pub experts: usize,
    pub top_k: usize,
    /// Experts fall in `groups` equal groups; only the best `keep_groups` may be chosen.
    pub groups: usize,
    pub keep_groups: usize,
    /// Renormalize the chosen weights to sum 1 before scaling.
    pub normalize: bool,
    pub scaling: f32,
}

/// Experts scored per task when the scores are split over the threads.
const EXPERT_BLOCK: usize = 16;

/// Routes each of the n tokens of x [n, D] with router [E, D] (f32) and bias [E].
pub fn route(x: &[f32], n: usize, router: &[f32], bias: &[f32], c: &RouterConfig) -> Vec<Route> {
    let e = c.experts;
    let d = router.len() / e.max(1);
    let all_scores = sigmoid_scores(x, n, router, e, d); // [n, E]
    (0..n)
        .map(|t| {
            let scores = &all_scores[t * e..(t + 1) * e];
            let mut choice: Vec<f32> = scores.iter().zip(bias).map(|(s, b)| s + b).collect();
            if c.groups > 1 {
                let per = e / c.groups;
                // A group's score is the sum of its two best choices.
                let group_scores: Vec<f32> = choice
                    .chunks(per)
                    .map(|g| {
                        let best = top_k(g, 2);
                        best.iter().map(|&i| g[i as usize]).sum()
                    })
                    .collect();
                let kept = top_k(&group_scores, c.keep_groups);
                for (gi, g) in choice.chunks_mut(per).enumerate() {
                    if !kept.contains(&(gi as u32)) {
                        g.fill(f32::NEG_INFINITY);
                    }
                }
            }
            let experts = top_k(&choice, c.top_k);
            let mut weights: Vec<f32> = experts.iter().map(|&j| scores[j as usize]).collect();
            if c.normalize {
                let sum: f32 = weights.iter().sum::<f32>() + 1e-20;
                weights.iter_mut().for_each(|v| *v /= sum);
            }
            weights.iter_mut().for_each(|v| *v *= c.scaling);
            Route { experts, weights }
        })
        .collect()
}

/// sigmoid(x router^T) -> [n, E], split over the threads in blocks of experts when large: a
/// decode step's router (64 x 1024 f32 in the mid-size bench model) read by one thread left
/// the other idle. Each score is one `dot`, wherever it runs.
fn sigmoid_scores(x: &[f32], n: usize, router: &[f32], e: usize, d: usize) -> Vec<f32> {
    let mut scores = vec![0.0f32; n * e]; // [n, E]
    let score = |(i, out): (usize, &mut [f32])| {
        let per_token = e.div_ceil(EXPERT_BLOCK);
        let (t, j0) = (i / per_token, i % per_token * EXPERT_BLOCK);
        let xt = &x[t * d..(t + 1) * d];
        for (k, s) in out.iter_mut().enumerate() {
            let logit = dot(xt, &router[(j0 + k) * d..(j0 + k + 1) * d]);
            *s = 1.0 / (1.0 + (-logit).exp());
        }
    };
    // Blocks of EXPERT_BLOCK experts within each token's row (the last may be shorter).
    let tasks: Vec<&mut [f32]> = scores.chunks_mut(e.max(1)).flat_map(|row| row.chunks_mut(EXPERT_BLOCK)).collect();
    if n * e * d >= super::PARALLEL_MIN_WORK {
        tasks.into_par_iter().enumerate().for_each(score);
    } else {
        tasks.into_iter().enumerate().for_each(score);
    }
    scores
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scores_split_over_threads_are_each_tokens_own_dots() {
        // 20 experts: a short last block; d 1024: split over the threads (n * e * d is past
        // PARALLEL_MIN_WORK); d 8: one thread.
        for (n, e, d) in [(3, 20, 1024), (2, 64, 1024), (3, 20, 8)] {
            let x: Vec<f32> = (0..n * d).map(|i| ((i * 37 % 101) as f32 - 50.0) / 60.0).collect(); // [n, d]
            let router: Vec<f32> = (0..e * d).map(|i| ((i * 53 % 97) as f32 - 48.0) / 500.0).collect(); // [e, d]
            let scores = sigmoid_scores(&x, n, &router, e, d);
            assert_eq!(scores.len(), n * e);
            for t in 0..n {
                for j in 0..e {
                    let logit = dot(&x[t * d..(t + 1) * d], &router[j * d..(j + 1) * d]);
                    let want = 1.0 / (1.0 + (-logit).exp());
                    assert_eq!(scores[t * e + j].to_bits(), want.to_bits(), "n {n} e {e} d {d}: token {t} expert {j}");
                }
            }
        }
    }
}
