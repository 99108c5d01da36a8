//! Every GPU op declared once, as llama.cpp's test-backend-ops does. A declaration names the
//! op family of the kernel registry (`plan::REGISTRY`: variants, sources, symbols, arches,
//! token reach) it covers, its error budget, and how to build a case at any shape: inputs,
//! the CPU backend's output on them (the reference), and the launch of each variant's kernels
//! with grid and block from the shape. From that one declaration:
//! - `plan::required_ops` names the family and its typed shape for the plan's kernel map;
//! - [`check`] runs every variant at the declared check shapes on a device and compares;
//! - [`bench`] runs the kernel map of a plan at its shapes and token buckets and reports
//!   achieved bandwidth over the device's measured copy bandwidth.
//!
//! Adding a kernel variant of a declared op: its .hip source and a registry row. Adding an op:
//! the .hip source, a registry row and a declaration file here.

pub mod bench;
pub mod check;
mod elementwise;
mod embed;
mod indexer;
mod kv_write;
mod layernorm;
mod linear;
mod mla_decode;
mod mla_heads;
mod moe_dispatch;
mod moe_mxfp4;
mod paged;
mod plain;
mod rmsnorm;
mod rope;
mod router;
mod sample;

use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;

use crate::device::Gpu;
use crate::error::Result;
use crate::plan::{KernelVariant, OpShape, REGISTRY};

/// What an op produces, for comparison.
#[derive(Debug, Clone, PartialEq)]
pub enum Output {
    Floats(Vec<f32>),
    /// Row-major rows of indices, each row compared in order.
    Indices(Vec<Vec<i32>>),
    /// Rows of indices whose order carries no meaning (compared sorted).
    IndexSets(Vec<Vec<i32>>),
    /// Tokens drawn at uniform variates `u` from distributions `p` (one row each), as the CPU
    /// reference knows them: a device's draw passes when `u` falls in its token's slice of the
    /// cumulative mass, give or take the tolerance (sums over a whole vocabulary in another
    /// order move the slices' edges).
    Draws {
        p: Vec<Vec<f32>>,
        u: Vec<f32>,
    },
    /// Several outputs of one launch sequence.
    Many(Vec<Output>),
}

/// Inputs uploaded to a device, ready to launch as often as asked.
pub trait Prepared {
    /// Queues the variant's kernels.
    fn launch(&self, gpu: &Gpu) -> Result<()>;
    /// Reads what the last launch produced.
    fn output(&self) -> Result<Output>;
}

pub type Setup = Box<dyn Fn(&Gpu) -> Result<Box<dyn Prepared>>>;

/// One op instance: a variant at a shape, with its CPU reference output.
pub struct Case {
    pub variant: &'static KernelVariant,
    /// The typed shape and per-case knobs, rendered, e.g. `d=100|36 rows=5`.
    pub shape: String,
    /// Bytes the kernels must at least move (inputs read once, outputs written once).
    pub bytes: usize,
    pub expected: Output,
    pub setup: Setup,
}

/// One declared op family.
pub struct OpDecl {
    /// The registry op family, e.g. `mla.decode.fp8_e4m3`.
    pub family: &'static str,
    /// Float outputs pass when max |device - cpu| <= tolerance x max(1, max |cpu|); index
    /// outputs must be equal.
    pub tolerance: f64,
    /// Check cases of one variant: at least two shapes, odd sizes among them.
    pub checks: fn(&'static KernelVariant) -> Vec<Case>,
    /// A case at a plan's shape and token count (the bench).
    pub at: fn(&'static KernelVariant, &OpShape, usize) -> Case,
}

/// Every declaration.
pub fn all() -> Vec<&'static OpDecl> {
    vec![
        &rmsnorm::DECL,
        &rope::DECL,
        &router::DECL,
        &moe_mxfp4::DECL,
        &mla_decode::DECL_BF16,
        &mla_decode::DECL_FP8,
        &mla_decode::DECL_F32,
        &indexer::DECL_BF16,
        &indexer::DECL_FP8,
        &indexer::DECL_F32,
        &sample::DECL,
        &embed::DECL,
        &layernorm::DECL,
        &elementwise::DECL,
        &linear::DECL_BF16,
        &linear::DECL_F32,
        &mla_heads::DECL_BF16,
        &mla_heads::DECL_F32,
        &mla_heads::DECL_MXFP4,
        &kv_write::DECL_BF16,
        &kv_write::DECL_FP8,
        &kv_write::DECL_F32,
        &moe_dispatch::DECL,
    ]
}

pub fn decl(family: &str) -> Option<&'static OpDecl> {
    all().into_iter().find(|d| d.family == family)
}

/// The registry variants of a family.
pub fn variants(family: &str) -> impl Iterator<Item = &'static KernelVariant> + '_ {
    REGISTRY.iter().filter(move |v| v.op == family)
}

/// The KV format a family name ends in (`mla.decode.fp8_e4m3`, `kv_write.f32`, ...).
fn kv_format_of(v: &KernelVariant) -> crate::kv::KvFormat {
    use crate::kv::KvFormat;
    match v.op.rsplit('.').next() {
        Some("fp8_e4m3") => KvFormat::Fp8E4m3,
        Some("f32") => KvFormat::F32,
        _ => KvFormat::Bf16,
    }
}

/// The random stream a case draws its inputs from: fixed per (family, shape), so a case is
/// the same on every run and machine.
fn rng_for(family: &str, shape: &str) -> ChaCha8Rng {
    let h = blake3::hash(format!("{family} {shape}").as_bytes());
    ChaCha8Rng::from_seed(*h.as_bytes())
}

/// n values uniform in [-scale, scale).
fn uniform(rng: &mut ChaCha8Rng, n: usize, scale: f32) -> Vec<f32> {
    use rand::Rng;
    (0..n).map(|_| (rng.random::<f32>() - 0.5) * 2.0 * scale).collect()
}

/// A list of counts for a shape label: `[2, 0, 3]`, or `64x128` when all equal.
fn counts(v: &[usize]) -> String {
    match v {
        [first, rest @ ..] if rest.len() >= 3 && rest.iter().all(|x| x == first) => format!("{}x{first}", v.len()),
        _ => format!("{v:?}"),
    }
}
