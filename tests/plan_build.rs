//! The build itself refuses a bad plan: `KILN_PLAN=<bad plan> cargo check` fails and lists
//! every problem with its key path.

mod common;

use std::process::Command;

use common::*;

/// `KILN_PLAN=plan cargo check --lib`: the build script's verdict.
fn check_with_plan(plan: &std::path::Path) -> (std::process::Output, String) {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let target_dir = std::path::Path::new(env!("CARGO_TARGET_TMPDIR")).join("bad-plan-build");
    let out = Command::new(cargo)
        .args(["check", "--frozen", "--lib", "--quiet"])
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .env("KILN_PLAN", plan)
        .env("CARGO_TARGET_DIR", &target_dir)
        .output()
        .expect("cargo runs");
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    (out, stderr)
}

#[test]
fn bad_plan_fails_the_build_listing_every_problem() {
    let dir = tempfile::tempdir().unwrap();
    let bad = dir.path().join("bad.toml");
    let text =
        edited(GLM_TP4DP2, &[("parallel.tp", int(3)), ("kv_cache.page_size", int(48)), ("speculative.depth", int(0))]);
    std::fs::write(&bad, text).unwrap();

    let (out, stderr) = check_with_plan(&bad);
    assert!(!out.status.success(), "the build accepted a bad plan:\n{stderr}");
    for needle in [
        "kiln plan rejected",
        "parallel.tp = 3 does not divide model.num_attention_heads = 64",
        "parallel.tp x parallel.dp = 3 x 2 = 6 must equal device.count = 8",
        "kv_cache.page_size = 48 must be a power of two",
        "speculative.depth = 0 drafts nothing",
    ] {
        assert!(stderr.contains(needle), "missing {needle:?} in:\n{stderr}");
    }
}

#[test]
fn embedded_weights_that_differ_from_the_pin_fail_the_build() {
    let dir = tempfile::tempdir().unwrap();
    let bad = dir.path().join("tiny-stale-pin.toml");
    // A pin from other weights: the first file's digest no longer matches models/tiny.
    let text = read_plan_text(TINY);
    let good = text.split("blake3 = \"").nth(1).unwrap().split('"').next().unwrap().to_string();
    let stale = format!("{}0", &good[..63]);
    assert_ne!(good, stale);
    std::fs::write(&bad, text.replacen(&good, &stale, 1)).unwrap();

    let (out, stderr) = check_with_plan(&bad);
    assert!(!out.status.success(), "the build accepted a stale pin:\n{stderr}");
    assert!(stderr.contains("the embedded weights differ from weights.pin"), "{stderr}");
    assert!(stderr.contains(&format!("model.safetensors is 10905104 bytes with blake3 {good}")), "{stderr}");
}

/// `kiln plan init --target hip --arch gfx90a --tp 1` writes a plan that validates and builds
/// (every kernel of its map compiled for gfx90a) for every golden fixture: MXFP4 and bf16
/// experts, 3, 4 and 5 heads; and f32 experts, which no fixture stores, through the same plan
/// with that one rule changed.
#[test]
fn hip_plans_from_plan_init_build_for_every_fixture() {
    if std::process::Command::new("hipcc").arg("--version").output().is_err()
        && std::env::var_os("KILN_REQUIRE_HIP").is_none()
    {
        eprintln!("SKIPPED: no hipcc (apt-get install hipcc libamdhip64-dev rocm-device-libs)");
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let mut plans = Vec::new();
    for name in ["share_mxfp4", "full_bf16_groups", "share_mxfp4_odd", "chat_tiny"] {
        let opts = kiln::plan_init::InitOptions {
            target: kiln::plan::Target::Hip,
            arch: Some("gfx90a".into()),
            tp: Some(1),
            dp: None,
        };
        let init = kiln::plan_init::init_from_hf(&common::fixture::fixture_dir(name), &opts).unwrap();
        plans.push((name.to_string(), init.plan));
    }
    let mut f32_experts = plans[1].1.clone();
    f32_experts.weights.quant.routed_experts = kiln::plan::WeightFormat::F32;
    f32_experts.weights.quant.shared_experts = kiln::plan::WeightFormat::F32;
    if let Some(m) = f32_experts.weights.quant.mtp.as_mut() {
        m.routed_experts = kiln::plan::WeightFormat::F32;
        m.shared_experts = kiln::plan::WeightFormat::F32;
    }
    f32_experts.kernels.entries = kiln::plan::default_entries(&f32_experts);
    plans.push(("f32_experts".into(), f32_experts));
    for (name, plan) in &plans {
        let problems = kiln::plan::validate(plan);
        assert!(problems.is_empty(), "{name}: {}", kiln::plan::render_problems(kiln::plan::IN_PLAN, &problems));
        let path = dir.path().join(format!("{name}.toml"));
        std::fs::write(&path, toml::to_string(plan).unwrap()).unwrap();
        let (out, stderr) = check_with_plan(&path);
        assert!(out.status.success(), "{name}: the plan init wrote does not build:\n{stderr}");
    }
}
