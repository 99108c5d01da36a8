//! The host page table: fixed-size pages of token slots, page tables per sequence,
//! reference counts, a free list and the prefix cache over full pages. Pure data: the KV bytes
//! live in the backend's KV store, addressed by the slots this hands out (token t of a
//! sequence lives in slot pages[t / page_size] * page_size + t % page_size), and `check`
//! verifies every invariant.

use super::prefix::{PrefixCache, chain_hash};

pub type PageId = u32;

/// One sequence's view of the pool.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SeqKv {
    /// Page table: token t lives in pages[t / page_size], slot t % page_size.
    pub pages: Vec<PageId>,
    /// Tokens whose KV is written.
    pub len: usize,
    /// Chain hashes of the leading full pages (registered or found in the cache).
    hashes: Vec<u64>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OutOfPages {
    pub needed: usize,
    pub free: usize,
}

/// A page whose contents must be copied before a sequence writes into it (copy on write
/// for a partly kept page that others share or the prefix cache holds).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PageCopy {
    pub from: PageId,
    pub to: PageId,
}

pub struct PageTable {
    pub page_size: usize,
    pages: usize,
    /// Per page: sequences referencing it.
    refs: Vec<u32>,
    free: Vec<PageId>,
    prefix: PrefixCache,
    prefix_enabled: bool,
    /// Grow instead of failing when out of pages (single-sequence CPU use).
    growable: bool,
}

impl PageTable {
    pub fn new(page_size: usize, pages: usize, prefix_cache: bool) -> PageTable {
        let mut t = PageTable {
            page_size,
            pages: 0,
            refs: Vec::new(),
            free: Vec::new(),
            prefix: PrefixCache::new(0),
            prefix_enabled: prefix_cache,
            growable: false,
        };
        t.grow_to(pages);
        t
    }

    /// A table for one sequence that grows as it needs (no prefix cache). Its store must
    /// grow along: `total_pages` says to what.
    pub fn growable(page_size: usize) -> PageTable {
        let mut t = PageTable::new(page_size, 0, false);
        t.growable = true;
        t
    }

    fn grow_to(&mut self, pages: usize) {
        self.refs.resize(pages, 0);
        self.free.extend((self.pages as PageId..pages as PageId).rev());
        self.prefix.grow(pages);
        self.pages = pages;
    }

    pub fn total_pages(&self) -> usize {
        self.pages
    }

    /// Pages a new request can get: free ones plus evictable cached ones.
    pub fn available_pages(&self) -> usize {
        self.free.len() + self.prefix.parked()
    }

    /// Fraction of pages held by sequences.
    pub fn usage(&self) -> f64 {
        let used = self.pages - self.available_pages();
        used as f64 / self.pages.max(1) as f64
    }

    fn take_page(&mut self) -> Option<PageId> {
        if let Some(p) = self.free.pop() {
            return Some(p);
        }
        if let Some(p) = self.prefix.evict() {
            return Some(p);
        }
        if self.growable {
            let n = (self.pages * 2).max(4);
            self.grow_to(n);
            return self.free.pop();
        }
        None
    }

    /// Pages `seq` still needs to hold `len` tokens.
    pub fn pages_needed(&self, seq: &SeqKv, len: usize) -> usize {
        len.div_ceil(self.page_size).saturating_sub(seq.pages.len())
    }

    /// Gives `seq` pages for `len` tokens; on failure nothing changes.
    pub fn reserve(&mut self, seq: &mut SeqKv, len: usize) -> Result<(), OutOfPages> {
        let needed = self.pages_needed(seq, len);
        if needed > self.available_pages() && !self.growable {
            return Err(OutOfPages { needed, free: self.available_pages() });
        }
        for _ in 0..needed {
            let p = self.take_page().expect("counted above");
            self.refs[p as usize] = 1;
            seq.pages.push(p);
        }
        Ok(())
    }

    /// Attaches the longest cached prefix of `prompt` to an empty `seq`, whole pages only and
    /// never the last token (its logits must be computed). Returns the tokens reused.
    pub fn attach_prefix(&mut self, seq: &mut SeqKv, prompt: &[u32]) -> usize {
        if !self.prefix_enabled || !seq.pages.is_empty() {
            return 0;
        }
        let full = prompt.len().saturating_sub(1) / self.page_size;
        let mut h = 0;
        for i in 0..full {
            let tokens = &prompt[i * self.page_size..(i + 1) * self.page_size];
            let next = chain_hash(h, tokens);
            let Some(p) = self.prefix.find(next, tokens) else { break };
            seq.hashes.push(next);
            if self.refs[p as usize] == 0 {
                self.prefix.unpark(p);
            }
            self.refs[p as usize] += 1;
            seq.pages.push(p);
            h = next;
        }
        seq.len = seq.pages.len() * self.page_size;
        seq.len
    }

    /// After `seq.len` has advanced over `tokens` (all of the sequence's tokens so far):
    /// registers the pages that became full in the prefix cache.
    pub fn commit(&mut self, seq: &mut SeqKv, tokens: &[u32]) {
        if !self.prefix_enabled {
            return;
        }
        while (seq.hashes.len() + 1) * self.page_size <= seq.len.min(tokens.len()) {
            let i = seq.hashes.len();
            let page_tokens = &tokens[i * self.page_size..(i + 1) * self.page_size];
            let h = chain_hash(seq.hashes.last().copied().unwrap_or(0), page_tokens);
            self.prefix.register(seq.pages[i], h, page_tokens);
            seq.hashes.push(h);
        }
    }

    /// Drops tokens from `len` on (speculative rollback): pages past it are released. A
    /// partly kept page that is cached or shared is replaced by a fresh one, and the caller
    /// copies its contents in the KV store (the returned `PageCopy`) before anything writes
    /// there, so what others see of the old page never changes.
    pub fn truncate(&mut self, seq: &mut SeqKv, len: usize) -> Result<Option<PageCopy>, OutOfPages> {
        if len >= seq.len {
            return Ok(None);
        }
        let keep = len.div_ceil(self.page_size);
        let partial = !len.is_multiple_of(self.page_size);
        let mut copy = None;
        if partial {
            let p = seq.pages[keep - 1];
            if self.prefix.is_cached(p) || self.refs[p as usize] > 1 {
                let q = self.take_page().ok_or(OutOfPages { needed: 1, free: 0 })?;
                copy = Some(PageCopy { from: p, to: q });
                self.refs[q as usize] = 1;
                seq.pages[keep - 1] = q;
                self.unref(p);
            }
        }
        for p in seq.pages.split_off(keep) {
            self.unref(p);
        }
        seq.len = len;
        seq.hashes.truncate(len / self.page_size);
        Ok(copy)
    }

    /// Returns every page of `seq` to the pool (cached ones stay findable until evicted).
    pub fn release(&mut self, seq: &mut SeqKv) {
        for p in std::mem::take(&mut seq.pages) {
            self.unref(p);
        }
        *seq = SeqKv::default();
    }

    fn unref(&mut self, p: PageId) {
        let r = &mut self.refs[p as usize];
        *r -= 1;
        if *r == 0 {
            if self.prefix.is_cached(p) {
                self.prefix.park(p);
            } else {
                self.free.push(p);
            }
        }
    }

    /// Where token `pos` of `seq` lives in the KV store.
    pub fn slot(&self, seq: &SeqKv, pos: usize) -> usize {
        seq.pages[pos / self.page_size] as usize * self.page_size + pos % self.page_size
    }

    /// Token slots the table covers (its store's size).
    pub fn total_slots(&self) -> usize {
        self.pages * self.page_size
    }

    /// Every invariant, given every live sequence: each page is free, parked, or referenced
    /// exactly as many times as sequences hold it; nothing is both; the prefix cache agrees.
    pub fn check(&self, seqs: &[&SeqKv]) -> Result<(), String> {
        let mut held = vec![0u32; self.pages];
        for s in seqs {
            if s.len > s.pages.len() * self.page_size {
                return Err(format!("a sequence of {} tokens holds only {} pages", s.len, s.pages.len()));
            }
            for &p in &s.pages {
                held[p as usize] += 1;
            }
        }
        let mut is_free = vec![false; self.pages];
        for &p in &self.free {
            if std::mem::replace(&mut is_free[p as usize], true) {
                return Err(format!("page {p} is on the free list twice"));
            }
        }
        for p in 0..self.pages {
            let (refs, parked, free) = (self.refs[p], self.prefix.is_parked(p as PageId), is_free[p]);
            if refs != held[p] {
                return Err(format!("page {p} has refcount {refs} but {} sequences hold it", held[p]));
            }
            match (refs > 0, parked, free) {
                (true, false, false) | (false, true, false) | (false, false, true) => {}
                _ => return Err(format!("page {p}: refs {refs}, parked {parked}, free {free}")),
            }
            if free && self.prefix.is_cached(p as PageId) {
                return Err(format!("page {p} is free but still cached"));
            }
        }
        self.prefix.check()
    }
}
