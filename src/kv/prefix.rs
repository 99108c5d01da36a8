//! The prefix cache's bookkeeping: full pages named by a hash chained over their tokens, so a
//! page is found only when every token before it matches too; unreferenced cached pages wait
//! in an LRU list until a new page is needed.

use std::collections::{BTreeMap, HashMap};
use std::hash::{DefaultHasher, Hash, Hasher};

use super::page_table::PageId;

/// The hash of a full page given the hash of the page before it (0 for the first page).
pub fn chain_hash(previous: u64, tokens: &[u32]) -> u64 {
    let mut h = DefaultHasher::new();
    previous.hash(&mut h);
    tokens.hash(&mut h);
    h.finish()
}

#[derive(Debug, Default, Clone)]
pub struct PrefixCache {
    by_hash: HashMap<u64, PageId>,
    /// Per page: its chain hash and tokens when registered.
    entry: Vec<Option<(u64, Vec<u32>)>>,
    /// Unreferenced cached pages by last use.
    lru: BTreeMap<u64, PageId>,
    /// Per page: its key in `lru` (0 = not there).
    lru_key: Vec<u64>,
    tick: u64,
}

impl PrefixCache {
    pub fn new(pages: usize) -> PrefixCache {
        PrefixCache { entry: vec![None; pages], lru_key: vec![0; pages], ..Default::default() }
    }

    pub fn grow(&mut self, pages: usize) {
        self.entry.resize(pages, None);
        self.lru_key.resize(pages, 0);
    }

    /// The page holding exactly `tokens` after the chain `hash` names, if cached.
    pub fn find(&self, hash: u64, tokens: &[u32]) -> Option<PageId> {
        let p = *self.by_hash.get(&hash)?;
        match &self.entry[p as usize] {
            Some((h, t)) if *h == hash && t == tokens => Some(p),
            _ => None,
        }
    }

    pub fn is_cached(&self, p: PageId) -> bool {
        self.entry[p as usize].is_some()
    }

    /// Registers a full page; false when that content is already cached on another page.
    pub fn register(&mut self, p: PageId, hash: u64, tokens: &[u32]) -> bool {
        if self.by_hash.contains_key(&hash) || self.entry[p as usize].is_some() {
            return false;
        }
        self.by_hash.insert(hash, p);
        self.entry[p as usize] = Some((hash, tokens.to_vec()));
        true
    }

    /// An unreferenced cached page becomes evictable.
    pub fn park(&mut self, p: PageId) {
        self.tick += 1;
        self.lru.insert(self.tick, p);
        self.lru_key[p as usize] = self.tick;
    }

    /// A parked page is referenced again.
    pub fn unpark(&mut self, p: PageId) {
        let k = std::mem::take(&mut self.lru_key[p as usize]);
        if k != 0 {
            self.lru.remove(&k);
        }
    }

    pub fn is_parked(&self, p: PageId) -> bool {
        self.lru_key[p as usize] != 0
    }

    /// Takes the least recently used parked page and forgets its contents.
    pub fn evict(&mut self) -> Option<PageId> {
        let (_, p) = self.lru.pop_first()?;
        self.lru_key[p as usize] = 0;
        if let Some((h, _)) = self.entry[p as usize].take() {
            self.by_hash.remove(&h);
        }
        Some(p)
    }

    pub fn parked(&self) -> usize {
        self.lru.len()
    }

    /// by_hash, entry and the LRU agree with each other.
    pub fn check(&self) -> Result<(), String> {
        for (h, &p) in &self.by_hash {
            match &self.entry[p as usize] {
                Some((eh, _)) if eh == h => {}
                _ => return Err(format!("hash {h:x} points at page {p}, which is not registered under it")),
            }
        }
        let registered = self.entry.iter().filter(|e| e.is_some()).count();
        if registered != self.by_hash.len() {
            return Err(format!("{registered} registered pages but {} hashes", self.by_hash.len()));
        }
        for (&k, &p) in &self.lru {
            if self.lru_key[p as usize] != k {
                return Err(format!("LRU entry {k} for page {p} disagrees with its key"));
            }
            if self.entry[p as usize].is_none() {
                return Err(format!("page {p} is parked but not cached"));
            }
        }
        if self.lru_key.iter().filter(|&&k| k != 0).count() != self.lru.len() {
            return Err("LRU keys and entries differ in number".into());
        }
        Ok(())
    }
}
