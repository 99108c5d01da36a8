//! Absorbed MLA attention over a paged latent cache, restricted to each query's selected keys
//! (kernels/mla_decode.hip), in bf16, fp8_e4m3 and f32 caches. CPU reference:
//! backend::cpu::latent_attention over the entries read from backend::cpu::HostKvStore.

use rand::seq::SliceRandom;

use super::paged::PagedCache;
use super::{Case, OpDecl, Output, Prepared, counts, kv_format_of, rng_for, uniform};
use crate::backend::cpu::{KeySet, latent_attention};
use crate::backend::gpu::launch::{self, Attention, Paged, Tables};
use crate::device::{Buffer, Gpu};
use crate::error::Result;
use crate::kv::{KvFormat, KvGeometry};
use crate::plan::{KernelVariant, OpShape};

pub static DECL_BF16: OpDecl = OpDecl { family: "mla.decode.bf16", tolerance: 2e-4, checks, at };
pub static DECL_FP8: OpDecl = OpDecl { family: "mla.decode.fp8_e4m3", tolerance: 2e-4, checks, at };
pub static DECL_F32: OpDecl = OpDecl { family: "mla.decode.f32", tolerance: 2e-4, checks, at };

struct Geometry {
    heads: usize,
    r: usize,
    dr: usize,
    page: usize,
    /// Keys each query may select; None = every visible key (no selection array).
    topk: Option<usize>,
    /// Each query's sequence length (its visible keys).
    lens: Vec<usize>,
}

fn checks(v: &'static KernelVariant) -> Vec<Case> {
    vec![
        case(v, Geometry { heads: 3, r: 64, dr: 16, page: 16, topk: Some(20), lens: vec![37, 5, 50] }),
        case(v, Geometry { heads: 5, r: 96, dr: 8, page: 8, topk: None, lens: vec![33, 1] }),
        case(v, Geometry { heads: 2, r: 132, dr: 6, page: 4, topk: Some(7), lens: vec![300] }),
        // GLM-5.2 per rank at TP8: 8 heads, latent 512 + rope 64, top-2048 of a longer context.
        case(v, Geometry { heads: 8, r: 512, dr: 64, page: 64, topk: Some(2048), lens: vec![3000] }),
    ]
}

fn at(v: &'static KernelVariant, shape: &OpShape, tokens: usize) -> Case {
    let OpShape::MlaDecode { heads, r, dr, page, topk } = *shape else { panic!("mla.decode at {shape}") };
    // Decode: each query its own sequence, twice top-k long, attending to top-k of it.
    let topk = topk as usize;
    let g = Geometry {
        heads: heads as usize,
        r: r as usize,
        dr: dr as usize,
        page: page as usize,
        topk: Some(topk),
        lens: vec![2 * topk; tokens],
    };
    case(v, g)
}

fn case(v: &'static KernelVariant, g: Geometry) -> Case {
    let format = kv_format_of(v);
    let Geometry { heads: h, r, dr, page, topk, ref lens } = g;
    let t = lens.len();
    let shape = format!(
        "heads={h} r={r} dr={dr} page={page} topk={} lens={}",
        topk.map_or("all".into(), |k| k.to_string()),
        counts(lens)
    );
    let mut rng = rng_for(v.op, &shape);
    let geometry = KvGeometry { latent: r, rope: dr, index: 4, indexed: vec![false] };
    let cache = PagedCache::random(format, geometry, page, lens, &mut rng);
    let q_abs = uniform(&mut rng, t * h * r, 0.1); // [T, H, r]
    let q_rope = uniform(&mut rng, t * h * dr, 0.1); // [T, H, dr]
    let scale = 1.0 / ((r + dr) as f32).sqrt();
    // Selections: top-k distinct positions in increasing order, or every key.
    let mut sel = Vec::new(); // [T, topk], -1 = unused
    let mut out = Vec::new(); // [T, H, r]
    for (i, &len) in lens.iter().enumerate() {
        let keys: Vec<usize> = match topk {
            Some(k) => {
                let mut all: Vec<usize> = (0..len).collect();
                all.shuffle(&mut rng);
                let mut chosen: Vec<usize> = all.into_iter().take(k).collect();
                chosen.sort_unstable();
                // A short row keeps -1 padding, as a selection of a short sequence does.
                sel.extend(chosen.iter().map(|&p| p as i32));
                sel.extend(std::iter::repeat_n(-1, k - chosen.len()));
                chosen
            }
            None => (0..len).collect(),
        };
        let set = KeySet::read(&cache.store, 0, &cache.slots(i, &keys));
        let mut scores = vec![0.0; keys.len()];
        let mut o_lat = vec![0.0; r];
        for head in 0..h {
            let (qa, qr) = ((i * h + head) * r, (i * h + head) * dr);
            latent_attention(&q_abs[qa..qa + r], &q_rope[qr..qr + dr], &set, scale, &mut scores, &mut o_lat);
            out.extend_from_slice(&o_lat);
        }
    }
    let entry = cache.store.mla_bytes();
    let read_keys: usize = match topk {
        Some(k) => t * k,
        None => lens.iter().sum(),
    };
    let kv = cache.store.layer_bytes(0).0.to_vec();
    let pages = cache.page_rows();
    let lens_i: Vec<i32> = lens.iter().map(|&l| l as i32).collect();
    let max_pages = cache.max_pages;
    Case {
        variant: v,
        shape,
        bytes: read_keys * entry + 4 * (q_abs.len() + q_rope.len() + out.len()),
        expected: Output::Floats(out),
        setup: Box::new(move |gpu| {
            Ok(Box::new(Bufs {
                q_abs: gpu.upload(&q_abs)?,
                q_rope: gpu.upload(&q_rope)?,
                kv: gpu.upload(&kv)?,
                pages: gpu.upload(&pages)?,
                lens: gpu.upload(&lens_i)?,
                sel: if sel.is_empty() { None } else { Some(gpu.upload(&sel)?) },
                out: gpu.zeros::<f32>(t * h * r)?,
                format,
                t,
                h,
                r,
                dr,
                entry,
                page,
                max_pages,
                topk: topk.unwrap_or(0),
                scale,
            }))
        }),
    }
}

struct Bufs {
    q_abs: Buffer,       // [T, H, r] f32
    q_rope: Buffer,      // [T, H, dr] f32
    kv: Buffer,          // [slots, entry] u8: the layer's MLA entries
    pages: Buffer,       // [T, max_pages] i32
    lens: Buffer,        // [T] i32
    sel: Option<Buffer>, // [T, topk] i32, -1 unused; None = every visible key
    out: Buffer,         // [T, H, r] f32
    format: KvFormat,
    t: usize,
    h: usize,
    r: usize,
    dr: usize,
    entry: usize,
    page: usize,
    max_pages: usize,
    topk: usize,
    scale: f32,
}

impl Prepared for Bufs {
    fn launch(&self, gpu: &Gpu) -> Result<()> {
        let a = Attention {
            q_abs: &self.q_abs,
            q_rope: &self.q_rope,
            sel: self.sel.as_ref().map(|s| (s, self.topk)),
            out: &self.out,
            t: self.t,
            heads: self.h,
            r: self.r,
            dr: self.dr,
            scale: self.scale,
        };
        let slots = self.kv.bytes() / self.entry;
        let kv = Paged { store: &self.kv, slots, entry: self.entry };
        let tables = Tables { pages: &self.pages, lens: &self.lens, page: self.page, max_pages: self.max_pages };
        launch::mla_decode(gpu, self.format, &a, &kv, &tables)
    }

    fn output(&self) -> Result<Output> {
        Ok(Output::Floats(self.out.read()?))
    }
}
