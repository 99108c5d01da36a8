//! The device a binary was built to drive: an AMD GPU through ROCm with the plan's code objects
//! (feature `hip`), else the emulated HIP device (feature `emulated-hip`), else none.

use std::sync::Arc;

use super::Device;
#[cfg(not(any(feature = "hip", feature = "emulated-hip")))]
use crate::error::Error;
use crate::error::Result;

#[cfg(feature = "hip")]
pub fn built_in() -> Result<Arc<dyn Device>> {
    Ok(Arc::new(super::hip::HipDevice::open(crate::baked::CODE_OBJECTS)?))
}

#[cfg(all(feature = "emulated-hip", not(feature = "hip")))]
pub fn built_in() -> Result<Arc<dyn Device>> {
    // build.rs compiled every kernel against HIP-CPU into this library.
    let lib = std::path::Path::new(env!("KILN_EMULATED_LIB"));
    Ok(Arc::new(super::emulated::EmulatedDevice::open(lib)?))
}

#[cfg(not(any(feature = "hip", feature = "emulated-hip")))]
pub fn built_in() -> Result<Arc<dyn Device>> {
    Err(Error::Usage(format!(
        "this binary drives no GPU ({} HIP code objects baked in): build with `cargo build --release --features hip` \
         (an AMD GPU through the ROCm runtime) or `--features emulated-hip` (the emulated HIP device)",
        crate::baked::CODE_OBJECTS.len()
    )))
}

#[cfg(all(feature = "emulated-hip", target_feature = "crt-static"))]
compile_error!(
    "--features emulated-hip loads a shared library, which a statically linked binary cannot: build it without crt-static"
);
