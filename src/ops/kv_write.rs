//! The step's KV entries and indexer keys into the paged store (kernels/kv_write.hip), in
//! bf16, fp8_e4m3 (per-group scales) and f32. CPU reference: kv::KvFormat's encoders through
//! backend::cpu::HostKvStore; the bytes must be identical, so a cache written on either side
//! reads the same on the other.

use std::sync::Arc;

use rand::seq::SliceRandom;

use super::plain::{Init, Read, setup};
use super::{Case, OpDecl, Output, kv_format_of, rng_for, uniform};
use crate::backend::cpu::HostKvStore;
use crate::backend::gpu::launch::{self, Paged};
use crate::kv::KvGeometry;
use crate::plan::{KernelVariant, OpShape};

pub static DECL_BF16: OpDecl = OpDecl { family: "kv_write.bf16", tolerance: 0.0, checks, at };
pub static DECL_FP8: OpDecl = OpDecl { family: "kv_write.fp8_e4m3", tolerance: 0.0, checks, at };
pub static DECL_F32: OpDecl = OpDecl { family: "kv_write.f32", tolerance: 0.0, checks, at };

fn checks(v: &'static KernelVariant) -> Vec<Case> {
    vec![
        case(v, 64, 16, 32, 5, 12),
        case(v, 132, 6, 20, 3, 7),
        // GLM-5.2: latent 512 + rope 64, indexer keys of 128.
        case(v, 512, 64, 128, 2, 4),
    ]
}

fn at(v: &'static KernelVariant, shape: &OpShape, tokens: usize) -> Case {
    let OpShape::KvWrite { r, dr, index } = *shape else { panic!("kv_write at {shape}") };
    case(v, r as usize, dr as usize, index as usize, tokens, 2 * tokens)
}

/// `n` tokens written to distinct random slots of a store of `slots`.
fn case(v: &'static KernelVariant, r: usize, dr: usize, di: usize, n: usize, slots: usize) -> Case {
    let format = kv_format_of(v);
    let shape = format!("r={r} dr={dr} index={di} tokens={n} slots={slots}");
    let mut rng = rng_for(v.op, &shape);
    // Values spanning orders of magnitude, so fp8 groups use their whole range, and one
    // all-zero latent group (scale 1).
    let mut latent: Vec<f32> =
        uniform(&mut rng, n * r, 1.0).into_iter().enumerate().map(|(i, x)| x * (1 + i % 7) as f32).collect();
    latent[..r.min(128)].fill(0.0);
    let rope = uniform(&mut rng, n * dr, 2.0); // [n, dr]
    let keys = uniform(&mut rng, n * di, 5.0); // [n, di]
    let mut all: Vec<usize> = (0..slots).collect();
    all.shuffle(&mut rng);
    let slot_ids: Vec<usize> = all[..n].to_vec();
    let geometry = KvGeometry { latent: r, rope: dr, index: di, indexed: vec![true] };
    let mut store = HostKvStore::new(format, geometry, slots);
    for (t, &s) in slot_ids.iter().enumerate() {
        store.write_mla(0, s, &latent[t * r..(t + 1) * r], &rope[t * dr..(t + 1) * dr]);
        store.write_index(0, s, &keys[t * di..(t + 1) * di]);
    }
    let (mla_entry, index_entry) = (store.mla_bytes(), store.index_bytes());
    let (mla, index) = store.layer_bytes(0);
    let bytes = |b: &[u8]| b.iter().map(|&x| i32::from(x)).collect::<Vec<i32>>();
    let expected = Output::Many(vec![Output::Indices(vec![bytes(mla)]), Output::Indices(vec![bytes(index)])]);
    let slots_i: Vec<i32> = slot_ids.iter().map(|&s| s as i32).collect();
    Case {
        variant: v,
        shape,
        bytes: n * (mla_entry + index_entry) + 4 * (latent.len() + rope.len() + keys.len()),
        expected,
        setup: setup(
            vec![
                Init::F32(latent),
                Init::F32(rope),
                Init::F32(keys),
                Init::I32(slots_i),
                Init::ZeroU8(slots * mla_entry),
                Init::ZeroU8(slots * index_entry),
            ],
            vec![(4, Read::Bytes), (5, Read::Bytes)],
            Arc::new(move |gpu, b| {
                let kv = Paged { store: &b[4], slots, entry: mla_entry };
                launch::kv_write(gpu, format, &b[0], &b[1], &b[3], &kv, n, r, dr)?;
                let ix = Paged { store: &b[5], slots, entry: index_entry };
                launch::index_write(gpu, format, &b[2], &b[3], &ix, n, di)
            }),
        ),
    }
}
