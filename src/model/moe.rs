//! The MoE block (the GLM-DSA spec's section 3.9): fp32 sigmoid router with the correction
//! bias used only to choose, group-limited top-k, renormalized and scaled weights; routed
//! experts plus the shared expert. And the dense SwiGLU MLP both are made of.

use super::weights::{Mlp, MoeWeights};
use crate::backend::{Backend, RouterConfig};
use crate::error::Result;
use crate::plan::ModelShape;

/// down(silu(gate x) * up x): x [n, D] -> [n, D].
pub fn mlp<B: Backend>(b: &B, w: &Mlp<B>, x: &B::Tensor, aq: bool) -> Result<B::Tensor> {
    let mut gate_up = b.linears(x, &[&w.gate, &w.up], aq)?.into_iter();
    let (g, u) = (gate_up.next().expect("gate"), gate_up.next().expect("up"));
    b.linear(&b.silu_mul(&g, &u)?, &w.down, aq)
}

pub fn router_config(m: &ModelShape) -> RouterConfig {
    RouterConfig {
        experts: m.n_routed_experts as usize,
        top_k: m.num_experts_per_tok as usize,
        groups: m.n_group as usize,
        keep_groups: m.topk_group as usize,
        normalize: m.norm_topk_prob,
        scaling: m.routed_scaling_factor as f32,
    }
}

/// Routed experts plus the shared expert for x [n, D] -> ([n, D], the routing).
pub fn moe<B: Backend>(
    b: &B,
    w: &MoeWeights<B>,
    m: &ModelShape,
    x: &B::Tensor,
    aq: bool,
) -> Result<(B::Tensor, B::Routing)> {
    // The shared expert needs only x, so it runs beside the routing and the routed experts.
    let (routed, shared) = b.both(
        || -> Result<_> {
            let routing = b.route(x, &w.router, &w.bias, &router_config(m))?;
            Ok((b.moe(x, &routing, &w.experts, aq)?, routing))
        },
        || w.shared.as_ref().map(|s| mlp(b, s, x, aq)).transpose(),
    );
    let (mut y, routing) = routed?;
    if let Some(s) = shared? {
        b.add(&mut y, &s)?;
    }
    Ok((y, routing))
}
