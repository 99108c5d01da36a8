//! Absorbed MLA attention in latent space: per head, scores (q_abs . c_t + q_rope . k_t) *
//! scale over the selected keys, softmax, and the weighted sum of their latents.

use super::kernels::aligned::Aligned;
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
    let mut qcat = Aligned::<f32>::for_overwrite(h * w); // [H, r + dr], every head's two parts copied in
    for head in 0..h {
        qcat[head * w..head * w + r].copy_from_slice(&q_abs[head * r..(head + 1) * r]);
        qcat[head * w + r..(head + 1) * w].copy_from_slice(&q[head * stride + d.nope..(head + 1) * stride]);
    }
    let acts = Acts::new(Isa::current(), false, &qcat, h, w);
    let blocks = EntryBlocks::new(store, layer, slots);
    let mut by_key = Aligned::<f32>::for_overwrite(n * h); // [n, H] scores, the blocks cover every key
    for b in 0..blocks.len() {
        let (k0, k1, rows) = blocks.get(b);
        block_dots(&acts, rows, false, k1 - k0, 0, h, &mut by_key[k0 * h..], h);
    }
    let mut p = Aligned::<f32>::for_overwrite(h * n); // [H, n] probabilities
    for head in 0..h {
        let row = &mut p[head * n..(head + 1) * n];
        for (k, v) in row.iter_mut().enumerate() {
            *v = by_key[k * h + head] * d.scale;
        }
        softmax(row);
    }
    let mut full = Aligned::<f32>::zeroed(h * w); // [H, r + dr]; the rope columns are not used
    for b in 0..blocks.len() {
        let (k0, k1, rows) = blocks.get(b);
        accumulate_rows(rows, k1 - k0, w, &p[k0..], n, &mut full);
    }
    for head in 0..h {
        out[head * r..(head + 1) * r].copy_from_slice(&full[head * w..head * w + r]);
    }
}

/// Shortest mean run of consecutive slots read in place: below it (the indexer's top-k
/// scattered over the context) the entries are gathered into one block first, since a
/// kernel call per run of one or two keys cost more than the keys (the demo model's
/// attention: 23 us a layer for 64 keys).
const MIN_MEAN_RUN: usize = 8;

/// The entries at some slots of a layer as kernel rows, in blocks [k0, k1) of the slots:
/// runs of consecutive slots in place where the store's format allows and the runs are long;
/// otherwise all of them in one block, copied as stored (bf16, f32) or decoded to f32 (fp8),
/// once for both passes.
enum EntryBlocks<'a> {
    InPlace {
        store: &'a HostKvStore,
        layer: usize,
        slots: &'a [usize],
        runs: Aligned<usize>, // [runs, 2]: start, end
    },
    /// [n, entry bytes] as the store keeps them, or [n, r + dr] f32 bytes.
    Gathered { store: &'a HostKvStore, bytes: Aligned<u8>, f32s: bool, n: usize },
}

impl<'a> EntryBlocks<'a> {
    fn new(store: &'a HostKvStore, layer: usize, slots: &'a [usize]) -> EntryBlocks<'a> {
        let runs = runs(slots);
        let in_place = store.reads_in_place();
        if in_place && (runs.len() / 2) * MIN_MEAN_RUN <= slots.len() {
            return EntryBlocks::InPlace { store, layer, slots, runs };
        }
        if in_place {
            let b = store.mla_bytes();
            let mut bytes = Aligned::<u8>::for_overwrite(slots.len() * b); // [n, entry bytes], each copied in
            for (chunk, &s) in bytes.chunks_exact_mut(b.max(1)).zip(slots) {
                chunk.copy_from_slice(store.mla_entry(layer, s));
            }
            return EntryBlocks::Gathered { store, bytes, f32s: false, n: slots.len() };
        }
        let (r, dr) = (store.geometry.latent, store.geometry.rope);
        let mut entry = Aligned::<f32>::zeroed(r + dr); // [r + dr] one decoded entry
        let mut bytes = Aligned::<u8>::for_overwrite(slots.len() * (r + dr) * 4); // [n, r + dr] f32, each written
        for (chunk, &s) in bytes.chunks_exact_mut(((r + dr) * 4).max(1)).zip(slots) {
            let (latent, rope) = entry.split_at_mut(r);
            store.read_mla(layer, s, latent, rope);
            for (dst, v) in chunk.chunks_exact_mut(4).zip(entry.iter()) {
                dst.copy_from_slice(&v.to_le_bytes());
            }
        }
        EntryBlocks::Gathered { store, bytes, f32s: true, n: slots.len() }
    }

    fn len(&self) -> usize {
        match self {
            EntryBlocks::InPlace { runs, .. } => runs.len() / 2,
            EntryBlocks::Gathered { n, .. } => usize::from(*n > 0),
        }
    }

    /// Block `b`: (k0, k1, the entries of slots [k0, k1)).
    fn get(&self, b: usize) -> (usize, usize, RowsRef<'_>) {
        match self {
            EntryBlocks::InPlace { store, layer, slots, runs } => {
                let (k0, k1) = (runs[2 * b], runs[2 * b + 1]);
                (k0, k1, store.mla_rows(*layer, slots[k0], k1 - k0).expect("read in place"))
            }
            EntryBlocks::Gathered { bytes, f32s: true, n, .. } => (0, *n, RowsRef::F32(bytes)),
            EntryBlocks::Gathered { store, bytes, n, .. } => (0, *n, store.as_rows(bytes).expect("read in place")),
        }
    }
}

/// [start, end) runs of consecutive slots, at most RUN long, as [runs, 2].
fn runs(slots: &[usize]) -> Aligned<usize> {
    let mut count = 0;
    let mut i = 0;
    while i < slots.len() {
        i = run_end(slots, i);
        count += 1;
    }
    let mut out = Aligned::<usize>::for_overwrite(2 * count);
    let (mut i, mut r) = (0, 0);
    while i < slots.len() {
        let j = run_end(slots, i);
        (out[2 * r], out[2 * r + 1]) = (i, j);
        (i, r) = (j, r + 1);
    }
    out
}

/// End of the run of consecutive slots that starts at `i`, at most RUN long.
fn run_end(slots: &[usize], i: usize) -> usize {
    let mut j = i + 1;
    while j < slots.len() && j - i < RUN && slots[j] == slots[j - 1] + 1 {
        j += 1;
    }
    j
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kv::{KvFormat, KvGeometry};
    use rand::{Rng, SeedableRng};
    use rand_chacha::ChaCha8Rng;

    const D: MlaDims = MlaDims { heads: 3, nope: 8, rope: 16, v: 8, latent: 72, scale: 0.2 };

    /// A one-layer store of 64 random entries.
    fn store(format: KvFormat, rng: &mut ChaCha8Rng) -> HostKvStore {
        let geometry = KvGeometry { latent: D.latent, rope: D.rope, index: 8, indexed: vec![false] };
        let mut s = HostKvStore::new(format, geometry, 64);
        for slot in 0..64 {
            let latent: Vec<f32> = (0..D.latent).map(|_| rng.random_range(-1.0..1.0)).collect();
            let rope: Vec<f32> = (0..D.rope).map(|_| rng.random_range(-1.0..1.0)).collect();
            s.write_mla(0, slot, &latent, &rope);
        }
        s
    }

    fn queries(rng: &mut ChaCha8Rng) -> (Vec<f32>, Vec<f32>) {
        let q_abs = (0..D.heads * D.latent).map(|_| rng.random_range(-1.0..1.0)).collect(); // [H, r]
        let q = (0..D.heads * (D.nope + D.rope)).map(|_| rng.random_range(-1.0..1.0)).collect(); // [H, nope + rope]
        (q_abs, q)
    }

    fn attend(s: &HostKvStore, slots: &[usize], q_abs: &[f32], q: &[f32]) -> Vec<f32> {
        let mut out = vec![0.0f32; D.heads * D.latent];
        attend_heads(s, 0, slots, q_abs, q, &D, &mut out);
        out
    }

    // An indexer's top-k: scattered keys, runs of one to three.
    const SCATTERED: [usize; 12] = [2, 5, 6, 11, 17, 18, 19, 30, 41, 42, 50, 63];

    #[test]
    fn scattered_keys_gathered_give_the_bits_of_the_same_entries_read_in_place() {
        let mut rng = ChaCha8Rng::seed_from_u64(3);
        for format in [KvFormat::Bf16, KvFormat::F32] {
            let s = store(format, &mut rng);
            // The same entries at consecutive slots 0..12 of a second store: one run, in place.
            let mut packed = store(format, &mut rng);
            let (mut latent, mut rope) = (vec![0.0f32; D.latent], vec![0.0f32; D.rope]);
            for (i, &slot) in SCATTERED.iter().enumerate() {
                s.read_mla(0, slot, &mut latent, &mut rope);
                packed.write_mla(0, i, &latent, &rope);
                assert_eq!(packed.mla_entry(0, i), s.mla_entry(0, slot), "{format:?} re-encodes as stored");
            }
            let (q_abs, q) = queries(&mut rng);
            let consecutive: Vec<usize> = (0..SCATTERED.len()).collect();
            let (a, b) = (attend(&s, &SCATTERED, &q_abs, &q), attend(&packed, &consecutive, &q_abs, &q));
            let bits = |v: &[f32]| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
            assert_eq!(bits(&a), bits(&b), "{format:?}");
        }
    }

    #[test]
    fn every_format_matches_the_one_head_twin_on_scattered_and_long_runs() {
        let mut rng = ChaCha8Rng::seed_from_u64(4);
        let long: Vec<usize> = (8..56).collect();
        for format in [KvFormat::Bf16, KvFormat::F32, KvFormat::Fp8E4m3] {
            let s = store(format, &mut rng);
            for slots in [&SCATTERED[..], &long[..]] {
                let (q_abs, q) = queries(&mut rng);
                let got = attend(&s, slots, &q_abs, &q);
                let keys = KeySet::read(&s, 0, slots);
                let mut scores = vec![0.0f32; slots.len()];
                let stride = D.nope + D.rope;
                for h in 0..D.heads {
                    let mut want = vec![0.0f32; D.latent];
                    let q_rope = &q[h * stride + D.nope..(h + 1) * stride];
                    latent_attention(
                        &q_abs[h * D.latent..(h + 1) * D.latent],
                        q_rope,
                        &keys,
                        D.scale,
                        &mut scores,
                        &mut want,
                    );
                    for (c, (g, w)) in got[h * D.latent..(h + 1) * D.latent].iter().zip(&want).enumerate() {
                        assert!((g - w).abs() <= 1e-5 * (1.0 + w.abs()), "{format:?} head {h} col {c}: {g} vs {w}");
                    }
                }
            }
        }
    }
}
