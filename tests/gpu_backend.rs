//! The whole GLM-DSA forward on the GPU backend, on the emulated HIP device (every op a
//! kernel, weights and KV in device memory), against the CPU backend and HF's golden fixtures:
//! the same indexer selections and experts, logits within the golden tolerance, the same
//! greedy continuations, and the MTP layer's drafts.

mod common;

use std::sync::Arc;

use common::fixture::*;
use kiln::backend::gpu::GpuBackend;
use kiln::device::Gpu;
use kiln::model::{Model, Trace};
use kiln::weights::Checkpoint;

const ALL_FIXTURES: [&str; 4] = ["share_mxfp4", "full_bf16_groups", "share_mxfp4_odd", "chat_tiny"];

fn gpu_model(gpu: &Arc<Gpu>, name: &str) -> Model<GpuBackend> {
    let plan = fixture_plan(name);
    let ckpt = Checkpoint::open(&fixture_dir(name)).expect("fixture checkpoint opens");
    Model::load_on(GpuBackend::new(gpu.clone(), &plan), &plan, &ckpt).unwrap_or_else(|e| panic!("{name}: {e}"))
}

#[test]
fn golden_fixtures_run_end_to_end_on_the_emulated_gpu() {
    let Some(gpu) = common::emulated::repo_gpu() else { return };
    for name in ALL_FIXTURES {
        let cpu = load_model(name);
        let dev = gpu_model(&gpu, name);
        let golden = std::fs::exists(fixture_dir(name).join("golden.safetensors")).unwrap().then(|| Golden::load(name));
        let ids = match &golden {
            Some(g) => g.tokens("input_ids"),
            None => (0..24u32).map(|i| (i * 37 + 5) % cpu.vocab_size() as u32).collect(),
        };

        let (mut cpu_trace, mut dev_trace) = (Trace::default(), Trace::default());
        let cpu_hidden = cpu.forward(&ids, &mut cpu.new_cache(), Some(&mut cpu_trace)).unwrap();
        let dev_hidden = dev.forward(&ids, &mut dev.new_cache(), Some(&mut dev_trace)).unwrap();
        assert_eq!(dev_trace.topk, cpu_trace.topk, "{name}: indexer selections");
        let experts = |t: &Trace| -> Vec<(usize, Vec<Vec<u32>>)> {
            t.experts.iter().map(|(l, r)| (*l, r.iter().map(|x| x.experts.clone()).collect())).collect()
        };
        assert_eq!(experts(&dev_trace), experts(&cpu_trace), "{name}: routed experts");

        let cpu_logits = cpu.logits(&cpu_hidden);
        let dev_logits = dev.lm_head(&dev_hidden).unwrap();
        let (d, tol) = max_diff(&dev_logits, &cpu_logits);
        assert!(d <= tol, "{name}: GPU vs CPU max |dlogit| = {d:e} > {tol:e}");
        if let Some(g) = &golden {
            let (_, want) = g.f32("logits");
            let (d_hf, tol) = max_diff(&dev_logits, want);
            assert!(d_hf <= tol, "{name}: GPU vs HF max |dlogit| = {d_hf:e} > {tol:e}");
            eprintln!("{name}: GPU vs CPU {d:.2e}, vs HF {d_hf:.2e} (tolerance {tol:.2e})");
        }

        // MTP drafts from the GPU's own hidden states.
        if !cpu.weights.mtp.is_empty() {
            let dm = cpu.shape.hidden_size as usize;
            let s = ids.len() - 1;
            let want =
                cpu.logits(&cpu.mtp_forward(0, &cpu_hidden[..s * dm], &ids[1..], &mut cpu.new_mtp_cache()).unwrap());
            let got = dev
                .lm_head(&dev.mtp_forward(0, &dev_hidden[..s * dm], &ids[1..], &mut dev.new_mtp_cache()).unwrap())
                .unwrap();
            let (d, tol) = max_diff(&got, &want);
            assert!(d <= tol, "{name}: MTP GPU vs CPU max |dlogit| = {d:e} > {tol:e}");
        }
    }
}

#[test]
fn greedy_continuations_match_on_the_emulated_gpu() {
    let Some(gpu) = common::emulated::repo_gpu() else { return };
    for name in FIXTURES {
        let dev = gpu_model(&gpu, name);
        let golden = Golden::load(name);
        let prompt = golden.tokens("greedy_prompt");
        let want = golden.tokens("greedy_tokens");
        let mut cache = dev.new_cache();
        let d = dev.shape.hidden_size as usize;
        let mut hidden = dev.forward(&prompt, &mut cache, None).unwrap();
        let mut got = Vec::new();
        while got.len() < want.len() {
            let next = argmax(&dev.lm_head(&hidden[hidden.len() - d..]).unwrap()) as u32;
            got.push(next);
            hidden = dev.forward(&[next], &mut cache, None).unwrap();
        }
        assert_eq!(got, want, "{name}: greedy continuation on the GPU backend");
    }
}
