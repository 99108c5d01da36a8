//! One step's tokens as the engine hands them to the model: each token's sequence and
//! position, the sequences' page tables (where KV entries are written and read), and which
//! rows need logits.

use crate::kv::{PageId, SeqKv};

#[derive(Debug, Clone, Default)]
pub struct StepBatch {
    pub tokens: Vec<u32>,      // [N]
    pub positions: Vec<usize>, // [N] each token's position in its sequence
    pub seq: Vec<usize>,       // [N] each token's sequence (index into page_tables)
    /// Per sequence: token t lives in slot page_tables[s][t / page_size] * page_size + t % page_size.
    pub page_tables: Vec<Vec<PageId>>,
    pub page_size: usize,
    /// Rows whose logits the step returns, in this order.
    pub logits_rows: Vec<usize>,
    /// Rows whose greedy token (the logits' first under the ranking rule) the step returns,
    /// in this order: the logits stay where they were computed.
    pub argmax_rows: Vec<usize>,
    /// Whether the step returns every row's final-normed hidden state (MTP, tests).
    pub want_hidden: bool,
}

impl StepBatch {
    pub fn new(page_size: usize) -> StepBatch {
        StepBatch { page_size, ..Default::default() }
    }

    /// Appends a sequence's new tokens at positions kv.len.. (its pages already reserved).
    /// Returns the rows they took.
    pub fn push(&mut self, kv: &SeqKv, tokens: &[u32]) -> std::ops::Range<usize> {
        let s = self.page_tables.len();
        let start = self.tokens.len();
        self.tokens.extend_from_slice(tokens);
        self.positions.extend(kv.len..kv.len + tokens.len());
        self.seq.extend(std::iter::repeat_n(s, tokens.len()));
        self.page_tables.push(kv.pages.clone());
        start..self.tokens.len()
    }

    pub fn len(&self) -> usize {
        self.tokens.len()
    }

    pub fn is_empty(&self) -> bool {
        self.tokens.is_empty()
    }

    /// The slot of position `pos` in the sequence of token `i`.
    pub fn slot(&self, i: usize, pos: usize) -> usize {
        self.page_tables[self.seq[i]][pos / self.page_size] as usize * self.page_size + pos % self.page_size
    }

    /// [N] where each token's own entry goes.
    pub fn slots(&self) -> Vec<usize> {
        (0..self.len()).map(|i| self.slot(i, self.positions[i])).collect()
    }

    /// The rows whose outputs the step returns (ascending), when it returns nothing else (no
    /// hidden states) and they are not all of its rows.
    pub fn output_rows(&self) -> Option<Vec<usize>> {
        if self.want_hidden {
            return None;
        }
        let mut rows: Vec<usize> = self.logits_rows.iter().chain(&self.argmax_rows).copied().collect();
        rows.sort_unstable();
        rows.dedup();
        (rows.len() < self.len()).then_some(rows)
    }

    /// The step of `rows` alone (ascending), each at its own position in its own sequence, with
    /// the page tables of the sequences they belong to and no outputs asked for.
    pub fn subset(&self, rows: &[usize]) -> StepBatch {
        let mut sub = StepBatch::new(self.page_size);
        let mut seq_of: Vec<Option<usize>> = vec![None; self.page_tables.len()]; // old sequence -> new
        for &r in rows {
            let s = self.seq[r];
            let new = *seq_of[s].get_or_insert_with(|| {
                sub.page_tables.push(self.page_tables[s].clone());
                sub.page_tables.len() - 1
            });
            sub.tokens.push(self.tokens[r]);
            sub.positions.push(self.positions[r]);
            sub.seq.push(new);
        }
        sub
    }
}

/// What each query of a step attends to, as read back for traces.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Selection {
    /// Per query: `None` = every causal key (the query has at most index_topk of them, so
    /// top-k keeps all, as in HF); `Some` = the chosen key positions, ascending.
    pub rows: Vec<Option<Vec<u32>>>,
}

impl Selection {
    pub fn row(&self, i: usize) -> Option<&[u32]> {
        self.rows.get(i).and_then(|r| r.as_deref())
    }

    /// How many keys query `i` at `pos` sees at most (its selection's size, else pos + 1).
    pub fn key_count(&self, i: usize, pos: usize) -> usize {
        key_count(self.row(i), pos)
    }

    /// Keys query `i` at `pos` may see: causal, and within its selection.
    pub fn keys(&self, i: usize, pos: usize) -> Vec<usize> {
        causal_keys(self.row(i), pos)
    }
}

/// How many keys a query at `pos` with selection `row` (None: every causal key) sees at most.
pub fn key_count(row: Option<&[u32]>, pos: usize) -> usize {
    row.map_or(pos + 1, |set| set.len().min(pos + 1))
}

/// Keys a query at `pos` with selection `row` may see: causal, and within its selection.
pub fn causal_keys(row: Option<&[u32]>, pos: usize) -> Vec<usize> {
    let mut keys = Vec::with_capacity(key_count(row, pos));
    for_each_causal_key(row, pos, |t| keys.push(t));
    keys
}

/// `f` on each key of `causal_keys`, in order, without collecting them.
pub fn for_each_causal_key(row: Option<&[u32]>, pos: usize, f: impl FnMut(usize)) {
    match row {
        None => (0..=pos).for_each(f),
        Some(set) => set.iter().map(|&t| t as usize).filter(|&t| t <= pos).for_each(f),
    }
}
