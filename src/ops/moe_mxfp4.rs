//! Routed experts in MXFP4 times activations, grouped by expert (kernels/moe_mxfp4.hip), with
//! and without the W4A4 activation quantization before it. CPU reference: backend::cpu::matmul
//! over each expert's weights::Linear (MXFP4 storage), quantizing first when asked.

use rand::Rng;

use super::{Case, OpDecl, Output, Prepared, counts, rng_for, uniform};
use crate::backend::cpu::matmul;
use crate::backend::gpu::launch::{self, Groups, LinearKernel, Matrix, WeightBufs};
use crate::device::{Buffer, Gpu};
use crate::error::Result;
use crate::plan::{KernelVariant, OpShape};
use crate::weights::Linear;

pub static DECL: OpDecl = OpDecl { family: "moe.mxfp4", tolerance: 1e-4, checks, at };

/// Experts of [n, k] and the tokens each one gets, in expert order.
struct Geometry {
    n: usize,
    k: usize,
    per_expert: Vec<usize>,
    act_quant: bool,
    /// One matrix over all rows (a dense MXFP4 linear: no offsets).
    one: bool,
}

fn checks(v: &'static KernelVariant) -> Vec<Case> {
    let decode = v.max_bucket <= 64;
    let mut out = Vec::new();
    for act_quant in [false, true] {
        let tokens = if decode { vec![2, 0, 3] } else { vec![33, 5, 0] };
        out.push(case(v, Geometry { n: 37, k: 96, per_expert: tokens, act_quant, one: false }));
        let tokens = if decode { vec![1, 1] } else { vec![40, 64] };
        out.push(case(v, Geometry { n: 130, k: 64, per_expert: tokens, act_quant, one: false }));
    }
    // GLM-5.2's gate/up projection per rank at TP8 (W4A4, as amd/GLM-5.2-MXFP4 runs it).
    let tokens = if decode { vec![1, 2] } else { vec![33, 1] };
    out.push(case(v, Geometry { n: 256, k: 6144, per_expert: tokens, act_quant: true, one: false }));
    // A dense MXFP4 linear (the shared expert): one matrix, no offsets.
    let tokens = if decode { vec![3] } else { vec![70] };
    out.push(case(v, Geometry { n: 96, k: 160, per_expert: tokens, act_quant: true, one: true }));
    out
}

fn at(v: &'static KernelVariant, shape: &OpShape, tokens: usize) -> Case {
    let (experts, n, k) = match *shape {
        OpShape::Experts { experts, n, k } => (experts, n, k),
        // A dense MXFP4 linear: one matrix, every token its row.
        OpShape::Linear { n, k } => {
            let g =
                Geometry { n: n as usize, k: k as usize, per_expert: vec![tokens.max(1)], act_quant: false, one: true };
            return case(v, g);
        }
        _ => panic!("moe.mxfp4 at {shape}: the registry gives this family expert or linear shapes"),
    };
    // Under uniform routing a step's tokens x top-k spread over the experts; the bench gives
    // `tokens` rows to as many experts as it takes, at least one row each.
    let used = tokens.clamp(1, experts as usize);
    let mut per = vec![tokens / used; used];
    per[0] += tokens % used;
    case(v, Geometry { n: n as usize, k: k as usize, per_expert: per, act_quant: false, one: false })
}

fn case(v: &'static KernelVariant, g: Geometry) -> Case {
    let Geometry { n, k, ref per_expert, act_quant, one } = g;
    let experts = per_expert.len();
    let shape = format!(
        "experts={experts} n={n} k={k} tokens={}{}{}",
        counts(per_expert),
        if act_quant { " w4a4" } else { "" },
        if one { " dense" } else { "" }
    );
    let mut rng = rng_for(v.op, &shape);
    let (mut codes, mut scales, mut xs, mut ys) = (Vec::new(), Vec::new(), Vec::new(), Vec::new());
    let mut offsets = vec![0i32]; // [E + 1]
    for &m in per_expert {
        let ec: Vec<u8> = (0..n * k / 2).map(|_| rng.random()).collect(); // [n, k/2]
        let es: Vec<u8> = (0..n * k / 32).map(|_| rng.random_range(118..128)).collect(); // [n, k/32]
        let x = uniform(&mut rng, m * k, 1.0); // [m, k]
        let w = Linear::mxfp4(ec.clone(), es.clone(), n, k);
        ys.extend(matmul(&x, m, &w, act_quant));
        xs.extend(x);
        codes.extend(ec);
        scales.extend(es);
        offsets.push(offsets.last().copied().unwrap_or(0) + m as i32);
    }
    let rows = xs.len() / k;
    Case {
        variant: v,
        shape,
        bytes: codes.len() + scales.len() + 4 * (xs.len() + ys.len()),
        expected: Output::Floats(ys),
        setup: Box::new(move |gpu| {
            Ok(Box::new(Bufs {
                w: WeightBufs::Mxfp4 { codes: gpu.upload(&codes)?, scales: gpu.upload(&scales)? },
                x: gpu.upload(&xs)?,
                xq: gpu.zeros::<f32>(xs.len())?,
                offsets: gpu.upload(&offsets)?,
                y: gpu.zeros::<f32>(rows * n)?,
                variant: v,
                experts,
                rows,
                most: offsets.windows(2).map(|w| (w[1] - w[0]) as usize).max().unwrap_or(0),
                n,
                k,
                act_quant,
                one,
            }))
        }),
    }
}

struct Bufs {
    w: WeightBufs,   // codes [E, n, k/2] u8, scales [E, n, k/32] u8
    x: Buffer,       // [M, k] f32, rows sorted by expert
    xq: Buffer,      // [M, k] f32, x on the MXFP4 grid (W4A4)
    offsets: Buffer, // [E + 1] i32
    y: Buffer,       // [M, n] f32
    variant: &'static KernelVariant,
    experts: usize,
    rows: usize,
    /// Rows of the busiest expert.
    most: usize,
    n: usize,
    k: usize,
    act_quant: bool,
    one: bool,
}

impl Prepared for Bufs {
    fn launch(&self, gpu: &Gpu) -> Result<()> {
        let x = if self.act_quant {
            launch::mxfp4_quantize(gpu, &self.x, &self.xq, self.rows, self.k)?;
            &self.xq
        } else {
            &self.x
        };
        let kernel = if self.variant.symbols.contains(&"kiln_moe_mxfp4_decode") {
            LinearKernel::WavePerRow
        } else {
            LinearKernel::Tile
        };
        let groups = if self.one {
            Groups::One { m: self.rows }
        } else {
            Groups::Many { offsets: &self.offsets, groups: self.experts, m: self.rows, most: self.most }
        };
        launch::linear(gpu, kernel, Matrix { view: self.w.view(), n: self.n, k: self.k }, x, &groups, &self.y)
    }

    fn output(&self) -> Result<Output> {
        Ok(Output::Floats(self.y.read()?))
    }
}
