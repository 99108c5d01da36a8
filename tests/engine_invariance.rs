//! The batching engine's invariances on the golden fixtures: a request alone == the same
//! request among concurrent ones of mixed lengths; prefix-cache hit == cold; chunked prefill
//! == whole prompts; preempted and recomputed == undisturbed; bf16 and fp8 KV within the
//! documented tolerances. And a randomized run of submit / cancel / finish that ends with
//! every page free and the pool's integrity check passing.

mod common;

use std::sync::Arc;
use std::sync::mpsc;
use std::time::Duration;

use common::engine::prompts;
use common::fixture::*;
use kiln::engine::{self, CancelFlag, EngineConfig, EngineHandle, Event, GenerationRequest};
use kiln::kv::KvFormat;
use kiln::metrics::Metrics;
use kiln::model::Model;
use kiln::sample::SamplingParams;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

fn config(format: KvFormat, pages: usize, chunk: usize) -> EngineConfig {
    EngineConfig {
        max_running: 8,
        max_queued: 64,
        request_timeout: Duration::from_secs(120),
        prefill_chunk_tokens: chunk,
        kv_format: format,
        page_size: 8,
        kv_pages: pages,
        prefix_cache: true,
        spec_depth: 0,
        spec_max_batch: usize::MAX,
    }
}

fn start(name: &str, cfg: EngineConfig) -> EngineHandle {
    start_with_metrics(name, cfg, Arc::new(Metrics::default()))
}

fn start_with_metrics(name: &str, cfg: EngineConfig, metrics: Arc<Metrics>) -> EngineHandle {
    let (h, _join) = engine::spawn(Arc::new(load_model(name)), cfg, metrics);
    h
}

struct Pending {
    rx: mpsc::Receiver<Event>,
    cancel: CancelFlag,
}

fn submit(h: &EngineHandle, prompt: Vec<u32>, max_tokens: usize) -> Pending {
    try_submit(h, prompt, max_tokens).expect("admitted")
}

/// None when the engine is at its running + queued limit.
fn try_submit(h: &EngineHandle, prompt: Vec<u32>, max_tokens: usize) -> Option<Pending> {
    let (req, rx) = GenerationRequest::new(prompt, SamplingParams::greedy(), max_tokens);
    let cancel = req.cancel.clone();
    h.submit(req).ok()?;
    Some(Pending { rx, cancel })
}

/// (tokens, cached prompt tokens) once the request is done.
fn collect(p: Pending) -> (Vec<u32>, usize) {
    let mut out = Vec::new();
    loop {
        match p.rx.recv_timeout(Duration::from_secs(120)).expect("the engine answers") {
            Event::Token { id, .. } => out.push(id),
            Event::Done { usage, .. } => return (out, usage.cached_tokens),
            Event::Failed(e) => panic!("{e}"),
        }
    }
}

fn alone(name: &str, cfg: EngineConfig, prompt: &[u32], n: usize) -> Vec<u32> {
    let h = start(name, cfg);
    collect(submit(&h, prompt.to_vec(), n)).0
}

#[test]
fn a_request_alone_equals_it_in_a_batch() {
    for name in FIXTURES {
        for format in [KvFormat::F32, KvFormat::Bf16] {
            let ps = prompts(256);
            let h = start(name, config(format, 512, 4096));
            let pending: Vec<Pending> = ps.iter().map(|p| submit(&h, p.clone(), 20)).collect();
            let batched: Vec<Vec<u32>> = pending.into_iter().map(|p| collect(p).0).collect();
            for (p, b) in ps.iter().zip(&batched) {
                assert_eq!(
                    &alone(name, config(format, 512, 4096), p, 20),
                    b,
                    "{name} {format:?}: prompt of {}",
                    p.len()
                );
            }
        }
    }
}

#[test]
fn prefix_cache_hit_equals_cold() {
    for name in FIXTURES {
        let h = start(name, config(KvFormat::Bf16, 512, 4096));
        let p = prompts(256)[4].clone(); // 60 tokens: 7 full pages of 8 can be reused
        let (cold, cached0) = collect(submit(&h, p.clone(), 16));
        let (hot, cached1) = collect(submit(&h, p.clone(), 16));
        assert_eq!(cached0, 0);
        assert_eq!(cached1, 56, "{name}");
        assert_eq!(cold, hot, "{name}");
        // A shared first half: the same for the tail that differs.
        let mut q = p.clone();
        q[40] = (q[40] + 1) % 256;
        let (_, cached2) = collect(submit(&h, q, 4));
        assert_eq!(cached2, 40, "{name}");
    }
}

#[test]
fn chunked_prefill_equals_whole_prompts() {
    for name in FIXTURES {
        let ps = prompts(256);
        for chunk in [8, 24] {
            let h = start(name, config(KvFormat::Bf16, 512, chunk));
            let pending: Vec<Pending> = ps.iter().map(|p| submit(&h, p.clone(), 12)).collect();
            let got: Vec<Vec<u32>> = pending.into_iter().map(|p| collect(p).0).collect();
            for (p, g) in ps.iter().zip(&got) {
                assert_eq!(&alone(name, config(KvFormat::Bf16, 512, 4096), p, 12), g, "{name}: chunk {chunk}");
            }
        }
    }
}

#[test]
fn preemption_recomputes_without_changing_outputs() {
    let name = "share_mxfp4";
    let ps = prompts(256);
    // 24 pages of 8 tokens hold about two of these requests at once.
    let metrics = Arc::new(Metrics::default());
    let h = start_with_metrics(name, config(KvFormat::F32, 24, 4096), metrics.clone());
    let pending: Vec<Pending> = ps.iter().map(|p| submit(&h, p.clone(), 24)).collect();
    let got: Vec<Vec<u32>> = pending.into_iter().map(|p| collect(p).0).collect();
    for (p, g) in ps.iter().zip(&got) {
        assert_eq!(&alone(name, config(KvFormat::F32, 512, 4096), p, 24), g, "prompt of {}", p.len());
    }
    let r = h.inspect().unwrap();
    assert_eq!(r.available_pages, r.total_pages);
    r.integrity.unwrap();
    assert!(metrics.preemptions() > 0, "no request was preempted");
}

/// Teacher-forced logits [T, V] of `ids` with the KV cache in `format`, one token per
/// forward so every attention reads entries back from the pool.
fn logits_with(model: &Model, format: KvFormat, ids: &[u32]) -> Vec<f32> {
    let mut cache = model.cache(format, model.kv_geometry());
    let mut out = Vec::new();
    for &id in ids {
        let h = model.forward(&[id], &mut cache, None).unwrap();
        out.extend(model.logits(&h));
    }
    out
}

/// (max |a - b| / max |b|, positions whose argmax differs).
fn compare(model: &Model, a: &[f32], b: &[f32]) -> (f32, usize) {
    let v = model.vocab_size();
    let scale = b.iter().fold(1.0f32, |m, x| m.max(x.abs()));
    let d = a.iter().zip(b).map(|(x, y)| (x - y).abs()).fold(0.0, f32::max);
    let flips = a.chunks(v).zip(b.chunks(v)).filter(|(x, y)| argmax(x) != argmax(y)).count();
    (d / scale, flips)
}

/// Greedy continuation of `prompt` with the cache in `format` (the engine's own path).
fn greedy(model: &Arc<Model>, format: KvFormat, prompt: &[u32], n: usize) -> Vec<u32> {
    let (h, _join) = engine::spawn(model.clone(), config(format, 512, 4096), Arc::new(Metrics::default()));
    collect(submit(&h, prompt.to_vec(), n)).0
}

fn demo_model() -> Model {
    let plan = kiln::plan::check(&common::read_plan_text(common::TINY)).unwrap();
    let src = kiln::weights::WeightsSource::Dir(common::repo_path("models/tiny"));
    Model::load(&plan, &src.checkpoint().unwrap()).unwrap()
}

/// The documented KV tolerances (docs/kv-cache-and-batching.md): on the trained demo model, bf16 and
/// fp8_e4m3 KV each move teacher-forced logits by at most 6% of the largest logit and flip the
/// argmax at no more than 3% of positions; greedy text is unchanged by bf16 and by fp8 on at
/// least 4 of 5 prompts (measured: 5 of 5 for bf16, 4 of 5 for fp8, the fifth diverging after
/// 15 tokens).
#[test]
fn kv_formats_on_the_trained_demo_model() {
    let model = Arc::new(demo_model());
    let ids = Golden::load_path(&common::repo_path("models/tiny/golden.safetensors")).tokens("input_ids");
    let f32_ = logits_with(&model, KvFormat::F32, &ids);
    let bf16 = logits_with(&model, KvFormat::Bf16, &ids);
    let fp8 = logits_with(&model, KvFormat::Fp8E4m3, &ids);
    for (what, a, b) in [("bf16 vs f32", &bf16, &f32_), ("fp8 vs f32", &fp8, &f32_), ("fp8 vs bf16", &fp8, &bf16)] {
        let (d, flips) = compare(&model, a, b);
        eprintln!("demo {what}: max |dlogit| / max |logit| = {d:.3}, argmax flips {flips} of {}", ids.len());
        assert!(d <= 0.06 && flips * 100 <= ids.len() * 3, "demo {what}: {d} and {flips} flips");
    }
    let tok = kiln::tokenizer::Tokenizer::from_dir(&common::repo_path("models/tiny")).unwrap();
    let prompts = [
        "import os\n\n\ndef list_files(directory):\n",
        "class Config:\n    def __init__(self, path):\n",
        "[gMASK]<sop><|user|>\nSplit a string on commas.<|assistant|>\n",
        "def _read(self, n):\n    \"\"\"Read up to n bytes",
        "for line in open(path):\n",
    ];
    let mut fp8_same = 0;
    for text in prompts {
        let p = tok.encode(text, false).unwrap();
        let reference = greedy(&model, KvFormat::F32, &p, 48);
        assert_eq!(greedy(&model, KvFormat::Bf16, &p, 48), reference, "bf16 KV changed the greedy text of {text:?}");
        fp8_same += usize::from(greedy(&model, KvFormat::Fp8E4m3, &p, 48) == reference);
    }
    assert!(fp8_same >= 4, "fp8 KV kept the greedy text of only {fp8_same} of 5 prompts");
}

/// On the golden fixtures (random weights, which amplify small errors), teacher-forced on the
/// dense-attention fixture: bf16 KV within 1% of the largest logit, fp8 within 20%, no argmax
/// flip. Greedy text on these fixtures is not kept by either (their argmax margins are 1e-3 by
/// construction; both diverge from HF's after 7 tokens), and on the sparse random fixtures a
/// perturbed indexer key flips top-k selections, so no tolerance holds row for row
/// (docs/kv-cache-and-batching.md).
#[test]
fn kv_formats_on_the_dense_fixture() {
    let name = "full_bf16_groups";
    let model = Arc::new(load_model(name));
    let ids = Golden::load(name).tokens("input_ids");
    let f32_ = logits_with(&model, KvFormat::F32, &ids);
    let (d, flips) = compare(&model, &logits_with(&model, KvFormat::Bf16, &ids), &f32_);
    assert!(d <= 0.01 && flips == 0, "bf16: {d}, {flips} flips");
    let (d, flips) = compare(&model, &logits_with(&model, KvFormat::Fp8E4m3, &ids), &f32_);
    assert!(d <= 0.2 && flips == 0, "fp8: {d}, {flips} flips");
}

#[test]
fn random_submit_cancel_finish_frees_every_page() {
    let name = "share_mxfp4";
    let h = start(name, config(KvFormat::Fp8E4m3, 40, 16));
    let mut rng = ChaCha8Rng::seed_from_u64(3);
    let mut live: Vec<Pending> = Vec::new();
    for round in 0..60 {
        for _ in 0..rng.random_range(0..4) {
            let len = rng.random_range(1..50);
            let stem = rng.random_range(0..3u32);
            let prompt: Vec<u32> = (0..len).map(|i| (stem * 50 + i as u32 * 3) % 256).collect();
            live.extend(try_submit(&h, prompt, rng.random_range(1..20)));
        }
        if !live.is_empty() && rng.random_bool(0.4) {
            let i = rng.random_range(0..live.len());
            live[i].cancel.cancel();
        }
        std::thread::sleep(Duration::from_millis(rng.random_range(0..5)));
        if round % 10 == 0 {
            h.inspect().unwrap().integrity.unwrap_or_else(|e| panic!("round {round}: {e}"));
        }
    }
    for p in live {
        let _ = collect(p);
    }
    common::engine::wait_until_idle(&h);
    assert_eq!(h.in_flight(), 0);
}
