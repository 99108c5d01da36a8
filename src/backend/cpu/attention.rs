//! Absorbed MLA attention in latent space: per head, scores (q_abs . c_t + q_rope . k_t) *
//! scale over the selected keys, softmax, and the weighted sum of their latents.

use super::{HostKvStore, dot, softmax};

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
