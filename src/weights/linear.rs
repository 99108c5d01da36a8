//! Weight matrices as the checkpoint stores them, decoded a row at a time.

use safetensors::Dtype;

use super::decode::{decode_into, mxfp4_row};
use super::{Checkpoint, TensorBytes};

#[derive(Debug, Clone)]
enum Storage {
    /// bf16 / f16 / f32 / fp8, row-major [rows, cols].
    Dense { dtype: Dtype, bytes: TensorBytes },
    /// Quark MXFP4: codes [rows, cols/2], E8M0 scales [rows, cols/32].
    Mxfp4 { codes: TensorBytes, scales: TensorBytes },
}

/// A weight's stored bytes.
pub enum Stored<'a> {
    /// Row-major [rows, cols] of `dtype`.
    Dense { dtype: Dtype, bytes: &'a [u8] },
    /// codes [rows, cols/2], E8M0 scales [rows, cols/32].
    Mxfp4 { codes: &'a [u8], scales: &'a [u8] },
}

/// A [rows, cols] weight (PyTorch Linear layout: y = x W^T), kept in the checkpoint's own
/// format and mapping; nothing is copied or converted up front.
#[derive(Debug, Clone)]
pub struct Linear {
    pub rows: usize,
    pub cols: usize,
    storage: Storage,
}

impl Linear {
    /// `{module}.weight` (+ `.weight_scale` when MXFP4). The caller has verified names,
    /// dtypes and shapes against the plan.
    pub fn load(ckpt: &Checkpoint, module: &str, rows: u64, cols: u64) -> Option<Linear> {
        let w = ckpt.get(&format!("{module}.weight"))?;
        let storage = match (w.dtype, ckpt.get(&format!("{module}.weight_scale"))) {
            (Dtype::U8, Some(s)) => Storage::Mxfp4 { codes: ckpt.tensor_bytes(w), scales: ckpt.tensor_bytes(s) },
            (dtype, _) => Storage::Dense { dtype, bytes: ckpt.tensor_bytes(w) },
        };
        Some(Linear { rows: rows as usize, cols: cols as usize, storage })
    }

    /// A dense weight from row-major [rows, cols] bytes of `dtype`.
    pub fn dense(dtype: Dtype, bytes: Vec<u8>, rows: usize, cols: usize) -> Linear {
        Linear { rows, cols, storage: Storage::Dense { dtype, bytes: TensorBytes::owned(bytes) } }
    }

    /// An MXFP4 weight from packed codes [rows, cols/2] and E8M0 scales [rows, cols/32].
    pub fn mxfp4(codes: Vec<u8>, scales: Vec<u8>, rows: usize, cols: usize) -> Linear {
        let storage = Storage::Mxfp4 { codes: TensorBytes::owned(codes), scales: TensorBytes::owned(scales) };
        Linear { rows, cols, storage }
    }

    /// The weight's bytes as the checkpoint stores them (what a device copy uploads).
    pub fn stored(&self) -> Stored<'_> {
        match &self.storage {
            Storage::Dense { dtype, bytes } => Stored::Dense { dtype: *dtype, bytes: bytes.as_slice() },
            Storage::Mxfp4 { codes, scales } => Stored::Mxfp4 { codes: codes.as_slice(), scales: scales.as_slice() },
        }
    }

    /// Bytes the weight occupies as stored (what reading it once costs).
    pub fn stored_bytes(&self) -> usize {
        match self.stored() {
            Stored::Dense { bytes, .. } => bytes.len(),
            Stored::Mxfp4 { codes, scales } => codes.len() + scales.len(),
        }
    }

    pub fn is_mxfp4(&self) -> bool {
        matches!(self.storage, Storage::Mxfp4 { .. })
    }

    /// Row `r` as f32 into `out` (len cols).
    pub fn row_into(&self, r: usize, out: &mut [f32]) {
        let c = self.cols;
        match &self.storage {
            Storage::Dense { dtype, bytes } => decode_into(*dtype, bytes.as_slice(), r * c, out),
            Storage::Mxfp4 { codes, scales } => {
                let (cb, sb) = (c.div_ceil(2), c.div_ceil(32));
                mxfp4_row(&codes.as_slice()[r * cb..(r + 1) * cb], &scales.as_slice()[r * sb..(r + 1) * sb], out)
            }
        }
    }

    /// Rows `range` as f32, row-major [range.len(), cols].
    pub fn rows_f32(&self, range: std::ops::Range<usize>) -> Vec<f32> {
        let mut out = vec![0.0; range.len() * self.cols];
        for (i, r) in range.enumerate() {
            self.row_into(r, &mut out[i * self.cols..(i + 1) * self.cols]);
        }
        out
    }

    /// The whole matrix as f32 [rows, cols].
    pub fn to_f32(&self) -> Vec<f32> {
        self.rows_f32(0..self.rows)
    }
}

/// A 1-D tensor (norm weight or bias) decoded to f32 at load; these are tiny.
pub fn load_vector(ckpt: &Checkpoint, name: &str) -> Option<Vec<f32>> {
    let info = ckpt.get(name)?;
    let n: usize = info.shape.iter().product();
    let mut out = vec![0.0; n];
    decode_into(info.dtype, ckpt.bytes(info), 0, &mut out);
    Some(out)
}
