//! The batching engine on the GPU backend (the emulated HIP device) gives the same tokens as on
//! the CPU backend: six requests batched, a prefix-cache hit, chunked prefill, preemption and
//! recompute, and MTP speculation at the plan's depth.

mod common;

use std::sync::Arc;
use std::sync::mpsc;
use std::time::Duration;

use common::engine::{JoinedEngine, prompts};
use common::fixture::*;
use kiln::backend::Backend;
use kiln::backend::gpu::GpuBackend;
use kiln::engine::{EngineConfig, EngineHandle, Event, GenerationRequest};
use kiln::kv::KvFormat;
use kiln::metrics::Metrics;
use kiln::model::Model;
use kiln::sample::SamplingParams;
use kiln::weights::Checkpoint;

fn config(format: KvFormat, pages: usize, chunk: usize, depth: usize) -> EngineConfig {
    EngineConfig {
        max_running: 8,
        max_queued: 64,
        request_timeout: Duration::from_secs(600),
        prefill_chunk_tokens: chunk,
        kv_format: format,
        page_size: 8,
        kv_pages: pages,
        prefix_cache: true,
        spec_depth: depth,
        spec_max_batch: usize::MAX,
    }
}

fn start<B: Backend>(model: &Arc<Model<B>>, cfg: EngineConfig) -> JoinedEngine {
    JoinedEngine::spawn(model.clone(), cfg, Arc::new(Metrics::default()))
}

fn submit(h: &EngineHandle, prompt: &[u32], n: usize) -> mpsc::Receiver<Event> {
    let (req, rx) = GenerationRequest::new(prompt.to_vec(), SamplingParams::greedy(), n);
    h.submit(req).expect("admitted");
    rx
}

/// (tokens, cached prompt tokens).
fn collect(rx: mpsc::Receiver<Event>) -> (Vec<u32>, usize) {
    let mut out = Vec::new();
    loop {
        match rx.recv_timeout(Duration::from_secs(600)).expect("the engine answers") {
            Event::Token { id, .. } => out.push(id),
            Event::Done { usage, .. } => return (out, usage.cached_tokens),
            Event::Failed(e) => panic!("{e}"),
        }
    }
}

/// Every prompt submitted at once to one engine.
fn batch<B: Backend>(model: &Arc<Model<B>>, cfg: EngineConfig, prompts: &[Vec<u32>], n: usize) -> Vec<Vec<u32>> {
    let h = start(model, cfg);
    let pending: Vec<_> = prompts.iter().map(|p| submit(&h, p, n)).collect();
    pending.into_iter().map(|rx| collect(rx).0).collect()
}

fn gpu_model(gpu: &Arc<kiln::device::Gpu>, name: &str) -> Arc<Model<GpuBackend>> {
    let plan = fixture_plan(name);
    let ckpt = Checkpoint::open(&fixture_dir(name)).expect("fixture checkpoint opens");
    Arc::new(Model::load_on(GpuBackend::new(gpu.clone(), &plan), &plan, &ckpt).unwrap())
}

#[test]
fn the_engine_gives_the_same_tokens_on_the_emulated_gpu() {
    let Some(gpu) = common::emulated::repo_gpu() else { return };
    for name in FIXTURES {
        let cpu = Arc::new(load_model(name));
        let dev = gpu_model(&gpu, name);
        let depth = fixture_plan(name).speculative.depth as usize;
        let ps = prompts(256);
        // The CPU backend, each request alone: the reference.
        let alone = |format, n| -> Vec<Vec<u32>> {
            ps.iter()
                .map(|p| batch(&cpu, config(format, 512, 4096, 0), std::slice::from_ref(p), n)[0].clone())
                .collect()
        };
        let want_bf16 = alone(KvFormat::Bf16, 12);

        let got = batch(&dev, config(KvFormat::Bf16, 512, 4096, 0), &ps, 12);
        assert_eq!(got, want_bf16, "{name}: six requests batched on the GPU backend");

        let got = batch(&dev, config(KvFormat::Bf16, 512, 8, 0), &ps, 12);
        assert_eq!(got, want_bf16, "{name}: chunked prefill (8 tokens) on the GPU backend");

        let got = batch(&dev, config(KvFormat::Bf16, 512, 16, depth), &ps, 12);
        assert_eq!(got, want_bf16, "{name}: MTP speculation at depth {depth} on the GPU backend");

        // Prefix cache: the second run of a prompt reuses 7 full pages and says so.
        let h = start(&dev, config(KvFormat::Bf16, 512, 4096, 0));
        let (cold, c0) = collect(submit(&h, &ps[4], 12));
        let (hot, c1) = collect(submit(&h, &ps[4], 12));
        assert_eq!((c0, c1), (0, 56), "{name}: cached prompt tokens");
        assert_eq!((&cold, &hot), (&want_bf16[4], &want_bf16[4]), "{name}: prefix-cache hit on the GPU backend");

        // Preemption: 24 pages of 8 hold about two requests; the rest wait or are recomputed.
        let want_f32 = alone(KvFormat::F32, 16);
        let got = batch(&dev, config(KvFormat::F32, 24, 4096, 0), &ps, 16);
        assert_eq!(got, want_f32, "{name}: preempted and recomputed on the GPU backend");
    }
}
