//! MTP speculative decoding in the engine: greedy output with speculation == without, on the
//! golden fixtures and the demo model, alone, batched and with the prefix cache; sampled
//! speculation is reproducible by seed; drafting pauses in batches over the plan's limit; the
//! demo model's MTP layer gets drafts accepted; and random submit / cancel runs leave both the
//! main and the MTP pool whole.

mod common;

use std::sync::Arc;
use std::sync::mpsc;
use std::time::Duration;

use common::fixture::*;
use kiln::engine::{self, CancelFlag, EngineConfig, EngineHandle, Event, GenerationRequest};
use kiln::kv::KvFormat;
use kiln::metrics::Metrics;
use kiln::model::Model;
use kiln::sample::SamplingParams;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

fn config(depth: usize, chunk: usize) -> EngineConfig {
    EngineConfig {
        max_running: 8,
        max_queued: 64,
        request_timeout: Duration::from_secs(120),
        prefill_chunk_tokens: chunk,
        kv_format: KvFormat::Bf16,
        page_size: 8,
        kv_pages: 1024,
        prefix_cache: true,
        spec_depth: depth,
        spec_max_batch: usize::MAX,
    }
}

fn start(model: &Arc<Model>, cfg: EngineConfig, metrics: Arc<Metrics>) -> EngineHandle {
    engine::spawn(model.clone(), cfg, metrics).0
}

fn submit(h: &EngineHandle, prompt: &[u32], n: usize, params: SamplingParams) -> (mpsc::Receiver<Event>, CancelFlag) {
    try_submit(h, prompt, n, params).expect("admitted")
}

fn try_submit(
    h: &EngineHandle,
    prompt: &[u32],
    n: usize,
    params: SamplingParams,
) -> Option<(mpsc::Receiver<Event>, CancelFlag)> {
    let (req, rx) = GenerationRequest::new(prompt.to_vec(), params, n);
    let cancel = req.cancel.clone();
    h.submit(req).ok()?;
    Some((rx, cancel))
}

fn collect(rx: mpsc::Receiver<Event>) -> Vec<u32> {
    let mut out = Vec::new();
    loop {
        match rx.recv_timeout(Duration::from_secs(120)).expect("the engine answers") {
            Event::Token { id, .. } => out.push(id),
            Event::Done { .. } => return out,
            Event::Failed(e) => panic!("{e}"),
        }
    }
}

fn run(
    model: &Arc<Model>,
    depth: usize,
    prompts: &[Vec<u32>],
    n: usize,
    params: SamplingParams,
) -> (Vec<Vec<u32>>, Arc<Metrics>) {
    let metrics = Arc::new(Metrics::default());
    let h = start(model, config(depth, 16), metrics.clone());
    let pending: Vec<_> = prompts.iter().map(|p| submit(&h, p, n, params.clone()).0).collect();
    (pending.into_iter().map(collect).collect(), metrics)
}

fn demo() -> Arc<Model> {
    let plan = kiln::plan::check(&common::read_plan_text(common::TINY)).unwrap();
    let src = kiln::weights::WeightsSource::Dir(common::repo_path("models/tiny"));
    Arc::new(Model::load(&plan, &src.checkpoint().unwrap()).unwrap())
}

fn demo_prompts() -> Vec<Vec<u32>> {
    let tok = kiln::tokenizer::Tokenizer::from_dir(&common::repo_path("models/tiny")).unwrap();
    [
        "import os\n\n\ndef list_files(directory):\n",
        "class Config:\n    def __init__(self, path):\n",
        "[gMASK]<sop><|user|>\nSplit a string on commas.<|assistant|>\n",
        "def _read(self, n):\n    \"\"\"Read up to n bytes",
    ]
    .iter()
    .map(|t| tok.encode(t, false).unwrap())
    .collect()
}

#[test]
fn greedy_with_speculation_equals_without_on_the_fixtures() {
    for name in FIXTURES {
        let model = Arc::new(load_model(name));
        let prompts: Vec<Vec<u32>> =
            [5usize, 17, 30].iter().map(|&n| (0..n as u32).map(|i| (i * 37 + 11) % 256).collect()).collect();
        let (plain, _) = run(&model, 0, &prompts, 20, SamplingParams::greedy());
        for depth in [1, 3] {
            let (spec, m) = run(&model, depth, &prompts, 20, SamplingParams::greedy());
            assert_eq!(spec, plain, "{name} depth {depth}");
            assert!(m.speculation().0 > 0, "{name}: nothing was drafted");
        }
    }
}

#[test]
fn greedy_with_speculation_equals_without_on_the_demo_model() {
    let model = demo();
    let prompts = demo_prompts();
    // Alone...
    for p in &prompts {
        let (plain, _) = run(&model, 0, std::slice::from_ref(p), 40, SamplingParams::greedy());
        let (spec, _) = run(&model, 4, std::slice::from_ref(p), 40, SamplingParams::greedy());
        assert_eq!(spec, plain);
    }
    // ...and batched, with the MTP layer drafting usefully.
    let (plain, _) = run(&model, 0, &prompts, 40, SamplingParams::greedy());
    let (spec, m) = run(&model, 2, &prompts, 40, SamplingParams::greedy());
    assert_eq!(spec, plain);
    let (steps, drafted, accepted, per_pos) = m.speculation();
    eprintln!("demo, depth 2: {steps} verifications, {accepted} of {drafted} drafts accepted, by position {per_pos:?}");
    assert!(accepted * 5 > drafted, "the demo's MTP layer drafts badly: {accepted} of {drafted}");
}

#[test]
fn drafting_pauses_while_more_requests_decode_than_the_limit() {
    let model = demo();
    let prompts = demo_prompts();
    let (short, long) = (&prompts[0], &prompts[1]);
    let alone = |p: &Vec<u32>, n| run(&model, 0, std::slice::from_ref(p), n, SamplingParams::greedy()).0.remove(0);
    let (short_plain, long_plain) = (alone(short, 8), alone(long, 40));
    for limit in [1, 2] {
        let metrics = Arc::new(Metrics::default());
        let h = start(&model, EngineConfig { spec_max_batch: limit, ..config(2, 64) }, metrics.clone());
        // Both requests arrive while the engine sleeps, so they prefill in one step and then
        // decode side by side until the short one ends.
        h.stall(Duration::from_millis(300));
        let a = submit(&h, short, 8, SamplingParams::greedy()).0;
        let b = submit(&h, long, 40, SamplingParams::greedy()).0;
        assert_eq!(collect(a), short_plain, "limit {limit}");
        assert_eq!(collect(b), long_plain, "limit {limit}");
        let (paused, drafted) = (metrics.drafting_paused_steps(), metrics.speculation().1);
        if limit == 1 {
            // Two decode side by side for the short request's last seven tokens.
            assert!(paused >= 5, "limit 1: drafting paused in only {paused} steps");
            assert!(drafted > 0, "limit 1: the long request never drafted once alone");
        } else {
            assert_eq!(paused, 0, "limit 2: two decoding requests paused drafting");
        }
    }
}

#[test]
fn speculation_with_the_prefix_cache() {
    let model = demo();
    let p = demo_prompts()[1].clone();
    let metrics = Arc::new(Metrics::default());
    let h = start(&model, config(3, 16), metrics.clone());
    let first = collect(submit(&h, &p, 30, SamplingParams::greedy()).0);
    let second = collect(submit(&h, &p, 30, SamplingParams::greedy()).0);
    let (plain, _) = run(&model, 0, std::slice::from_ref(&p), 30, SamplingParams::greedy());
    assert_eq!(first, plain[0]);
    assert_eq!(second, plain[0], "a prefix-cache hit changed the speculative output");
    // Seeded sampling too: the MTP entries come back with the cached pages, so a hit drafts
    // exactly as the cold run did and the request repeats token for token.
    let params = SamplingParams { temperature: 0.9, seed: Some(77), ..Default::default() };
    let p2 = demo_prompts()[2].clone();
    let cold = collect(submit(&h, &p2, 30, params.clone()).0);
    let hot = collect(submit(&h, &p2, 30, params).0);
    assert_eq!(cold, hot, "a prefix-cache hit changed a seeded sampled request");
}

#[test]
fn sampled_speculation_is_reproducible_and_plausible() {
    let model = demo();
    let prompts = demo_prompts();
    let params = SamplingParams { temperature: 0.8, top_p: 0.95, seed: Some(5), ..Default::default() };
    let (a, m) = run(&model, 3, &prompts[..2], 30, params.clone());
    let (b, _) = run(&model, 3, &prompts[..2], 30, params);
    assert_eq!(a, b, "same seed, same request, different tokens");
    assert!(a.iter().all(|t| t.len() == 30));
    assert!(m.speculation().2 > 0, "no sampled draft was ever accepted");
}

#[test]
fn random_submit_cancel_with_speculation_frees_every_page() {
    let model = Arc::new(load_model("share_mxfp4"));
    let h = start(&model, EngineConfig { kv_pages: 48, ..config(2, 16) }, Arc::new(Metrics::default()));
    let mut rng = ChaCha8Rng::seed_from_u64(9);
    let mut live = Vec::new();
    for round in 0..40 {
        for _ in 0..rng.random_range(0..3) {
            let len = rng.random_range(1..40);
            let prompt: Vec<u32> = (0..len).map(|i| (i as u32 * 7 + 3) % 256).collect();
            let params = if rng.random_bool(0.5) {
                SamplingParams::greedy()
            } else {
                SamplingParams { seed: Some(round), ..Default::default() }
            };
            let n = rng.random_range(1..24);
            live.extend(try_submit(&h, &prompt, n, params));
        }
        if !live.is_empty() && rng.random_bool(0.4) {
            let i = rng.random_range(0..live.len());
            live[i].1.cancel();
        }
        std::thread::sleep(Duration::from_millis(rng.random_range(0..4)));
        if round % 8 == 0 {
            h.inspect().unwrap().integrity.unwrap_or_else(|e| panic!("round {round}: {e}"));
        }
    }
    for (rx, _) in live {
        let _ = collect(rx);
    }
    common::engine::wait_until_idle(&h);
}
