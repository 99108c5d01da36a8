//! RMSNorm over rows (kernels/norm.hip). CPU reference: backend::cpu::rms_norm_rows.

use super::{Case, OpDecl, Output, Prepared, rng_for, uniform};
use crate::backend::cpu::rms_norm_rows;
use crate::backend::gpu::launch;
use crate::device::{Buffer, Gpu};
use crate::error::Result;
use crate::plan::{KernelVariant, OpShape};

pub static DECL: OpDecl = OpDecl { family: "rmsnorm", tolerance: 1e-5, checks, at };

const EPS: f32 = 1e-5;
/// GLM-5.2's hidden width.
const GLM_HIDDEN: usize = 6144;

fn checks(v: &'static KernelVariant) -> Vec<Case> {
    vec![case(v, 37, 3), case(v, 520, 2), case(v, GLM_HIDDEN, 2)]
}

fn at(v: &'static KernelVariant, shape: &OpShape, tokens: usize) -> Case {
    let OpShape::Norm { widths } = shape else { panic!("rmsnorm at {shape}") };
    case(v, widths.iter().copied().max().unwrap_or(1) as usize, tokens)
}

fn case(v: &'static KernelVariant, d: usize, rows: usize) -> Case {
    let shape = format!("d={d} rows={rows}");
    let mut rng = rng_for(v.op, &shape);
    let x = uniform(&mut rng, rows * d, 2.0); // [rows, d]
    let w = uniform(&mut rng, d, 1.0); // [d]
    let mut y = x.clone();
    rms_norm_rows(&mut y, &w, EPS);
    Case {
        variant: v,
        shape,
        bytes: 4 * (2 * rows * d + d),
        expected: Output::Floats(y),
        setup: Box::new(move |gpu| {
            Ok(Box::new(Bufs { x: gpu.upload(&x)?, w: gpu.upload(&w)?, y: gpu.zeros::<f32>(rows * d)?, rows, d }))
        }),
    }
}

struct Bufs {
    x: Buffer, // [rows, d] f32
    w: Buffer, // [d] f32
    y: Buffer, // [rows, d] f32
    rows: usize,
    d: usize,
}

impl Prepared for Bufs {
    fn launch(&self, gpu: &Gpu) -> Result<()> {
        launch::rms_norm(gpu, &self.x, &self.w, &self.y, self.rows, self.d, EPS)
    }

    fn output(&self) -> Result<Output> {
        Ok(Output::Floats(self.y.read()?))
    }
}
