//! The MoE block (reference/glm-dsa-spec.md 3.9): fp32 sigmoid router with the correction
//! bias used only to choose, group-limited top-k, renormalized and scaled weights; routed
//! experts plus the shared expert. And the dense SwiGLU MLP both are made of.

use super::weights::{MlpWeights, MoeWeights};
use crate::backend::cpu::{matmul, silu_mul, top_k};
use crate::plan::ModelShape;

/// One token's routing: expert ids (ascending) and their weights.
#[derive(Debug, Clone, PartialEq)]
pub struct Route {
    pub experts: Vec<u32>,
    pub weights: Vec<f32>,
}

/// down(silu(gate x) * up x): x [n, D] -> [n, D].
pub fn mlp(w: &MlpWeights, x: &[f32], n: usize, aq: bool) -> Vec<f32> {
    let mut g = matmul(x, n, &w.gate, aq);
    let u = matmul(x, n, &w.up, aq);
    silu_mul(&mut g, &u);
    matmul(&g, n, &w.down, aq)
}

/// Routes each of the n tokens of x [n, D].
pub fn route(w: &MoeWeights, m: &ModelShape, x: &[f32], n: usize) -> Vec<Route> {
    let d = m.hidden_size as usize;
    let e = m.n_routed_experts as usize;
    let (groups, keep_groups) = (m.n_group as usize, m.topk_group as usize);
    (0..n)
        .map(|t| {
            let xt = &x[t * d..(t + 1) * d];
            let scores: Vec<f32> = (0..e)
                .map(|j| {
                    let logit = crate::backend::cpu::dot(xt, &w.router[j * d..(j + 1) * d]);
                    1.0 / (1.0 + (-logit).exp())
                })
                .collect();
            let mut choice: Vec<f32> = scores.iter().zip(&w.bias).map(|(s, b)| s + b).collect();
            if groups > 1 {
                let per = e / groups;
                // A group's score is the sum of its two best choices.
                let group_scores: Vec<f32> = choice
                    .chunks(per)
                    .map(|g| {
                        let best = top_k(g, 2);
                        best.iter().map(|&i| g[i as usize]).sum()
                    })
                    .collect();
                let kept = top_k(&group_scores, keep_groups);
                for (gi, g) in choice.chunks_mut(per).enumerate() {
                    if !kept.contains(&(gi as u32)) {
                        g.fill(f32::NEG_INFINITY);
                    }
                }
            }
            let experts = top_k(&choice, m.num_experts_per_tok as usize);
            let mut weights: Vec<f32> = experts.iter().map(|&j| scores[j as usize]).collect();
            if m.norm_topk_prob {
                let sum: f32 = weights.iter().sum::<f32>() + 1e-20;
                weights.iter_mut().for_each(|v| *v /= sum);
            }
            let scaling = m.routed_scaling_factor as f32;
            weights.iter_mut().for_each(|v| *v *= scaling);
            Route { experts, weights }
        })
        .collect()
}

/// Routed experts plus the shared expert for x [n, D] -> ([n, D], routes). Tokens are
/// grouped by expert so each expert's weights are read once per call; experts are applied in
/// ascending order, as HF accumulates.
pub fn moe(w: &MoeWeights, m: &ModelShape, x: &[f32], n: usize, aq: bool) -> (Vec<f32>, Vec<Route>) {
    let d = m.hidden_size as usize;
    let routes = route(w, m, x, n);
    let mut by_expert: Vec<Vec<(usize, f32)>> = vec![Vec::new(); w.experts.len()];
    for (t, r) in routes.iter().enumerate() {
        for (&e, &wt) in r.experts.iter().zip(&r.weights) {
            by_expert[e as usize].push((t, wt));
        }
    }
    let mut y = vec![0.0f32; n * d];
    for (e, tokens) in by_expert.iter().enumerate() {
        if tokens.is_empty() {
            continue;
        }
        let xe: Vec<f32> = tokens.iter().flat_map(|&(t, _)| x[t * d..(t + 1) * d].iter().copied()).collect();
        let ye = mlp(&w.experts[e], &xe, tokens.len(), aq);
        for (j, &(t, wt)) in tokens.iter().enumerate() {
            for (a, b) in y[t * d..(t + 1) * d].iter_mut().zip(&ye[j * d..(j + 1) * d]) {
                *a += wt * b;
            }
        }
    }
    if let Some(shared) = &w.shared {
        for (a, b) in y.iter_mut().zip(mlp(shared, x, n, aq)) {
            *a += b;
        }
    }
    (y, routes)
}
