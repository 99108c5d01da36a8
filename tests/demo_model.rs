//! The shipped demo model (models/tiny, built into the default binary): kiln agrees with HF
//! transformers on it, its MTP layer drafts as trained, and `kiln serve` serves it from an
//! empty directory with text that continues its training domain.

mod common;

use std::process::Command;

use common::fixture::{Golden, argmax, max_diff};
use kiln::model::Model;
use kiln::plan;
use kiln::weights::WeightsSource;
use serde_json::{Value, json};

fn demo_model() -> Model {
    let plan = plan::check(&common::read_plan_text(common::TINY)).unwrap();
    let src = WeightsSource::Dir(common::repo_path("models/tiny"));
    Model::load(&plan, &src.checkpoint().unwrap()).unwrap()
}

fn golden() -> Golden {
    Golden::load_path(&common::repo_path("models/tiny/golden.safetensors"))
}

#[test]
fn demo_logits_and_greedy_match_hf() {
    let model = demo_model();
    let g = golden();
    let ids = g.tokens("input_ids");
    let hidden = model.forward(&ids, &mut model.new_cache(), None).unwrap();
    let d = model.shape.hidden_size as usize;
    let v = model.vocab_size();
    let last8 = model.logits(&hidden[hidden.len() - 8 * d..]);
    let want = &g.f32("logits").1;
    let (diff, tol) = max_diff(&last8, want);
    assert!(diff <= tol, "max |dlogit| {diff:e} > {tol:e}");
    for r in 0..8 {
        assert_eq!(argmax(&last8[r * v..(r + 1) * v]), argmax(&want[r * v..(r + 1) * v]));
    }
    let prompt = g.tokens("greedy_prompt");
    let mut sampler = kiln::sample::Sampler::new(kiln::sample::SamplingParams::greedy(), &prompt);
    let got = kiln::generate::generate(&model, &prompt, 16, &mut sampler).unwrap();
    assert_eq!(got, g.tokens("greedy_tokens"));
}

#[test]
fn demo_mtp_drafts_as_trained() {
    let model = demo_model();
    let g = golden();
    let ids = g.tokens("input_ids");
    let d = model.shape.hidden_size as usize;
    let hidden = model.forward(&ids, &mut model.new_cache(), None).unwrap();
    let s = ids.len() - 1;
    let out = model.mtp_forward(0, &hidden[..s * d], &ids[1..], &mut model.new_mtp_cache()).unwrap();
    let logits = model.logits(&out);
    let v = model.vocab_size();
    let ours: Vec<u32> = (0..s).map(|i| argmax(&logits[i * v..(i + 1) * v]) as u32).collect();
    let want = g.tokens("mtp_argmax");
    let agree = ours.iter().zip(&want).filter(|(a, b)| a == b).count();
    assert!(agree * 100 >= s * 97, "MTP drafts agree with the training model on {agree} of {s} positions");
}

/// The MTP layer asked for the outputs of a few rows of a step (the engine's catch-up, which
/// drafts from each request's last row) writes every row's entries and gives those rows the
/// whole step's bits; a next step, which attends over all of them through the indexer's
/// top-k, gives the same bits whichever rows the first step computed.
#[test]
fn mtp_rows_left_out_still_write_their_entries() {
    let model = demo_model();
    let d = model.shape.hidden_size as usize;
    // Past the demo's index_topk (64), so the second step's keys are chosen by the indexer.
    let ids: Vec<u32> = (0..150u32).map(|i| (i * 37 + 11) % 4000 + 50).collect();
    let hidden = model.forward(&ids, &mut model.new_cache(), None).unwrap(); // [150, D]
    let split = 100;
    let run = |first_outputs: &[usize]| -> (Vec<f32>, Vec<f32>) {
        let mut cache = model.new_mtp_cache();
        let step = cache.step(&model.backend, &ids[1..=split]).unwrap();
        let first = model.mtp_step(0, &step, &hidden[..split * d], &mut cache.store, 0, first_outputs).unwrap();
        cache.advance(split);
        let rest = ids.len() - 1 - split;
        let step = cache.step(&model.backend, &ids[split + 1..]).unwrap();
        let every: Vec<usize> = (0..rest).collect();
        let second =
            model.mtp_step(0, &step, &hidden[split * d..(split + rest) * d], &mut cache.store, 0, &every).unwrap();
        (first, second)
    };
    let every: Vec<usize> = (0..split).collect();
    let (whole, next) = run(&every);
    assert_eq!(whole.len(), split * d);
    let bits = |v: &[f32]| v.iter().map(|x| x.to_bits()).collect::<Vec<u32>>();
    for rows in [vec![37, 99], vec![99], vec![]] {
        let (some, next_after_some) = run(&rows);
        let want: Vec<f32> = rows.iter().flat_map(|&r| whole[r * d..(r + 1) * d].iter().copied()).collect();
        assert_eq!(bits(&some), bits(&want), "outputs of rows {rows:?}");
        assert_eq!(bits(&next_after_some), bits(&next), "the next step after outputs of rows {rows:?}");
    }
    // A row past the step, or rows out of order, are refused.
    let mut cache = model.new_mtp_cache();
    let step = cache.step(&model.backend, &ids[1..4]).unwrap();
    assert!(model.mtp_step(0, &step, &hidden[..3 * d], &mut cache.store, 0, &[3]).is_err());
    assert!(model.mtp_step(0, &step, &hidden[..3 * d], &mut cache.store, 0, &[2, 1]).is_err());
}

/// A step that hands back the logits of a few rows runs its last layer whole for those rows
/// only (the others' entries written): their logits, and a later step's, have the bits of a
/// step that computed every row, whether the prompt goes whole or in chunks.
#[test]
fn a_step_runs_its_last_layer_for_the_rows_it_returns() {
    let model = demo_model();
    let v = model.vocab_size();
    // Past the demo's index_topk (64), so the last layer's keys are chosen by its indexer.
    let ids: Vec<u32> = (0..151u32).map(|i| (i * 53 + 7) % 4000 + 50).collect();
    let (prompt, next) = (&ids[..150], &ids[150..]);
    // Prompt chunks with the rows each asks logits of -> those logits, then the next token's.
    let run = |chunks: &[(std::ops::Range<usize>, Vec<usize>)]| -> Vec<u32> {
        let mut cache = model.new_cache();
        let mut bits = Vec::new();
        for (range, rows) in chunks {
            let mut step = cache.step(&model.backend, &prompt[range.clone()]).unwrap();
            step.logits_rows = rows.clone();
            bits.extend(model.step(&step, &mut cache.store, None).unwrap().logits.iter().map(|x| x.to_bits()));
            cache.advance(range.len());
        }
        let mut step = cache.step(&model.backend, next).unwrap();
        step.logits_rows = vec![0];
        bits.extend(model.step(&step, &mut cache.store, None).unwrap().logits.iter().map(|x| x.to_bits()));
        bits
    };
    let whole = run(&[(0..150, (0..150).collect())]);
    let rows_of_whole = |rows: &[usize]| -> Vec<u32> {
        let mut b: Vec<u32> = rows.iter().flat_map(|&r| whole[r * v..(r + 1) * v].iter().copied()).collect();
        b.extend_from_slice(&whole[150 * v..]);
        b
    };
    assert_eq!(run(&[(0..150, vec![99, 149])]), rows_of_whole(&[99, 149]));
    assert_eq!(run(&[(0..150, vec![149])]), rows_of_whole(&[149]));
    assert_eq!(run(&[(0..120, vec![]), (120..150, vec![29])]), rows_of_whole(&[149]));
}

#[test]
fn serves_from_an_empty_directory() {
    let empty = tempfile::tempdir().unwrap();
    let kiln = env!("CARGO_BIN_EXE_kiln");
    let out = Command::new(kiln).arg("verify").current_dir(empty.path()).output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(String::from_utf8_lossy(&out.stdout).contains("(embedded)"));

    let mut cmd = Command::new(kiln);
    cmd.args(["serve", "--bind", "127.0.0.1:0"]).current_dir(empty.path());
    let server = common::serve::Serving::spawn(cmd);
    let base = server.base.clone();
    let body = json!({
        "messages": [{"role": "user", "content": "Return the absolute value of a number."}],
        "max_tokens": 60, "temperature": 0,
    });
    let (status, v): (u16, Value) = common::serve::post_json(&base, "/v1/chat/completions", &body);
    drop(server);
    assert_eq!(status, 200, "{v}");
    let text = v["choices"][0]["message"]["content"].as_str().unwrap();
    // Python, not noise: mostly printable ASCII, and the shapes of Python code.
    let printable = text.chars().filter(|c| c.is_ascii_graphic() || c.is_ascii_whitespace()).count();
    assert!(printable * 10 >= text.chars().count() * 9, "{text:?}");
    let python = ["def ", "return", "self", "if ", "(", ":", "="];
    assert!(python.iter().filter(|k| text.contains(*k)).count() >= 3, "not Python-like: {text:?}");
}

#[test]
fn the_prefill_bench_counts_the_multiply_adds_of_the_forwards_math() {
    // 16 tokens, fewer than the indexer's top-k: every token attends to all its causal keys
    // and no key is scored, so of the indexer only its keys (wk) are projected, for later
    // steps. The last layer runs whole for the last token only, whose logits the step
    // returns; the others only write their entries there (kv_a and wk). The count from the
    // plan's shape alone, weight by weight.
    let model = demo_model();
    let n = 16u64;
    let row = kiln::bench::forward::prefill(&model, kiln::kv::KvFormat::Bf16, n as usize, 1).unwrap();
    let m = &model.shape;
    let (d, h, lat, rope) = (m.hidden_size, m.num_attention_heads, m.kv_lora_rank, m.qk_rope_head_dim);
    let attn = m.q_lora_rank * d
        + h * (m.qk_nope_head_dim + rope) * m.q_lora_rank
        + (lat + rope) * d
        + h * (m.qk_nope_head_dim + m.v_head_dim) * lat
        + d * h * m.v_head_dim;
    let indexer = m.index_head_dim * d;
    let expert = 3 * m.moe_intermediate_size * d;
    let mut want = m.vocab_size * d; // lm_head, for the last token only
    for (i, layer) in model.weights.layers.iter().enumerate() {
        let ffn = if (i as u64) < m.first_k_dense_replace {
            3 * m.intermediate_size * d
        } else {
            // Router, shared expert, and each token's routed experts.
            m.n_routed_experts * d + m.n_shared_experts * expert + m.num_experts_per_tok * expert
        };
        let ix = if layer.indexer.is_some() { indexer } else { 0 };
        if i + 1 == model.weights.layers.len() {
            assert!(layer.indexer.is_some(), "the demo's last layer runs its own indexer");
            want += attn + ix + ffn + n * h * (2 * lat + rope) + (n - 1) * ((lat + rope) * d + ix);
        } else {
            let keys: u64 = (1..=n).sum();
            want += n * (attn + ix + ffn) + keys * h * (2 * lat + rope);
        }
    }
    assert_eq!(row.macs, want as f64);
}
