//! What one token occupies in one layer of the KV cache, and how it is encoded.
//!
//! The byte counts are the plan's (src/plan/memory.rs `kv_layout`): bf16 stores everything in
//! 2 bytes; fp8_e4m3 stores the latent as e4m3 with an f32 scale per 128 values, keeps the rope
//! key in bf16, and stores the indexer key as e4m3 with one f32 scale. F32 is the oracle format
//! the CPU reference and the golden tests use.

use half::bf16;

use super::fp8;
use crate::plan::{FP8_SCALE_GROUP, KvDtype};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KvFormat {
    F32,
    Bf16,
    Fp8E4m3,
}

impl From<KvDtype> for KvFormat {
    fn from(d: KvDtype) -> Self {
        match d {
            KvDtype::Bf16 => KvFormat::Bf16,
            KvDtype::Fp8E4m3 => KvFormat::Fp8E4m3,
        }
    }
}

/// Widths of one token's entries.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KvGeometry {
    /// kv_lora_rank
    pub latent: usize,
    /// qk_rope_head_dim
    pub rope: usize,
    /// index_head_dim
    pub index: usize,
    /// Per layer: whether it keeps indexer keys.
    pub indexed: Vec<bool>,
}

const GROUP: usize = FP8_SCALE_GROUP as usize;

impl KvFormat {
    /// Bytes of one token's MLA entry (latent + rope key).
    pub fn mla_bytes(self, g: &KvGeometry) -> usize {
        match self {
            KvFormat::F32 => 4 * (g.latent + g.rope),
            KvFormat::Bf16 => 2 * (g.latent + g.rope),
            KvFormat::Fp8E4m3 => g.latent + 4 * g.latent.div_ceil(GROUP) + 2 * g.rope,
        }
    }

    /// Bytes of one token's indexer key.
    pub fn index_bytes(self, g: &KvGeometry) -> usize {
        match self {
            KvFormat::F32 => 4 * g.index,
            KvFormat::Bf16 => 2 * g.index,
            KvFormat::Fp8E4m3 => g.index + 4,
        }
    }

    /// latent [r] and rope [dr] into `out` (mla_bytes).
    pub fn encode_mla(self, latent: &[f32], rope: &[f32], out: &mut [u8]) {
        match self {
            KvFormat::F32 => put_f32(latent.iter().chain(rope), out),
            KvFormat::Bf16 => put_bf16(latent.iter().chain(rope), out),
            KvFormat::Fp8E4m3 => {
                let r = latent.len();
                let groups = r.div_ceil(GROUP);
                let (codes, rest) = out.split_at_mut(r);
                let (scales, rope_out) = rest.split_at_mut(4 * groups);
                for (g, chunk) in latent.chunks(GROUP).enumerate() {
                    let s = fp8::group_scale(chunk);
                    scales[4 * g..4 * g + 4].copy_from_slice(&s.to_le_bytes());
                    fp8::encode(chunk, s, &mut codes[g * GROUP..g * GROUP + chunk.len()]);
                }
                put_bf16(rope.iter(), rope_out);
            }
        }
    }

    pub fn decode_mla(self, bytes: &[u8], latent: &mut [f32], rope: &mut [f32]) {
        let r = latent.len();
        match self {
            KvFormat::F32 => {
                get_f32(&bytes[..4 * r], latent);
                get_f32(&bytes[4 * r..], rope);
            }
            KvFormat::Bf16 => {
                get_bf16(&bytes[..2 * r], latent);
                get_bf16(&bytes[2 * r..], rope);
            }
            KvFormat::Fp8E4m3 => {
                let groups = r.div_ceil(GROUP);
                let (codes, rest) = bytes.split_at(r);
                let (scales, rope_in) = rest.split_at(4 * groups);
                for (g, chunk) in latent.chunks_mut(GROUP).enumerate() {
                    let s = f32::from_le_bytes(scales[4 * g..4 * g + 4].try_into().expect("4 bytes"));
                    fp8::decode(&codes[g * GROUP..g * GROUP + chunk.len()], s, chunk);
                }
                get_bf16(rope_in, rope);
            }
        }
    }

    pub fn encode_index(self, key: &[f32], out: &mut [u8]) {
        match self {
            KvFormat::F32 => put_f32(key.iter(), out),
            KvFormat::Bf16 => put_bf16(key.iter(), out),
            KvFormat::Fp8E4m3 => {
                let s = fp8::group_scale(key);
                let (codes, scale) = out.split_at_mut(key.len());
                fp8::encode(key, s, codes);
                scale.copy_from_slice(&s.to_le_bytes());
            }
        }
    }

    pub fn decode_index(self, bytes: &[u8], key: &mut [f32]) {
        match self {
            KvFormat::F32 => get_f32(bytes, key),
            KvFormat::Bf16 => get_bf16(bytes, key),
            KvFormat::Fp8E4m3 => {
                let (codes, scale) = bytes.split_at(key.len());
                let s = f32::from_le_bytes(scale[..4].try_into().expect("4 bytes"));
                fp8::decode(codes, s, key);
            }
        }
    }
}

fn put_f32<'a>(v: impl Iterator<Item = &'a f32>, out: &mut [u8]) {
    for (o, x) in out.chunks_exact_mut(4).zip(v) {
        o.copy_from_slice(&x.to_le_bytes());
    }
}

fn put_bf16<'a>(v: impl Iterator<Item = &'a f32>, out: &mut [u8]) {
    for (o, x) in out.chunks_exact_mut(2).zip(v) {
        o.copy_from_slice(&bf16::from_f32(*x).to_le_bytes());
    }
}

fn get_f32(bytes: &[u8], out: &mut [f32]) {
    for (o, c) in out.iter_mut().zip(bytes.chunks_exact(4)) {
        *o = f32::from_le_bytes([c[0], c[1], c[2], c[3]]);
    }
}

fn get_bf16(bytes: &[u8], out: &mut [f32]) {
    for (o, c) in out.iter_mut().zip(bytes.chunks_exact(2)) {
        *o = bf16::from_le_bytes([c[0], c[1]]).to_f32();
    }
}
