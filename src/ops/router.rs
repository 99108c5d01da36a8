//! The sigmoid router with group-limited top-k (kernels/router.hip). CPU reference:
//! backend::cpu::route.

use super::{Case, OpDecl, Output, Prepared, rng_for, uniform};
use crate::backend::cpu::{RouterConfig, route};
use crate::backend::gpu::launch;
use crate::device::{Buffer, Gpu};
use crate::error::Result;
use crate::plan::{KernelVariant, OpShape};

pub static DECL: OpDecl = OpDecl { family: "router", tolerance: 1e-5, checks, at };

const SCALING: f32 = 2.5;

fn checks(v: &'static KernelVariant) -> Vec<Case> {
    let plain = RouterConfig { experts: 16, top_k: 2, groups: 1, keep_groups: 1, normalize: true, scaling: SCALING };
    let grouped = RouterConfig { experts: 24, top_k: 5, groups: 4, keep_groups: 2, normalize: false, scaling: 1.0 };
    // GLM-5.2's router: 256 experts, top-8, over the hidden width.
    let glm = RouterConfig { experts: 256, top_k: 8, groups: 1, keep_groups: 1, normalize: true, scaling: SCALING };
    vec![case(v, plain, 40, 3), case(v, grouped, 33, 2), case(v, glm, 6144, 2)]
}

fn at(v: &'static KernelVariant, shape: &OpShape, tokens: usize) -> Case {
    let OpShape::Router { experts, top_k, keep_groups, groups, d } = *shape else { panic!("router at {shape}") };
    let c = RouterConfig {
        experts: experts as usize,
        top_k: top_k as usize,
        groups: groups as usize,
        keep_groups: keep_groups as usize,
        normalize: true,
        scaling: SCALING,
    };
    case(v, c, d as usize, tokens)
}

fn case(v: &'static KernelVariant, c: RouterConfig, d: usize, t: usize) -> Case {
    let shape = format!(
        "experts={} top_k={} groups={}/{} d={d} tokens={t}{}",
        c.experts,
        c.top_k,
        c.keep_groups,
        c.groups,
        if c.normalize { "" } else { " unnormalized" }
    );
    let mut rng = rng_for(v.op, &shape);
    let x = uniform(&mut rng, t * d, 1.0); // [T, D]
    let w = uniform(&mut rng, c.experts * d, 0.3); // [E, D]
    let bias = uniform(&mut rng, c.experts, 0.05); // [E]
    let routes = route(&x, t, &w, &bias, &c);
    let idx: Vec<Vec<i32>> = routes.iter().map(|r| r.experts.iter().map(|&e| e as i32).collect()).collect();
    let weights: Vec<f32> = routes.iter().flat_map(|r| r.weights.iter().copied()).collect();
    Case {
        variant: v,
        shape,
        bytes: 4 * (t * d + c.experts * d + c.experts + 2 * t * c.experts + 2 * t * c.top_k),
        expected: Output::Many(vec![Output::Indices(idx), Output::Floats(weights)]),
        setup: Box::new(move |gpu| {
            Ok(Box::new(Bufs {
                x: gpu.upload(&x)?,
                w: gpu.upload(&w)?,
                bias: gpu.upload(&bias)?,
                logits: gpu.zeros::<f32>(t * c.experts)?,
                idx: gpu.zeros::<i32>(t * c.top_k)?,
                weights: gpu.zeros::<f32>(t * c.top_k)?,
                c,
                d,
                t,
            }))
        }),
    }
}

struct Bufs {
    x: Buffer,       // [T, D] f32
    w: Buffer,       // [E, D] f32
    bias: Buffer,    // [E] f32
    logits: Buffer,  // [T, E] f32 scratch
    idx: Buffer,     // [T, k] i32
    weights: Buffer, // [T, k] f32
    c: RouterConfig,
    d: usize,
    t: usize,
}

impl Prepared for Bufs {
    fn launch(&self, gpu: &Gpu) -> Result<()> {
        let b = launch::RouterBufs {
            x: &self.x,
            w: &self.w,
            bias: &self.bias,
            logits: &self.logits,
            idx: &self.idx,
            weights: &self.weights,
        };
        launch::router(gpu, &b, self.t, self.d, &self.c)
    }

    fn output(&self) -> Result<Output> {
        let k = self.c.top_k;
        let idx: Vec<i32> = self.idx.read()?;
        Ok(Output::Many(vec![
            Output::Indices(idx.chunks(k.max(1)).map(<[i32]>::to_vec).collect()),
            Output::Floats(self.weights.read()?),
        ]))
    }
}
