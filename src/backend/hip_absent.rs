//! Stands in for the HIP runtime when kiln is built without the `hip` feature: a HIP plan's
//! code objects cannot be loaded, and start-up says how to get a binary that can.

use crate::baked::CodeObject;
use crate::error::{Error, Result};

pub struct LoadedKernels {
    pub device: String,
    pub functions: Vec<(String, usize)>,
}

pub fn load(objects: &[CodeObject]) -> Result<LoadedKernels> {
    Err(Error::Usage(format!(
        "this plan's {} HIP code objects need the ROCm runtime: build with `cargo build --release --features hip`",
        objects.len()
    )))
}
