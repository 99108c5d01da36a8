//! MLA attention (reference/glm-dsa-spec.md 3.4): low-rank q and kv paths, a cached latent
//! per token, and attention restricted to the indexer's selection.

use rayon::prelude::*;

use super::indexer::Selection;
use super::weights::AttnWeights;
use crate::backend::cpu::{Rope, dot, matmul, rms_norm_rows, softmax};
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

/// The query side of one attention call, and the new tokens' cache entries.
pub struct Queries {
    pub q_lat: Vec<f32>,  // [S, q_lora] (also the indexer's input)
    pub q: Vec<f32>,      // [S, H, nope + rope], rope part roped
    pub latent: Vec<f32>, // [S, kv_lora_rank], normalized: what the cache keeps
    pub k_rope: Vec<f32>, // [S, qk_rope_head_dim], roped: what the cache keeps
}

/// One sequence's cached entries, decoded to f32.
pub struct KvView<'a> {
    pub latent: &'a [f32], // [T, kv_lora_rank]
    pub k_rope: &'a [f32], // [T, qk_rope_head_dim]
}

/// Projects S tokens (of any sequences; `positions` are each token's own) into queries and
/// cache entries.
pub fn project(
    w: &AttnWeights,
    m: &ModelShape,
    rope: &Rope,
    x: &[f32], // [S, D], input-normed
    positions: &[usize],
    aq: bool,
) -> Queries {
    let s = positions.len();
    let (h, dn, dr, r) = dims(m);
    let mut q_lat = matmul(x, s, &w.q_a, aq);
    rms_norm_rows(&mut q_lat, &w.q_a_norm, LATENT_NORM_EPS);
    let mut q = matmul(&q_lat, s, &w.q_b, aq);
    for (t, &pos) in positions.iter().enumerate() {
        for head in 0..h {
            let base = (t * h + head) * (dn + dr) + dn;
            rope.apply(&mut q[base..base + dr], pos);
        }
    }
    let ckv = matmul(x, s, &w.kv_a, aq); // [S, r + dr]
    let mut latent = Vec::with_capacity(s * r);
    let mut k_rope = Vec::with_capacity(s * dr);
    for (t, &pos) in positions.iter().enumerate() {
        let row = &ckv[t * (r + dr)..(t + 1) * (r + dr)];
        let mut c = row[..r].to_vec();
        rms_norm_rows(&mut c, &w.kv_a_norm, LATENT_NORM_EPS);
        let mut k = row[r..].to_vec();
        rope.apply(&mut k, pos);
        latent.extend_from_slice(&c);
        k_rope.extend_from_slice(&k);
    }
    Queries { q_lat, q, latent, k_rope }
}

fn dims(m: &ModelShape) -> (usize, usize, usize, usize) {
    (m.num_attention_heads as usize, m.qk_nope_head_dim as usize, m.qk_rope_head_dim as usize, m.kv_lora_rank as usize)
}

/// Attention of one sequence's S queries (`q` [S, H, nope + rope]) over its cached
/// entries; the heads' outputs [S, H * v_head_dim], before o_proj.
pub fn attend(
    w: &AttnWeights,
    m: &ModelShape,
    q: &[f32],
    positions: &[usize],
    cache: &KvView,
    selection: &Selection,
    form: AttentionForm,
) -> Vec<f32> {
    match form {
        AttentionForm::Absorbed => absorbed(w, m, q, positions, cache, selection),
        AttentionForm::Naive => naive(w, m, q, positions, cache, selection),
    }
}

/// Keys query `i` may see: causal, and within its selection.
pub fn keys_for(selection: &Selection, i: usize, pos: usize) -> Vec<usize> {
    match selection.row(i) {
        None => (0..=pos).collect(),
        Some(set) => set.iter().map(|&t| t as usize).filter(|&t| t <= pos).collect(),
    }
}

fn scale(m: &ModelShape) -> f32 {
    1.0 / (m.qk_head_dim() as f32).sqrt()
}

/// Latent-space attention: per head, q_abs = W_UK^T q_nope [r]; score_t = q_abs . c_t +
/// q_rope . k_rope_t; out = W_UV (sum_t p_t c_t).
fn absorbed(
    w: &AttnWeights,
    m: &ModelShape,
    q: &[f32],
    positions: &[usize],
    cache: &KvView,
    selection: &Selection,
) -> Vec<f32> {
    let (h, dn, dr, r) = dims(m);
    let dv = m.v_head_dim as usize;
    let kv_b = w.kv_b.to_f32(); // [H * (dn + dv), r]
    let sc = scale(m);
    let per_query = |(i, &pos): (usize, &usize)| -> Vec<f32> {
        let keys = keys_for(selection, i, pos);
        let mut out = vec![0.0f32; h * dv];
        let mut q_abs = vec![0.0f32; r];
        let mut scores = vec![0.0f32; keys.len()];
        let mut o_lat = vec![0.0f32; r];
        for head in 0..h {
            let qh = &q[(i * h + head) * (dn + dr)..(i * h + head + 1) * (dn + dr)];
            let rows = head * (dn + dv);
            q_abs.fill(0.0);
            for (d, qv) in qh[..dn].iter().enumerate() {
                let wk = &kv_b[(rows + d) * r..(rows + d + 1) * r];
                for (a, b) in q_abs.iter_mut().zip(wk) {
                    *a += qv * b;
                }
            }
            latent_attention(&q_abs, &qh[dn..], cache, &keys, sc, &mut scores, &mut o_lat);
            for (j, o) in out[head * dv..(head + 1) * dv].iter_mut().enumerate() {
                let wv = &kv_b[(rows + dn + j) * r..(rows + dn + j + 1) * r];
                *o = dot(wv, &o_lat);
            }
        }
        out
    };
    let rows: Vec<Vec<f32>> = if positions.len() > 1 {
        positions.par_iter().enumerate().map(per_query).collect()
    } else {
        positions.iter().enumerate().map(per_query).collect()
    };
    rows.concat()
}

/// One head's attention in latent space (the GPU `mla.decode` kernel's twin): scores
/// (q_abs . c_t + q_rope . k_rope_t) * scale over `keys`, softmax, and the weighted sum of
/// latents into `o_lat` [kv_lora_rank]. `scores` is scratch of keys.len().
pub fn latent_attention(
    q_abs: &[f32],  // [r]
    q_rope: &[f32], // [dr]
    cache: &KvView,
    keys: &[usize],
    scale: f32,
    scores: &mut [f32],
    o_lat: &mut [f32],
) {
    let (r, dr) = (q_abs.len(), q_rope.len());
    for (sv, &t) in scores.iter_mut().zip(keys) {
        let c = &cache.latent[t * r..(t + 1) * r];
        let k = &cache.k_rope[t * dr..(t + 1) * dr];
        *sv = (dot(q_abs, c) + dot(q_rope, k)) * scale;
    }
    softmax(scores);
    o_lat.fill(0.0);
    for (p, &t) in scores.iter().zip(keys) {
        for (a, b) in o_lat.iter_mut().zip(&cache.latent[t * r..(t + 1) * r]) {
            *a += p * b;
        }
    }
}

/// HF's form: k_nope and v of every cached token through kv_b, then plain attention.
fn naive(
    w: &AttnWeights,
    m: &ModelShape,
    q: &[f32],
    positions: &[usize],
    cache: &KvView,
    selection: &Selection,
) -> Vec<f32> {
    let (h, dn, dr, r) = dims(m);
    let dv = m.v_head_dim as usize;
    let t_all = cache.latent.len() / r;
    let kv = matmul(cache.latent, t_all, &w.kv_b, false); // [T, H, dn + dv]
    let sc = scale(m);
    let mut out = vec![0.0f32; positions.len() * h * dv];
    for (i, &pos) in positions.iter().enumerate() {
        let keys = keys_for(selection, i, pos);
        for head in 0..h {
            let qh = &q[(i * h + head) * (dn + dr)..(i * h + head + 1) * (dn + dr)];
            let mut scores: Vec<f32> = keys
                .iter()
                .map(|&t| {
                    let kn = &kv[(t * h + head) * (dn + dv)..(t * h + head) * (dn + dv) + dn];
                    (dot(&qh[..dn], kn) + dot(&qh[dn..], &cache.k_rope[t * dr..(t + 1) * dr])) * sc
                })
                .collect();
            softmax(&mut scores);
            let o = &mut out[(i * h + head) * dv..(i * h + head + 1) * dv];
            for (p, &t) in scores.iter().zip(&keys) {
                let v = &kv[(t * h + head) * (dn + dv) + dn..(t * h + head + 1) * (dn + dv)];
                for (a, b) in o.iter_mut().zip(v) {
                    *a += p * b;
                }
            }
        }
    }
    out
}
