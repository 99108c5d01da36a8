//! `kiln plan init --from-hf DIR` + `KILN_PLAN=... cargo build` is all it takes to run a
//! small GLM-DSA checkpoint: the built binary's `kiln logits` and `kiln generate` reproduce
//! HF's numbers on a fixture, and `kiln verify` passes.

mod common;

use std::process::Command;

use common::fixture::*;

fn run(cmd: &mut Command) -> String {
    let out = cmd.output().expect("command runs");
    assert!(out.status.success(), "{cmd:?} failed:\n{}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8(out.stdout).unwrap()
}

#[test]
fn a_fixture_checkpoint_runs_from_its_own_plan() {
    let name = "share_mxfp4";
    let dir = fixture_dir(name);
    let tmp = tempfile::tempdir().unwrap();
    let plan = tmp.path().join("plan.toml");
    run(Command::new(env!("CARGO_BIN_EXE_kiln")).args(["plan", "init", "--from-hf"]).arg(&dir).arg("-o").arg(&plan));

    let kiln = common::plan_build::build_kiln(&plan, name, &[]).unwrap_or_else(|e| panic!("{e}"));

    let report = run(Command::new(&kiln).args(["plan", "--json"]));
    let report: serde_json::Value = serde_json::from_str(&report).unwrap();
    assert_eq!(report["name"], name);
    assert!(run(Command::new(&kiln).arg("verify")).contains("tensors match plan"));

    let golden = Golden::load(name);
    let ids = golden.tokens("input_ids");
    let csv = ids.iter().map(u32::to_string).collect::<Vec<_>>().join(",");
    let out: serde_json::Value =
        serde_json::from_str(&run(Command::new(&kiln).args(["logits", "--tokens", &csv]))).unwrap();
    let got: Vec<f32> = out["logits"]
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|r| r.as_array().unwrap().iter().map(|v| v.as_f64().unwrap() as f32))
        .collect();
    let (d, tol) = max_diff(&got, &golden.f32("logits").1);
    assert!(d <= tol, "kiln logits: max |dlogit| {d:e} > {tol:e}");

    let prompt = golden.tokens("greedy_prompt").iter().map(u32::to_string).collect::<Vec<_>>().join(",");
    let want = golden.tokens("greedy_tokens");
    let out = run(Command::new(&kiln).args([
        "generate",
        "--tokens",
        &prompt,
        "--max-tokens",
        &want.len().to_string(),
        "--json",
    ]));
    let out: serde_json::Value = serde_json::from_str(&out).unwrap();
    let got: Vec<u32> = out["tokens"].as_array().unwrap().iter().map(|v| v.as_u64().unwrap() as u32).collect();
    assert_eq!(got, want);
}
