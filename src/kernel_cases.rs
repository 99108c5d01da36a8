//! Test vectors for the GPU kernels, computed by their CPU twins: `kiln kernels cases DIR`
//! writes one directory per case (meta.txt: `key value` lines; *.bin: little-endian buffers),
//! and kernels/harness/harness.cpp runs each kernel on the same inputs, compares with the
//! expected buffers under the case's tolerance, and reports time and bandwidth.
//!
//! Shapes are GLM-5.2's per-rank decode shapes at TP4 (hidden 6144, 16 heads, kv_lora 512,
//! 32 x 128 indexer, 256 experts of width 512), trimmed where a full layer would only add
//! run time.

use std::io::Write;
use std::path::{Path, PathBuf};

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

use crate::backend::cpu::{Rope, matmul, rms_norm_rows, top_k};
use crate::error::{Error, Result};
use crate::kv::{KvFormat, KvGeometry, KvPool, SeqKv};
use crate::model::indexer::score_row;
use crate::model::mla::{KvView, latent_attention};
use crate::model::moe::route;
use crate::model::weights::MoeWeights;
use crate::plan::ModelShape;
use crate::sample::argmax;
use crate::weights::Linear;

struct Case {
    dir: PathBuf,
    meta: String,
}

impl Case {
    fn new(root: &Path, name: &str, kernel: &str, tolerance: f64) -> Result<Case> {
        let dir = root.join(name);
        std::fs::create_dir_all(&dir).map_err(|e| Error::io(&dir, e))?;
        let mut c = Case { dir, meta: String::new() };
        c.set("kernel", kernel);
        c.set("tolerance", tolerance);
        Ok(c)
    }

    fn set(&mut self, key: &str, value: impl std::fmt::Display) {
        self.meta.push_str(&format!("{key} {value}\n"));
    }

    fn write(&self, name: &str, bytes: &[u8]) -> Result<()> {
        let path = self.dir.join(format!("{name}.bin"));
        std::fs::write(&path, bytes).map_err(|e| Error::io(&path, e))
    }

    fn f32s(&self, name: &str, v: &[f32]) -> Result<()> {
        self.write(name, &v.iter().flat_map(|x| x.to_le_bytes()).collect::<Vec<_>>())
    }

    fn i32s(&self, name: &str, v: &[i32]) -> Result<()> {
        self.write(name, &v.iter().flat_map(|x| x.to_le_bytes()).collect::<Vec<_>>())
    }

    /// Bytes a kernel must move at least (for the bandwidth figure).
    fn finish(mut self, bytes_moved: usize) -> Result<()> {
        self.set("bytes", bytes_moved);
        let path = self.dir.join("meta.txt");
        let mut f = std::fs::File::create(&path).map_err(|e| Error::io(&path, e))?;
        f.write_all(self.meta.as_bytes()).map_err(|e| Error::io(&path, e))
    }
}

fn normal(rng: &mut ChaCha8Rng, n: usize, scale: f32) -> Vec<f32> {
    (0..n).map(|_| (rng.random::<f32>() - 0.5) * 2.0 * scale).collect()
}

/// Writes every case under `root`; returns their names.
pub fn write_cases(root: &Path) -> Result<Vec<String>> {
    let mut rng = ChaCha8Rng::seed_from_u64(20261128);
    let mut names = Vec::new();
    let mut add = |n: &str| names.push(n.to_string());

    // RMSNorm: 64 rows of the hidden width.
    let (rows, d) = (64usize, 6144usize);
    let x = normal(&mut rng, rows * d, 2.0);
    let w = normal(&mut rng, d, 1.0);
    let mut y = x.clone();
    rms_norm_rows(&mut y, &w, 1e-5);
    let mut c = Case::new(root, "rmsnorm", "kiln_rmsnorm_f32", 1e-5)?;
    c.set("rows", rows);
    c.set("d", d);
    c.f32s("x", &x)?;
    c.f32s("w", &w)?;
    c.f32s("expected", &y)?;
    c.finish(4 * (2 * rows * d + d))?;
    add("rmsnorm");

    // RoPE on the rope part of 16 query heads of 256 (nope 192 + rope 64).
    let (rows, heads, stride, offset, rot) = (64usize, 16usize, 256usize, 192usize, 64usize);
    let x = normal(&mut rng, rows * heads * stride, 1.0);
    let positions: Vec<i32> = (0..rows).map(|_| rng.random_range(0..100_000)).collect();
    let rope = Rope::new(8e6, rot);
    let mut y = x.clone();
    for (r, &pos) in positions.iter().enumerate() {
        for h in 0..heads {
            let base = (r * heads + h) * stride + offset;
            rope.apply(&mut y[base..base + rot], pos as usize);
        }
    }
    let inv_freq: Vec<f32> = (0..rot / 2).map(|i| 1.0 / (8e6f32).powf((2 * i) as f32 / rot as f32)).collect();
    let mut c = Case::new(root, "rope", "kiln_rope_interleaved_f32", 2e-4)?;
    for (k, v) in [("rows", rows), ("heads", heads), ("stride", stride), ("offset", offset), ("rot", rot)] {
        c.set(k, v);
    }
    c.f32s("x", &x)?;
    c.i32s("positions", &positions)?;
    c.f32s("inv_freq", &inv_freq)?;
    c.f32s("expected", &y)?;
    c.finish(4 * 2 * rows * heads * rot)?;
    add("rope");

    // Router: 16 tokens over 256 experts, top-8, 8 groups keep 4 (exercises group limits).
    let (t, e, k, groups, keep) = (16usize, 256usize, 8usize, 8usize, 4usize);
    let x = normal(&mut rng, t * d, 1.0);
    let wr = normal(&mut rng, e * d, 0.02);
    let bias = normal(&mut rng, e, 0.05);
    let shape = ModelShape {
        n_routed_experts: e as u64,
        num_experts_per_tok: k as u64,
        n_group: groups as u64,
        topk_group: keep as u64,
        hidden_size: d as u64,
        ..router_shape()
    };
    let block = MoeWeights { router: wr.clone(), bias: bias.clone(), experts: Vec::new(), shared: None };
    let routes = route(&block, &shape, &x, t);
    let mut c = Case::new(root, "router", "kiln_router_sigmoid_topk", 1e-5)?;
    for (key, v) in [("t", t), ("d", d), ("e", e), ("k", k), ("groups", groups), ("keep_groups", keep)] {
        c.set(key, v);
    }
    c.set("scaling", 2.5);
    c.f32s("x", &x)?;
    c.f32s("w", &wr)?;
    c.f32s("bias", &bias)?;
    c.i32s("expected_idx", &routes.iter().flat_map(|r| r.experts.iter().map(|&i| i as i32)).collect::<Vec<_>>())?;
    c.f32s("expected", &routes.iter().flat_map(|r| r.weights.clone()).collect::<Vec<_>>())?;
    c.finish(4 * (t * d + e * d + e))?;
    add("router");

    // MXFP4 experts: decode (1-3 tokens on each of 16 experts) and prefill (96 each on 4).
    for (name, kernel, experts, per) in
        [("moe_decode", "kiln_moe_mxfp4_decode", 16usize, 0usize), ("moe_prefill", "kiln_moe_mxfp4_prefill", 4, 96)]
    {
        let (n, kk) = (512usize, 6144usize);
        let mut codes = Vec::new();
        let mut scales = Vec::new();
        let mut offsets = vec![0i32];
        let mut xs = Vec::new();
        let mut ys = Vec::new();
        for _ in 0..experts {
            let ec: Vec<u8> = (0..n * kk / 2).map(|_| rng.random()).collect();
            let es: Vec<u8> = (0..n * kk / 32).map(|_| rng.random_range(118..128)).collect();
            let m = if per == 0 { rng.random_range(1..4) } else { per };
            let x = normal(&mut rng, m * kk, 1.0);
            let lin = Linear::mxfp4(ec.clone(), es.clone(), n, kk);
            ys.extend(matmul(&x, m, &lin, false));
            xs.extend(x);
            codes.extend(ec);
            scales.extend(es);
            offsets.push(offsets.last().copied().unwrap_or(0) + m as i32);
        }
        let tol = 1e-4;
        let mut c = Case::new(root, name, kernel, tol)?;
        c.set("experts", experts);
        c.set("n", n);
        c.set("k", kk);
        c.set("m", offsets[experts]);
        c.write("codes", &codes)?;
        c.write("scales", &scales)?;
        c.f32s("x", &xs)?;
        c.i32s("offsets", &offsets)?;
        c.f32s("expected", &ys)?;
        c.finish(codes.len() + scales.len() + 4 * (xs.len() + ys.len()))?;
        add(name);
    }

    // MLA decode over a paged pool: 8 queries, each its own 3000-token sequence, 16 heads,
    // top-2048 selections; bf16 and fp8 pools.
    for (name, kernel, format) in [
        ("mla_decode_bf16", "kiln_mla_decode_bf16", KvFormat::Bf16),
        ("mla_decode_fp8", "kiln_mla_decode_fp8", KvFormat::Fp8E4m3),
    ] {
        let (t, h, r, dr, page, len, topk) = (8usize, 16usize, 512usize, 64usize, 64usize, 3000usize, 2048usize);
        let geometry = KvGeometry { latent: r, rope: dr, index: 128, indexed: vec![false] };
        let pages_per_seq = len.div_ceil(page);
        let mut pool = KvPool::new(format, geometry, page, t * pages_per_seq, false);
        let mut seqs = Vec::new();
        for _ in 0..t {
            let mut s = SeqKv::default();
            pool.reserve(&mut s, len).map_err(|e| Error::Usage(format!("{e:?}")))?;
            for pos in 0..len {
                pool.write_mla(&s, 0, pos, &normal(&mut rng, r, 1.0), &normal(&mut rng, dr, 1.0));
            }
            s.len = len;
            seqs.push(s);
        }
        let q_abs = normal(&mut rng, t * h * r, 0.1);
        let q_rope = normal(&mut rng, t * h * dr, 0.1);
        let scale = 1.0 / 16.0;
        let mut sel = Vec::new();
        let mut out = Vec::new();
        for (i, s) in seqs.iter().enumerate() {
            let mut keys: Vec<usize> = (0..len).collect();
            for j in 0..topk {
                let other = rng.random_range(j..len);
                keys.swap(j, other);
            }
            keys.truncate(topk);
            keys.sort_unstable();
            sel.extend(keys.iter().map(|&k| k as i32));
            let (latent, k_rope) = pool.gather_mla(s, 0, len);
            let view = KvView { latent: &latent, k_rope: &k_rope };
            let mut scores = vec![0.0; topk];
            let mut o_lat = vec![0.0; r];
            for hh in 0..h {
                let q = (i * h + hh) * r;
                let qr = (i * h + hh) * dr;
                latent_attention(&q_abs[q..q + r], &q_rope[qr..qr + dr], &view, &keys, scale, &mut scores, &mut o_lat);
                out.extend_from_slice(&o_lat);
            }
        }
        let page_table: Vec<i32> = seqs.iter().flat_map(|s| s.pages.iter().map(|&p| p as i32)).collect();
        let entry = format.mla_bytes(&pool.geometry);
        let mut c = Case::new(root, name, kernel, 2e-4)?;
        for (key, v) in [
            ("t", t),
            ("heads", h),
            ("r", r),
            ("dr", dr),
            ("entry", entry),
            ("page", page),
            ("max_pages", pages_per_seq),
            ("topk", topk),
        ] {
            c.set(key, v);
        }
        c.set("scale", scale);
        c.f32s("q_abs", &q_abs)?;
        c.f32s("q_rope", &q_rope)?;
        c.write("kv", pool.layer_bytes(0).0)?;
        c.i32s("pages", &page_table)?;
        c.i32s("lens", &vec![len as i32; t])?;
        c.i32s("sel", &sel)?;
        c.f32s("expected", &out)?;
        c.finish(t * topk * entry + 4 * (q_abs.len() + out.len()))?;
        add(name);
    }

    // Indexer scores over 8192 cached keys (fp8 and bf16) and the top-2048 of them.
    for (name, kernel, format) in [
        ("indexer_bf16", "kiln_indexer_scores_bf16", KvFormat::Bf16),
        ("indexer_fp8", "kiln_indexer_scores_fp8", KvFormat::Fp8E4m3),
    ] {
        let (t, hi, di, len, page) = (4usize, 32usize, 128usize, 8192usize, 64usize);
        let geometry = KvGeometry { latent: 64, rope: 16, index: di, indexed: vec![true] };
        let pages_per_seq = len / page;
        let mut pool = KvPool::new(format, geometry, page, t * pages_per_seq, false);
        let q = normal(&mut rng, t * hi * di, 1.0);
        let w = normal(&mut rng, t * hi, 0.2);
        let dot_scale = 1.0 / (di as f32).sqrt();
        let mut seqs = Vec::new();
        let mut expected = Vec::new();
        for i in 0..t {
            let mut s = SeqKv::default();
            pool.reserve(&mut s, len).map_err(|e| Error::Usage(format!("{e:?}")))?;
            for pos in 0..len {
                pool.write_index(&s, 0, pos, &normal(&mut rng, di, 1.0));
            }
            s.len = len;
            let keys = pool.gather_index(&s, 0, len);
            expected.extend(score_row(&q[i * hi * di..(i + 1) * hi * di], &w[i * hi..(i + 1) * hi], &keys, dot_scale));
            seqs.push(s);
        }
        let page_table: Vec<i32> = seqs.iter().flat_map(|s| s.pages.iter().map(|&p| p as i32)).collect();
        let entry = format.index_bytes(&pool.geometry);
        let mut c = Case::new(root, name, kernel, 2e-4)?;
        for (key, v) in [
            ("t", t),
            ("hi", hi),
            ("di", di),
            ("entry", entry),
            ("page", page),
            ("max_pages", pages_per_seq),
            ("stride", len),
        ] {
            c.set(key, v);
        }
        c.set("dot_scale", dot_scale);
        c.f32s("q", &q)?;
        c.f32s("w", &w)?;
        c.write("keys", pool.layer_bytes(0).1)?;
        c.i32s("pages", &page_table)?;
        c.i32s("lens", &vec![len as i32; t])?;
        c.f32s("expected", &expected)?;
        c.finish(t * len * entry + 4 * expected.len())?;
        add(name);
        if format == KvFormat::Fp8E4m3 {
            let k = 2048usize;
            let mut c = Case::new(root, "topk", "kiln_topk_f32", 0.0)?;
            c.set("t", t);
            c.set("stride", len);
            c.set("k", k);
            c.f32s("scores", &expected)?;
            c.i32s("lens", &vec![len as i32; t])?;
            let sets: Vec<i32> =
                expected.chunks(len).flat_map(|row| top_k(row, k).into_iter().map(|i| i as i32)).collect();
            c.i32s("expected_idx", &sets)?;
            c.finish(4 * expected.len())?;
            add("topk");
        }
    }

    // Greedy sampling over GLM-5.2's vocabulary.
    let (t, v) = (8usize, 154880usize);
    let logits = normal(&mut rng, t * v, 8.0);
    let picks: Vec<i32> = logits.chunks(v).map(|row| argmax(row) as i32).collect();
    let mut c = Case::new(root, "sample_greedy", "kiln_sample_greedy", 0.0)?;
    c.set("t", t);
    c.set("v", v);
    c.f32s("logits", &logits)?;
    c.i32s("expected_idx", &picks)?;
    c.finish(4 * t * v)?;
    add("sample_greedy");

    Ok(names)
}

/// The fields `route` reads besides the ones each case sets.
fn router_shape() -> ModelShape {
    ModelShape {
        architecture: "GlmMoeDsaForCausalLM".into(),
        vocab_size: 0,
        hidden_size: 0,
        num_hidden_layers: 0,
        first_k_dense_replace: 0,
        intermediate_size: 0,
        moe_intermediate_size: 0,
        num_attention_heads: 0,
        q_lora_rank: 0,
        kv_lora_rank: 0,
        qk_nope_head_dim: 0,
        qk_rope_head_dim: 0,
        v_head_dim: 0,
        index_n_heads: 0,
        index_head_dim: 0,
        index_topk: 0,
        index_topk_freq: 1,
        index_skip_topk_offset: 1,
        indexer_types: None,
        n_routed_experts: 0,
        num_experts_per_tok: 0,
        n_shared_experts: 0,
        n_group: 1,
        topk_group: 1,
        norm_topk_prob: true,
        routed_scaling_factor: 2.5,
        num_nextn_predict_layers: 0,
        rope_theta: 8e6,
        rms_norm_eps: 1e-5,
        max_position_embeddings: 0,
        tie_word_embeddings: false,
    }
}
