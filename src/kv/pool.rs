//! The page pool: fixed-size pages of KV entries for every layer, page tables per sequence,
//! reference counts, and the prefix cache over full pages. Pure data structures: the bytes
//! live here, no device is touched, and `check` verifies every invariant.

use super::layout::{KvFormat, KvGeometry};
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

pub struct KvPool {
    pub format: KvFormat,
    pub geometry: KvGeometry,
    pub page_size: usize,
    pages: usize,
    /// Per layer: [pages, page_size, mla_bytes].
    mla: Vec<Vec<u8>>,
    /// Per layer: [pages, page_size, index_bytes]; empty on layers without indexer keys.
    index: Vec<Vec<u8>>,
    /// Per page: sequences referencing it.
    refs: Vec<u32>,
    free: Vec<PageId>,
    prefix: PrefixCache,
    prefix_enabled: bool,
    /// Grow instead of failing when out of pages (single-sequence CPU use).
    growable: bool,
}

impl KvPool {
    pub fn new(format: KvFormat, geometry: KvGeometry, page_size: usize, pages: usize, prefix_cache: bool) -> KvPool {
        let mut pool = KvPool {
            format,
            page_size,
            pages: 0,
            mla: vec![Vec::new(); geometry.indexed.len()],
            index: vec![Vec::new(); geometry.indexed.len()],
            refs: Vec::new(),
            free: Vec::new(),
            prefix: PrefixCache::new(0),
            prefix_enabled: prefix_cache,
            growable: false,
            geometry,
        };
        pool.grow_to(pages);
        pool
    }

    /// A pool for one sequence that grows as it needs (no prefix cache).
    pub fn growable(format: KvFormat, geometry: KvGeometry, page_size: usize) -> KvPool {
        let mut p = KvPool::new(format, geometry, page_size, 0, false);
        p.growable = true;
        p
    }

    fn grow_to(&mut self, pages: usize) {
        let (mla, idx) = (self.format.mla_bytes(&self.geometry), self.format.index_bytes(&self.geometry));
        // A fresh buffer comes from the allocator already zeroed (pages are mapped when first
        // written), so a large pool costs nothing until it fills.
        let grow = |buf: &mut Vec<u8>, n: usize| {
            if buf.is_empty() {
                *buf = vec![0u8; n];
            } else {
                buf.resize(n, 0);
            }
        };
        for (l, &indexed) in self.geometry.indexed.iter().enumerate() {
            grow(&mut self.mla[l], pages * self.page_size * mla);
            if indexed {
                grow(&mut self.index[l], pages * self.page_size * idx);
            }
        }
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
    /// partly kept page that is cached or shared is copied first, so what others see of it
    /// never changes.
    pub fn truncate(&mut self, seq: &mut SeqKv, len: usize) -> Result<(), OutOfPages> {
        if len >= seq.len {
            return Ok(());
        }
        let keep = len.div_ceil(self.page_size);
        let partial = len % self.page_size != 0;
        if partial {
            let p = seq.pages[keep - 1];
            if self.prefix.is_cached(p) || self.refs[p as usize] > 1 {
                let q = self.take_page().ok_or(OutOfPages { needed: 1, free: 0 })?;
                self.copy_page(p, q);
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
        Ok(())
    }

    fn copy_page(&mut self, from: PageId, to: PageId) {
        let (mla, idx) = (self.format.mla_bytes(&self.geometry), self.format.index_bytes(&self.geometry));
        let n = self.page_size;
        for l in 0..self.mla.len() {
            let (f, t) = (from as usize * n * mla, to as usize * n * mla);
            self.mla[l].copy_within(f..f + n * mla, t);
            if !self.index[l].is_empty() {
                let (f, t) = (from as usize * n * idx, to as usize * n * idx);
                self.index[l].copy_within(f..f + n * idx, t);
            }
        }
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

    /// A layer's raw MLA entries and indexer keys [pages * page_size, bytes per entry], as a
    /// device copy of the pool holds them.
    pub fn layer_bytes(&self, layer: usize) -> (&[u8], &[u8]) {
        (&self.mla[layer], &self.index[layer])
    }

    fn slot(&self, seq: &SeqKv, pos: usize) -> usize {
        seq.pages[pos / self.page_size] as usize * self.page_size + pos % self.page_size
    }

    /// Writes token `pos`'s MLA entry of `layer`.
    pub fn write_mla(&mut self, seq: &SeqKv, layer: usize, pos: usize, latent: &[f32], rope: &[f32]) {
        let b = self.format.mla_bytes(&self.geometry);
        let s = self.slot(seq, pos);
        self.format.encode_mla(latent, rope, &mut self.mla[layer][s * b..(s + 1) * b]);
    }

    pub fn write_index(&mut self, seq: &SeqKv, layer: usize, pos: usize, key: &[f32]) {
        let b = self.format.index_bytes(&self.geometry);
        let s = self.slot(seq, pos);
        self.format.encode_index(key, &mut self.index[layer][s * b..(s + 1) * b]);
    }

    /// Tokens 0..len of `layer` as f32: (latent [len, r], rope [len, dr]).
    pub fn gather_mla(&self, seq: &SeqKv, layer: usize, len: usize) -> (Vec<f32>, Vec<f32>) {
        let (r, dr) = (self.geometry.latent, self.geometry.rope);
        let b = self.format.mla_bytes(&self.geometry);
        let mut latent = vec![0.0; len * r];
        let mut rope = vec![0.0; len * dr];
        for t in 0..len {
            let s = self.slot(seq, t);
            self.format.decode_mla(
                &self.mla[layer][s * b..(s + 1) * b],
                &mut latent[t * r..(t + 1) * r],
                &mut rope[t * dr..(t + 1) * dr],
            );
        }
        (latent, rope)
    }

    /// Indexer keys of tokens 0..len of `layer` [len, Di].
    pub fn gather_index(&self, seq: &SeqKv, layer: usize, len: usize) -> Vec<f32> {
        let di = self.geometry.index;
        let b = self.format.index_bytes(&self.geometry);
        let mut keys = vec![0.0; len * di];
        for t in 0..len {
            let s = self.slot(seq, t);
            self.format.decode_index(&self.index[layer][s * b..(s + 1) * b], &mut keys[t * di..(t + 1) * di]);
        }
        keys
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
