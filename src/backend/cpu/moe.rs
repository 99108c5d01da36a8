//! Routed experts on the CPU: tokens grouped by expert so each expert's weights are read once
//! per call; experts applied in ascending order, as HF accumulates.

use rayon::prelude::*;

use super::{Route, matmul, matmul_pair, silu_mul};
use crate::backend::MlpLinears;

/// down(silu(gate x) * up x) for x [n, D] -> [n, D].
pub fn mlp(w: &MlpLinears, x: &[f32], n: usize, act_quant: bool) -> Vec<f32> {
    let (mut g, u) = matmul_pair(x, n, &w.gate, &w.up, act_quant);
    silu_mul(&mut g, &u);
    matmul(&g, n, &w.down, act_quant)
}

/// x [n, d] through each token's routed experts, weighted -> [n, d].
pub fn grouped_experts(x: &[f32], d: usize, routes: &[Route], experts: &[MlpLinears], act_quant: bool) -> Vec<f32> {
    let n = routes.len();
    let mut by_expert: Vec<Vec<(usize, f32)>> = vec![Vec::new(); experts.len()];
    for (t, r) in routes.iter().enumerate() {
        for (&e, &wt) in r.experts.iter().zip(&r.weights) {
            by_expert[e as usize].push((t, wt));
        }
    }
    // Each active expert's MLP is one task (its matmuls split further when a thread is idle),
    // so a decode step's few small experts keep every thread busy; the weighted sum is then
    // taken in ascending expert order, the same whatever ran where.
    let active: Vec<usize> = (0..experts.len()).filter(|&e| !by_expert[e].is_empty()).collect();
    let outputs: Vec<Vec<f32>> = active
        .par_iter()
        .map(|&e| {
            let tokens = &by_expert[e];
            let xe: Vec<f32> = tokens.iter().flat_map(|&(t, _)| x[t * d..(t + 1) * d].iter().copied()).collect(); // [m, d]
            mlp(&experts[e], &xe, tokens.len(), act_quant)
        })
        .collect();
    let mut y = vec![0.0f32; n * d]; // [n, d]
    for (&e, ye) in active.iter().zip(&outputs) {
        for (j, &(t, wt)) in by_expert[e].iter().enumerate() {
            for (a, b) in y[t * d..(t + 1) * d].iter_mut().zip(&ye[j * d..(j + 1) * d]) {
                *a += wt * b;
            }
        }
    }
    y
}
