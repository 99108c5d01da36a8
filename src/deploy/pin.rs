//! `kiln plan pin --weights DIR PLAN.toml`: writes the weights' digests into a plan.

use std::path::Path;
use std::process::ExitCode;

use super::foreground::{pin_now, tensors_mismatch};
use crate::error::{Error, Result};
use crate::plan;
use crate::weights::WeightsSource;
use crate::weights::pin::write_pin_into;

pub fn pin_plan(weights: &Path, file: &Path) -> Result<ExitCode> {
    let text = std::fs::read_to_string(file).map_err(|e| Error::io(file, e))?;
    let plan = plan::check(&text).map_err(Error::Plan)?;
    let src = WeightsSource::Dir(weights.to_path_buf());
    let ckpt = src.checkpoint()?;
    // A pin vouches for the bytes; the bytes must first be what the plan describes.
    if let Some(code) = tensors_mismatch(&plan, &src, &ckpt) {
        return Ok(code);
    }
    let pin = pin_now(&src, &ckpt)?;
    let note = format!(
        "Written by `kiln plan pin --weights {}`: {} files, {}. A binary baked from this plan serves these bytes only.",
        weights.display(),
        pin.files.len(),
        plan::gb(pin.total_bytes() as f64)
    );
    let pinned = write_pin_into(&text, &pin, &note).map_err(|m| Error::Config { path: file.into(), message: m })?;
    plan::check(&pinned).map_err(Error::Plan)?;
    let tmp = file.with_extension("toml.pinning");
    std::fs::write(&tmp, &pinned).map_err(|e| Error::io(&tmp, e))?;
    std::fs::rename(&tmp, file).map_err(|e| Error::io(file, e))?;
    println!(
        "pinned {} file(s), {}, tensor headers {} into {}\nbake it: KILN_PLAN={} cargo build --release",
        pin.files.len(),
        plan::gb(pin.total_bytes() as f64),
        pin.headers,
        file.display(),
        file.display()
    );
    Ok(ExitCode::SUCCESS)
}
