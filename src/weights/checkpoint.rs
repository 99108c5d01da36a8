//! A safetensors checkpoint (one file or an indexed set of shards), mmapped, never copied.

use std::collections::{BTreeMap, BTreeSet};
use std::fs::File;
use std::ops::Range;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use memmap2::Mmap;
use safetensors::{Dtype, SafeTensors};

use crate::error::{Error, Result};
use crate::plan::WeightFormat;

const SINGLE_FILE: &str = "model.safetensors";
pub(crate) const INDEX_FILE: &str = "model.safetensors.index.json";

/// What a linear's weight is stored as.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StoredAs {
    Format(WeightFormat),
    /// A dtype kiln has no linear kernels for (e.g. F8_E4M3 block-scaled weights).
    Unsupported(Dtype),
}

/// Where one tensor's bytes are.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TensorInfo {
    /// Index into the checkpoint's shards.
    pub shard: usize,
    pub dtype: Dtype,
    pub shape: Vec<usize>,
    /// Byte range inside the shard's file.
    pub range: Range<usize>,
}

/// The bytes of one safetensors file: a read-only mapping, or bytes built into the binary.
enum Backing {
    Mapped(Mapping),
    Static(&'static [u8]),
    /// Bytes made in memory (test vectors, kernel cases).
    Owned(Vec<u8>),
}

struct Shard {
    path: PathBuf,
    backing: Backing,
}

impl Shard {
    fn bytes(&self) -> &[u8] {
        match &self.backing {
            Backing::Mapped(m) => &m.map,
            Backing::Static(b) => b,
            Backing::Owned(v) => v,
        }
    }
}

/// A tensor's bytes that outlive the borrow of the checkpoint (the model keeps these).
#[derive(Clone)]
pub struct TensorBytes {
    shard: Arc<Shard>,
    range: Range<usize>,
}

impl TensorBytes {
    /// Bytes that live in memory rather than in a checkpoint file.
    pub fn owned(bytes: Vec<u8>) -> TensorBytes {
        let range = 0..bytes.len();
        TensorBytes {
            shard: Arc::new(Shard { path: PathBuf::from("<memory>"), backing: Backing::Owned(bytes) }),
            range,
        }
    }

    pub fn as_slice(&self) -> &[u8] {
        &self.shard.bytes()[self.range.clone()]
    }
}

impl std::fmt::Debug for TensorBytes {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "TensorBytes({}, {:?})", self.shard.path.display(), self.range)
    }
}

/// Every tensor of a model directory, by name.
pub struct Checkpoint {
    pub dir: PathBuf,
    /// config.json beside the weights, if there is one.
    pub config_json: Option<String>,
    shards: Vec<Arc<Shard>>,
    tensors: BTreeMap<String, TensorInfo>,
}

impl Checkpoint {
    /// Opens `dir/model.safetensors`, or every shard named by `dir/model.safetensors.index.json`.
    /// Headers are read and checked (offsets inside the file, file length exact); no tensor
    /// data is read.
    pub fn open(dir: &Path) -> Result<Checkpoint> {
        let index_path = dir.join(INDEX_FILE);
        let (files, index) = if index_path.exists() {
            let index = read_index(&index_path)?;
            let files: BTreeSet<String> = index.values().cloned().collect();
            (files.into_iter().collect::<Vec<_>>(), Some(index))
        } else if dir.join(SINGLE_FILE).exists() {
            (vec![SINGLE_FILE.to_string()], None)
        } else {
            return Err(Error::Checkpoint {
                path: dir.to_path_buf(),
                message: format!("neither {SINGLE_FILE} nor {INDEX_FILE} is here"),
            });
        };

        let mut shards = Vec::with_capacity(files.len());
        for file in &files {
            let path = dir.join(file);
            shards.push(Shard { backing: Backing::Mapped(map_file(&path)?), path });
        }
        let mut ckpt = Checkpoint::index(dir, shards)?;
        ckpt.config_json = std::fs::read_to_string(dir.join("config.json")).ok();
        if let Some(index) = index {
            check_index(&index_path, &index, &files, &ckpt.tensors)?;
        }
        Ok(ckpt)
    }

    /// A checkpoint whose files were built into the binary: (file name, bytes) pairs.
    pub fn from_static(dir: &Path, files: &[(&str, &'static [u8])]) -> Result<Checkpoint> {
        let shards =
            files.iter().map(|(name, bytes)| Shard { path: dir.join(name), backing: Backing::Static(bytes) }).collect();
        Checkpoint::index(dir, shards)
    }

    /// Reads every shard's header; names must be unique across shards.
    fn index(dir: &Path, shards: Vec<Shard>) -> Result<Checkpoint> {
        let mut tensors: BTreeMap<String, TensorInfo> = BTreeMap::new();
        for (i, shard) in shards.iter().enumerate() {
            let path = &shard.path;
            let (header_len, meta) = SafeTensors::read_metadata(shard.bytes()).map_err(|e| Error::Checkpoint {
                path: path.clone(),
                message: format!("bad safetensors header: {e}"),
            })?;
            let data_start = 8 + header_len;
            for (name, info) in meta.tensors() {
                let (start, end) = info.data_offsets;
                let entry = TensorInfo {
                    shard: i,
                    dtype: info.dtype,
                    shape: info.shape.clone(),
                    range: data_start + start..data_start + end,
                };
                if let Some(prev) = tensors.insert(name.clone(), entry) {
                    return Err(Error::Checkpoint {
                        path: path.clone(),
                        message: format!("tensor {name} is also in {}", shards[prev.shard].path.display()),
                    });
                }
            }
        }
        Ok(Checkpoint {
            dir: dir.to_path_buf(),
            config_json: None,
            shards: shards.into_iter().map(Arc::new).collect(),
            tensors,
        })
    }

    pub fn get(&self, name: &str) -> Option<&TensorInfo> {
        self.tensors.get(name)
    }

    pub fn tensors(&self) -> impl Iterator<Item = (&str, &TensorInfo)> {
        self.tensors.iter().map(|(k, v)| (k.as_str(), v))
    }

    pub fn len(&self) -> usize {
        self.tensors.len()
    }

    pub fn is_empty(&self) -> bool {
        self.tensors.is_empty()
    }

    /// The raw little-endian bytes of a tensor, straight from the mapping.
    pub fn bytes(&self, info: &TensorInfo) -> &[u8] {
        &self.shards[info.shard].bytes()[info.range.clone()]
    }

    /// The same bytes as a handle that keeps the shard alive.
    pub fn tensor_bytes(&self, info: &TensorInfo) -> TensorBytes {
        TensorBytes { shard: self.shards[info.shard].clone(), range: info.range.clone() }
    }

    /// How a linear `{module}.weight` is stored: MXFP4 when the weight is U8 with a
    /// `weight_scale` beside it (the checkpoint decides, not a name list), else by dtype.
    /// `None` when the weight is absent.
    pub fn linear_format(&self, module: &str) -> Option<StoredAs> {
        let w = self.get(&format!("{module}.weight"))?;
        Some(match w.dtype {
            Dtype::U8 if self.get(&format!("{module}.weight_scale")).is_some() => StoredAs::Format(WeightFormat::Mxfp4),
            Dtype::BF16 => StoredAs::Format(WeightFormat::Bf16),
            Dtype::F32 => StoredAs::Format(WeightFormat::F32),
            other => StoredAs::Unsupported(other),
        })
    }

    /// blake3 over every tensor's name, dtype, shape and byte length, in name order: the
    /// checkpoint's identity as far as its headers tell (contents are not read).
    pub fn header_digest(&self) -> String {
        let mut h = blake3::Hasher::new();
        for (name, t) in &self.tensors {
            h.update(format!("{name}\t{:?}\t{:?}\t{}\n", t.dtype, t.shape, t.range.len()).as_bytes());
        }
        h.finalize().to_hex().to_string()
    }

    /// The shards' file names.
    pub fn shard_names(&self) -> Vec<String> {
        self.shards
            .iter()
            .map(|s| s.path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default())
            .collect()
    }
}

/// A file's read-only mapping, known to the SIGBUS handler while it lives.
struct Mapping {
    map: Mmap,
    tracked: Option<usize>,
}

impl Drop for Mapping {
    fn drop(&mut self) {
        if let Some(i) = self.tracked {
            super::fault::untrack(i);
        }
    }
}

fn map_file(path: &Path) -> Result<Mapping> {
    let file = File::open(path).map_err(|e| Error::io(path, e))?;
    // SAFETY: the mapping is read-only; kiln never writes checkpoint files, and a deployment
    // treats its weights directory as immutable while serving. If the file shrinks anyway,
    // the access faults and weights::fault names the file before exiting.
    let map = unsafe { Mmap::map(&file) }.map_err(|e| Error::io(path, e))?;
    let tracked = super::fault::track(map.as_ptr() as usize, map.len(), path);
    Ok(Mapping { map, tracked })
}

/// `weight_map` of an HF shard index: tensor name -> shard file name.
fn read_index(path: &Path) -> Result<BTreeMap<String, String>> {
    let text = std::fs::read_to_string(path).map_err(|e| Error::io(path, e))?;
    let bad = |message: String| Error::Checkpoint { path: path.to_path_buf(), message };
    let value: serde_json::Value = serde_json::from_str(&text).map_err(|e| bad(format!("not JSON: {e}")))?;
    let map =
        value.get("weight_map").and_then(|m| m.as_object()).ok_or_else(|| bad("no \"weight_map\" object".into()))?;
    let mut out = BTreeMap::new();
    for (name, file) in map {
        let file = file.as_str().ok_or_else(|| bad(format!("weight_map[{name:?}] is not a file name")))?;
        if file.contains('/') || file.contains('\\') || file == ".." {
            return Err(bad(format!("weight_map[{name:?}] = {file:?} leaves the model directory")));
        }
        out.insert(name.clone(), file.to_string());
    }
    Ok(out)
}

/// The index and the shards must agree tensor for tensor.
fn check_index(
    path: &Path,
    index: &BTreeMap<String, String>,
    files: &[String],
    tensors: &BTreeMap<String, TensorInfo>,
) -> Result<()> {
    let mut problems = Vec::new();
    for (name, file) in index {
        match tensors.get(name) {
            None => problems.push(format!("{name} is listed in {file} but no shard holds it")),
            Some(t) if &files[t.shard] != file => {
                problems.push(format!("{name} is listed in {file} but stored in {}", files[t.shard]))
            }
            Some(_) => {}
        }
    }
    for (name, t) in tensors {
        if !index.contains_key(name) {
            problems.push(format!("{name} is in {} but not in the index", files[t.shard]));
        }
    }
    if problems.is_empty() {
        Ok(())
    } else {
        Err(Error::Checkpoint { path: path.to_path_buf(), message: problems.join("; ") })
    }
}
