//! The build itself refuses a bad plan: `KILN_PLAN=<bad plan> cargo check` fails and lists
//! every problem with its key path.

mod common;

use std::process::Command;

use common::*;

#[test]
fn bad_plan_fails_the_build_listing_every_problem() {
    let dir = tempfile::tempdir().unwrap();
    let bad = dir.path().join("bad.toml");
    let text =
        edited(GLM_TP4DP2, &[("parallel.tp", int(3)), ("kv_cache.page_size", int(48)), ("speculative.depth", int(0))]);
    std::fs::write(&bad, text).unwrap();

    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let target_dir = std::path::Path::new(env!("CARGO_TARGET_TMPDIR")).join("bad-plan-build");
    let out = Command::new(cargo)
        .args(["check", "--frozen", "--lib", "--quiet"])
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .env("KILN_PLAN", &bad)
        .env("CARGO_TARGET_DIR", &target_dir)
        .output()
        .expect("cargo runs");
    let stderr = String::from_utf8_lossy(&out.stderr);
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
