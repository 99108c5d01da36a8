//! The CPU model against HF transformers (fp32, eager) on the fixtures of
//! tools/make_fixtures.py: indexer top-k sets, expert choices, logits, greedy continuations,
//! and the MTP layer's draft logits.

mod common;

use common::fixture::*;
use kiln::model::Trace;

#[test]
fn logits_topk_and_experts_match_hf() {
    for name in FIXTURES {
        let model = load_model(name);
        let golden = Golden::load(name);
        let ids = golden.tokens("input_ids");
        let mut cache = model.new_cache();
        let mut trace = Trace::default();
        let hidden = model.forward(&ids, &mut cache, Some(&mut trace)).unwrap();

        // Discrete choices first: they decide everything after them.
        for (layer, sel) in &trace.topk {
            let want = golden.rows(&format!("topk.layer{layer}"));
            for (s, row) in want.iter().enumerate() {
                // HF fills rows with fewer causal keys than top-k with masked (future) slots.
                let want: Vec<u32> = row.iter().map(|&t| t as u32).filter(|&t| t as usize <= s).collect();
                let got: Vec<u32> = match sel.row(s) {
                    Some(set) => set.to_vec(),
                    None => (0..=s as u32).collect(),
                };
                assert_eq!(got, want, "{name}: layer {layer} query {s} top-k set");
            }
        }
        let moe_layers = golden.i64s.keys().filter(|k| k.starts_with("experts.")).count();
        assert_eq!(trace.experts.len(), moe_layers, "{name}: MoE layers traced");
        for (layer, routes) in &trace.experts {
            let want = golden.rows(&format!("experts.layer{layer}"));
            for (t, (r, w)) in routes.iter().zip(&want).enumerate() {
                let w: Vec<u32> = w.iter().map(|&e| e as u32).collect();
                assert_eq!(r.experts, w, "{name}: layer {layer} token {t} experts");
            }
        }

        let logits = model.logits(&hidden);
        let (shape, want) = golden.f32("logits");
        let (d, tol) = max_diff(&logits, want);
        assert!(d <= tol, "{name}: max |dlogit| = {d:e} > {tol:e}");
        let v = shape[1];
        for s in 0..shape[0] {
            assert_eq!(argmax(&logits[s * v..(s + 1) * v]), argmax(&want[s * v..(s + 1) * v]), "{name}: argmax at {s}");
        }
        eprintln!("{name}: max |dlogit| = {d:.2e} (tolerance {tol:.2e})");
    }
}

#[test]
fn greedy_continuations_match_hf() {
    for name in FIXTURES {
        let model = load_model(name);
        let golden = Golden::load(name);
        let prompt = golden.tokens("greedy_prompt");
        let want = golden.tokens("greedy_tokens");
        let mut cache = model.new_cache();
        let mut hidden = model.forward(&prompt, &mut cache, None).unwrap();
        let d = model.shape.hidden_size as usize;
        let mut got = Vec::new();
        while got.len() < want.len() {
            let last = &hidden[hidden.len() - d..];
            let next = argmax(&model.logits(last)) as u32;
            got.push(next);
            hidden = model.forward(&[next], &mut cache, None).unwrap();
        }
        assert_eq!(got, want, "{name}: greedy continuation");
    }
}

#[test]
fn mtp_draft_logits_match_the_reference() {
    for name in FIXTURES {
        let model = load_model(name);
        let golden = Golden::load(name);
        let ids = golden.tokens("input_ids");
        let hidden = model.forward(&ids, &mut model.new_cache(), None).unwrap();
        let d = model.shape.hidden_size as usize;
        let s = ids.len() - 1;
        let out = model.mtp_forward(0, &hidden[..s * d], &ids[1..], &mut model.new_mtp_cache()).unwrap();
        let (_, want) = golden.f32("mtp_logits");
        let (diff, tol) = max_diff(&model.logits(&out), want);
        assert!(diff <= tol, "{name}: MTP max |dlogit| = {diff:e} > {tol:e}");
    }
}
