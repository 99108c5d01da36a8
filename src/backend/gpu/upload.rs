//! Weights copied once from the checkpoint's mmap into device memory, in the format the
//! kernels read, with progress in the log.

use std::sync::atomic::Ordering;
use std::time::Instant;

use super::launch::{Dense, WeightBufs};
use super::{DeviceWeight, GpuBackend, PROGRESS_EVERY_S, usage};
use crate::device::Buffer;
use crate::error::Result;
use crate::log;
use crate::weights::{Linear, Stored};

impl GpuBackend {
    fn upload_bytes(&self, bytes: &[u8]) -> Result<Buffer> {
        let b = self.gpu.upload(bytes)?;
        let total = self.uploaded.fetch_add(bytes.len() as u64, Ordering::Relaxed) + bytes.len() as u64;
        let mut last = self.last_progress.lock().unwrap_or_else(|e| e.into_inner());
        if last.elapsed().as_secs() >= PROGRESS_EVERY_S {
            *last = Instant::now();
            log::info(
                "weights_upload",
                format!("weights: {} copied to {}", crate::plan::gb(total as f64), self.gpu.describe()),
            )
            .field("bytes", total)
            .emit();
        }
        Ok(b)
    }

    /// One weight, its bytes uploaded as stored (f16 and fp8, which have no kernel of their
    /// own, widened to f32 once here).
    pub(super) fn weight_bufs(&self, w: &Linear) -> Result<(WeightBufs, &'static str)> {
        let bufs = match w.stored() {
            Stored::Mxfp4 { codes, scales } => {
                WeightBufs::Mxfp4 { codes: self.upload_bytes(codes)?, scales: self.upload_bytes(scales)? }
            }
            Stored::Dense { dtype: safetensors::Dtype::BF16, bytes } => {
                WeightBufs::Dense { format: Dense::Bf16, w: self.upload_bytes(bytes)? }
            }
            Stored::Dense { dtype: safetensors::Dtype::F32, bytes } => {
                WeightBufs::Dense { format: Dense::F32, w: self.upload_bytes(bytes)? }
            }
            Stored::Dense { .. } => WeightBufs::Dense { format: Dense::F32, w: self.upload_bytes(&widened(w))? },
        };
        let family = bufs.family();
        Ok((bufs, family))
    }

    /// Several [rows, cols] weights of one format as one [G, rows, cols] weight.
    pub(super) fn stacked(&self, ws: &[&Linear]) -> Result<DeviceWeight> {
        let first = ws.first().ok_or_else(|| usage("no experts to upload".into()))?;
        let (rows, cols) = (first.rows, first.cols);
        if ws.iter().any(|w| w.rows != rows || w.cols != cols || w.is_mxfp4() != first.is_mxfp4()) {
            return Err(usage("experts of one layer differ in shape or format".into()));
        }
        let bufs = match first.stored() {
            Stored::Mxfp4 { .. } => {
                let (mut codes, mut scales) = (Vec::new(), Vec::new());
                for w in ws {
                    if let Stored::Mxfp4 { codes: c, scales: s } = w.stored() {
                        codes.extend_from_slice(c);
                        scales.extend_from_slice(s);
                    }
                }
                WeightBufs::Mxfp4 { codes: self.upload_bytes(&codes)?, scales: self.upload_bytes(&scales)? }
            }
            Stored::Dense { dtype, .. } => {
                // bf16 and f32 stacks keep their bytes; anything else (or a mix) widens to f32.
                let raw = matches!(dtype, safetensors::Dtype::BF16 | safetensors::Dtype::F32)
                    && ws.iter().all(|w| matches!(w.stored(), Stored::Dense { dtype: d, .. } if d == dtype));
                let mut all = Vec::new();
                for w in ws {
                    match w.stored() {
                        Stored::Dense { bytes, .. } if raw => all.extend_from_slice(bytes),
                        _ => all.extend(widened(w)),
                    }
                }
                let format = if raw && dtype == safetensors::Dtype::BF16 { Dense::Bf16 } else { Dense::F32 };
                WeightBufs::Dense { format, w: self.upload_bytes(&all)? }
            }
        };
        let family = bufs.family();
        Ok(DeviceWeight { bufs, rows, cols, family })
    }
}

/// A weight's values as little-endian f32 bytes.
fn widened(w: &Linear) -> Vec<u8> {
    w.to_f32().iter().flat_map(|v| v.to_le_bytes()).collect()
}
