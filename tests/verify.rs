//! `verify`: a checkpoint is checked against the plan before any compute, and every planted
//! mismatch is reported at once, each naming its tensor. Broken files are clear errors.

mod common;

use std::collections::BTreeMap;
use std::path::Path;

use common::fixture::*;
use kiln::model::Model;
use kiln::plan::Problem;
use kiln::plan::WeightFormat;
use kiln::weights::{Checkpoint, verify};
use safetensors::tensor::TensorView;
use safetensors::{Dtype, SafeTensors};

type Tensors = BTreeMap<String, (Dtype, Vec<usize>, Vec<u8>)>;

fn read_tensors(dir: &Path) -> Tensors {
    let bytes = std::fs::read(dir.join("model.safetensors")).unwrap();
    let st = SafeTensors::deserialize(&bytes).unwrap();
    st.tensors().into_iter().map(|(n, v)| (n, (v.dtype(), v.shape().to_vec(), v.data().to_vec()))).collect()
}

fn write_dir(tensors: &Tensors, from: &str) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    std::fs::copy(fixture_dir(from).join("config.json"), dir.path().join("config.json")).unwrap();
    let views: Vec<(String, TensorView)> =
        tensors.iter().map(|(n, (d, s, b))| (n.clone(), TensorView::new(*d, s.clone(), b).unwrap())).collect();
    std::fs::write(dir.path().join("model.safetensors"), safetensors::serialize(views, None).unwrap()).unwrap();
    dir
}

fn problems_in(plan: &kiln::plan::Plan, dir: &Path) -> Vec<Problem> {
    verify(plan, &Checkpoint::open(dir).unwrap())
}

#[track_caller]
fn assert_named(problems: &[Problem], tensor: &str, needle: &str) {
    assert!(
        problems.iter().any(|p| p.key == tensor && p.message.contains(needle)),
        "no problem for {tensor} containing {needle:?} in:\n{}",
        problems.iter().map(|p| format!("  {}\n", p.message)).collect::<String>()
    );
}

#[test]
fn fixtures_verify_clean() {
    for name in FIXTURES {
        let p = problems_in(&fixture_plan(name), &fixture_dir(name));
        assert!(p.is_empty(), "{name}: {p:?}");
    }
}

#[test]
fn mtp_shared_expert_bf16_while_plan_says_mxfp4() {
    // The public GLM-5.2 bring-up crash: the checkpoint has the MTP shared expert in bf16.
    let mut plan = fixture_plan("share_mxfp4");
    plan.weights.quant.mtp.as_mut().unwrap().shared_experts = WeightFormat::Mxfp4;
    let p = problems_in(&plan, &fixture_dir("share_mxfp4"));
    for proj in ["gate_proj", "up_proj", "down_proj"] {
        let t = format!("model.layers.4.mlp.shared_experts.{proj}.weight");
        assert_named(&p, &t, "but weights.quant.mtp.shared_experts = mxfp4 expects MXFP4");
    }
    assert_eq!(p.len(), 3, "{p:?}");
    // And the model refuses to load, before any compute, with the same names.
    let err = Model::load(&plan, &Checkpoint::open(&fixture_dir("share_mxfp4")).unwrap()).err().unwrap();
    assert!(err.to_string().contains("model.layers.4.mlp.shared_experts.gate_proj.weight is BF16"), "{err}");
}

#[test]
fn mtp_shared_expert_mxfp4_while_plan_says_bf16() {
    // The reverse: the checkpoint quantized the MTP shared expert, the plan says bf16.
    let mut tensors = read_tensors(&fixture_dir("share_mxfp4"));
    for proj in ["gate_proj", "up_proj", "down_proj"] {
        let name = format!("model.layers.4.mlp.shared_experts.{proj}.weight");
        let (_, shape, _) = tensors.remove(&name).unwrap();
        let (r, c) = (shape[0], shape[1]);
        tensors.insert(name.clone(), (Dtype::U8, vec![r, c / 2], vec![0x21; r * c / 2]));
        tensors.insert(format!("{name}_scale"), (Dtype::U8, vec![r, c / 32], vec![127; r * c / 32]));
    }
    let dir = write_dir(&tensors, "share_mxfp4");
    let p = problems_in(&fixture_plan("share_mxfp4"), dir.path());
    assert_named(
        &p,
        "model.layers.4.mlp.shared_experts.up_proj.weight",
        "is MXFP4 (U8 + model.layers.4.mlp.shared_experts.up_proj.weight_scale) but weights.quant.mtp.shared_experts = bf16 expects BF16 [32, 64]",
    );
    assert_eq!(p.len(), 3, "{p:?}");
}

#[test]
fn every_planted_mismatch_is_reported_at_once() {
    let mut t = read_tensors(&fixture_dir("share_mxfp4"));
    // 1. a missing tensor
    t.remove("model.layers.1.self_attn.kv_b_proj.weight").unwrap();
    // 2. a wrong shape
    let o = t.get_mut("model.layers.2.self_attn.o_proj.weight").unwrap();
    o.1 = vec![32, 128];
    // 3. a wrong dtype (the correction bias is f32 in every release)
    let (_, shape, bytes) = t.remove("model.layers.3.mlp.gate.e_score_correction_bias").unwrap();
    let half: Vec<u8> = bytes.chunks(4).flat_map(|c| [c[2], c[3]]).collect();
    t.insert("model.layers.3.mlp.gate.e_score_correction_bias".into(), (Dtype::BF16, shape, half));
    // 4. an MXFP4 expert that lost its scale
    t.remove("model.layers.2.mlp.experts.5.down_proj.weight_scale").unwrap();
    // 5. an unexpected tensor
    t.insert("model.layers.9.mlp.extra.weight".into(), (Dtype::BF16, vec![2], vec![0; 4]));
    // 6. a missing MTP tensor
    t.remove("model.layers.4.eh_proj.weight").unwrap();

    let dir = write_dir(&t, "share_mxfp4");
    let p = problems_in(&fixture_plan("share_mxfp4"), dir.path());
    assert_named(
        &p,
        "model.layers.1.self_attn.kv_b_proj.weight",
        "missing tensor model.layers.1.self_attn.kv_b_proj.weight",
    );
    assert_named(
        &p,
        "model.layers.2.self_attn.o_proj.weight",
        "is BF16 [32, 128] but weights.quant.attention = bf16 expects BF16 [64, 64]",
    );
    assert_named(
        &p,
        "model.layers.3.mlp.gate.e_score_correction_bias",
        "is BF16 [8] but the plan's model shape expects F32 [8]",
    );
    assert_named(
        &p,
        "model.layers.2.mlp.experts.5.down_proj.weight",
        "is U8 [64, 16] but weights.quant.routed_experts = mxfp4 expects MXFP4",
    );
    assert_named(&p, "model.layers.9.mlp.extra.weight", "unexpected tensor");
    assert_named(&p, "model.layers.4.eh_proj.weight", "missing tensor");
    assert_eq!(p.len(), 6, "{p:#?}");
}

#[test]
fn config_json_must_match_the_plan() {
    let mut plan = fixture_plan("share_mxfp4");
    plan.model.rope_theta = 10000.0;
    let p = problems_in(&plan, &fixture_dir("share_mxfp4"));
    assert_named(&p, "config.json", "config.json rope_theta = 8000000.0 but the plan has model.rope_theta = 10000.0");
}

#[test]
fn truncated_file_is_a_clear_error() {
    let dir = write_dir(&read_tensors(&fixture_dir("share_mxfp4")), "share_mxfp4");
    let file = dir.path().join("model.safetensors");
    let len = std::fs::metadata(&file).unwrap().len();
    std::fs::OpenOptions::new().write(true).open(&file).unwrap().set_len(len - 1000).unwrap();
    let err = Checkpoint::open(dir.path()).err().expect("truncated file refused").to_string();
    assert!(err.contains("model.safetensors") && err.contains("bad safetensors header"), "{err}");
}

#[test]
fn header_pointing_past_the_end_is_a_clear_error() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::copy(fixture_dir("share_mxfp4").join("config.json"), dir.path().join("config.json")).unwrap();
    // A header whose only tensor claims 64 bytes of a file that has 8.
    let header = br#"{"model.norm.weight":{"dtype":"BF16","shape":[32],"data_offsets":[0,64]}}"#;
    let mut bytes = (header.len() as u64).to_le_bytes().to_vec();
    bytes.extend_from_slice(header);
    bytes.extend_from_slice(&[0; 8]);
    std::fs::write(dir.path().join("model.safetensors"), &bytes).unwrap();
    let err = Checkpoint::open(dir.path()).err().expect("bad header refused").to_string();
    assert!(err.contains("model.safetensors") && err.contains("bad safetensors header"), "{err}");
    // A header length beyond the file.
    let mut bytes = 1_000_000u64.to_le_bytes().to_vec();
    bytes.extend_from_slice(b"{}");
    std::fs::write(dir.path().join("model.safetensors"), &bytes).unwrap();
    let err = Checkpoint::open(dir.path()).err().expect("bad header length refused").to_string();
    assert!(err.contains("bad safetensors header"), "{err}");
}

#[test]
fn shards_that_disagree_with_their_index_are_named() {
    let dir = write_dir(&read_tensors(&fixture_dir("share_mxfp4")), "share_mxfp4");
    let index = serde_json::json!({"weight_map": {"model.norm.weight": "model-2.safetensors"}});
    std::fs::write(dir.path().join("model.safetensors.index.json"), index.to_string()).unwrap();
    let err = Checkpoint::open(dir.path()).err().expect("index refused").to_string();
    assert!(err.contains("model-2.safetensors"), "{err}");
}
