//! Dense linears over bf16 and f32 weights, one matrix or grouped by expert
//! (kernels/linear.hip). CPU reference: backend::cpu::matmul over weights::Linear.

use std::sync::Arc;

use super::plain::{Init, Read, setup};
use super::{Case, OpDecl, Output, counts, rng_for, uniform};
use crate::backend::cpu::matmul;
use crate::backend::gpu::launch::{self, Dense, Groups, LinearKernel, Matrix, WeightView};
use crate::plan::{KernelVariant, OpShape};
use crate::weights::Linear;

pub static DECL_BF16: OpDecl = OpDecl { family: "linear.bf16", tolerance: 1e-5, checks, at };
pub static DECL_F32: OpDecl = OpDecl { family: "linear.f32", tolerance: 1e-5, checks, at };

fn format_of(v: &KernelVariant) -> Dense {
    if v.op.ends_with("f32") { Dense::F32 } else { Dense::Bf16 }
}

fn checks(v: &'static KernelVariant) -> Vec<Case> {
    vec![
        case(v, 37, 96, None, &[3]),
        case(v, 130, 64, Some(()), &[2, 0, 3]),
        // GLM-5.2's kv_a projection (576 x 6144) for one decode token.
        case(v, 576, 6144, None, &[1]),
    ]
}

fn at(v: &'static KernelVariant, shape: &OpShape, tokens: usize) -> Case {
    match *shape {
        OpShape::Linear { n, k } => case(v, n as usize, k as usize, None, &[tokens]),
        OpShape::Experts { experts, n, k } => {
            let used = tokens.clamp(1, experts as usize);
            let mut per = vec![tokens / used; used];
            per[0] += tokens % used;
            case(v, n as usize, k as usize, Some(()), &per)
        }
        _ => panic!("linear at {shape}"),
    }
}

/// `per_group` rows through as many [n, k] matrices; grouped (offsets) or one matrix.
fn case(v: &'static KernelVariant, n: usize, k: usize, grouped: Option<()>, per_group: &[usize]) -> Case {
    let format = format_of(v);
    let shape = format!("n={n} k={k} rows={}{}", counts(per_group), if grouped.is_some() { " grouped" } else { "" });
    let mut rng = rng_for(v.op, &shape);
    let (mut w_bytes, mut xs, mut ys) = (Vec::new(), Vec::new(), Vec::new());
    let mut offsets = vec![0i32]; // [G + 1]
    for &m in per_group {
        let w = uniform(&mut rng, n * k, 0.5); // [n, k]
        let (dtype, bytes): (_, Vec<u8>) = match format {
            Dense::Bf16 => {
                (safetensors::Dtype::BF16, w.iter().flat_map(|&x| half::bf16::from_f32(x).to_le_bytes()).collect())
            }
            Dense::F32 => (safetensors::Dtype::F32, w.iter().flat_map(|&x| x.to_le_bytes()).collect()),
        };
        let x = uniform(&mut rng, m * k, 1.0); // [m, k]
        ys.extend(matmul(&x, m, &Linear::dense(dtype, bytes.clone(), n, k), false));
        xs.extend(x);
        w_bytes.extend(bytes);
        offsets.push(offsets.last().copied().unwrap_or(0) + m as i32);
    }
    let (g, m) = (per_group.len(), xs.len() / k);
    Case {
        variant: v,
        shape,
        bytes: w_bytes.len() + 4 * (xs.len() + ys.len()),
        expected: Output::Floats(ys),
        setup: setup(
            vec![Init::U8(w_bytes), Init::F32(xs), Init::I32(offsets), Init::ZeroF32(m * n)],
            vec![(3, Read::Floats)],
            Arc::new(move |gpu, b| {
                let w = Matrix { view: WeightView::Dense { format, w: &b[0] }, n, k };
                let groups = match grouped {
                    Some(()) => Groups::Many { offsets: &b[2], groups: g, m, most: m },
                    None => Groups::One { m },
                };
                launch::linear(gpu, LinearKernel::WavePerRow, w, &b[1], &groups, &b[3])
            }),
        ),
    }
}
