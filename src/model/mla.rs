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

/// Writes the step's cache entries (normalized latent, roped rope key) from
/// `ckv` = kv_a x [n, r + rope] into `layer`.
#[allow(clippy::too_many_arguments)]
pub fn write_entries<B: Backend>(
    b: &B,
    w: &AttnWeights<B>,
    d: &MlaDims,
    inv_freq: &B::Vector,
    ckv: &B::Tensor,
    batch: &B::Batch,
    kv: &mut B::KvStore,
    layer: usize,
) -> Result<()> {
    let (latent, mut k_rope) = b.split(ckv, d.latent)?;
    let latent = b.rms_norm(&latent, &w.kv_a_norm, LATENT_NORM_EPS)?;
    b.rope(&mut k_rope, batch, inv_freq, 1, 0)?;
    b.write_kv(kv, layer, batch, &latent, &k_rope)
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
