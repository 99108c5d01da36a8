//! The seam between the model and the hardware. `model/` is written once against
//! [`Backend`]: device buffers, weights uploaded once from the checkpoint's mapping, a KV
//! store the ops write and read in place, and the ops of the GLM-DSA forward. The CPU backend
//! (`cpu::Cpu`) is the reference every kernel is checked against and the embedded default; a
//! GPU backend implements the same ops with the kernels of `ops/` on a `device::Device`.
//!
//! Shapes: a [`Backend::Tensor`] is rows of f32 of one width ([n, width], row-major); an
//! op's doc gives the widths it reads and writes. Tokens of a step come from any number of
//! sequences; [`StepBatch`] says where each one is and where its KV lives.

pub(crate) mod batch;
pub mod cpu;
pub mod gpu;
mod select;

pub use batch::{Selection, StepBatch};
pub use cpu::{Route, RouterConfig};
pub use select::{Selected, gpu_backend, select};

use crate::error::Result;
use crate::kv::{KvFormat, KvGeometry, PageCopy};
use crate::weights::Linear;

/// The three matrices of a SwiGLU MLP as the checkpoint stores them.
pub struct MlpLinears {
    pub gate: Linear, // [W, D]
    pub up: Linear,   // [W, D]
    pub down: Linear, // [D, W]
}

/// What attention needs to know about the layer's heads.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct MlaDims {
    pub heads: usize,
    /// qk_nope_head_dim, qk_rope_head_dim, v_head_dim, kv_lora_rank
    pub nope: usize,
    pub rope: usize,
    pub v: usize,
    pub latent: usize,
    /// Softmax scale, 1 / sqrt(nope + rope).
    pub scale: f32,
}

pub trait Backend: Send + Sync + 'static {
    /// f32 activations [n, width].
    type Tensor: Send + Sync;
    /// A weight matrix [rows, cols] (PyTorch Linear layout: y = x W^T).
    type Weight: Send + Sync;
    /// An f32 vector (norm weights and biases, the router, RoPE frequencies).
    type Vector: Send + Sync;
    /// One layer's routed experts.
    type Experts: Send + Sync;
    /// Every layer's KV entries, addressed by the page table's slots.
    type KvStore: Send;
    /// A step's positions, slots and page tables where the ops can read them.
    type Batch: Send + Sync;
    /// The keys each token of a step attends to.
    type Selection: Send + Sync;
    /// Each token's experts and their weights.
    type Routing: Send + Sync;

    fn describe(&self) -> String;

    /// `a` and `b`, which share no outputs, run the way this backend runs independent work:
    /// by default `a`, then `b` (a device queues its ops in one stream). The CPU runs them on
    /// two threads at once, so that work too small to split well keeps both cores busy.
    fn both<RA: Send, RB: Send>(&self, a: impl FnOnce() -> RA + Send, b: impl FnOnce() -> RB + Send) -> (RA, RB) {
        (a(), b())
    }

    // ---- weights, once at start-up ----
    fn weight(&self, w: Linear) -> Result<Self::Weight>;
    fn vector(&self, v: Vec<f32>) -> Result<Self::Vector>;
    fn experts(&self, experts: Vec<MlpLinears>) -> Result<Self::Experts>;

    // ---- the KV store ----
    fn kv_store(&self, format: KvFormat, geometry: KvGeometry, slots: usize) -> Result<Self::KvStore>;
    /// Room for `slots` entries per layer (single-sequence caches grow).
    fn kv_grow(&self, kv: &mut Self::KvStore, slots: usize) -> Result<()>;
    /// The page table's copy on write.
    fn kv_copy_page(&self, kv: &mut Self::KvStore, copy: PageCopy, page_size: usize) -> Result<()>;

    // ---- moving data ----
    fn batch(&self, b: &StepBatch) -> Result<Self::Batch>;
    /// Host rows [n, width] onto the backend.
    fn upload(&self, rows: Vec<f32>, width: usize) -> Result<Self::Tensor>;
    fn download(&self, t: &Self::Tensor) -> Result<Vec<f32>>;
    /// Rows `rows` of t, in that order.
    fn gather(&self, t: &Self::Tensor, rows: &[usize]) -> Result<Self::Tensor>;
    /// For traces: per token, None (every causal key) or the selected positions, ascending.
    fn read_selection(&self, s: &Self::Selection) -> Result<Selection>;
    fn read_routing(&self, r: &Self::Routing) -> Result<Vec<Route>>;
    /// Each row's first column under the ranking rule (greedy sampling): only the tokens come
    /// back to the host, not the rows.
    fn argmax(&self, t: &Self::Tensor) -> Result<Vec<u32>>;

    // ---- ops ----
    /// Rows of `table` [V, D] for the batch's tokens -> [n, D].
    fn embed(&self, table: &Self::Weight, b: &Self::Batch) -> Result<Self::Tensor>;
    /// x * rsqrt(mean(x^2) + eps) * w over each row.
    fn rms_norm(&self, x: &Self::Tensor, w: &Self::Vector, eps: f32) -> Result<Self::Tensor>;
    /// (x - mean) / sqrt(var + eps) * w + bias over each row.
    fn layer_norm(&self, x: &Self::Tensor, w: &Self::Vector, bias: &Self::Vector, eps: f32) -> Result<Self::Tensor>;
    /// x [n, cols] W^T -> [n, rows]; with `act_quant` and an MXFP4 weight, x is first rounded
    /// to the MXFP4 grid (W4A4).
    fn linear(&self, x: &Self::Tensor, w: &Self::Weight, act_quant: bool) -> Result<Self::Tensor>;
    /// `linear` of x through each of `ws` -> one output each, in order. A backend that can
    /// run several weights of one input in one pass does so (the CPU: one parallel loop
    /// instead of one per weight).
    fn linears(&self, x: &Self::Tensor, ws: &[&Self::Weight], act_quant: bool) -> Result<Vec<Self::Tensor>> {
        ws.iter().map(|w| self.linear(x, w, act_quant)).collect()
    }
    /// acc += x.
    fn add(&self, acc: &mut Self::Tensor, x: &Self::Tensor) -> Result<()>;
    /// x *= s.
    fn scale(&self, x: &mut Self::Tensor, s: f32) -> Result<()>;
    /// silu(gate) * up.
    fn silu_mul(&self, gate: &Self::Tensor, up: &Self::Tensor) -> Result<Self::Tensor>;
    /// Columns [0, at) and [at, width) of x.
    fn split(&self, x: &Self::Tensor, at: usize) -> Result<(Self::Tensor, Self::Tensor)>;
    /// [a | b] row by row.
    fn concat(&self, a: &Self::Tensor, b: &Self::Tensor) -> Result<Self::Tensor>;
    /// Interleaved RoPE at each token's position: x is [n, heads, width / heads], dims
    /// [offset, offset + 2 * inv_freq.len()) of each head turn.
    fn rope(
        &self,
        x: &mut Self::Tensor,
        b: &Self::Batch,
        inv_freq: &Self::Vector,
        heads: usize,
        offset: usize,
    ) -> Result<()>;

    /// The step's MLA entries into `layer`: latent [n, kv_lora_rank], k_rope [n, rope].
    fn write_kv(
        &self,
        kv: &mut Self::KvStore,
        layer: usize,
        b: &Self::Batch,
        latent: &Self::Tensor,
        k_rope: &Self::Tensor,
    ) -> Result<()>;
    /// The step's indexer keys [n, index_head_dim] into `layer`.
    fn write_index(&self, kv: &mut Self::KvStore, layer: usize, b: &Self::Batch, keys: &Self::Tensor) -> Result<()>;
    /// Every causal key for every token (a window that fits in top-k).
    fn select_all(&self, b: &Self::Batch) -> Result<Self::Selection>;
    /// The indexer: per token, scores sum_h w_h ReLU(q_h . k_t * dot_scale) over its
    /// sequence's keys 0..=pos in `layer` and the `topk` best (all of them when the window is
    /// no larger). q [n, heads * index_head_dim] roped, w [n, heads] scaled.
    #[allow(clippy::too_many_arguments)]
    fn indexer_select(
        &self,
        kv: &Self::KvStore,
        layer: usize,
        b: &Self::Batch,
        q: &Self::Tensor,
        w: &Self::Tensor,
        topk: usize,
        dot_scale: f32,
    ) -> Result<Self::Selection>;
    /// q_nope of each head folded through kv_b's key half: q [n, H * (nope + rope)] ->
    /// q_abs [n, H * kv_lora_rank].
    fn absorb_query(&self, q: &Self::Tensor, kv_b: &Self::Weight, d: &MlaDims) -> Result<Self::Tensor>;
    /// Absorbed attention over the selected keys of `layer`, in latent space: q_abs
    /// [n, H * r], q's rope part -> [n, H * r].
    #[allow(clippy::too_many_arguments)]
    fn mla_attention(
        &self,
        kv: &Self::KvStore,
        layer: usize,
        b: &Self::Batch,
        q_abs: &Self::Tensor,
        q: &Self::Tensor,
        sel: &Self::Selection,
        d: &MlaDims,
    ) -> Result<Self::Tensor>;
    /// The latent outputs through kv_b's value half: [n, H * r] -> [n, H * v].
    fn expand_values(&self, o_lat: &Self::Tensor, kv_b: &Self::Weight, d: &MlaDims) -> Result<Self::Tensor>;
    /// HF's form of the same attention (every key expanded through kv_b), the oracle the
    /// absorbed form is checked against: q [n, H * (nope + rope)] -> [n, H * v].
    #[allow(clippy::too_many_arguments)]
    fn mla_attention_naive(
        &self,
        kv: &Self::KvStore,
        layer: usize,
        b: &Self::Batch,
        q: &Self::Tensor,
        kv_b: &Self::Weight,
        sel: &Self::Selection,
        d: &MlaDims,
    ) -> Result<Self::Tensor>;
    /// The router: x [n, D], router [E, D], bias [E].
    fn route(
        &self,
        x: &Self::Tensor,
        router: &Self::Vector,
        bias: &Self::Vector,
        c: &RouterConfig,
    ) -> Result<Self::Routing>;
    /// Routed experts: sum over each token's experts of weight x down(silu(gate x) * up x),
    /// experts applied in ascending order.
    fn moe(
        &self,
        x: &Self::Tensor,
        r: &Self::Routing,
        experts: &Self::Experts,
        act_quant: bool,
    ) -> Result<Self::Tensor>;
}
