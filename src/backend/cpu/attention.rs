//! Absorbed MLA attention in latent space: per head, scores (q_abs . c_t + q_rope . k_t) *
//! scale over the selected keys, softmax, and the weighted sum of their latents.

use super::kernels::{Acts, Isa, RowsRef, accumulate_rows, block_dots};
use super::{HostKvStore, dot, softmax};
use crate::backend::MlaDims;

/// Selected cache entries of one query, decoded from where the store keeps them.
pub struct KeySet {
    pub r: usize,
    pub dr: usize,
    pub latent: Vec<f32>, // [n, r]
    pub rope: Vec<f32>,   // [n, dr]
}

impl KeySet {
    /// The entries at `slots` of `layer`, in that order.
    pub fn read(store: &HostKvStore, layer: usize, slots: &[usize]) -> KeySet {
        let (r, dr) = (store.geometry.latent, store.geometry.rope);
        let mut latent = vec![0.0f32; slots.len() * r];
        let mut rope = vec![0.0f32; slots.len() * dr];
        for (i, &s) in slots.iter().enumerate() {
            store.read_mla(layer, s, &mut latent[i * r..(i + 1) * r], &mut rope[i * dr..(i + 1) * dr]);
        }
        KeySet { r, dr, latent, rope }
    }

    pub fn len(&self) -> usize {
        self.latent.len() / self.r.max(1)
    }

    pub fn is_empty(&self) -> bool {
        self.latent.is_empty()
    }

    fn latent(&self, i: usize) -> &[f32] {
        &self.latent[i * self.r..(i + 1) * self.r]
    }

    fn rope(&self, i: usize) -> &[f32] {
        &self.rope[i * self.dr..(i + 1) * self.dr]
    }
}

/// One head's attention (the `mla.decode` kernel's twin): q_abs [r], q_rope [dr] over every
/// key of `keys`, in order, into `o_lat` [r]. `scores` is scratch of keys.len().
pub fn latent_attention(
    q_abs: &[f32],
    q_rope: &[f32],
    keys: &KeySet,
    scale: f32,
    scores: &mut [f32],
    o_lat: &mut [f32],
) {
    for (i, sv) in scores.iter_mut().enumerate() {
        *sv = (dot(q_abs, keys.latent(i)) + dot(q_rope, keys.rope(i))) * scale;
    }
    softmax(scores);
    o_lat.fill(0.0);
    for (i, p) in scores.iter().enumerate() {
        for (a, b) in o_lat.iter_mut().zip(keys.latent(i)) {
            *a += p * b;
        }
    }
}

/// Keys per kernel call at most: a run of consecutive slots.
const RUN: usize = 64;

/// One token's attention for every head at once over the entries at `slots` of `layer`,
/// read in place where the store's format allows (bf16, f32: an entry is [latent | rope],
/// which is a weight row to the kernels, the heads' [q_abs | q_rope] the tokens) and decoded
/// otherwise. q_abs [H, r], q [H, nope + rope] (roped) -> out [H, r].
pub fn attend_heads(
    store: &HostKvStore,
    layer: usize,
    slots: &[usize],
    q_abs: &[f32],
    q: &[f32],
    d: &MlaDims,
    out: &mut [f32],
) {
    let (h, r, dr) = (d.heads, d.latent, d.rope);
    let (w, n) = (r + dr, slots.len());
    let stride = d.nope + dr;
    let mut qcat = vec![0.0f32; h * w]; // [H, r + dr]
    for head in 0..h {
        qcat[head * w..head * w + r].copy_from_slice(&q_abs[head * r..(head + 1) * r]);
        qcat[head * w + r..(head + 1) * w].copy_from_slice(&q[head * stride + d.nope..(head + 1) * stride]);
    }
    let acts = Acts::new(Isa::current(), false, &qcat, h, w);
    let mut by_key = vec![0.0f32; n * h]; // [n, H] scores
    let mut decoded = Vec::new(); // [run, r + dr] as f32 bytes, for formats read by decoding
    let runs = runs(slots);
    for &(k0, k1) in &runs {
        let rows = entries(store, layer, &slots[k0..k1], &mut decoded);
        block_dots(&acts, rows, k1 - k0, 0, h, &mut by_key[k0 * h..], h);
    }
    let mut p = vec![0.0f32; h * n]; // [H, n] probabilities
    for head in 0..h {
        let row = &mut p[head * n..(head + 1) * n];
        for (k, v) in row.iter_mut().enumerate() {
            *v = by_key[k * h + head] * d.scale;
        }
        softmax(row);
    }
    let mut full = vec![0.0f32; h * w]; // [H, r + dr]; the rope columns are not used
    for &(k0, k1) in &runs {
        let rows = entries(store, layer, &slots[k0..k1], &mut decoded);
        accumulate_rows(rows, k1 - k0, w, &p[k0..], n, &mut full);
    }
    for head in 0..h {
        out[head * r..(head + 1) * r].copy_from_slice(&full[head * w..head * w + r]);
    }
}

/// [start, end) runs of consecutive slots, at most RUN long.
fn runs(slots: &[usize]) -> Vec<(usize, usize)> {
    let mut out = Vec::new();
    let mut i = 0;
    while i < slots.len() {
        let mut j = i + 1;
        while j < slots.len() && j - i < RUN && slots[j] == slots[j - 1] + 1 {
            j += 1;
        }
        out.push((i, j));
        i = j;
    }
    out
}

/// The entries of a run of consecutive slots as kernel rows: in place, or decoded into
/// `scratch` (f32 bytes) for fp8.
fn entries<'a>(store: &'a HostKvStore, layer: usize, run: &[usize], scratch: &'a mut Vec<u8>) -> RowsRef<'a> {
    if let Some(rows) = store.mla_rows(layer, run[0], run.len()) {
        return rows;
    }
    let (r, dr) = (store.geometry.latent, store.geometry.rope);
    let (mut latent, mut rope) = (vec![0.0f32; r], vec![0.0f32; dr]);
    scratch.clear();
    for &s in run {
        store.read_mla(layer, s, &mut latent, &mut rope);
        scratch.extend(latent.iter().chain(&rope).flat_map(|v| v.to_le_bytes()));
    }
    RowsRef::F32(scratch)
}
