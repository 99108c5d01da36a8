//! The MoE router: fp32 sigmoid scores, the correction bias used only to choose,
//! group-limited top-k, renormalized and scaled weights.

use rayon::prelude::*;

use super::kernels::aligned::Aligned;
use super::{dot, top_k_into};

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

/// Every token's routing in one pair of buffers: token t's experts (ascending) are
/// experts[t * k..(t + 1) * k], their weights likewise, so a step allocates nothing per token.
#[derive(Debug, Clone, PartialEq)]
pub struct Routing {
    pub k: usize,
    pub experts: Vec<u32>, // [n, k]
    pub weights: Vec<f32>, // [n, k]
}

impl Routing {
    pub fn n(&self) -> usize {
        self.experts.len() / self.k.max(1)
    }

    /// Token t's (experts, weights).
    pub fn token(&self, t: usize) -> (&[u32], &[f32]) {
        (&self.experts[t * self.k..(t + 1) * self.k], &self.weights[t * self.k..(t + 1) * self.k])
    }

    /// One `Route` per token, as traces read them.
    pub fn to_routes(&self) -> Vec<Route> {
        (0..self.n())
            .map(|t| {
                let (experts, weights) = self.token(t);
                Route { experts: experts.to_vec(), weights: weights.to_vec() }
            })
            .collect()
    }
}

/// Routes each of the n tokens of x [n, D] with router [E, D] (f32) and bias [E].
pub fn route(x: &[f32], n: usize, router: &[f32], bias: &[f32], c: &RouterConfig) -> Vec<Route> {
    routing(x, n, router, bias, c).to_routes()
}

/// `route` into one `Routing`.
pub fn routing(x: &[f32], n: usize, router: &[f32], bias: &[f32], c: &RouterConfig) -> Routing {
    let e = c.experts;
    let d = router.len() / e.max(1);
    let k = c.top_k.min(e);
    let all_scores = sigmoid_scores(x, n, router, e, d); // [n, E]
    let mut out = Routing { k, experts: vec![0; n * k], weights: vec![0.0; n * k] };
    let per = e / c.groups.max(1);
    let mut choice = Aligned::<f32>::for_overwrite(e); // [E] scores + bias, the kept groups' only; written per token
    let mut group_scores = Aligned::<f32>::zeroed(e.div_ceil(per.max(1))); // [groups]
    let mut best = Aligned::<u32>::zeroed(e.max(2)); // [E] indices from top-k
    for t in 0..n {
        let scores = &all_scores[t * e..(t + 1) * e];
        for ((o, s), b) in choice.iter_mut().zip(scores).zip(bias) {
            *o = s + b;
        }
        if c.groups > 1 {
            // A group's score is the sum of its two best choices.
            for (gs, g) in group_scores.iter_mut().zip(choice.chunks(per)) {
                let m = top_k_into(g, 2, &mut best);
                *gs = best[..m].iter().map(|&i| g[i as usize]).sum();
            }
            let m = top_k_into(&group_scores, c.keep_groups, &mut best);
            for (gi, g) in choice.chunks_mut(per).enumerate() {
                if !best[..m].contains(&(gi as u32)) {
                    g.fill(f32::NEG_INFINITY);
                }
            }
        }
        let (experts, weights) = (&mut out.experts[t * k..(t + 1) * k], &mut out.weights[t * k..(t + 1) * k]);
        top_k_into(&choice, k, experts);
        for (w, &j) in weights.iter_mut().zip(experts.iter()) {
            *w = scores[j as usize];
        }
        if c.normalize {
            let sum: f32 = weights.iter().sum::<f32>() + 1e-20;
            weights.iter_mut().for_each(|v| *v /= sum);
        }
        weights.iter_mut().for_each(|v| *v *= c.scaling);
    }
    out
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
    let mut tasks: Vec<&mut [f32]> = Vec::with_capacity(n * e.div_ceil(EXPERT_BLOCK));
    tasks.extend(scores.chunks_mut(e.max(1)).flat_map(|row| row.chunks_mut(EXPERT_BLOCK)));
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
