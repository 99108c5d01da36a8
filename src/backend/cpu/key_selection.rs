//! The indexer's choice of keys for a step's queries, as the CPU backend keeps it: every
//! query's chosen positions in one buffer, so a step makes no allocation per query.

use crate::backend::{Selection, batch};

/// Per query: every causal key, or its chosen positions (ascending) in `keys`.
#[derive(Debug, Clone, Default)]
pub struct KeySelection {
    keys: Vec<u32>,                    // [chosen keys of every query]
    rows: Vec<Option<(usize, usize)>>, // [N]: None = every causal key; (start, len) in `keys`
}

impl KeySelection {
    /// Every causal key for each of n queries.
    pub fn all(n: usize) -> KeySelection {
        KeySelection { keys: Vec::new(), rows: vec![None; n] }
    }

    /// Query i's chosen positions (ascending) at keys[start..start + len] for rows[i] =
    /// Some((start, len)); every causal key for None.
    pub fn new(keys: Vec<u32>, rows: Vec<Option<(usize, usize)>>) -> KeySelection {
        assert!(rows.iter().flatten().all(|&(s, l)| s + l <= keys.len()), "KeySelection: a row past its keys");
        KeySelection { keys, rows }
    }

    pub fn row(&self, i: usize) -> Option<&[u32]> {
        self.rows.get(i).copied().flatten().map(|(s, l)| &self.keys[s..s + l])
    }

    /// How many keys query `i` at `pos` sees at most (its selection's size, else pos + 1).
    pub fn key_count(&self, i: usize, pos: usize) -> usize {
        batch::key_count(self.row(i), pos)
    }

    /// Keys query `i` at `pos` may see: causal, and within its selection.
    pub fn keys(&self, i: usize, pos: usize) -> Vec<usize> {
        batch::causal_keys(self.row(i), pos)
    }

    /// As traces read it.
    pub fn to_selection(&self) -> Selection {
        Selection { rows: (0..self.rows.len()).map(|i| self.row(i).map(<[u32]>::to_vec)).collect() }
    }
}
