//! LayerNorm over rows (kernels/norm.hip), the indexer keys' norm. CPU reference:
//! backend::cpu::layer_norm_rows.

use std::sync::Arc;

use super::plain::{Init, Read, setup};
use super::{Case, OpDecl, Output, rng_for, uniform};
use crate::backend::cpu::layer_norm_rows;
use crate::backend::gpu::launch;
use crate::plan::{KernelVariant, OpShape};

pub static DECL: OpDecl = OpDecl { family: "layernorm", tolerance: 1e-5, checks, at };

const EPS: f32 = 1e-6;

fn checks(v: &'static KernelVariant) -> Vec<Case> {
    vec![case(v, 37, 3), case(v, 128, 5), case(v, 520, 2)]
}

fn at(v: &'static KernelVariant, shape: &OpShape, tokens: usize) -> Case {
    let OpShape::Norm { widths } = shape else { panic!("layernorm at {shape}") };
    case(v, widths.iter().copied().max().unwrap_or(1) as usize, tokens)
}

fn case(v: &'static KernelVariant, d: usize, rows: usize) -> Case {
    let shape = format!("d={d} rows={rows}");
    let mut rng = rng_for(v.op, &shape);
    let x: Vec<f32> = uniform(&mut rng, rows * d, 2.0).into_iter().map(|v| v + 0.5).collect(); // [rows, d]
    let w = uniform(&mut rng, d, 1.0); // [d]
    let b = uniform(&mut rng, d, 0.5); // [d]
    let mut y = x.clone();
    layer_norm_rows(&mut y, &w, &b, EPS);
    Case {
        variant: v,
        shape,
        bytes: 4 * (2 * rows * d + 2 * d),
        expected: Output::Floats(y),
        setup: setup(
            vec![Init::F32(x), Init::F32(w), Init::F32(b), Init::ZeroF32(rows * d)],
            vec![(3, Read::Floats)],
            Arc::new(move |gpu, bf| launch::layer_norm(gpu, &bf[0], &bf[1], &bf[2], &bf[3], rows, d, EPS)),
        ),
    }
}
