//! One sequence's KV cache outside the engine (CLI, tests, references): a growable page pool
//! of its own, in f32 unless asked otherwise.

use crate::kv::{KvFormat, KvGeometry, KvPool, SeqKv};

/// Tokens per page of a single-sequence cache.
const PAGE: usize = 16;

pub struct SeqCache {
    pub pool: KvPool,
    pub kv: SeqKv,
}

impl SeqCache {
    pub fn new(format: KvFormat, geometry: KvGeometry) -> SeqCache {
        SeqCache { pool: KvPool::growable(format, geometry, PAGE), kv: SeqKv::default() }
    }

    /// Tokens cached; the next token's position.
    pub fn len(&self) -> usize {
        self.kv.len
    }

    pub fn is_empty(&self) -> bool {
        self.kv.len == 0
    }

    /// Drops every token from `len` on (speculative rollback).
    pub fn truncate(&mut self, len: usize) {
        // A growable pool always has a page for the copy.
        let _ = self.pool.truncate(&mut self.kv, len);
    }
}
