//! GPU builds of the appliance. A hip appliance built with `--features emulated-hip` runs its
//! whole forward through the GPU backend on the emulated HIP device (its kernel map choosing
//! the variants), for the CLI and for serving: the demo model's logits match the CPU
//! appliance's, seeded generation gives the same tokens, and a served streaming request the
//! same text. Without the feature, the same plan refuses to start rather than run on the CPU.
//! `kiln compare` checks a checkpoint the binary was not built for; a `cuda` build without an
//! NVIDIA GPU names what is missing.

mod common;

use std::process::Command;

use common::serve::{Serving, post, sse_events};

const HIP_PLAN: &str = "plan/tiny-hip-gfx90a.toml";

/// The tiny hip plan baked with the emulated device (or None when this machine cannot build
/// it and is not required to).
fn emulated_binary() -> Option<std::path::PathBuf> {
    match common::plan_build::build_kiln(&common::repo_path(HIP_PLAN), "tiny-hip-emulated", &["emulated-hip"]) {
        Ok(bin) => Some(bin),
        Err(e) => {
            assert!(std::env::var_os("KILN_REQUIRE_EMULATED").is_none(), "cannot build the emulated appliance: {e}");
            eprintln!("SKIPPED: {e}");
            None
        }
    }
}

fn stdout_of(bin: &std::path::Path, args: &[&str]) -> String {
    let out = Command::new(bin).args(args).output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8(out.stdout).unwrap()
}

const TOKENS: &str = "1,5,9,33,2,7,100,200,300,4095";

#[test]
fn the_emulated_hip_appliance_matches_the_cpu_appliance() {
    let Some(emu) = emulated_binary() else { return };
    let cpu = std::path::Path::new(env!("CARGO_BIN_EXE_kiln"));

    // Logits through the GPU backend on the emulated device, against the CPU's.
    let logits = |bin: &std::path::Path| -> Vec<f32> {
        let v: serde_json::Value = serde_json::from_str(&stdout_of(bin, &["logits", "--tokens", TOKENS])).unwrap();
        v["logits"]
            .as_array()
            .unwrap()
            .iter()
            .flat_map(|r| r.as_array().unwrap().iter().map(|x| x.as_f64().unwrap() as f32))
            .collect()
    };
    let (a, b) = (logits(&emu), logits(cpu));
    assert_eq!(a.len(), b.len());
    let (d, tol) = common::fixture::max_diff(&a, &b);
    assert!(d <= tol, "emulated GPU vs CPU max |dlogit| = {d:e} > {tol:e}");

    let generate = |bin: &std::path::Path| {
        stdout_of(
            bin,
            &["generate", "--tokens", TOKENS, "--max-tokens", "24", "--json", "--temperature", "0.8", "--seed", "5"],
        )
    };
    assert_eq!(generate(&emu), generate(cpu), "seeded generation");

    // A served streaming chat request, seeded: the same text.
    let body = serde_json::json!({
        "messages": [{"role": "user", "content": "Split a string on commas."}],
        "max_tokens": 32, "temperature": 0.7, "seed": 9, "stream": true,
    })
    .to_string();
    let text = |bin: &std::path::Path| {
        let mut cmd = Command::new(bin);
        cmd.args(["serve", "--bind", "127.0.0.1:0"]);
        let s = Serving::spawn(cmd);
        let (status, _, out) = post(&s.base, "/v1/chat/completions", &body);
        assert_eq!(status, 200, "{out}\n{}", s.log_text());
        let mut text = String::new();
        for e in sse_events(&out).iter().filter(|e| *e != "[DONE]") {
            let v: serde_json::Value = serde_json::from_str(e).unwrap();
            text.push_str(v["choices"][0]["delta"]["content"].as_str().unwrap_or(""));
        }
        (text, s.log_text())
    };
    let (emu_text, emu_log) = text(&emu);
    let (cpu_text, _) = text(cpu);
    assert!(emu_log.contains("the forward runs on the GPU backend on emulated HIP device"), "{emu_log}");
    assert!(!emu_text.is_empty());
    assert_eq!(emu_text, cpu_text, "streamed text");
}

#[test]
fn a_hip_appliance_without_its_gpu_refuses_to_start() {
    // Built with the ROCm runtime where the build host has it; without a visible device it
    // must exit 69 naming the problem, never serve from the CPU.
    let bin = match common::plan_build::build_kiln(&common::repo_path(HIP_PLAN), "tiny-hip", &["hip"]) {
        Ok(bin) => bin,
        Err(e) => {
            assert!(std::env::var_os("KILN_REQUIRE_HIP").is_none(), "cannot build the hip appliance: {e}");
            eprintln!("SKIPPED: {e}");
            return;
        }
    };
    if std::path::Path::new("/dev/kfd").exists() {
        eprintln!("SKIPPED: this machine has an AMD GPU");
        return;
    }
    let out = Command::new(&bin).args(["serve", "--bind", "127.0.0.1:0"]).output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(69), "{stderr}");
    assert!(stderr.contains("no GPU to run on"), "{stderr}");
    assert!(!stderr.contains("serving"), "{stderr}");
    let out = Command::new(&bin).args(["logits", "--tokens", "1,2"]).output().unwrap();
    assert_eq!(out.status.code(), Some(69), "{}", String::from_utf8_lossy(&out.stderr));
}

#[test]
fn kiln_compare_checks_any_checkpoint_on_both_backends() {
    let Some(emu) = emulated_binary() else { return };
    let fixture = common::repo_path("tests/fixtures/share_mxfp4");
    let fixture = fixture.to_str().unwrap();
    // A checkpoint the binary was not built for, its plan derived from it, against the CPU
    // and HF's logits beside it.
    let report = stdout_of(&emu, &["compare", "--weights", fixture, "--greedy", "6"]);
    assert!(report.contains("vs HF: GPU"), "{report}");
    assert!(report.contains("greedy 6 tokens: same"), "{report}");
    assert!(report.trim_end().ends_with("PASS"), "{report}");

    let out = Command::new(&emu).args(["compare", "--weights", fixture, "--tokens", "1,99999"]).output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("--tokens: id 99999 is past the vocabulary"), "{stderr}");

    // A binary that drives no GPU has nothing to compare.
    let cpu = std::path::Path::new(env!("CARGO_BIN_EXE_kiln"));
    let out = Command::new(cpu).args(["compare", "--weights", fixture]).output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(69), "{stderr}");
    assert!(stderr.contains("drives no GPU"), "{stderr}");
}

#[test]
fn a_cuda_build_without_an_nvidia_gpu_says_what_is_missing() {
    // The NVIDIA validation device loads libcuda at start-up and links nothing, so it builds
    // on any machine; here it must stop with exit 69 naming what is missing.
    let bin = common::plan_build::build_kiln(&common::repo_path("plan/tiny.toml"), "tiny-cuda", &["cuda"])
        .unwrap_or_else(|e| panic!("a cuda build needs no CUDA toolkit, yet: {e}"));
    if std::path::Path::new("/dev/nvidiactl").exists() {
        eprintln!("SKIPPED: this machine has an NVIDIA GPU");
        return;
    }
    let run = |modules: Option<&std::path::Path>, args: &[&str]| {
        let mut cmd = Command::new(&bin);
        cmd.args(args).env_remove("KILN_CUDA_MODULES");
        if let Some(m) = modules {
            cmd.env("KILN_CUDA_MODULES", m);
        }
        let out = cmd.output().unwrap();
        (out.status.code(), String::from_utf8_lossy(&out.stderr).into_owned())
    };
    let (code, stderr) = run(None, &["ops", "check"]);
    assert_eq!(code, Some(69), "{stderr}");
    assert!(stderr.contains("no kernels to load"), "{stderr}");

    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("norm.cubin"), b"not a cubin").unwrap();
    for args in [&["ops", "check"][..], &["serve", "--bind", "127.0.0.1:0"], &["logits", "--tokens", "1,2"]] {
        let (code, stderr) = run(Some(dir.path()), args);
        assert_eq!(code, Some(69), "{args:?}: {stderr}");
        assert!(
            stderr.contains("cannot load the CUDA driver") || stderr.contains("no NVIDIA GPU"),
            "{args:?}: {stderr}"
        );
        assert!(!stderr.contains("serving"), "{stderr}");
    }
}
