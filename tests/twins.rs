//! Algebraic twins: two computations of the same math must agree.
//! Absorbed MLA == naive MLA; cached decode (token by token, and in chunks) == full
//! recompute; grouped MoE == a dense loop over every expert.

mod common;

use common::fixture::*;
use kiln::backend::Backend;
use kiln::model::weights::Ffn;
use kiln::model::{AttentionForm, moe};

/// The twins differ by f32 rounding (1e-5 of the largest logit). With VNNI or AVX2-int16,
/// MXFP4 layers take their inputs as integers (about 3e-5 of a block's largest value), and a
/// last-bit difference upstream can move such an integer by one step, which is larger than
/// what these tests resolve. They check algebra, not the kernels (the golden suite checks
/// those against HF), so they run the f32 kernels: AVX-512 where the CPU has it, else AVX2
/// (or what the CPU has below it).
fn f32_kernels() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    #[cfg(target_arch = "x86_64")]
    let isa = if std::arch::is_x86_feature_detected!("avx512f") { "avx512" } else { "avx2" };
    #[cfg(not(target_arch = "x86_64"))]
    let isa = "portable";
    // SAFETY: every test here calls this before anything else, so no other thread of this
    // binary reads the environment while it is written.
    ONCE.call_once(|| unsafe { std::env::set_var("KILN_CPU_ISA", isa) });
}

fn close(a: &[f32], b: &[f32], rel: f32) -> Result<(), String> {
    let scale = b.iter().fold(1.0f32, |m, v| m.max(v.abs()));
    let d = a.iter().zip(b).map(|(x, y)| (x - y).abs()).fold(0.0, f32::max);
    if d <= rel * scale { Ok(()) } else { Err(format!("max diff {d:e} > {:e}", rel * scale)) }
}

#[test]
fn absorbed_mla_equals_naive_mla() {
    f32_kernels();
    for name in FIXTURES {
        let mut model = load_model(name);
        let ids = Golden::load(name).tokens("input_ids");
        model.form = AttentionForm::Absorbed;
        let a = model.logits(&model.forward(&ids, &mut model.new_cache(), None).unwrap());
        model.form = AttentionForm::Naive;
        let b = model.logits(&model.forward(&ids, &mut model.new_cache(), None).unwrap());
        close(&a, &b, 1e-5).unwrap_or_else(|e| panic!("{name}: {e}"));
    }
}

#[test]
fn cached_decode_equals_full_recompute() {
    f32_kernels();
    for name in FIXTURES {
        let model = load_model(name);
        let ids = Golden::load(name).tokens("input_ids");
        let v = model.vocab_size();
        let full = model.logits(&model.forward(&ids, &mut model.new_cache(), None).unwrap());
        for chunk in [1, 5, 13] {
            let mut cache = model.new_cache();
            let mut got = Vec::new();
            for part in ids.chunks(chunk) {
                got.extend(model.logits(&model.forward(part, &mut cache, None).unwrap()));
            }
            assert_eq!(cache.len(), ids.len());
            close(&got, &full, 1e-5).unwrap_or_else(|e| panic!("{name}, chunks of {chunk}: {e}"));
            assert_eq!(got.len(), ids.len() * v);
        }
    }
}

#[test]
fn grouped_moe_equals_dense_loop_over_experts() {
    f32_kernels();
    for name in FIXTURES {
        let model = load_model(name);
        let m = &model.shape;
        let d = m.hidden_size as usize;
        // One token (every expert reads the same input, prepared once) and seven.
        for n in [1, 7] {
            // Deterministic, varied activations.
            let x: Vec<f32> = (0..n * d).map(|i| ((i * 37 % 101) as f32 / 50.0 - 1.0) * 0.7).collect();
            for layer in &model.weights.layers {
                let Ffn::Moe(block) = &layer.ffn else { continue };
                let cpu = &model.backend;
                let xs = cpu.upload(x.clone(), d).unwrap();
                let (grouped, routes) = moe::moe(cpu, block, m, &xs, false).unwrap();
                let grouped = grouped.data;
                let mut dense = vec![0.0f32; n * d];
                for t in 0..n {
                    let xt = &x[t * d..(t + 1) * d];
                    for (e, expert) in block.experts.iter().enumerate() {
                        let (experts, weights) = routes.token(t);
                        let wt = experts.iter().position(|&j| j as usize == e).map_or(0.0, |k| weights[k]);
                        let y = kiln::backend::cpu::moe::mlp(expert, xt, 1, false);
                        for (a, b) in dense[t * d..(t + 1) * d].iter_mut().zip(&y) {
                            *a += wt * b;
                        }
                    }
                    if let Some(shared) = &block.shared {
                        let y = moe::mlp(cpu, shared, &cpu.upload(xt.to_vec(), d).unwrap(), false).unwrap();
                        for (a, b) in dense[t * d..(t + 1) * d].iter_mut().zip(&y.data) {
                            *a += b;
                        }
                    }
                }
                close(&grouped, &dense, 1e-5).unwrap_or_else(|e| panic!("{name}, {n} tokens: {e}"));
            }
        }
    }
}
