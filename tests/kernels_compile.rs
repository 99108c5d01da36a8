//! The kernels compile for AMD, and a HIP plan bakes them into the binary.
//!
//! Every kernels/ source is built for gfx90a (Debian's hipcc) and gfx940 (clang-19 with
//! Debian's device libraries). A gfx90a plan builds and `kiln plan` lists its code objects; a
//! gfx950 plan fails the build saying what its toolchain needs. compat.h's CUDA branch is
//! compiled too: clang-19 to PTX for sm_90 against a stand-in runtime header, since nvcc is
//! not installable here. Without those toolchains the tests say they skipped, unless
//! KILN_REQUIRE_HIP=1 (as .ci/run sets), which makes them fail.

mod common;

use std::path::Path;
use std::process::Command;

#[allow(dead_code)]
#[path = "../build_support/kernel_compile.rs"]
mod kernel_compile;

const CI_ARCHES: [&str; 2] = ["gfx90a", "gfx940"];

fn have(tool: &str) -> bool {
    Command::new(tool).arg("--version").output().is_ok()
}

/// False (and a note) when the HIP toolchains are absent and not required.
fn toolchains_present() -> bool {
    let present = have("hipcc") && have("clang-19") && kernel_compile::device_lib_dir().is_some();
    if !present {
        assert!(
            std::env::var("KILN_REQUIRE_HIP").is_err(),
            "KILN_REQUIRE_HIP is set but hipcc, clang-19 or the ROCm device libraries are missing \
             (apt-get install hipcc libamdhip64-dev rocm-device-libs clang-19 lld-19)"
        );
        eprintln!("SKIPPED: no hipcc / clang-19 / ROCm device libraries on this machine");
    }
    present
}

#[test]
fn every_kernel_compiles_for_gfx90a_and_gfx940() {
    if !toolchains_present() {
        return;
    }
    let out = tempfile::tempdir().unwrap();
    let mut failures = Vec::new();
    for source in kiln::plan::all_sources() {
        let symbols = kiln::plan::source_symbols(source);
        for arch in CI_ARCHES {
            let src = common::repo_path("kernels").join(source);
            let obj = out.path().join(format!("{source}.{arch}.co"));
            match kernel_compile::compile(&src, arch, &obj, &symbols) {
                Ok(bytes) => eprintln!("{source} for {arch}: {} bytes", bytes.len()),
                Err(e) => failures.push(e),
            }
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

#[test]
fn a_gfx90a_plan_carries_its_code_objects() {
    if !toolchains_present() {
        return;
    }
    let bin = common::plan_build::build_kiln(&common::repo_path("plan/tiny-hip-gfx90a.toml"), "tiny-hip-gfx90a", &[])
        .unwrap_or_else(|e| panic!("{e}"));
    let out = Command::new(&bin).args(["plan", "--json"]).output().unwrap();
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let objects = v["code_objects"].as_array().unwrap();
    let sources: Vec<&str> = objects.iter().map(|o| o["source"].as_str().unwrap()).collect();
    assert_eq!(sources.len(), kiln::plan::all_sources().len(), "{sources:?}");
    for o in objects {
        assert_eq!(o["arch"], "gfx90a");
        assert!(o["bytes"].as_u64().unwrap() > 1000);
    }
    let text = String::from_utf8(Command::new(&bin).arg("plan").output().unwrap().stdout).unwrap();
    assert!(
        text.contains("code objects in this binary") && text.contains("moe_mxfp4.hip") && text.contains("gfx90a"),
        "{text}"
    );
    // Without the hip feature the binary refuses to serve, saying how to build one that can.
    let out = Command::new(&bin).args(["serve", "--bind", "127.0.0.1:0"]).output().unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("--features hip"));
}

#[test]
fn a_gfx950_plan_says_what_its_toolchain_needs() {
    // Whatever is installed here, Debian's toolchains cannot reach gfx950.
    let err = common::plan_build::build_kiln(
        Path::new(&common::repo_path("plan/glm-5.2-mxfp4-mi355x-tp8.toml")),
        "glm-tp8",
        &[],
    )
    .expect_err("a gfx950 build without ROCm 7 must fail");
    assert!(err.contains("gfx950 (MI355X) needs ROCm 7 (LLVM 20) on the build host"), "{err}");
}

#[test]
fn every_kernel_compiles_through_the_cuda_branch_of_compat_h() {
    if !toolchains_present() {
        return;
    }
    let out = tempfile::tempdir().unwrap();
    let stub = common::repo_path("tests/support/cuda");
    let mut failures = Vec::new();
    for source in kiln::plan::all_sources() {
        let src = common::repo_path("kernels").join(source);
        let ptx = out.path().join(format!("{source}.ptx"));
        let run = Command::new("clang-19")
            .args(["-x", "cuda", "--cuda-device-only", "--cuda-gpu-arch=sm_90", "-nocudainc", "-nocudalib"])
            .args(["-D__CUDACC__", "-Xclang", "-target-feature", "-Xclang", "+ptx80", "-O1", "-S"])
            .arg("-I")
            .arg(&stub)
            .arg("-I")
            .arg(src.parent().unwrap())
            .arg(&src)
            .arg("-o")
            .arg(&ptx)
            .output()
            .unwrap();
        if !run.status.success() {
            failures.push(format!("{source}: {}", String::from_utf8_lossy(&run.stderr)));
            continue;
        }
        let text = std::fs::read_to_string(&ptx).unwrap();
        for sym in kiln::plan::source_symbols(source) {
            if !text.contains(&format!(".entry {sym}(")) {
                failures.push(format!("{source}: no kernel entry {sym} in the PTX"));
            }
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}
