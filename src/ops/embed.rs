//! Embedding rows for a step's tokens (kernels/embed.hip), from bf16 and f32 tables. CPU
//! reference: the CPU backend's embed (weights::Linear row_into).

use std::sync::Arc;

use rand::Rng;

use super::plain::{Init, Read, setup};
use super::{Case, OpDecl, Output, rng_for, uniform};
use crate::backend::gpu::launch::{self, Dense, Matrix, WeightView};
use crate::plan::{KernelVariant, OpShape};
use crate::weights::Linear;

pub static DECL: OpDecl = OpDecl { family: "embed", tolerance: 0.0, checks, at };

fn checks(v: &'static KernelVariant) -> Vec<Case> {
    vec![case(v, Dense::Bf16, 50, 37, 5), case(v, Dense::F32, 31, 64, 3), case(v, Dense::Bf16, 4096, 6144, 2)]
}

fn at(v: &'static KernelVariant, shape: &OpShape, tokens: usize) -> Case {
    let OpShape::Embed { vocab, d } = *shape else { panic!("embed at {shape}") };
    case(v, Dense::Bf16, (vocab as usize).min(1 << 16), d as usize, tokens)
}

fn case(v: &'static KernelVariant, format: Dense, vocab: usize, d: usize, n: usize) -> Case {
    let shape = format!("vocab={vocab} d={d} tokens={n} {format:?}");
    let mut rng = rng_for(v.op, &shape);
    let values = uniform(&mut rng, vocab * d, 1.0); // [V, d]
    let bytes: Vec<u8> = match format {
        Dense::Bf16 => values.iter().flat_map(|&x| half::bf16::from_f32(x).to_le_bytes()).collect(),
        Dense::F32 => values.iter().flat_map(|&x| x.to_le_bytes()).collect(),
    };
    let dtype = match format {
        Dense::Bf16 => safetensors::Dtype::BF16,
        Dense::F32 => safetensors::Dtype::F32,
    };
    let table = Linear::dense(dtype, bytes.clone(), vocab, d);
    let tokens: Vec<i32> = (0..n).map(|_| rng.random_range(0..vocab as i32)).collect(); // [n]
    let mut y = vec![0.0f32; n * d]; // [n, d]
    for (row, &t) in y.chunks_mut(d).zip(&tokens) {
        table.row_into(t as usize, row);
    }
    Case {
        variant: v,
        shape,
        bytes: n * d * (format.bytes() + 4),
        expected: Output::Floats(y),
        setup: setup(
            vec![Init::U8(bytes), Init::I32(tokens), Init::ZeroF32(n * d)],
            vec![(2, Read::Floats)],
            Arc::new(move |gpu, b| {
                launch::embed(
                    gpu,
                    Matrix { view: WeightView::Dense { format, w: &b[0] }, n: vocab, k: d },
                    &b[1],
                    &b[2],
                    n,
                )
            }),
        ),
    }
}
