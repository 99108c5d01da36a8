//! `[weights.pin]`: the exact bytes a plan was pinned to (`kiln plan pin --weights DIR`).
//!
//! A binary baked from a pinned plan serves those weights and no others: at start-up it
//! compares every pinned file's size and the tensor headers at once, then hashes the contents
//! in the background while serving.

use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WeightsPin {
    /// blake3 over every tensor's name, dtype, shape and byte length, in name order.
    pub headers: String,
    /// Every file kiln reads from the model directory: the safetensors shards, the shard
    /// index, config.json and the tokenizer files.
    pub files: Vec<PinnedFile>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PinnedFile {
    /// File name inside the model directory.
    pub name: String,
    pub bytes: u64,
    /// blake3 of the whole file, hex.
    pub blake3: String,
    /// Shards only: blake3 of the safetensors header (length prefix and JSON), checked at
    /// start-up so a changed header is named before serving.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub headers: Option<String>,
}

impl PinnedFile {
    pub fn is_shard(&self) -> bool {
        self.name.ends_with(".safetensors")
    }
}

impl WeightsPin {
    pub fn shards(&self) -> impl Iterator<Item = &PinnedFile> {
        self.files.iter().filter(|f| f.is_shard())
    }

    pub fn file(&self, name: &str) -> Option<&PinnedFile> {
        self.files.iter().find(|f| f.name == name)
    }

    pub fn total_bytes(&self) -> u64 {
        self.files.iter().map(|f| f.bytes).sum()
    }
}

/// A blake3 digest as written in plans: 64 lowercase hex digits.
pub fn is_digest(s: &str) -> bool {
    s.len() == 64 && s.bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
}
