//! Routed tokens to experts and back (kernels/moe_dispatch.hip): rows counted per expert,
//! their offsets, a row for each (token, choice) inside its expert's range, the gather into
//! expert order and the weighted combine. CPU reference: what backend::cpu::moe's grouping
//! implies: expert e owns rows offsets[e] .. offsets[e+1], and combining the gathered rows
//! themselves gives each token times the sum of its weights.

use rand::Rng;
use rand::seq::SliceRandom;

use super::{Case, OpDecl, Output, Prepared, rng_for, uniform};
use crate::backend::gpu::launch::{self, Dispatch};
use crate::device::{Buffer, Gpu};
use crate::error::Result;
use crate::plan::{KernelVariant, OpShape};

pub static DECL: OpDecl = OpDecl { family: "moe.dispatch", tolerance: 1e-6, checks, at };

fn checks(v: &'static KernelVariant) -> Vec<Case> {
    vec![case(v, 16, 2, 5, 37), case(v, 24, 5, 33, 20), case(v, 256, 8, 4, 6144)]
}

fn at(v: &'static KernelVariant, shape: &OpShape, tokens: usize) -> Case {
    let OpShape::Dispatch { experts, top_k, d } = *shape else { panic!("moe.dispatch at {shape}") };
    case(v, experts as usize, top_k as usize, tokens, d as usize)
}

fn case(v: &'static KernelVariant, experts: usize, k: usize, n: usize, d: usize) -> Case {
    let shape = format!("experts={experts} top_k={k} tokens={n} d={d}");
    let mut rng = rng_for(v.op, &shape);
    let mut idx = Vec::with_capacity(n * k); // [n, k] distinct, ascending per token
    for _ in 0..n {
        let mut all: Vec<i32> = (0..experts as i32).collect();
        all.shuffle(&mut rng);
        let mut mine = all[..k].to_vec();
        mine.sort_unstable();
        idx.extend(mine);
    }
    let weights: Vec<f32> = (0..n * k).map(|_| rng.random_range(0.1..1.0)).collect(); // [n, k]
    let x = uniform(&mut rng, n * d, 1.0); // [n, d]
    let mut offsets = vec![0i32; experts + 1];
    for &e in &idx {
        offsets[e as usize + 1] += 1;
    }
    for e in 0..experts {
        offsets[e + 1] += offsets[e];
    }
    let rows_of: Vec<Vec<i32>> = (0..experts).map(|e| (offsets[e]..offsets[e + 1]).collect()).collect();
    let mut y = vec![0.0f32; n * d]; // [n, d]
    for t in 0..n {
        for c in 0..d {
            let mut acc = 0.0f32;
            for j in 0..k {
                acc += weights[t * k + j] * x[t * d + c];
            }
            y[t * d + c] = acc;
        }
    }
    Case {
        variant: v,
        shape,
        bytes: 4 * (3 * n * k * d + n * d),
        expected: Output::Many(vec![
            Output::Indices(vec![offsets.clone()]),
            Output::IndexSets(rows_of),
            Output::Floats(y),
        ]),
        setup: Box::new(move |gpu| {
            Ok(Box::new(Bufs {
                idx: gpu.upload(&idx)?,
                weights: gpu.upload(&weights)?,
                x: gpu.upload(&x)?,
                counts: gpu.zeros::<i32>(experts)?,
                offsets: gpu.zeros::<i32>(experts + 1)?,
                cursor: gpu.zeros::<i32>(experts)?,
                pos: gpu.zeros::<i32>(n * k)?,
                xs: gpu.zeros::<f32>(n * k * d)?,
                y: gpu.zeros::<f32>(n * d)?,
                n,
                k,
                d,
                experts,
            }))
        }),
    }
}

struct Bufs {
    idx: Buffer,     // [n, k] i32
    weights: Buffer, // [n, k] f32
    x: Buffer,       // [n, d] f32
    counts: Buffer,  // [E] i32
    offsets: Buffer, // [E + 1] i32
    cursor: Buffer,  // [E] i32
    pos: Buffer,     // [n, k] i32
    xs: Buffer,      // [n * k, d] f32 in expert order
    y: Buffer,       // [n, d] f32
    n: usize,
    k: usize,
    d: usize,
    experts: usize,
}

impl Prepared for Bufs {
    fn launch(&self, gpu: &Gpu) -> Result<()> {
        let dispatch = Dispatch {
            idx: &self.idx,
            counts: &self.counts,
            offsets: &self.offsets,
            cursor: &self.cursor,
            pos: &self.pos,
            n: self.n,
            k: self.k,
            experts: self.experts,
        };
        launch::moe_dispatch(gpu, &dispatch)?;
        launch::moe_gather(gpu, &self.x, &self.pos, &self.xs, self.n, self.k, self.d)?;
        // The gathered rows stand in for the experts' outputs.
        launch::moe_combine(gpu, &self.xs, &self.pos, &self.weights, &self.y, self.n, self.k, self.d)
    }

    fn output(&self) -> Result<Output> {
        let (idx, pos): (Vec<i32>, Vec<i32>) = (self.idx.read()?, self.pos.read()?);
        let mut rows_of = vec![Vec::new(); self.experts];
        for (&e, &p) in idx.iter().zip(&pos) {
            rows_of[e as usize].push(p);
        }
        Ok(Output::Many(vec![
            Output::Indices(vec![self.offsets.read()?]),
            Output::IndexSets(rows_of),
            Output::Floats(self.y.read()?),
        ]))
    }
}
