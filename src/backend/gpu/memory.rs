//! What the GPU backend keeps in device memory: activations, weights in their stored format,
//! the paged KV store, a step's batch tables, selections and routings.

use super::launch::{Matrix, WeightBufs};
use crate::backend::StepBatch;
use crate::device::{Buffer, Gpu};
use crate::error::{Error, Result};
use crate::kv::{KvFormat, KvGeometry, PageCopy};

/// f32 activations [n, width] on the device.
pub struct DeviceRows {
    pub buf: Buffer,
    pub n: usize,
    pub width: usize,
}

impl DeviceRows {
    pub fn len(&self) -> usize {
        self.n * self.width
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// A [rows, cols] weight in its stored format, and the registry family that runs it.
pub struct DeviceWeight {
    pub bufs: WeightBufs,
    pub rows: usize,
    pub cols: usize,
    pub family: &'static str,
}

impl DeviceWeight {
    pub fn is_mxfp4(&self) -> bool {
        matches!(self.bufs, WeightBufs::Mxfp4 { .. })
    }

    /// Borrowed for a launch, shape [rows, cols].
    pub fn matrix(&self) -> Matrix<'_> {
        Matrix { view: self.bufs.view(), n: self.rows, k: self.cols }
    }
}

/// An f32 vector [len].
pub struct DeviceVector {
    pub buf: Buffer,
    pub len: usize,
}

/// One layer's routed experts, each projection's matrices back to back: gate and up
/// [E, W, D], down [E, D, W].
pub struct DeviceExperts {
    pub gate: DeviceWeight,
    pub up: DeviceWeight,
    pub down: DeviceWeight,
    pub experts: usize,
    /// Each expert's hidden width W.
    pub width: usize,
}

/// Every layer's KV entries in device memory: per layer [slots, entry bytes] of MLA entries
/// and, on indexer layers, of indexer keys.
pub struct DeviceKvStore {
    pub format: KvFormat,
    pub geometry: KvGeometry,
    pub slots: usize,
    pub mla: Vec<Buffer>,
    pub index: Vec<Option<Buffer>>,
}

impl DeviceKvStore {
    pub fn new(gpu: &Gpu, format: KvFormat, geometry: KvGeometry, slots: usize) -> Result<DeviceKvStore> {
        let (mla_bytes, index_bytes) = (format.mla_bytes(&geometry), format.index_bytes(&geometry));
        let mla = geometry.indexed.iter().map(|_| gpu.zeros::<u8>(slots * mla_bytes)).collect::<Result<_>>()?;
        let index = geometry
            .indexed
            .iter()
            .map(|&on| if on { gpu.zeros::<u8>(slots * index_bytes).map(Some) } else { Ok(None) })
            .collect::<Result<_>>()?;
        Ok(DeviceKvStore { format, geometry, slots, mla, index })
    }

    pub fn mla_bytes(&self) -> usize {
        self.format.mla_bytes(&self.geometry)
    }

    pub fn index_bytes(&self) -> usize {
        self.format.index_bytes(&self.geometry)
    }

    pub fn index_layer(&self, layer: usize) -> Result<&Buffer> {
        self.index.get(layer).and_then(Option::as_ref).ok_or_else(|| {
            Error::Usage(format!("KV store layer {layer} keeps no indexer keys (it is not an indexer layer)"))
        })
    }

    /// Room for `slots` entries per layer, the old entries copied (never shrinks).
    pub fn grow(&mut self, gpu: &Gpu, slots: usize) -> Result<()> {
        if slots <= self.slots {
            return Ok(());
        }
        let (mla_bytes, index_bytes) = (self.mla_bytes(), self.index_bytes());
        let old = self.slots;
        let regrow = |b: &Buffer, entry: usize| -> Result<Buffer> {
            let nb = gpu.zeros::<u8>(slots * entry)?;
            gpu.device.copy(nb.ptr(), b.ptr(), old * entry)?;
            Ok(nb)
        };
        for b in &mut self.mla {
            *b = regrow(b, mla_bytes)?;
        }
        for b in self.index.iter_mut().flatten() {
            *b = regrow(b, index_bytes)?;
        }
        self.slots = slots;
        Ok(())
    }

    /// The page table's copy on write, in every layer.
    pub fn copy_page(&self, gpu: &Gpu, c: PageCopy, page_size: usize) -> Result<()> {
        let (from, to) = (c.from as usize * page_size, c.to as usize * page_size);
        if from.max(to) + page_size > self.slots {
            return Err(Error::Usage(format!("KV page copy {c:?} beyond the store's {} slots", self.slots)));
        }
        let copy = |b: &Buffer, entry: usize| {
            gpu.device.copy(b.ptr() + (to * entry) as u64, b.ptr() + (from * entry) as u64, page_size * entry)
        };
        for b in &self.mla {
            copy(b, self.mla_bytes())?;
        }
        for b in self.index.iter().flatten() {
            copy(b, self.index_bytes())?;
        }
        Ok(())
    }
}

/// A step's tables on the device.
pub struct DeviceBatch {
    /// The host batch (positions for selections read back, the step's size).
    pub step: StepBatch,
    pub tokens: Buffer,    // [N] i32
    pub positions: Buffer, // [N] i32
    pub slots: Buffer,     // [N] i32 each token's own entry
    pub pages: Buffer,     // [N, max_pages] i32 each token's page table (padded with 0)
    pub lens: Buffer,      // [N] i32 keys visible to each token (position + 1)
    pub max_pages: usize,
    /// The longest visible length (the indexer's score row stride).
    pub max_len: usize,
}

impl DeviceBatch {
    pub fn new(gpu: &Gpu, b: &StepBatch) -> Result<DeviceBatch> {
        let to_i32 = |v: usize| i32::try_from(v).map_err(|_| Error::Usage(format!("batch value {v} beyond i32")));
        let n = b.len();
        let max_pages = b.page_tables.iter().map(Vec::len).max().unwrap_or(0).max(1);
        let mut pages = vec![0i32; n * max_pages];
        for (i, row) in pages.chunks_mut(max_pages).enumerate() {
            for (p, &page) in row.iter_mut().zip(&b.page_tables[b.seq[i]]) {
                *p = to_i32(page as usize)?;
            }
        }
        let tokens: Vec<i32> = b.tokens.iter().map(|&t| to_i32(t as usize)).collect::<Result<_>>()?;
        let positions: Vec<i32> = b.positions.iter().map(|&p| to_i32(p)).collect::<Result<_>>()?;
        let slots: Vec<i32> = b.slots().into_iter().map(to_i32).collect::<Result<_>>()?;
        let lens: Vec<i32> = b.positions.iter().map(|&p| to_i32(p + 1)).collect::<Result<_>>()?;
        Ok(DeviceBatch {
            step: b.clone(),
            tokens: gpu.upload(&tokens)?,
            positions: gpu.upload(&positions)?,
            slots: gpu.upload(&slots)?,
            pages: gpu.upload(&pages)?,
            lens: gpu.upload(&lens)?,
            max_pages,
            max_len: b.positions.iter().max().map_or(0, |p| p + 1),
        })
    }
}

/// The keys each token of a step attends to.
pub enum DeviceSelection {
    /// Every visible key.
    All { n: usize },
    /// Per token up to `topk` key positions [n, topk] i32 (-1 unused); tokens at positions
    /// below `topk` hold their whole window.
    TopK { idx: Buffer, n: usize, topk: usize, positions: Vec<usize> },
}

/// Each token's experts [n, k] i32 (ascending) and weights [n, k] f32.
pub struct DeviceRouting {
    pub idx: Buffer,
    pub weights: Buffer,
    pub n: usize,
    pub k: usize,
}
