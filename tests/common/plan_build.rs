//! Binaries baked from other plans (`KILN_PLAN=... cargo build`), for tests that run them.
//! One shared target directory; each binary is copied out under its own name, so tests in
//! parallel never run a binary another build has replaced.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Mutex;

static BUILD: Mutex<()> = Mutex::new(());

/// Builds `kiln` with `KILN_PLAN=plan` (and `features`), returning a path only this name uses.
pub fn build_kiln(plan: &Path, name: &str, features: &[&str]) -> Result<PathBuf, String> {
    let _guard = BUILD.lock().unwrap_or_else(|p| p.into_inner());
    let target = Path::new(env!("CARGO_TARGET_TMPDIR")).join("plan-builds");
    let bin_dir = target.join("bins");
    std::fs::create_dir_all(&bin_dir).map_err(|e| e.to_string())?;
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let mut cmd = Command::new(cargo);
    cmd.args(["build", "--frozen", "--quiet", "--bin", "kiln"])
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .env("KILN_PLAN", plan)
        .env("CARGO_TARGET_DIR", &target);
    if !features.is_empty() {
        cmd.arg("--features").arg(features.join(","));
    }
    let out = cmd.output().map_err(|e| e.to_string())?;
    if !out.status.success() {
        return Err(String::from_utf8_lossy(&out.stderr).into_owned());
    }
    // Copied aside and renamed into place: another test of this process may be running the
    // binary under this name, and a running executable cannot be overwritten (ETXTBSY).
    let dest = bin_dir.join(format!("kiln-{name}"));
    let fresh = bin_dir.join(format!(".kiln-{name}.{}", std::process::id()));
    std::fs::copy(target.join("debug/kiln"), &fresh).map_err(|e| e.to_string())?;
    std::fs::rename(&fresh, &dest).map_err(|e| e.to_string())?;
    Ok(dest)
}
