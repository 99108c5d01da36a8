//! The absorbed MLA's two ends through kv_b (kernels/mla_heads.hip), stored bf16, f32 or
//! MXFP4: each head's q_nope folded into latent space, and latent outputs expanded to values.
//! CPU reference: the CPU backend's absorb_query and expand_values.

use std::sync::Arc;

use rand::Rng;

use super::plain::{Init, Read, setup};
use super::{Case, OpDecl, Output, rng_for, uniform};
use crate::backend::cpu::{Cpu, Rows};
use crate::backend::gpu::launch::{self, Dense, KvB, WeightView};
use crate::backend::{Backend, MlaDims};
use crate::plan::{KernelVariant, OpShape};
use crate::weights::Linear;

pub static DECL_BF16: OpDecl = OpDecl { family: "mla.heads.bf16", tolerance: 1e-5, checks, at };
pub static DECL_F32: OpDecl = OpDecl { family: "mla.heads.f32", tolerance: 1e-5, checks, at };
/// Where the CPU has VNNI, its MXFP4 twin takes the latent outputs as two int8 terms per
/// block (at most 1/32000 of a block's largest value off), so this family is checked at the
/// tolerance of moe.mxfp4; a layout or indexing fault is still off by whole values.
pub static DECL_MXFP4: OpDecl = OpDecl { family: "mla.heads.mxfp4", tolerance: 1e-4, checks, at };

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Format {
    Bf16,
    F32,
    Mxfp4,
}

fn format_of(v: &KernelVariant) -> Format {
    match v.op.rsplit('.').next() {
        Some("f32") => Format::F32,
        Some("mxfp4") => Format::Mxfp4,
        _ => Format::Bf16,
    }
}

fn dims(heads: usize, nope: usize, rope: usize, v: usize, latent: usize) -> MlaDims {
    MlaDims { heads, nope, rope, v, latent, scale: 1.0 }
}

fn checks(v: &'static KernelVariant) -> Vec<Case> {
    vec![
        case(v, dims(3, 16, 8, 12, 64), 3),
        case(v, dims(5, 32, 16, 24, 96), 2),
        // GLM-5.2 per rank at TP8: 8 heads, nope 192, v 256, latent 512.
        case(v, dims(8, 192, 64, 256, 512), 1),
    ]
}

fn at(v: &'static KernelVariant, shape: &OpShape, tokens: usize) -> Case {
    let OpShape::MlaHeads { heads, nope, v: dv, r } = *shape else { panic!("mla.heads at {shape}") };
    case(v, dims(heads as usize, nope as usize, 64, dv as usize, r as usize), tokens)
}

fn case(v: &'static KernelVariant, d: MlaDims, n: usize) -> Case {
    let format = format_of(v);
    let shape = format!("heads={} nope={} rope={} v={} r={} tokens={n}", d.heads, d.nope, d.rope, d.v, d.latent);
    let mut rng = rng_for(v.op, &shape);
    let rows = d.heads * (d.nope + d.v);
    let r = d.latent;
    // kv_b [H * (nope + v), r] and the buffers the kernel reads.
    let (kv_b, inits) = match format {
        Format::Mxfp4 => {
            let codes: Vec<u8> = (0..rows * r / 2).map(|_| rng.random()).collect();
            let scales: Vec<u8> = (0..rows * r / 32).map(|_| rng.random_range(118..128)).collect();
            (Linear::mxfp4(codes.clone(), scales.clone(), rows, r), vec![Init::U8(codes), Init::U8(scales)])
        }
        Format::Bf16 | Format::F32 => {
            let w = uniform(&mut rng, rows * r, 0.3);
            let (dtype, bytes): (_, Vec<u8>) = if format == Format::Bf16 {
                (safetensors::Dtype::BF16, w.iter().flat_map(|&x| half::bf16::from_f32(x).to_le_bytes()).collect())
            } else {
                (safetensors::Dtype::F32, w.iter().flat_map(|&x| x.to_le_bytes()).collect())
            };
            (Linear::dense(dtype, bytes.clone(), rows, r), vec![Init::U8(bytes), Init::ZeroU8(1)])
        }
    };
    let weight_bytes = match &inits[0] {
        Init::U8(b) => b.len(),
        _ => 0,
    };
    let q = uniform(&mut rng, n * d.heads * (d.nope + d.rope), 1.0); // [n, H, nope + rope]
    let o_lat = uniform(&mut rng, n * d.heads * r, 1.0); // [n, H, r]
    let cpu = Cpu;
    let q_abs = cpu.absorb_query(&Rows::new(q.clone(), d.heads * (d.nope + d.rope)), &kv_b, &d).expect("CPU");
    let out = cpu.expand_values(&Rows::new(o_lat.clone(), d.heads * r), &kv_b, &d).expect("CPU");
    let mut all = inits;
    all.extend([
        Init::F32(q),                     // 2
        Init::ZeroF32(n * d.heads * r),   // 3 q_abs
        Init::F32(o_lat),                 // 4
        Init::ZeroF32(n * d.heads * d.v), // 5 out
    ]);
    Case {
        variant: v,
        shape,
        bytes: weight_bytes + 4 * (q_abs.data.len() * 2 + out.data.len()),
        expected: Output::Many(vec![Output::Floats(q_abs.data), Output::Floats(out.data)]),
        setup: setup(
            all,
            vec![(3, Read::Floats), (5, Read::Floats)],
            Arc::new(move |gpu, b| {
                let w = match format {
                    Format::Mxfp4 => WeightView::Mxfp4 { codes: &b[0], scales: &b[1] },
                    Format::Bf16 => WeightView::Dense { format: Dense::Bf16, w: &b[0] },
                    Format::F32 => WeightView::Dense { format: Dense::F32, w: &b[0] },
                };
                let kv_b = KvB { w, heads: d.heads, nope: d.nope, rope: d.rope, v: d.v, r };
                launch::absorb_q(gpu, &kv_b, &b[2], &b[3], n)?;
                launch::expand_v(gpu, &kv_b, &b[4], &b[5], n)
            }),
        ),
    }
}
