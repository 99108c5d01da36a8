//! Non-finite values in the weights: NaN or infinity in a float tensor, the NaN code of an
//! fp8 e4m3 tensor, the NaN scale (0xFF) of an MXFP4 tensor. One such value turns every
//! logit it reaches into NaN, so `kiln verify --full` and `kiln serve` look for them.

use rayon::prelude::*;

use super::{Checkpoint, Dtype};
use crate::plan::Problem;

/// The first non-finite element of `bytes` as `dtype`, if any (index, description).
pub fn first_non_finite(dtype: Dtype, bytes: &[u8], is_scale: bool) -> Option<(usize, &'static str)> {
    match dtype {
        Dtype::F32 => bytes
            .chunks_exact(4)
            .position(|c| u32::from_le_bytes([c[0], c[1], c[2], c[3]]) & 0x7F80_0000 == 0x7F80_0000)
            .map(|i| (i, "NaN or infinity")),
        Dtype::BF16 => bytes
            .chunks_exact(2)
            .position(|c| u16::from_le_bytes([c[0], c[1]]) & 0x7F80 == 0x7F80)
            .map(|i| (i, "NaN or infinity")),
        Dtype::F16 => bytes
            .chunks_exact(2)
            .position(|c| u16::from_le_bytes([c[0], c[1]]) & 0x7C00 == 0x7C00)
            .map(|i| (i, "NaN or infinity")),
        Dtype::F8_E4M3 => bytes.iter().position(|b| b & 0x7F == 0x7F).map(|i| (i, "the e4m3 NaN code")),
        // E8M0 scales: 0xFF is NaN. Packed E2M1 codes have no such value.
        Dtype::U8 if is_scale => bytes.iter().position(|&b| b == 0xFF).map(|i| (i, "the E8M0 NaN scale 0xFF")),
        _ => None,
    }
}

/// Every tensor of `ckpt` that `which` selects, on all cores when `parallel` (a foreground
/// check) or on the calling thread (beside a serving engine); one problem per bad tensor.
pub fn scan(
    ckpt: &Checkpoint,
    which: &(dyn Fn(&str) -> bool + Sync),
    parallel: bool,
    progress: &(dyn Fn(u64) + Sync),
) -> Vec<Problem> {
    let tensors: Vec<(&str, &super::TensorInfo)> = ckpt.tensors().filter(|(n, _)| which(n)).collect();
    let check = |(name, info): &(&str, &super::TensorInfo)| {
        let bytes = ckpt.bytes(info);
        let hit = first_non_finite(info.dtype, bytes, name.ends_with(".weight_scale"));
        progress(bytes.len() as u64);
        hit.map(|(i, what)| Problem::new(*name, format!("{name} holds {what} at element {i}")))
    };
    let mut found: Vec<Problem> = if parallel {
        tensors.par_iter().filter_map(check).collect()
    } else {
        tensors.iter().filter_map(check).collect()
    };
    found.sort_by(|a, b| a.key.cmp(&b.key));
    found
}

/// The tensors worth checking before listening: small ones (norms, biases) and the output
/// head, which every logit passes through. The rest is checked while serving.
pub fn checked_first(name: &str, ckpt: &Checkpoint) -> bool {
    const SMALL: usize = 1 << 20;
    name.starts_with("lm_head.") || ckpt.get(name).is_some_and(|t| ckpt.bytes(t).len() <= SMALL)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_each_kind_of_non_finite_value() {
        assert_eq!(first_non_finite(Dtype::F32, &[0, 0, 0x80, 0x3F, 0, 0, 0xC0, 0x7F], false).map(|x| x.0), Some(1));
        assert_eq!(first_non_finite(Dtype::BF16, &[0x80, 0x3F, 0x80, 0xFF], false).map(|x| x.0), Some(1));
        assert_eq!(first_non_finite(Dtype::F16, &[0x00, 0x3C, 0x00, 0x7C], false).map(|x| x.0), Some(1));
        assert_eq!(first_non_finite(Dtype::F8_E4M3, &[0x38, 0x7E, 0xFF], false).map(|x| x.0), Some(2));
        assert_eq!(first_non_finite(Dtype::U8, &[0x7F, 0xFF], true).map(|x| x.0), Some(1));
        assert_eq!(first_non_finite(Dtype::U8, &[0xFF, 0xFF], false), None);
        assert_eq!(first_non_finite(Dtype::BF16, &[0x80, 0x3F, 0x80, 0x7F - 1], false), None);
    }
}
