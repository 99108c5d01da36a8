//! Routed experts on the CPU: tokens grouped by expert so each expert's weights are read once
//! per call; experts applied in ascending order, as HF accumulates.

use rayon::prelude::*;

use super::kernels::aligned::Aligned;
use super::{Routing, matmul_into, silu_mul};
use crate::backend::MlpLinears;

/// down(silu(gate x) * up x) for x [n, D] -> [n, D].
pub fn mlp(w: &MlpLinears, x: &[f32], n: usize, act_quant: bool) -> Vec<f32> {
    expert_mlp(w, x, n, act_quant).to_vec()
}

/// `mlp` into a buffer from the scratch pool, with its intermediates from it too: an
/// expert's call allocates nothing. x [m, D] -> [m, D].
fn expert_mlp(w: &MlpLinears, x: &[f32], m: usize, act_quant: bool) -> Aligned<f32> {
    // The matmuls write every value of their outputs.
    let mut g = Aligned::<f32>::for_overwrite(m * w.gate.rows); // [m, inter]
    let mut u = Aligned::<f32>::for_overwrite(m * w.up.rows); // [m, inter]
    matmul_into(x, m, &[&w.gate, &w.up], act_quant, &mut [&mut g, &mut u]);
    silu_mul(&mut g, &u);
    let mut y = Aligned::<f32>::for_overwrite(m * w.down.rows); // [m, D]
    matmul_into(&g, m, &[&w.down], act_quant, &mut [&mut y]);
    y
}

/// x [n, d] through each token's routed experts, weighted -> [n, d].
pub fn grouped_experts(x: &[f32], d: usize, routes: &Routing, experts: &[MlpLinears], act_quant: bool) -> Vec<f32> {
    let n = routes.n();
    // The (token, weight) pairs grouped by expert, in token order within each: expert e's
    // are pairs[start[e]..start[e + 1]] (a counting sort, no allocation per expert).
    let mut start = vec![0usize; experts.len() + 1]; // [E + 1]
    for &e in &routes.experts {
        start[e as usize + 1] += 1;
    }
    for e in 0..experts.len() {
        start[e + 1] += start[e];
    }
    let mut pairs = vec![(0usize, 0.0f32); routes.experts.len()]; // [n * k]
    let mut fill = start.clone();
    for t in 0..n {
        let (es, ws) = routes.token(t);
        for (&e, &wt) in es.iter().zip(ws) {
            pairs[fill[e as usize]] = (t, wt);
            fill[e as usize] += 1;
        }
    }
    let tokens_of = |e: usize| &pairs[start[e]..start[e + 1]];
    // Each active expert's MLP is one task (its matmuls split further when a thread is idle),
    // so a decode step's few small experts keep every thread busy; the weighted sum is then
    // taken in ascending expert order, the same whatever ran where.
    let mut active = Vec::with_capacity(experts.len()); // [active experts]
    active.extend((0..experts.len()).filter(|&e| start[e + 1] > start[e]));
    let outputs: Vec<Aligned<f32>> = active
        .par_iter()
        .map(|&e| {
            let tokens = tokens_of(e);
            let mut xe = Aligned::<f32>::for_overwrite(tokens.len() * d); // [m, d], every row copied in
            for (row, &(t, _)) in xe.chunks_exact_mut(d.max(1)).zip(tokens) {
                row.copy_from_slice(&x[t * d..(t + 1) * d]);
            }
            expert_mlp(&experts[e], &xe, tokens.len(), act_quant)
        })
        .collect();
    let mut y = vec![0.0f32; n * d]; // [n, d]
    for (&e, ye) in active.iter().zip(&outputs) {
        for (j, &(t, wt)) in tokens_of(e).iter().enumerate() {
            for (a, b) in y[t * d..(t + 1) * d].iter_mut().zip(&ye[j * d..(j + 1) * d]) {
                *a += wt * b;
            }
        }
    }
    y
}
