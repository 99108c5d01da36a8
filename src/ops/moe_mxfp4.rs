//! Routed experts in MXFP4 times activations, grouped by expert (kernels/moe_mxfp4.hip), with
//! and without the W4A4 activation quantization before it. CPU reference: backend::cpu::matmul
//! over each expert's weights::Linear (MXFP4 storage), quantizing first when asked.

use rand::Rng;

use super::{Case, OpDecl, Output, Prepared, blocks, counts, dim, rng_for, uniform};
use crate::backend::cpu::matmul;
use crate::device::{Buffer, Dim3, Gpu, KernelArgs, Launch};
use crate::error::Result;
use crate::plan::{KernelVariant, OpShape};
use crate::weights::Linear;

pub static DECL: OpDecl = OpDecl { family: "moe.mxfp4", tolerance: 1e-4, checks, at };

/// Rows per block of the wave-per-row kernel (one wave each).
const DECODE_ROWS: usize = 4;
const WAVE: usize = 64;
/// The tile kernel's output tile (rows x tokens) and block.
const TILE_N: usize = 64;
const TILE_M: usize = 32;
const TILE_BLOCK: u32 = 256;
const QUANT_BLOCK: usize = 256;

/// Experts of [n, k] and the tokens each one gets, in expert order.
struct Geometry {
    n: usize,
    k: usize,
    per_expert: Vec<usize>,
    act_quant: bool,
}

fn checks(v: &'static KernelVariant) -> Vec<Case> {
    let decode = v.max_bucket <= 64;
    let mut out = Vec::new();
    for act_quant in [false, true] {
        let tokens = if decode { vec![2, 0, 3] } else { vec![33, 5, 0] };
        out.push(case(v, Geometry { n: 37, k: 96, per_expert: tokens, act_quant }));
        let tokens = if decode { vec![1, 1] } else { vec![40, 64] };
        out.push(case(v, Geometry { n: 130, k: 64, per_expert: tokens, act_quant }));
    }
    // GLM-5.2's gate/up projection per rank at TP8 (W4A4, as amd/GLM-5.2-MXFP4 runs it).
    let tokens = if decode { vec![1, 2] } else { vec![33, 1] };
    out.push(case(v, Geometry { n: 256, k: 6144, per_expert: tokens, act_quant: true }));
    out
}

fn at(v: &'static KernelVariant, shape: &OpShape, tokens: usize) -> Case {
    let OpShape::Experts { experts, n, k } = *shape else { panic!("experts at {shape}") };
    // Under uniform routing a step's tokens x top-k spread over the experts; the bench gives
    // `tokens` rows to as many experts as it takes, at least one row each.
    let used = tokens.clamp(1, experts as usize);
    let mut per = vec![tokens / used; used];
    per[0] += tokens % used;
    case(v, Geometry { n: n as usize, k: k as usize, per_expert: per, act_quant: false })
}

fn case(v: &'static KernelVariant, g: Geometry) -> Case {
    let Geometry { n, k, ref per_expert, act_quant } = g;
    let experts = per_expert.len();
    let shape =
        format!("experts={experts} n={n} k={k} tokens={}{}", counts(per_expert), if act_quant { " w4a4" } else { "" });
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
                codes: gpu.upload(&codes)?,
                scales: gpu.upload(&scales)?,
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
            }))
        }),
    }
}

struct Bufs {
    codes: Buffer,   // [E, n, k/2] u8
    scales: Buffer,  // [E, n, k/32] u8
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
}

impl Prepared for Bufs {
    fn launch(&self, gpu: &Gpu) -> Result<()> {
        let x = if self.act_quant {
            let groups = self.rows * self.k / 32;
            let args = KernelArgs::new().buf(&self.x).buf(&self.xq).int(self.rows).int(self.k);
            // SAFETY: kiln_mxfp4_quantize_act(const float* x, float* y, int rows, int k); one
            // thread per 32-group, guarded against the tail; k % 32 == 0.
            unsafe {
                gpu.launch(
                    "kiln_mxfp4_quantize_act",
                    Launch::new(Dim3::x(blocks(groups, QUANT_BLOCK)), Dim3::x(QUANT_BLOCK as u32)),
                    args,
                )?;
            }
            &self.xq
        } else {
            &self.x
        };
        let args = || {
            KernelArgs::new()
                .buf(&self.codes)
                .buf(&self.scales)
                .buf(x)
                .buf(&self.offsets)
                .buf(&self.y)
                .int(self.n)
                .int(self.k)
        };
        let e = dim(self.experts);
        if self.variant.symbols.contains(&"kiln_moe_mxfp4_decode") {
            let l = Launch::new(Dim3::xy(blocks(self.n, DECODE_ROWS), e), Dim3::x((DECODE_ROWS * WAVE) as u32));
            // SAFETY: kiln_moe_mxfp4_decode(codes, scales, x, const int* offsets, float* y, int n,
            // int k): one wave per output row, blockIdx.y the expert; rows past n are masked.
            unsafe { gpu.launch("kiln_moe_mxfp4_decode", l, args()) }
        } else {
            let l = Launch::new(
                Dim3::xyz(blocks(self.n, TILE_N), blocks(self.most, TILE_M).max(1), e),
                Dim3::x(TILE_BLOCK),
            );
            // SAFETY: kiln_moe_mxfp4_prefill, same parameters: a 64 x 32 output tile per
            // block, blockIdx.z the expert; tails in n, tokens and k are masked.
            unsafe { gpu.launch("kiln_moe_mxfp4_prefill", l, args()) }
        }
    }

    fn output(&self) -> Result<Output> {
        Ok(Output::Floats(self.y.read()?))
    }
}
