//! MLA attention (the GLM-DSA spec's section 3.4, summarized in the README): low-rank q and kv
//! paths, a cached normalized latent and roped key per token, and attention restricted to the
//! indexer's selection.

use super::weights::AttnWeights;
use crate::backend::{Backend, MlaDims};
use crate::error::Result;
use crate::plan::ModelShape;

/// HF's q_a_layernorm and kv_a_layernorm use the RMSNorm class default, not rms_norm_eps.
pub const LATENT_NORM_EPS: f32 = 1e-6;

/// How scores are computed; both give the same numbers up to rounding.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AttentionForm {
    /// q_nope folded through kv_b's key half into latent space; scores against the cached
    /// latent directly, output expanded through the value half. What production decode does.
    Absorbed,
    /// Expand every cached latent through kv_b into per-head keys and values (HF's form).
    Naive,
}

pub fn dims(m: &ModelShape) -> MlaDims {
    MlaDims {
        heads: m.num_attention_heads as usize,
        nope: m.qk_nope_head_dim as usize,
        rope: m.qk_rope_head_dim as usize,
        v: m.v_head_dim as usize,
        latent: m.kv_lora_rank as usize,
        scale: 1.0 / (m.qk_head_dim() as f32).sqrt(),
    }
}

/// The query side of a step.
pub struct Queries<B: Backend> {
    pub q_lat: B::Tensor, // [n, q_lora] (also the indexer's input)
    pub q: B::Tensor,     // [n, H * (nope + rope)], rope part roped
}

/// Projects the step's tokens into queries and writes their cache entries (normalized
/// latent, roped rope key) into `layer`.
#[allow(clippy::too_many_arguments)]
pub fn project<B: Backend>(
    b: &B,
    w: &AttnWeights<B>,
    d: &MlaDims,
    inv_freq: &B::Vector,
    x: &B::Tensor, // [n, D], input-normed
    batch: &B::Batch,
    kv: &mut B::KvStore,
    layer: usize,
    aq: bool,
) -> Result<Queries<B>> {
    let q_lat = b.rms_norm(&b.linear(x, &w.q_a, aq)?, &w.q_a_norm, LATENT_NORM_EPS)?;
    let mut q = b.linear(&q_lat, &w.q_b, aq)?;
    b.rope(&mut q, batch, inv_freq, d.heads, d.nope)?;
    let ckv = b.linear(x, &w.kv_a, aq)?; // [n, r + rope]
    let (latent, mut k_rope) = b.split(&ckv, d.latent)?;
    let latent = b.rms_norm(&latent, &w.kv_a_norm, LATENT_NORM_EPS)?;
    b.rope(&mut k_rope, batch, inv_freq, 1, 0)?;
    b.write_kv(kv, layer, batch, &latent, &k_rope)?;
    Ok(Queries { q_lat, q })
}

/// The heads' outputs [n, H * v] over the keys `sel` allows, before o_proj.
#[allow(clippy::too_many_arguments)]
pub fn attend<B: Backend>(
    b: &B,
    w: &AttnWeights<B>,
    d: &MlaDims,
    kv: &B::KvStore,
    layer: usize,
    batch: &B::Batch,
    q: &B::Tensor,
    sel: &B::Selection,
    form: AttentionForm,
) -> Result<B::Tensor> {
    match form {
        AttentionForm::Absorbed => {
            let q_abs = b.absorb_query(q, &w.kv_b, d)?;
            let o_lat = b.mla_attention(kv, layer, batch, &q_abs, q, sel, d)?;
            b.expand_values(&o_lat, &w.kv_b, d)
        }
        AttentionForm::Naive => b.mla_attention_naive(kv, layer, batch, q, &w.kv_b, sel, d),
    }
}
