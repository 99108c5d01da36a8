//! The DSA indexer: scores of each query against every visible cached key, then the top-k
//! keys (kernels/indexer.hip), over bf16, fp8_e4m3 and f32 caches. CPU reference:
//! backend::cpu::score_slots over backend::cpu::HostKvStore, then backend::cpu::top_k.

use super::paged::PagedCache;
use super::{Case, OpDecl, Output, Prepared, counts, kv_format_of, rng_for, uniform};
use crate::backend::cpu::{score_slots, top_k};
use crate::backend::gpu::launch::{self, Paged, Tables};
use crate::device::{Buffer, Gpu};
use crate::error::Result;
use crate::kv::{KvFormat, KvGeometry};
use crate::plan::{KernelVariant, OpShape};

pub static DECL_BF16: OpDecl = OpDecl { family: "indexer.bf16", tolerance: 2e-4, checks, at };
pub static DECL_FP8: OpDecl = OpDecl { family: "indexer.fp8_e4m3", tolerance: 2e-4, checks, at };
pub static DECL_F32: OpDecl = OpDecl { family: "indexer.f32", tolerance: 2e-4, checks, at };

struct Geometry {
    heads: usize,
    dim: usize,
    page: usize,
    topk: usize,
    lens: Vec<usize>,
    /// Zero queries: every score ties, so the top-k is decided by the tie rule alone.
    flat: bool,
}

fn checks(v: &'static KernelVariant) -> Vec<Case> {
    vec![
        case(v, Geometry { heads: 3, dim: 32, page: 16, topk: 10, lens: vec![40, 7], flat: false }),
        case(v, Geometry { heads: 5, dim: 20, page: 8, topk: 16, lens: vec![300, 16, 17], flat: false }),
        // GLM-5.2: 32 heads x 128, top-2048 of 5000 keys.
        case(v, Geometry { heads: 32, dim: 128, page: 64, topk: 2048, lens: vec![5000], flat: false }),
        // All ties, over several chunks of the block: the lowest indices win.
        case(v, Geometry { heads: 2, dim: 16, page: 16, topk: 300, lens: vec![700, 40], flat: true }),
    ]
}

fn at(v: &'static KernelVariant, shape: &OpShape, tokens: usize) -> Case {
    let OpShape::Indexer { heads, dim, topk, page } = *shape else { panic!("indexer at {shape}") };
    let topk = topk as usize;
    case(
        v,
        Geometry {
            heads: heads as usize,
            dim: dim as usize,
            page: page as usize,
            topk,
            lens: vec![4 * topk; tokens],
            flat: false,
        },
    )
}

fn case(v: &'static KernelVariant, g: Geometry) -> Case {
    let format = kv_format_of(v);
    let Geometry { heads: hi, dim: di, page, topk, ref lens, flat } = g;
    let t = lens.len();
    let shape =
        format!("heads={hi} dim={di} topk={topk} page={page} lens={}{}", counts(lens), if flat { " ties" } else { "" });
    let mut rng = rng_for(v.op, &shape);
    let geometry = KvGeometry { latent: 4, rope: 2, index: di, indexed: vec![true] };
    let cache = PagedCache::random(format, geometry, page, lens, &mut rng);
    let q = if flat { vec![0.0; t * hi * di] } else { uniform(&mut rng, t * hi * di, 1.0) }; // [T, Hi, Di]
    let w = uniform(&mut rng, t * hi, 0.2); // [T, Hi]
    let dot_scale = 1.0 / (di as f32).sqrt();
    let stride = lens.iter().copied().max().unwrap_or(0);
    let mut scores = vec![f32::NEG_INFINITY; t * stride]; // [T, stride]
    let mut chosen = Vec::new();
    for (i, &len) in lens.iter().enumerate() {
        let positions: Vec<usize> = (0..len).collect();
        let row = score_slots(
            &q[i * hi * di..(i + 1) * hi * di],
            &w[i * hi..(i + 1) * hi],
            &cache.store,
            0,
            &cache.slots(i, &positions),
            dot_scale,
        );
        chosen.push(top_k(&row, topk).into_iter().map(|x| x as i32).collect::<Vec<_>>());
        scores[i * stride..i * stride + len].copy_from_slice(&row);
    }
    let entry = cache.store.index_bytes();
    let keys = cache.store.layer_bytes(0).1.to_vec();
    let pages = cache.page_rows();
    let lens_i: Vec<i32> = lens.iter().map(|&l| l as i32).collect();
    let max_pages = cache.max_pages;
    let total: usize = lens.iter().sum();
    Case {
        variant: v,
        shape,
        bytes: total * entry + 4 * (q.len() + w.len() + 2 * scores.len() + t * topk),
        expected: Output::Many(vec![Output::Floats(scores), Output::IndexSets(chosen)]),
        setup: Box::new(move |gpu| {
            Ok(Box::new(Bufs {
                q: gpu.upload(&q)?,
                w: gpu.upload(&w)?,
                keys: gpu.upload(&keys)?,
                pages: gpu.upload(&pages)?,
                lens: gpu.upload(&lens_i)?,
                scores: gpu.zeros::<f32>(t * stride)?,
                idx: gpu.zeros::<i32>(t * topk)?,
                format,
                t,
                hi,
                di,
                entry,
                page,
                max_pages,
                stride,
                topk,
                dot_scale,
            }))
        }),
    }
}

struct Bufs {
    q: Buffer,      // [T, Hi, Di] f32, roped
    w: Buffer,      // [T, Hi] f32, head weights (scaled)
    keys: Buffer,   // [slots, entry] u8: the layer's indexer keys
    pages: Buffer,  // [T, max_pages] i32
    lens: Buffer,   // [T] i32
    scores: Buffer, // [T, stride] f32, -inf past each length
    idx: Buffer,    // [T, topk] i32, unordered, -1 unused
    format: KvFormat,
    t: usize,
    hi: usize,
    di: usize,
    entry: usize,
    page: usize,
    max_pages: usize,
    stride: usize,
    topk: usize,
    dot_scale: f32,
}

impl Prepared for Bufs {
    fn launch(&self, gpu: &Gpu) -> Result<()> {
        let keys = Paged { store: &self.keys, slots: self.keys.bytes() / self.entry, entry: self.entry };
        let tables = Tables { pages: &self.pages, lens: &self.lens, page: self.page, max_pages: self.max_pages };
        let (t, stride) = (self.t, self.stride);
        launch::indexer_scores(
            gpu,
            self.format,
            &self.q,
            &self.w,
            &keys,
            &tables,
            &self.scores,
            t,
            self.hi,
            self.di,
            stride,
            self.dot_scale,
        )?;
        launch::top_k(gpu, &self.scores, &self.lens, &self.idx, t, stride, self.topk)
    }

    fn output(&self) -> Result<Output> {
        let idx: Vec<i32> = self.idx.read()?;
        Ok(Output::Many(vec![
            Output::Floats(self.scores.read()?),
            Output::IndexSets(idx.chunks(self.topk.max(1)).map(<[i32]>::to_vec).collect()),
        ]))
    }
}
