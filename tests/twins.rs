//! Algebraic twins: two computations of the same math must agree.
//! Absorbed MLA == naive MLA; cached decode (token by token, and in chunks) == full
//! recompute; grouped MoE == a dense loop over every expert.

mod common;

use common::fixture::*;
use kiln::backend::Backend;
use kiln::model::weights::Ffn;
use kiln::model::{AttentionForm, moe};

fn close(a: &[f32], b: &[f32], rel: f32) -> Result<(), String> {
    let scale = b.iter().fold(1.0f32, |m, v| m.max(v.abs()));
    let d = a.iter().zip(b).map(|(x, y)| (x - y).abs()).fold(0.0, f32::max);
    if d <= rel * scale { Ok(()) } else { Err(format!("max diff {d:e} > {:e}", rel * scale)) }
}

#[test]
fn absorbed_mla_equals_naive_mla() {
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
    for name in FIXTURES {
        let model = load_model(name);
        let m = &model.shape;
        let d = m.hidden_size as usize;
        let n = 7;
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
                    let wt =
                        routes[t].experts.iter().position(|&j| j as usize == e).map_or(0.0, |k| routes[t].weights[k]);
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
            close(&grouped, &dense, 1e-5).unwrap_or_else(|e| panic!("{name}: {e}"));
        }
    }
}
