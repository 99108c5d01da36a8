//! Paged KV caches with random contents for the attention and indexer cases: sequences whose
//! pages interleave in the store (so page-table indirection is exercised), written by the CPU
//! backend's own KV store.

use rand_chacha::ChaCha8Rng;

use super::uniform;
use crate::backend::cpu::HostKvStore;
use crate::kv::{KvFormat, KvGeometry, PageTable, SeqKv};

pub struct PagedCache {
    pub store: HostKvStore,
    pub table: PageTable,
    pub seqs: Vec<SeqKv>,
    /// Longest page table; kernels take [T, max_pages] rows.
    pub max_pages: usize,
}

impl PagedCache {
    /// One sequence of each length in `lens`, layer 0 only, every entry random.
    pub fn random(
        format: KvFormat,
        geometry: KvGeometry,
        page: usize,
        lens: &[usize],
        rng: &mut ChaCha8Rng,
    ) -> PagedCache {
        let pages: usize = lens.iter().map(|l| l.div_ceil(page)).sum();
        let mut table = PageTable::new(page, pages, false);
        let mut seqs = vec![SeqKv::default(); lens.len()];
        // Page by page, round robin over the sequences.
        let mut grown = true;
        while grown {
            grown = false;
            for (s, &len) in seqs.iter_mut().zip(lens) {
                let want = (s.pages.len() + 1) * page;
                if s.pages.len() * page < len {
                    table.reserve(s, want.min(len)).expect("sized above");
                    grown = true;
                }
            }
        }
        let mut store = HostKvStore::new(format, geometry.clone(), table.total_slots());
        for (s, &len) in seqs.iter_mut().zip(lens) {
            for pos in 0..len {
                let slot = table.slot(s, pos);
                store.write_mla(0, slot, &uniform(rng, geometry.latent, 1.0), &uniform(rng, geometry.rope, 1.0));
                if geometry.indexed[0] {
                    store.write_index(0, slot, &uniform(rng, geometry.index, 1.0));
                }
            }
            s.len = len;
        }
        let max_pages = seqs.iter().map(|s| s.pages.len()).max().unwrap_or(0).max(1);
        PagedCache { store, table, seqs, max_pages }
    }

    /// [T, max_pages] page ids of each sequence (rows padded with 0).
    pub fn page_rows(&self) -> Vec<i32> {
        let mut out = vec![0i32; self.seqs.len() * self.max_pages];
        for (i, s) in self.seqs.iter().enumerate() {
            for (j, &p) in s.pages.iter().enumerate() {
                out[i * self.max_pages + j] = p as i32;
            }
        }
        out
    }

    /// The slots of sequence `i` at `positions`.
    pub fn slots(&self, i: usize, positions: &[usize]) -> Vec<usize> {
        positions.iter().map(|&p| self.table.slot(&self.seqs[i], p)).collect()
    }
}
