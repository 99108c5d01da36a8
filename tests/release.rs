//! The deploy artifact: the README's release command yields one static binary, and that
//! binary serves the demo model from an empty directory inside a network namespace that has
//! nothing but loopback.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;

/// The README's release command, into a target directory of its own.
fn static_release_build() -> PathBuf {
    let target_dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join("static-release");
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let out = Command::new(cargo)
        .args(["build", "--release", "--frozen", "--bin", "kiln", "--target", "x86_64-unknown-linux-gnu"])
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .env("RUSTFLAGS", "-C target-feature=+crt-static")
        .env("CARGO_TARGET_DIR", &target_dir)
        .env_remove("KILN_PLAN")
        .output()
        .expect("cargo runs");
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    target_dir.join("x86_64-unknown-linux-gnu/release/kiln")
}

/// Starts the binary with an empty environment in an empty directory, inside a fresh network
/// namespace, serves one chat request over loopback, sends SIGTERM and reports.
const OFFLINE_SCRIPT: &str = r#"
set -u
ip link set lo up
echo "links: $(ip -o link | awk -F': ' '{print $2}' | tr '\n' ' ')"
cd "$WORK"
env -i "$BIN" serve --bind 127.0.0.1:8000 2> serve.log &
pid=$!
for _ in $(seq 1 300); do
  curl -sf http://127.0.0.1:8000/health > /dev/null && break
  sleep 0.1
done
curl -s --max-time 60 -H 'Content-Type: application/json' \
  -d '{"messages": [{"role": "user", "content": "Split a string on commas."}], "max_tokens": 40, "temperature": 0}' \
  -w '\nstatus: %{http_code}\n' http://127.0.0.1:8000/v1/chat/completions
kill -TERM $pid
wait $pid
echo "exit: $?"
echo "files: $(ls -A | tr '\n' ' ')"
cat serve.log
"#;

#[test]
fn static_release_binary_serves_offline_from_an_empty_directory() {
    let built = static_release_build();

    let ldd = Command::new("ldd").arg(&built).output().expect("ldd runs");
    let ldd_text = format!("{}{}", String::from_utf8_lossy(&ldd.stdout), String::from_utf8_lossy(&ldd.stderr));
    assert!(
        ldd_text.contains("statically linked") || ldd_text.contains("not a dynamic executable"),
        "ldd says: {ldd_text}"
    );
    let plan = Command::new(&built).arg("plan").output().unwrap();
    assert!(String::from_utf8_lossy(&plan.stdout).contains("this binary  statically linked"));

    let root = tempfile::tempdir().unwrap();
    let bin = root.path().join("kiln");
    std::fs::copy(&built, &bin).unwrap();
    let work = root.path().join("work");
    std::fs::create_dir(&work).unwrap();

    let out = Command::new("unshare")
        .args(["--user", "--map-root-user", "--net", "sh", "-c", OFFLINE_SCRIPT])
        .env("BIN", &bin)
        .env("WORK", &work)
        .output()
        .expect("unshare runs");
    let stderr = String::from_utf8_lossy(&out.stderr);
    if !out.status.success() && stderr.contains("unshare") {
        assert!(
            std::env::var_os("KILN_REQUIRE_DEPLOY_TOOLS").is_none(),
            "KILN_REQUIRE_DEPLOY_TOOLS is set but no network namespace could be made: {stderr}"
        );
        eprintln!("SKIPPED: cannot make a network namespace here: {stderr}");
        return;
    }
    let report = String::from_utf8_lossy(&out.stdout);
    assert!(report.contains("links: lo \n"), "the namespace has more than loopback:\n{report}\n{stderr}");
    assert!(report.contains("status: 200"), "{report}\n{stderr}");
    let body = report.lines().find(|l| l.starts_with('{')).unwrap_or_default();
    let v: serde_json::Value = serde_json::from_str(body).unwrap_or_else(|e| panic!("{e}: {report}"));
    let text = v["choices"][0]["message"]["content"].as_str().unwrap_or_default();
    assert!(!text.is_empty(), "{report}");
    assert!(report.contains("exit: 0"), "{report}");
    // Nothing was written beside the binary's working directory but the log we redirected.
    assert!(report.contains("files: serve.log \n"), "{report}");
    assert!(report.contains("from models/tiny (embedded)"), "{report}");
}
