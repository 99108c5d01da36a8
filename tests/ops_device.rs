//! Every declared GPU op on a device against the CPU backend (src/ops): on the emulated HIP
//! device on every machine (HIP-CPU: the same kernel sources, compiled by g++, executed by
//! fibers on the CPU), and on an AMD GPU where one is present. A kernel with a planted
//! off-by-one must fail the same check.
//!
//! Without g++, TBB or HIP-CPU the emulated tests say SKIPPED and what to install, unless
//! KILN_REQUIRE_EMULATED=1 (as .ci/run sets), which makes them fail.

mod common;

use std::path::Path;

use common::emulated::{emulated_gpu, emulated_library};
use kiln::ops::check::{CheckRow, check, table};

fn failures(rows: &[CheckRow]) -> Vec<&CheckRow> {
    rows.iter().filter(|r| !r.passed()).collect()
}

#[test]
fn every_op_matches_the_cpu_on_the_emulated_device() {
    let Some(lib) = emulated_library(&common::repo_path("kernels"), "kernels") else { return };
    let gpu = emulated_gpu(&lib);
    let rows = check(&gpu, None);
    eprintln!("{}", table(&rows));
    assert!(failures(&rows).is_empty(), "{}", table(&rows));
}

#[test]
fn every_kernel_variant_is_declared_and_checked_at_two_shapes() {
    for v in kiln::plan::REGISTRY {
        let d =
            kiln::ops::decl(v.op).unwrap_or_else(|| panic!("kernel {} (op {}) has no op declaration", v.name, v.op));
        let cases = (d.checks)(v);
        assert!(cases.len() >= 2, "{}: {} check shapes", v.name, cases.len());
    }
    for d in kiln::ops::all() {
        assert!(kiln::ops::variants(d.family).next().is_some(), "declaration {} has no kernel", d.family);
    }
}

/// A copy of kernels/ with one edit applied.
fn planted(dir: &Path, file: &str, from: &str, to: &str) {
    std::fs::create_dir_all(dir).unwrap();
    for e in std::fs::read_dir(common::repo_path("kernels")).unwrap() {
        let e = e.unwrap();
        if e.file_type().unwrap().is_file() {
            std::fs::copy(e.path(), dir.join(e.file_name())).unwrap();
        }
    }
    let path = dir.join(file);
    let text = std::fs::read_to_string(&path).unwrap();
    assert!(text.contains(from), "{file} no longer contains {from:?}");
    std::fs::write(&path, text.replacen(from, to, 1)).unwrap();
}

#[test]
fn a_planted_off_by_one_fails_the_check() {
    // The attention kernel's score skips the last latent dimension.
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join("planted-kernels");
    planted(&dir, "mla_decode.hip", "for (int i = 0; i < r; ++i) dot +=", "for (int i = 0; i < r - 1; ++i) dot +=");
    let Some(lib) = emulated_library(&dir, "planted") else { return };
    let gpu = emulated_gpu(&lib);
    let decls = [kiln::ops::decl("mla.decode.bf16").unwrap(), kiln::ops::decl("rmsnorm").unwrap()];
    let rows = check(&gpu, Some(&decls));
    eprintln!("{}", table(&rows));
    let failed = failures(&rows);
    assert!(!failed.is_empty(), "the planted bug went unnoticed:\n{}", table(&rows));
    assert!(failed.iter().all(|r| r.family == "mla.decode.bf16"), "{}", table(&rows));
    assert!(rows.iter().any(|r| r.family == "rmsnorm" && r.passed()));
}

/// The AMD GPU's arch (e.g. gfx942) when this machine has one the ROCm runtime sees.
fn amd_gpu_arch() -> Option<String> {
    if !Path::new("/dev/kfd").exists() {
        return None;
    }
    let out = std::process::Command::new("rocm_agent_enumerator").output().ok()?;
    String::from_utf8(out.stdout)
        .ok()?
        .lines()
        .map(str::trim)
        .find(|l| l.starts_with("gfx") && *l != "gfx000")
        .map(String::from)
}

#[test]
fn every_op_matches_the_cpu_on_an_amd_gpu_when_present() {
    let Some(arch) = amd_gpu_arch() else {
        eprintln!("SKIPPED: no AMD GPU here (/dev/kfd and rocm_agent_enumerator)");
        return;
    };
    // The demo model's HIP plan for this GPU, once per KV format, every kernel of its map
    // checked by `kiln ops check` in a binary built with the ROCm runtime.
    for kv in ["bf16", "fp8_e4m3"] {
        let text = common::edited(
            "plan/tiny-hip-gfx90a.toml",
            &[
                ("appliance.arch", common::string(&arch)),
                ("kv_cache.dtype", common::string(kv)),
                ("weights.embed", Some(toml::Value::Boolean(false))),
                ("kernels.entries", None),
            ],
        );
        let mut plan = kiln::plan::parse(&text).unwrap();
        plan.kernels.entries = kiln::plan::default_entries(&plan);
        let path = Path::new(env!("CARGO_TARGET_TMPDIR")).join(format!("gpu-{arch}-{kv}.toml"));
        std::fs::write(&path, toml::to_string(&plan).unwrap()).unwrap();
        let bin =
            common::plan_build::build_kiln(&path, &format!("gpu-{kv}"), &["hip"]).unwrap_or_else(|e| panic!("{e}"));
        let out = std::process::Command::new(bin).args(["ops", "check"]).output().unwrap();
        let table = String::from_utf8_lossy(&out.stdout);
        eprintln!("{arch}, {kv} KV:\n{table}");
        assert!(out.status.success(), "{table}\n{}", String::from_utf8_lossy(&out.stderr));
    }
}
