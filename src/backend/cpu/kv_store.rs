//! The CPU backend's KV store: per layer, one byte array of entries in the plan's format,
//! indexed by slot (the page table's addressing). Ops write new tokens' entries and read the
//! entries they attend to in place, or copy out just those (a scattered top-k); nothing
//! gathers a sequence's history.

use super::kernels::RowsRef;
use crate::kv::{KvFormat, KvGeometry, PageCopy};

pub struct HostKvStore {
    pub format: KvFormat,
    pub geometry: KvGeometry,
    slots: usize,
    /// Per layer: [slots, mla_bytes].
    mla: Vec<Vec<u8>>,
    /// Per layer: [slots, index_bytes]; empty on layers without indexer keys.
    index: Vec<Vec<u8>>,
}

impl HostKvStore {
    /// A store of `slots` entries per layer, every page of it touched now: the memory the
    /// plan gives the KV cache is committed at start-up (an overcommitted host fails here,
    /// not under load), and serving does not grow the process as the cache fills.
    pub fn new(format: KvFormat, geometry: KvGeometry, slots: usize) -> HostKvStore {
        let layers = geometry.indexed.len();
        let mut s =
            HostKvStore { format, geometry, slots: 0, mla: vec![Vec::new(); layers], index: vec![Vec::new(); layers] };
        s.grow(slots);
        for buf in s.mla.iter_mut().chain(s.index.iter_mut()) {
            touch(buf);
        }
        s
    }

    /// Bytes the store holds.
    pub fn bytes(&self) -> usize {
        self.mla.iter().chain(&self.index).map(Vec::len).sum()
    }

    pub fn slots(&self) -> usize {
        self.slots
    }

    /// Makes room for `slots` entries per layer (never shrinks). New room is mapped as it is
    /// first written (single-sequence caches grow this way).
    pub fn grow(&mut self, slots: usize) {
        if slots <= self.slots {
            return;
        }
        let (mla, idx) = (self.mla_bytes(), self.index_bytes());
        let grow = |buf: &mut Vec<u8>, n: usize| {
            if buf.is_empty() {
                *buf = vec![0u8; n];
            } else {
                buf.resize(n, 0);
            }
        };
        for (l, &indexed) in self.geometry.indexed.iter().enumerate() {
            grow(&mut self.mla[l], slots * mla);
            if indexed {
                grow(&mut self.index[l], slots * idx);
            }
        }
        self.slots = slots;
    }

    /// Bytes of one token's MLA entry.
    pub fn mla_bytes(&self) -> usize {
        self.format.mla_bytes(&self.geometry)
    }

    /// Bytes of one token's indexer key.
    pub fn index_bytes(&self) -> usize {
        self.format.index_bytes(&self.geometry)
    }

    pub fn write_mla(&mut self, layer: usize, slot: usize, latent: &[f32], rope: &[f32]) {
        let b = self.mla_bytes();
        self.format.encode_mla(latent, rope, &mut self.mla[layer][slot * b..(slot + 1) * b]);
    }

    pub fn write_index(&mut self, layer: usize, slot: usize, key: &[f32]) {
        let b = self.index_bytes();
        self.format.encode_index(key, &mut self.index[layer][slot * b..(slot + 1) * b]);
    }

    /// One entry decoded: latent [r] and rope key [dr].
    pub fn read_mla(&self, layer: usize, slot: usize, latent: &mut [f32], rope: &mut [f32]) {
        let b = self.mla_bytes();
        self.format.decode_mla(&self.mla[layer][slot * b..(slot + 1) * b], latent, rope);
    }

    /// One indexer key decoded [Di].
    pub fn read_index(&self, layer: usize, slot: usize, key: &mut [f32]) {
        let b = self.index_bytes();
        self.format.decode_index(&self.index[layer][slot * b..(slot + 1) * b], key);
    }

    /// MLA entries ([latent | rope]) of `n` consecutive slots from `slot` on, in place, when
    /// the kernels read the format as it is stored (f32 and bf16; fp8 latents carry scales).
    pub fn mla_rows(&self, layer: usize, slot: usize, n: usize) -> Option<RowsRef<'_>> {
        let b = self.mla_bytes();
        self.as_rows(&self.mla[layer][slot * b..(slot + n) * b])
    }

    /// One token's MLA entry as stored.
    pub fn mla_entry(&self, layer: usize, slot: usize) -> &[u8] {
        let b = self.mla_bytes();
        &self.mla[layer][slot * b..(slot + 1) * b]
    }

    /// Whether the kernels read this store's entries as they are stored (`mla_rows`).
    pub fn reads_in_place(&self) -> bool {
        self.as_rows(&[]).is_some()
    }

    /// Indexer keys of `n` consecutive slots from `slot` on, in place, likewise (fp8 keys
    /// carry a scale and are decoded).
    pub fn index_rows(&self, layer: usize, slot: usize, n: usize) -> Option<RowsRef<'_>> {
        let b = self.index_bytes();
        self.as_rows(&self.index[layer][slot * b..(slot + n) * b])
    }

    /// Entries of the store's format (in place, or copied out with `mla_entry`) as kernel
    /// rows, where the kernels read it as stored.
    pub fn as_rows<'a>(&self, bytes: &'a [u8]) -> Option<RowsRef<'a>> {
        match self.format {
            KvFormat::F32 => Some(RowsRef::F32(bytes)),
            KvFormat::Bf16 => Some(RowsRef::Bf16(bytes)),
            KvFormat::Fp8E4m3 => None,
        }
    }

    /// A layer's raw MLA entries and indexer keys [slots, bytes per entry], as a device copy
    /// of the store holds them.
    pub fn layer_bytes(&self, layer: usize) -> (&[u8], &[u8]) {
        (&self.mla[layer], &self.index[layer])
    }

    /// Copies a page's entries of every layer (the page table's copy on write).
    pub fn copy_page(&mut self, c: PageCopy, page_size: usize) {
        let (mla, idx) = (self.mla_bytes(), self.index_bytes());
        let (from, to) = (c.from as usize * page_size, c.to as usize * page_size);
        for l in 0..self.mla.len() {
            self.mla[l].copy_within(from * mla..(from + page_size) * mla, to * mla);
            if !self.index[l].is_empty() {
                self.index[l].copy_within(from * idx..(from + page_size) * idx, to * idx);
            }
        }
    }
}

/// Writes every page of `buf` once, so the kernel backs it now.
fn touch(buf: &mut [u8]) {
    const PAGE: usize = 4096;
    for i in (0..buf.len()).step_by(PAGE) {
        // SAFETY: i is in bounds. Volatile, because the buffer is known to be zero and a plain
        // store of zero could be optimized away.
        unsafe { std::ptr::write_volatile(buf.as_mut_ptr().add(i), 0) };
    }
}
