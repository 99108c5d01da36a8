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
