//! One sequence's KV cache outside the engine (CLI, tests, references): a growable page table
//! of its own and a KV store on the model's backend, in f32 unless asked otherwise.

use crate::backend::{Backend, StepBatch};
use crate::error::Result;
use crate::kv::{KvFormat, KvGeometry, PageTable, SeqKv};

/// Tokens per page of a single-sequence cache.
const PAGE: usize = 16;

pub struct SeqCache<B: Backend> {
    pub table: PageTable,
    pub kv: SeqKv,
    pub store: B::KvStore,
}

impl<B: Backend> SeqCache<B> {
    pub fn new(backend: &B, format: KvFormat, geometry: KvGeometry) -> Result<SeqCache<B>> {
        Ok(SeqCache {
            table: PageTable::growable(PAGE),
            kv: SeqKv::default(),
            store: backend.kv_store(format, geometry, 0)?,
        })
    }

    /// Tokens cached; the next token's position.
    pub fn len(&self) -> usize {
        self.kv.len
    }

    pub fn is_empty(&self) -> bool {
        self.kv.len == 0
    }

    /// A step of `tokens` after the cached ones, with pages (and store room) for them.
    pub fn step(&mut self, backend: &B, tokens: &[u32]) -> Result<StepBatch> {
        // A growable table always has pages.
        let end = self.kv.len + tokens.len();
        let _ = self.table.reserve(&mut self.kv, end);
        backend.kv_grow(&mut self.store, self.table.total_slots())?;
        let mut step = StepBatch::new(PAGE);
        step.push(&self.kv, tokens);
        Ok(step)
    }

    /// The last step's tokens are cached.
    pub fn advance(&mut self, n: usize) {
        self.kv.len += n;
    }

    /// Drops every token from `len` on (speculative rollback).
    pub fn truncate(&mut self, backend: &B, len: usize) -> Result<()> {
        // A growable table always has a page for the copy.
        if let Ok(Some(copy)) = self.table.truncate(&mut self.kv, len) {
            backend.kv_grow(&mut self.store, self.table.total_slots())?;
            backend.kv_copy_page(&mut self.store, copy, PAGE)?;
        }
        Ok(())
    }
}
