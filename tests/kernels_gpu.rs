//! Every GPU kernel against its CPU twin, where a GPU is present: `kiln kernels cases` writes
//! inputs and the CPU backend's outputs, kernels/harness/harness.cpp runs the kernels (HIP on
//! AMD, nvcc + compat.h on NVIDIA), compares under each case's tolerance and prints time and
//! bandwidth. On a machine with no GPU it says SKIPPED.

mod common;

use std::path::Path;
use std::process::Command;

fn ok(cmd: &mut Command) -> bool {
    cmd.output().map(|o| o.status.success()).unwrap_or(false)
}

/// The harness built for this machine's GPU, if it has one and the toolchain for it.
fn build_harness(dir: &Path) -> Option<std::path::PathBuf> {
    let src = common::repo_path("kernels/harness/harness.cpp");
    let bin = dir.join("harness");
    if Path::new("/dev/kfd").exists() && ok(Command::new("hipcc").arg("--version")) {
        let arch = String::from_utf8(Command::new("rocm_agent_enumerator").output().ok()?.stdout)
            .ok()?
            .lines()
            .find(|l| l.starts_with("gfx") && *l != "gfx000")?
            .trim()
            .to_string();
        let built = ok(Command::new("hipcc")
            .arg(format!("--offload-arch={arch}"))
            .args(["-O2", "-x", "hip"])
            .arg(&src)
            .arg("-o")
            .arg(&bin));
        assert!(built, "hipcc could not build the harness for {arch}");
        return Some(bin);
    }
    if ok(Command::new("nvidia-smi").arg("-L")) && ok(Command::new("nvcc").arg("--version")) {
        let built = ok(Command::new("nvcc").args(["-O2", "-arch=native", "-x", "cu"]).arg(&src).arg("-o").arg(&bin));
        assert!(built, "nvcc could not build the harness");
        return Some(bin);
    }
    None
}

#[test]
fn gpu_kernels_match_their_cpu_twins() {
    let dir = tempfile::tempdir().unwrap();
    let Some(harness) = build_harness(dir.path()) else {
        eprintln!("SKIPPED: no GPU (or no hipcc / nvcc for it) on this machine");
        return;
    };
    let cases = dir.path().join("cases");
    kiln::kernel_cases::write_cases(&cases).unwrap();
    let out = Command::new(harness).arg(&cases).output().unwrap();
    let table = String::from_utf8_lossy(&out.stdout);
    eprintln!("{table}");
    assert!(out.status.success(), "{table}\n{}", String::from_utf8_lossy(&out.stderr));
}
