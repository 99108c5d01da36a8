//! The MoE router: fp32 sigmoid scores, the correction bias used only to choose,
//! group-limited top-k, renormalized and scaled weights.

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

/// Routes each of the n tokens of x [n, D] with router [E, D] (f32) and bias [E].
pub fn route(x: &[f32], n: usize, router: &[f32], bias: &[f32], c: &RouterConfig) -> Vec<Route> {
    let e = c.experts;
    let d = router.len() / e.max(1);
    (0..n)
        .map(|t| {
            let xt = &x[t * d..(t + 1) * d];
            let scores: Vec<f32> = (0..e)
                .map(|j| {
                    let logit = dot(xt, &router[j * d..(j + 1) * d]);
                    1.0 / (1.0 + (-logit).exp())
                })
                .collect();
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
