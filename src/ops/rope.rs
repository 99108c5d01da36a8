//! Interleaved RoPE on a slice of each head (kernels/rope.hip). CPU reference:
//! backend::cpu::Rope::apply.

use rand::Rng;

use super::{Case, OpDecl, Output, Prepared, rng_for, uniform};
use crate::backend::cpu::Rope;
use crate::backend::gpu::launch;
use crate::device::{Buffer, Gpu};
use crate::error::Result;
use crate::plan::{KernelVariant, OpShape};

// sin/cos of large angles (positions up to 10^5) differ by a few ulps of the angle.
pub static DECL: OpDecl = OpDecl { family: "rope", tolerance: 2e-4, checks, at };

const THETA: f64 = 1e6;

/// Where the rotated dims sit: `heads` heads of `stride` values, dims [offset, offset + rot).
struct Geometry {
    rows: usize,
    heads: usize,
    stride: usize,
    offset: usize,
    rot: usize,
}

fn checks(v: &'static KernelVariant) -> Vec<Case> {
    vec![
        case(v, Geometry { rows: 3, heads: 5, stride: 48, offset: 32, rot: 16 }),
        case(v, Geometry { rows: 7, heads: 1, stride: 22, offset: 0, rot: 10 }),
    ]
}

fn at(v: &'static KernelVariant, shape: &OpShape, tokens: usize) -> Case {
    let OpShape::Rope { rot, heads, .. } = *shape else { panic!("rope at {shape}") };
    let rot = rot as usize;
    // The query layout: nope dims (3x rope in GLM) then the rope dims.
    case(v, Geometry { rows: tokens, heads: heads as usize, stride: 4 * rot, offset: 3 * rot, rot })
}

fn case(v: &'static KernelVariant, g: Geometry) -> Case {
    let Geometry { rows, heads, stride, offset, rot } = g;
    let shape = format!("rows={rows} heads={heads} stride={stride} offset={offset} rot={rot}");
    let mut rng = rng_for(v.op, &shape);
    let x = uniform(&mut rng, rows * heads * stride, 1.0); // [rows, heads, stride]
    let positions: Vec<i32> = (0..rows).map(|_| rng.random_range(0..100_000)).collect(); // [rows]
    let rope = Rope::new(THETA, rot);
    let mut y = x.clone();
    for (r, &pos) in positions.iter().enumerate() {
        for h in 0..heads {
            let base = (r * heads + h) * stride + offset;
            rope.apply(&mut y[base..base + rot], pos as usize);
        }
    }
    let inv_freq = rope.inv_freq().to_vec(); // [rot / 2]
    Case {
        variant: v,
        shape,
        bytes: 4 * 2 * rows * heads * rot,
        expected: Output::Floats(y),
        setup: Box::new(move |gpu| {
            Ok(Box::new(Bufs {
                x: gpu.upload(&x)?,
                positions: gpu.upload(&positions)?,
                inv_freq: gpu.upload(&inv_freq)?,
                g: Geometry { rows, heads, stride, offset, rot },
            }))
        }),
    }
}

struct Bufs {
    /// Rotated in place: the check launches once; the bench keeps rotating.
    x: Buffer, // [rows, heads, stride] f32
    positions: Buffer, // [rows] i32
    inv_freq: Buffer,  // [rot / 2] f32
    g: Geometry,
}

impl Prepared for Bufs {
    fn launch(&self, gpu: &Gpu) -> Result<()> {
        let g = &self.g;
        launch::rope(gpu, &self.x, &self.positions, &self.inv_freq, g.rows, g.heads, g.stride, g.offset, g.rot)
    }

    fn output(&self) -> Result<Output> {
        Ok(Output::Floats(self.x.read()?))
    }
}
