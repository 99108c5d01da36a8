//! The device a binary was built to drive: an AMD GPU through ROCm with the plan's code objects
//! (feature `hip`), an NVIDIA GPU through the CUDA driver (feature `cuda`), the emulated HIP
//! device (feature `emulated-hip`), else none. The features exclude each other.

use std::sync::Arc;

use super::Device;
#[cfg(not(any(feature = "hip", feature = "emulated-hip", feature = "cuda")))]
use crate::error::Error;
use crate::error::Result;

#[cfg(feature = "hip")]
pub fn built_in() -> Result<Arc<dyn Device>> {
    Ok(Arc::new(super::hip::HipDevice::open(crate::baked::CODE_OBJECTS)?))
}

#[cfg(feature = "cuda")]
pub fn built_in() -> Result<Arc<dyn Device>> {
    Ok(Arc::new(super::cuda::CudaDevice::open(crate::baked::CODE_OBJECTS)?))
}

#[cfg(all(feature = "emulated-hip", not(feature = "hip")))]
pub fn built_in() -> Result<Arc<dyn Device>> {
    // build.rs compiled every kernel against HIP-CPU into this library.
    let lib = std::path::Path::new(env!("KILN_EMULATED_LIB"));
    Ok(Arc::new(super::emulated::EmulatedDevice::open(lib)?))
}

#[cfg(not(any(feature = "hip", feature = "emulated-hip", feature = "cuda")))]
pub fn built_in() -> Result<Arc<dyn Device>> {
    Err(Error::Usage(format!(
        "this binary drives no GPU ({} HIP code objects baked in): build with `cargo build --release --features hip` \
         (an AMD GPU through the ROCm runtime), `--features cuda` (an NVIDIA GPU, for validation) or `--features emulated-hip` (the emulated HIP device)",
        crate::baked::CODE_OBJECTS.len()
    )))
}

#[cfg(all(feature = "emulated-hip", target_feature = "crt-static"))]
compile_error!(
    "--features emulated-hip loads a shared library, which a statically linked binary cannot: build it without crt-static"
);

#[cfg(all(feature = "cuda", any(feature = "hip", feature = "emulated-hip")))]
compile_error!("--features cuda drives an NVIDIA GPU and excludes `hip` and `emulated-hip`: build one at a time");
