//! Weight pinning: the digests `kiln plan pin` writes into a plan, and the checks of a model
//! against them. Sizes and safetensors headers are compared at start-up (milliseconds);
//! contents are hashed file by file, in the foreground by `kiln verify --full` or in the
//! background while serving.

use std::io::Read;

use super::{Checkpoint, WeightsSource};
use crate::error::{Error, Result};
use crate::plan::{PinnedFile, Problem, WeightsPin};

/// Bytes hashed per read; progress is reported after each.
const CHUNK: usize = 16 << 20;
/// Files below this size (config, tokenizer) are hashed in full by the quick check.
const SMALL_FILE: u64 = 64 << 20;
/// safetensors caps its JSON header at 100 MB.
const MAX_HEADER: u64 = 100_000_000;

/// One way a model differs from its pin, naming the file.
fn problem(file: &str, message: String) -> Problem {
    Problem::new(file, message)
}

/// blake3 of a file of the model, calling `progress` with the bytes read after each chunk.
/// `parallel` spreads each chunk over the rayon pool (for the foreground check).
pub fn hash_file(src: &WeightsSource, name: &str, parallel: bool, progress: &mut dyn FnMut(u64)) -> Result<String> {
    let mut reader = src.open(name)?;
    let mut buf = vec![0u8; CHUNK]; // [CHUNK] bytes of the file at a time
    let mut hasher = blake3::Hasher::new();
    loop {
        let n = read_full(&mut reader, &mut buf).map_err(|e| Error::io(name, e))?;
        if n == 0 {
            break;
        }
        if parallel {
            hasher.update_rayon(&buf[..n]);
        } else {
            hasher.update(&buf[..n]);
        }
        progress(n as u64);
    }
    Ok(hasher.finalize().to_hex().to_string())
}

/// Fills `buf` unless the file ends first; returns the bytes read.
fn read_full(r: &mut dyn Read, buf: &mut [u8]) -> std::io::Result<usize> {
    let mut at = 0;
    while at < buf.len() {
        match r.read(&mut buf[at..]) {
            Ok(0) => break,
            Ok(n) => at += n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(at)
}

/// blake3 of a shard's safetensors header: the 8-byte length and the JSON it counts.
pub fn shard_header_digest(src: &WeightsSource, name: &str) -> Result<String> {
    let bad = |m: String| Error::Checkpoint { path: name.into(), message: m };
    let mut r = src.open(name)?;
    let mut len = [0u8; 8];
    r.read_exact(&mut len).map_err(|e| bad(format!("cannot read the header length: {e}")))?;
    let n = u64::from_le_bytes(len);
    if n > MAX_HEADER {
        return Err(bad(format!("header length {n} exceeds safetensors' {MAX_HEADER}")));
    }
    let mut json = vec![0u8; n as usize]; // [n] bytes of header JSON
    r.read_exact(&mut json).map_err(|e| bad(format!("header cut short: {e}")))?;
    let mut h = blake3::Hasher::new();
    h.update(&len);
    h.update(&json);
    Ok(h.finalize().to_hex().to_string())
}

/// The pin of a model as it is now. `progress` gets the bytes hashed so far.
pub fn make_pin(src: &WeightsSource, ckpt: &Checkpoint, progress: &mut dyn FnMut(u64)) -> Result<WeightsPin> {
    let mut files = Vec::new();
    for name in src.files_read(ckpt) {
        let bytes = src.file_size(&name)?.ok_or_else(|| Error::Usage(format!("{name} disappeared")))?;
        let headers = if name.ends_with(".safetensors") { Some(shard_header_digest(src, &name)?) } else { None };
        let blake3 = hash_file(src, &name, true, progress)?;
        files.push(PinnedFile { name, bytes, blake3, headers });
    }
    Ok(WeightsPin { headers: ckpt.header_digest(), files })
}

/// What start-up checks before loading: every pinned file there with its size, every shard
/// header as pinned, nothing read that the pin does not cover, and the small files' contents.
/// Shard contents are left to [`check_contents`].
pub fn check_quick(pin: &WeightsPin, src: &WeightsSource, ckpt: &Checkpoint) -> Vec<Problem> {
    let mut problems = Vec::new();
    for f in &pin.files {
        match src.file_size(&f.name) {
            Ok(None) => problems.push(problem(&f.name, format!("{} is pinned but missing", f.name))),
            Err(e) => problems.push(problem(&f.name, format!("{}: {e}", f.name))),
            Ok(Some(n)) if n != f.bytes => {
                problems.push(problem(&f.name, format!("{} is {n} bytes but the pin says {} bytes", f.name, f.bytes)))
            }
            Ok(Some(_)) => {
                if let Some(want) = &f.headers {
                    match shard_header_digest(src, &f.name) {
                        Ok(got) if &got == want => {}
                        Ok(got) => problems.push(problem(
                            &f.name,
                            format!("{}: safetensors header has blake3 {got}, pinned {want}", f.name),
                        )),
                        Err(e) => problems.push(problem(&f.name, e.to_string())),
                    }
                }
                if !f.is_shard() && f.bytes <= SMALL_FILE {
                    problems.extend(check_contents(f, src, false, &mut |_| {}));
                }
            }
        }
    }
    for name in src.files_read(ckpt) {
        if pin.file(&name).is_none() {
            problems.push(problem(&name, format!("{name} is read when serving but the pin does not cover it")));
        }
    }
    let got = ckpt.header_digest();
    if problems.is_empty() && got != pin.headers {
        problems.push(problem("", format!("tensor headers have blake3 {got}, pinned {}", pin.headers)));
    }
    problems
}

/// Hashes one pinned file and compares; `None` when it matches.
pub fn check_contents(
    f: &PinnedFile,
    src: &WeightsSource,
    parallel: bool,
    progress: &mut dyn FnMut(u64),
) -> Option<Problem> {
    match hash_file(src, &f.name, parallel, progress) {
        Ok(got) if got == f.blake3 => None,
        Ok(got) => Some(problem(&f.name, format!("{}: contents have blake3 {got}, pinned {}", f.name, f.blake3))),
        Err(e) => Some(problem(&f.name, format!("{}: {e}", f.name))),
    }
}

/// The pin as a `[weights.pin]` TOML table.
fn pin_table(pin: &WeightsPin) -> toml_edit::Table {
    let mut t = toml_edit::Table::new();
    t["headers"] = toml_edit::value(pin.headers.as_str());
    let mut files = toml_edit::ArrayOfTables::new();
    for f in &pin.files {
        let mut row = toml_edit::Table::new();
        row["name"] = toml_edit::value(f.name.as_str());
        row["bytes"] = toml_edit::value(f.bytes as i64);
        row["blake3"] = toml_edit::value(f.blake3.as_str());
        if let Some(h) = &f.headers {
            row["headers"] = toml_edit::value(h.as_str());
        }
        files.push(row);
    }
    t["files"] = toml_edit::Item::ArrayOfTables(files);
    t
}

/// `text` (a plan) with its `[weights.pin]` replaced by `pin`; comments and layout elsewhere
/// are kept.
pub fn write_pin_into(text: &str, pin: &WeightsPin, note: &str) -> std::result::Result<String, String> {
    let mut doc: toml_edit::DocumentMut = text.parse().map_err(|e| format!("plan is not valid TOML: {e}"))?;
    let weights = doc
        .get_mut("weights")
        .and_then(toml_edit::Item::as_table_mut)
        .ok_or_else(|| "the plan has no [weights] table".to_string())?;
    let mut table = pin_table(pin);
    table.decor_mut().set_prefix(format!("\n# {note}\n"));
    weights.insert("pin", toml_edit::Item::Table(table));
    Ok(doc.to_string())
}
