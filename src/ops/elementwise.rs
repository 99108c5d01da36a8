//! Elementwise ops and row moves (kernels/elementwise.hip): add, scale, SiLU-and-multiply,
//! split and concat of columns, row gather, fill. CPU reference: the CPU backend's ops of the
//! same names.

use std::sync::Arc;

use super::plain::{Init, Read, setup};
use super::{Case, OpDecl, Output, rng_for, uniform};
use crate::backend::Backend;
use crate::backend::cpu::{Cpu, Rows};
use crate::backend::gpu::launch::{self, Columns};
use crate::plan::{KernelVariant, OpShape};

pub static DECL: OpDecl = OpDecl { family: "elementwise", tolerance: 1e-6, checks, at };

const SCALE: f32 = 0.37;
const FILL: i32 = 7;

fn checks(v: &'static KernelVariant) -> Vec<Case> {
    vec![case(v, 5, 37, 11), case(v, 3, 6144, 512)]
}

fn at(v: &'static KernelVariant, shape: &OpShape, tokens: usize) -> Case {
    let OpShape::Rows { d } = *shape else { panic!("elementwise at {shape}") };
    case(v, tokens, d as usize, d as usize / 2)
}

/// On rows a, b [n, d]: acc = (a + b) * SCALE; h = silu(a) * b; h split at `at` and put back
/// as [right | left]; its rows gathered in reverse; an i32 buffer filled.
fn case(v: &'static KernelVariant, n: usize, d: usize, at: usize) -> Case {
    let shape = format!("rows={n} d={d} split={at}");
    let mut rng = rng_for(v.op, &shape);
    let a = uniform(&mut rng, n * d, 3.0); // [n, d]
    let b = uniform(&mut rng, n * d, 1.0); // [n, d]
    let rev: Vec<i32> = (0..n as i32).rev().collect(); // [n]
    let cpu = Cpu;
    let reference = || -> crate::error::Result<Vec<Output>> {
        let (ra, rb) = (Rows::new(a.clone(), d), Rows::new(b.clone(), d));
        let mut acc = ra.clone();
        cpu.add(&mut acc, &rb)?;
        cpu.scale(&mut acc, SCALE)?;
        let h = cpu.silu_mul(&ra, &rb)?;
        let (left, right) = cpu.split(&h, at)?;
        let swapped = cpu.concat(&right, &left)?;
        let rows: Vec<usize> = rev.iter().map(|&r| r as usize).collect();
        let gathered = cpu.gather(&swapped, &rows)?;
        Ok(vec![
            Output::Floats(acc.data),
            Output::Floats(swapped.data),
            Output::Floats(gathered.data),
            Output::Indices(vec![vec![FILL; n]]),
        ])
    };
    let expected = Output::Many(reference().expect("CPU ops on well-formed rows"));
    let nd = n * d;
    Case {
        variant: v,
        shape,
        bytes: 4 * 8 * nd,
        expected,
        setup: setup(
            vec![
                Init::F32(a.clone()),       // 0 a, then acc
                Init::F32(b),               // 1 b
                Init::ZeroF32(nd),          // 2 h
                Init::ZeroF32(n * at),      // 3 left
                Init::ZeroF32(nd - n * at), // 4 right
                Init::ZeroF32(nd),          // 5 swapped
                Init::I32(rev),             // 6 rows
                Init::ZeroF32(nd),          // 7 gathered
                Init::ZeroI32(n),           // 8 filled
                Init::F32(a),               // 9 a, kept
            ],
            vec![(0, Read::Floats), (5, Read::Floats), (7, Read::Floats), (8, Read::Indices(n))],
            Arc::new(move |gpu, x| {
                launch::add(gpu, &x[0], &x[1], nd)?;
                launch::scale(gpu, &x[0], SCALE, nd)?;
                launch::silu_mul(gpu, &x[9], &x[1], &x[2], nd)?;
                let cols = |x_width, x_offset, y_width, y_offset, cols| Columns {
                    rows: n,
                    x_width,
                    x_offset,
                    y_width,
                    y_offset,
                    cols,
                };
                launch::copy_cols(gpu, &x[2], &x[3], &cols(d, 0, at, 0, at))?;
                launch::copy_cols(gpu, &x[2], &x[4], &cols(d, at, d - at, 0, d - at))?;
                launch::copy_cols(gpu, &x[4], &x[5], &cols(d - at, 0, d, 0, d - at))?;
                launch::copy_cols(gpu, &x[3], &x[5], &cols(at, 0, d, d - at, at))?;
                launch::gather_rows(gpu, &x[5], n, &x[6], &x[7], n, d)?;
                launch::fill_i32(gpu, &x[8], FILL, n)
            }),
        ),
    }
}
