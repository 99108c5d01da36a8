//! `kiln bench decode` / `prefill`: the tables come out for the baked demo model and for a
//! checkpoint directory, the bytes a step reads are counted from the weights it touched, and
//! bad arguments are refused before anything is measured.

mod common;

use std::process::Command;

use kiln::bench::forward::{decode_table, prefill};
use kiln::kv::KvFormat;
use kiln::model::Model;
use kiln::plan;
use kiln::weights::WeightsSource;

fn demo_model() -> Model {
    let plan = plan::check(&common::read_plan_text(common::TINY)).unwrap();
    let src = WeightsSource::Dir(common::repo_path("models/tiny"));
    Model::load(&plan, &src.checkpoint().unwrap()).unwrap()
}

#[test]
fn a_step_reads_what_it_touches() {
    let model = demo_model();
    let rows = decode_table(&model, KvFormat::Bf16, 16, 3, &[1, 4]).unwrap();
    assert_eq!(rows.iter().map(|r| r.width).collect::<Vec<_>>(), vec![1, 4]);
    let w = &model.weights;
    let lm_head = w.lm_head().stored_bytes() as f64;
    // Everything stored: embeddings, every layer, every expert, the MTP layer.
    let file = std::fs::metadata(common::repo_path("models/tiny/model.safetensors")).unwrap().len() as f64;
    for r in &rows {
        assert!(r.step_s > 0.0 && r.tok_s() > 0.0, "{r:?}");
        // At least the lm_head and something of every layer; less than the whole file (top-2 of
        // 16 experts per token, one embedding row, no MTP layer).
        assert!(r.bytes_per_step > lm_head && r.bytes_per_step < file, "{r:?} vs lm_head {lm_head}, file {file}");
    }
    // Four tokens route to more experts than one: more bytes, not four times as many.
    assert!(rows[1].bytes_per_step > rows[0].bytes_per_step);
    assert!(rows[1].bytes_per_step < 4.0 * rows[0].bytes_per_step);
    let p = prefill(&model, KvFormat::Bf16, 24, 1).unwrap();
    assert!(p.prompt == 24 && p.seconds > 0.0 && p.bytes > lm_head, "{p:?}");
}

fn kiln(args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_kiln")).args(args).output().unwrap()
}

#[test]
fn the_commands_print_their_tables() {
    let out = kiln(&["bench", "decode", "--steps", "2", "--widths", "1,2", "--context", "8"]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{text}\n{}", String::from_utf8_lossy(&out.stderr));
    assert!(text.contains("streaming read") && text.contains("| tokens per step |"), "{text}");
    assert_eq!(text.lines().filter(|l| l.starts_with("| 1 |") || l.starts_with("| 2 |")).count(), 2, "{text}");

    let dir = common::repo_path("tests/fixtures/share_mxfp4");
    let out = kiln(&["bench", "prefill", "--weights", dir.to_str().unwrap(), "--prompt", "8", "--reps", "1"]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{text}\n{}", String::from_utf8_lossy(&out.stderr));
    assert!(text.contains("| prompt tokens |") && text.contains("| 8 |"), "{text}");

    // A batch drafts (the demo plan's max_batch of 1 does not apply here) and counts the
    // decoded tokens of all its requests.
    let out = kiln(&["bench", "spec", "--batches", "1,3", "--depths", "0,1", "--tokens", "6"]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{text}\n{}", String::from_utf8_lossy(&out.stderr));
    let rows: Vec<Vec<&str>> = text
        .lines()
        .filter(|l| l.starts_with("| 1 |") || l.starts_with("| 3 |"))
        .map(|l| l.split('|').collect())
        .collect();
    assert_eq!(rows.len(), 4, "{text}");
    let batched_depth1 = rows.iter().find(|r| r[1].trim() == "3" && r[2].trim() == "1").expect("batch 3, depth 1");
    let acceptance: f64 = batched_depth1[5].trim().parse().unwrap();
    assert!(acceptance > 1.0, "a batch of 3 drafted nothing:\n{text}");
}

#[test]
fn bad_arguments_are_named_and_refused() {
    for (args, names) in [
        (vec!["bench", "decode", "--widths", "1,0"], "--widths"),
        (vec!["bench", "decode", "--context", "0"], "--context"),
        (vec!["bench", "decode", "--context", "100000"], "max_position_embeddings"),
        (vec!["bench", "prefill", "--prompt", "0"], "--prompt"),
        (vec!["bench", "spec", "--batches", "0"], "--batches"),
        (vec!["bench", "prefill", "--weights", "/nonexistent/model"], "/nonexistent/model"),
    ] {
        let out = kiln(&args);
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{args:?} succeeded");
        assert!(err.contains(names), "{args:?}: {err}");
    }
}
