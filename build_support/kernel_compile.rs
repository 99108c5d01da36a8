//! Compiling a kernels/ source to a code object for one GPU arch. Used by build.rs (the
//! plan's kernels) and by tests/kernels_compile.rs (every kernel, for the CI arches).
//!
//! AMD: Debian's hipcc (HIP 5.2) reaches gfx90a; clang-19 with Debian's device libraries
//! reaches gfx940; gfx942 and gfx950 need ROCm 7 (LLVM 20) on the build host. NVIDIA: nvcc.

use std::path::{Path, PathBuf};
use std::process::Command;

/// Where ockl.bc and the other AMD device libraries live, if anywhere known.
pub fn device_lib_dir() -> Option<PathBuf> {
    let mut candidates = vec![
        PathBuf::from("/usr/lib/x86_64-linux-gnu/amdgcn/bitcode"),
        PathBuf::from("/opt/rocm/amdgcn/bitcode"),
        PathBuf::from("/opt/rocm/lib/llvm/lib/clang/amdgcn/bitcode"),
    ];
    if let Ok(p) = std::env::var("ROCM_PATH") {
        candidates.insert(0, Path::new(&p).join("amdgcn/bitcode"));
    }
    candidates.into_iter().find(|d| d.join("ockl.bc").is_file())
}

fn run(cmd: &mut Command) -> Result<(), String> {
    let shown = format!("{cmd:?}");
    match cmd.output() {
        Err(e) => Err(format!("{shown}: {e}")),
        Ok(o) if o.status.success() => Ok(()),
        Ok(o) => {
            let err = String::from_utf8_lossy(&o.stderr);
            let tail: Vec<&str> = err.lines().filter(|l| l.contains("error")).take(6).collect();
            Err(format!("{shown}: {}", if tail.is_empty() { err.trim().to_string() } else { tail.join(" | ") }))
        }
    }
}

/// The toolchains to try for `arch`, in order: (name, command).
fn attempts(source: &Path, arch: &str, out: &Path, include: &Path) -> Vec<(&'static str, Command)> {
    let mut v = Vec::new();
    if arch.starts_with("sm_") {
        let mut c = Command::new("nvcc");
        c.args(["-cubin", "-O3", "-x", "cu"])
            .arg(format!("-arch={arch}"))
            .arg("-I")
            .arg(include)
            .arg(source)
            .arg("-o")
            .arg(out);
        v.push(("nvcc", c));
        return v;
    }
    let mut c = Command::new(std::env::var("HIPCC").unwrap_or_else(|_| "hipcc".into()));
    c.args(["--genco", "-O3"])
        .arg(format!("--offload-arch={arch}"))
        .arg("-I")
        .arg(include)
        .arg(source)
        .arg("-o")
        .arg(out);
    v.push(("hipcc", c));
    if let Some(libs) = device_lib_dir() {
        let mut c = Command::new(std::env::var("KILN_HIP_CLANG").unwrap_or_else(|_| "clang-19".into()));
        c.args(["-x", "hip", "--cuda-device-only", "-O3", "-c", "--rocm-path=/usr"])
            .arg(format!("--offload-arch={arch}"))
            .arg(format!("--rocm-device-lib-path={}", libs.display()))
            .arg("-I")
            .arg(include)
            .arg(source)
            .arg("-o")
            .arg(out);
        v.push(("clang-19", c));
    }
    v
}

/// What a failure to build for `arch` means, for the error message.
pub fn requirement(arch: &str) -> &'static str {
    match arch {
        "gfx90a" => "gfx90a needs hipcc: apt-get install hipcc libamdhip64-dev rocm-device-libs",
        "gfx940" => {
            "gfx940 needs clang-19 (+ lld-19) with the ROCm device libraries (apt-get install clang-19 lld-19 rocm-device-libs), or ROCm >= 5.5's hipcc"
        }
        "gfx942" => "gfx942 needs ROCm >= 6 on the build host (Debian's device libraries have no gfx942 files)",
        "gfx950" => {
            "gfx950 (MI355X) needs ROCm 7 (LLVM 20) on the build host; Debian's hipcc 5.2 reaches gfx90a and clang-19 gfx940"
        }
        a if a.starts_with("sm_") => "CUDA arches need nvcc (CUDA toolkit)",
        _ => "no known toolchain builds this arch",
    }
}

/// Compiles `source` for `arch` into `out`, trying each toolchain; checks that the code
/// object exports every symbol. The error lists each attempt.
pub fn compile(source: &Path, arch: &str, out: &Path, symbols: &[&str]) -> Result<Vec<u8>, String> {
    let include = source.parent().unwrap_or(Path::new("."));
    let mut failures = Vec::new();
    for (name, mut cmd) in attempts(source, arch, out, include) {
        match run(&mut cmd) {
            Ok(()) => {
                let bytes = std::fs::read(out).map_err(|e| format!("{}: {e}", out.display()))?;
                let missing: Vec<&&str> =
                    symbols.iter().filter(|s| !bytes.windows(s.len()).any(|w| w == s.as_bytes())).collect();
                if !missing.is_empty() {
                    return Err(format!(
                        "{} built with {name} for {arch} lacks the symbols {missing:?}",
                        source.display()
                    ));
                }
                return Ok(bytes);
            }
            Err(e) => failures.push(format!("{name}: {e}")),
        }
    }
    Err(format!(
        "cannot build {} for {arch}: {}.\n    tried: {}",
        source.display(),
        requirement(arch),
        if failures.is_empty() { "nothing".into() } else { failures.join("\n    tried: ") }
    ))
}
