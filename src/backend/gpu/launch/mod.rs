//! Every kernel's launch, written once: its parameters in the order and types of its
//! `extern "C"` signature, and its grid and block from the shape. The GPU backend and the op
//! declarations (`ops/`, which check each kernel against its CPU twin) both launch through
//! these, so what the checks run is what the forward runs.
//!
//! Each function checks that every buffer is at least as large as the kernel touches at the
//! given shape before launching; what a kernel reads through indices stored in device memory
//! (slots, page tables, selections, expert ids) is kiln's own bookkeeping and is not checked
//! here.

mod attention;
mod linear;
mod moe;
mod rows;
mod sample;

pub use attention::*;
pub use linear::*;
pub use moe::*;
pub use rows::*;
pub use sample::*;

use crate::backend::RouterConfig;
use crate::device::{Buffer, Dim3, Gpu, KernelArgs, Launch};
use crate::error::{Error, Result};
use crate::kv::KvFormat;

/// Threads per block of the one-thread-per-element kernels and the row kernels.
const BLOCK: usize = 256;
/// Output rows per block of the wave-per-row linear kernels (one wave each: 64 threads on AMD
/// and the emulated device, 32 on CUDA, `Gpu::wave`).
const ROWS_PER_BLOCK: usize = 4;
/// The MXFP4 tile kernel's output tile: weight rows x tokens.
const TILE_N: usize = 64;
const TILE_M: usize = 32;
/// Threads per block of the per-token KV writes (the fp8 scale group is 128 values).
const KV_BLOCK: usize = 128;

fn grid(n: usize, per_block: usize) -> u32 {
    u32::try_from(n.div_ceil(per_block.max(1))).expect("grid beyond u32")
}

fn count(n: usize) -> u32 {
    u32::try_from(n).expect("grid beyond u32")
}

fn flat(n: usize) -> Launch {
    Launch::new(Dim3::x(grid(n, BLOCK)), Dim3::x(BLOCK as u32))
}

fn per_row(rows: usize) -> Launch {
    Launch::new(Dim3::x(count(rows)), Dim3::x(BLOCK as u32))
}

/// The error for a launch its kernel cannot take.
fn refused(message: String) -> Error {
    Error::Device { device: "launch".into(), message }
}

/// Fails unless `b` holds `n` elements of `size` bytes.
fn need(b: &Buffer, n: usize, size: usize, what: &str, kernel: &str) -> Result<()> {
    if b.bytes() < n * size {
        return Err(refused(format!("{kernel}: {what} holds {} bytes but the shape needs {}", b.bytes(), n * size)));
    }
    Ok(())
}

fn f32s(b: &Buffer, n: usize, what: &str, kernel: &str) -> Result<()> {
    need(b, n, 4, what, kernel)
}

fn i32s(b: &Buffer, n: usize, what: &str, kernel: &str) -> Result<()> {
    need(b, n, 4, what, kernel)
}

/// How a dense weight's elements are stored.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Dense {
    Bf16,
    F32,
}

impl Dense {
    pub fn bytes(self) -> usize {
        match self {
            Dense::Bf16 => 2,
            Dense::F32 => 4,
        }
    }
}

/// A weight in device memory as the kernels read it.
pub enum WeightBufs {
    /// [G, N, K] elements.
    Dense { format: Dense, w: Buffer },
    /// codes [G, N, K/2], E8M0 scales [G, N, K/32].
    Mxfp4 { codes: Buffer, scales: Buffer },
}

impl WeightBufs {
    pub fn view(&self) -> WeightView<'_> {
        match self {
            WeightBufs::Dense { format, w } => WeightView::Dense { format: *format, w },
            WeightBufs::Mxfp4 { codes, scales } => WeightView::Mxfp4 { codes, scales },
        }
    }

    /// The registry's linear family for this storage.
    pub fn family(&self) -> &'static str {
        crate::plan::linear_family(match self {
            WeightBufs::Dense { format: Dense::Bf16, .. } => crate::plan::WeightFormat::Bf16,
            WeightBufs::Dense { format: Dense::F32, .. } => crate::plan::WeightFormat::F32,
            WeightBufs::Mxfp4 { .. } => crate::plan::WeightFormat::Mxfp4,
        })
    }
}

/// A weight's buffers, borrowed for a launch.
#[derive(Clone, Copy)]
pub enum WeightView<'a> {
    Dense { format: Dense, w: &'a Buffer },
    Mxfp4 { codes: &'a Buffer, scales: &'a Buffer },
}

/// A weight matrix on the device: its buffers and each group's shape [n, k] (a stack of
/// groups for grouped linears, one for the rest).
#[derive(Clone, Copy)]
pub struct Matrix<'a> {
    pub view: WeightView<'a>,
    pub n: usize,
    pub k: usize,
}
