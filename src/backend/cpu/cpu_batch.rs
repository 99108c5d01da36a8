//! A step as the CPU backend's ops read it.

use super::KeySelection;
use crate::backend::{StepBatch, batch};
use crate::kv::PageId;

/// A step as the CPU ops read it: each token's id, position, sequence and own slot, and the
/// sequences' page tables one after the other (one buffer, not one per sequence: a decode
/// batch has a sequence per token).
pub struct CpuBatch {
    pub tokens: Vec<u32>,      // [N]
    pub positions: Vec<usize>, // [N]
    pub seq: Vec<usize>,       // [N] each token's sequence
    pub slots: Vec<usize>,     // [N] each token's own entry
    pages: Vec<PageId>,        // [every sequence's pages]
    page_start: Vec<usize>,    // [S + 1]: sequence s's table is pages[page_start[s]..page_start[s + 1]]
    page_size: usize,
}

impl CpuBatch {
    pub(super) fn new(b: &StepBatch) -> CpuBatch {
        let mut page_start = Vec::with_capacity(b.page_tables.len() + 1);
        page_start.push(0);
        for t in &b.page_tables {
            page_start.push(page_start.last().copied().unwrap_or(0) + t.len());
        }
        let mut pages = Vec::with_capacity(page_start.last().copied().unwrap_or(0));
        for t in &b.page_tables {
            pages.extend_from_slice(t);
        }
        CpuBatch {
            tokens: b.tokens.clone(),
            positions: b.positions.clone(),
            seq: b.seq.clone(),
            slots: b.slots(),
            pages,
            page_start,
            page_size: b.page_size,
        }
    }

    /// Tokens in the step.
    pub(super) fn len(&self) -> usize {
        self.tokens.len()
    }

    /// Sequences in the step.
    pub(super) fn sequences(&self) -> usize {
        self.page_start.len() - 1
    }

    /// The slot of position `pos` in the sequence of token `i`.
    pub(super) fn slot(&self, i: usize, pos: usize) -> usize {
        let table = &self.pages[self.page_start[self.seq[i]]..self.page_start[self.seq[i] + 1]];
        table[pos / self.page_size] as usize * self.page_size + pos % self.page_size
    }

    /// Slots of positions `positions` in the sequence of token `i`.
    pub(super) fn slots_of(&self, i: usize, positions: &[usize]) -> Vec<usize> {
        positions.iter().map(|&p| self.slot(i, p)).collect()
    }

    /// Slots of the keys token `i` at `pos` attends to under `sel`, written to the front of
    /// `out` (at least `sel.key_count(i, pos)` long); how many.
    pub(super) fn slots_into(&self, i: usize, sel: &KeySelection, pos: usize, out: &mut [usize]) -> usize {
        let mut count = 0;
        batch::for_each_causal_key(sel.row(i), pos, |p| {
            out[count] = self.slot(i, p);
            count += 1;
        });
        count
    }
}
