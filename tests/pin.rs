//! `[weights.pin]`: `kiln plan pin` writes it, the binary refuses weights that differ by one
//! byte and names the shard, `kiln verify --full` checks every byte.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::OnceLock;
use std::time::Duration;

use safetensors::SafeTensors;
use safetensors::tensor::TensorView;

use common::serve::{CHAT_FIXTURE, Serving};
use common::{plan_build::build_kiln, repo_path};

const SHARD_1: &str = "model-00001-of-00002.safetensors";
const SHARD_2: &str = "model-00002-of-00002.safetensors";
const EX_DATAERR: i32 = 65;

fn run(bin: &Path, args: &[&str], cwd: &Path) -> Output {
    Command::new(bin).args(args).current_dir(cwd).output().unwrap()
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

/// chat_tiny's weights in two shards with an index, beside its config and tokenizer: a model
/// directory shaped like a real release. Each shard's header gets 8 bytes of padding so a
/// test can change the header without changing any size.
fn write_sharded(dir: &Path) {
    let src = repo_path(CHAT_FIXTURE);
    std::fs::create_dir_all(dir).unwrap();
    let bytes = std::fs::read(src.join("model.safetensors")).unwrap();
    let st = SafeTensors::deserialize(&bytes).unwrap();
    let mut names: Vec<String> = st.names().into_iter().map(str::to_string).collect();
    names.sort();
    let (a, b) = names.split_at(names.len() / 2);
    let mut weight_map = serde_json::Map::new();
    for (file, chunk) in [(SHARD_1, a), (SHARD_2, b)] {
        let views: Vec<(String, TensorView)> = chunk.iter().map(|n| (n.clone(), st.tensor(n).unwrap())).collect();
        let mut out = safetensors::serialize(views, None).unwrap();
        let n = u64::from_le_bytes(out[..8].try_into().unwrap()) as usize;
        out.splice(8 + n..8 + n, *b"        ");
        out[..8].copy_from_slice(&((n + 8) as u64).to_le_bytes());
        std::fs::write(dir.join(file), out).unwrap();
        for name in chunk {
            weight_map.insert(name.clone(), file.into());
        }
    }
    let index = serde_json::json!({"metadata": {}, "weight_map": weight_map});
    std::fs::write(dir.join("model.safetensors.index.json"), index.to_string()).unwrap();
    for f in ["config.json", "tokenizer.json", "tokenizer_config.json", "generation_config.json"] {
        std::fs::copy(src.join(f), dir.join(f)).unwrap();
    }
}

/// A binary baked from a plan pinned to the sharded model, and that model's directory.
fn pinned() -> &'static (PathBuf, PathBuf) {
    static BUILT: OnceLock<(PathBuf, PathBuf)> = OnceLock::new();
    BUILT.get_or_init(|| {
        let root = Path::new(env!("CARGO_TARGET_TMPDIR")).join("pinned-shards");
        let _ = std::fs::remove_dir_all(&root);
        let model = root.join("model");
        write_sharded(&model);
        let plan = root.join("plan.toml");
        let kiln = Path::new(env!("CARGO_BIN_EXE_kiln"));
        let out =
            run(kiln, &["plan", "init", "--from-hf", model.to_str().unwrap(), "-o", plan.to_str().unwrap()], &root);
        assert!(out.status.success(), "{}", text(&out.stderr));
        let out = run(kiln, &["plan", "pin", "--weights", model.to_str().unwrap(), plan.to_str().unwrap()], &root);
        assert!(out.status.success(), "{}", text(&out.stderr));
        let bin = build_kiln(&plan, "pinned_shards", &[]).unwrap_or_else(|e| panic!("{e}"));
        (bin, model)
    })
}

/// A copy of the pinned model that a test may change.
fn model_copy() -> (tempfile::TempDir, PathBuf) {
    let (_, model) = pinned();
    let dir = tempfile::tempdir().unwrap();
    let copy = dir.path().join("model");
    std::fs::create_dir(&copy).unwrap();
    for e in std::fs::read_dir(model).unwrap() {
        let e = e.unwrap();
        std::fs::copy(e.path(), copy.join(e.file_name())).unwrap();
    }
    (dir, copy)
}

fn flip_byte(file: &Path, at_from_end: usize) {
    let mut b = std::fs::read(file).unwrap();
    let i = b.len() - 1 - at_from_end;
    b[i] ^= 0x01;
    std::fs::write(file, b).unwrap();
}

#[test]
fn pinned_plan_records_every_file_and_full_verify_passes() {
    let (bin, model) = pinned();
    let report = run(bin, &["plan"], model);
    assert!(text(&report.stdout).contains("weights pin  7 file(s)"), "{}", text(&report.stdout));
    let out = run(bin, &["verify", "--full", "--weights", model.to_str().unwrap()], model);
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert!(text(&out.stdout).contains("every byte of 7 file(s) matches weights.pin"), "{}", text(&out.stdout));
}

#[test]
fn one_flipped_byte_is_refused_naming_the_shard() {
    let (bin, _) = pinned();
    let (_dir, copy) = model_copy();
    // The last byte of a tensor: sizes and headers still match, only the contents differ.
    flip_byte(&copy.join(SHARD_2), 0);
    let weights = copy.to_str().unwrap();

    let out = run(bin, &["verify", "--full", "--weights", weights], &copy);
    let err = text(&out.stderr);
    assert_eq!(out.status.code(), Some(EX_DATAERR), "{err}");
    assert!(err.contains(&format!("{SHARD_2}: contents have blake3")), "{err}");
    assert!(!err.contains(SHARD_1), "only the changed shard is named: {err}");

    // Serving starts (the quick check passes), then the background hash stops it.
    let mut cmd = Command::new(bin);
    cmd.args(["serve", "--bind", "127.0.0.1:0", "--weights", weights]);
    let mut server = Serving::spawn(cmd);
    let status = server.wait(Duration::from_secs(60));
    let log = server.log_text();
    assert_eq!(status.code(), Some(EX_DATAERR), "{log}");
    assert!(log.contains("stopped serving") && log.contains(&format!("{SHARD_2}: contents have blake3")), "{log}");
}

#[test]
fn a_changed_header_or_size_stops_start_up_naming_the_shard() {
    let (bin, _) = pinned();
    // A header byte (padding space -> tab): still valid, same size, different header digest.
    let (_dir, copy) = model_copy();
    let shard = copy.join(SHARD_1);
    let mut b = std::fs::read(&shard).unwrap();
    let n = u64::from_le_bytes(b[..8].try_into().unwrap()) as usize;
    assert_eq!(b[8 + n - 1], b' ');
    b[8 + n - 1] = b'\t';
    std::fs::write(&shard, b).unwrap();
    let out = run(bin, &["serve", "--bind", "127.0.0.1:0", "--weights", copy.to_str().unwrap()], &copy);
    let err = text(&out.stderr);
    assert_eq!(out.status.code(), Some(EX_DATAERR), "{err}");
    assert!(err.contains(&format!("{SHARD_1}: safetensors header has blake3")), "{err}");
    assert!(!err.contains("serving"), "{err}");

    // A tokenizer that is not the pinned one.
    let (_dir2, copy) = model_copy();
    let tok = copy.join("tokenizer_config.json");
    let mut t = std::fs::read_to_string(&tok).unwrap();
    let pinned_len = t.len();
    t.push('\n');
    std::fs::write(&tok, t).unwrap();
    let out = run(bin, &["serve", "--bind", "127.0.0.1:0", "--weights", copy.to_str().unwrap()], &copy);
    let err = text(&out.stderr);
    assert_eq!(out.status.code(), Some(EX_DATAERR), "{err}");
    let says = format!("tokenizer_config.json is {} bytes but the pin says {pinned_len} bytes", pinned_len + 1);
    assert!(err.contains(&says), "{err}");
}

#[test]
fn the_demo_plan_is_pinned_to_the_demo_model() {
    let kiln = Path::new(env!("CARGO_BIN_EXE_kiln"));
    let empty = tempfile::tempdir().unwrap();
    let out = run(kiln, &["verify", "--full"], empty.path());
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert!(text(&out.stdout).contains("every byte of 5 file(s) matches weights.pin"), "{}", text(&out.stdout));

    // Pinning again from the same files writes the committed plan byte for byte.
    let dir = tempfile::tempdir().unwrap();
    let plan = dir.path().join("tiny.toml");
    std::fs::copy(repo_path("plan/tiny.toml"), &plan).unwrap();
    let out = run(kiln, &["plan", "pin", "--weights", "models/tiny", plan.to_str().unwrap()], &repo_path(""));
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert_eq!(std::fs::read_to_string(&plan).unwrap(), std::fs::read_to_string(repo_path("plan/tiny.toml")).unwrap());

    // Weights the plan does not describe are not pinned, and the plan is left as it was.
    let out = run(kiln, &["plan", "pin", "--weights", CHAT_FIXTURE, plan.to_str().unwrap()], &repo_path(""));
    assert_eq!(out.status.code(), Some(EX_DATAERR), "{}", text(&out.stderr));
    assert!(text(&out.stderr).contains("problem(s) in the weights"), "{}", text(&out.stderr));
    assert_eq!(std::fs::read_to_string(&plan).unwrap(), std::fs::read_to_string(repo_path("plan/tiny.toml")).unwrap());

    // The demo binary with a flipped byte in a copy of its model: refused, shard named.
    let copy = dir.path().join("tiny");
    std::fs::create_dir(&copy).unwrap();
    for e in std::fs::read_dir(repo_path("models/tiny")).unwrap() {
        let e = e.unwrap();
        std::fs::copy(e.path(), copy.join(e.file_name())).unwrap();
    }
    flip_byte(&copy.join("model.safetensors"), 1000);
    let out = run(kiln, &["verify", "--full", "--weights", copy.to_str().unwrap()], dir.path());
    assert_eq!(out.status.code(), Some(EX_DATAERR), "{}", text(&out.stderr));
    assert!(text(&out.stderr).contains("model.safetensors: contents have blake3"), "{}", text(&out.stderr));
}
