//! The emulated HIP device for tests: every kernel of a kernels directory compiled by g++
//! against HIP-CPU into a library (cached by content), loaded, every registry symbol resolved.
//!
//! Without g++, TBB or HIP-CPU the callers say SKIPPED and what to install, unless
//! KILN_REQUIRE_EMULATED=1 (as .ci/run sets), which makes them fail.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use kiln::device::Gpu;
use kiln::device::emulated::EmulatedDevice;

#[allow(dead_code)]
#[path = "../../build_support/emulated_kernels.rs"]
mod emulated_kernels;

/// The emulated kernel library built from `kernels_dir`, or None (and a note) when this
/// machine cannot build it and is not required to.
pub fn emulated_library(kernels_dir: &Path, name: &str) -> Option<PathBuf> {
    let required = std::env::var_os("KILN_REQUIRE_EMULATED").is_some();
    let built = emulated_kernels::hip_cpu_dir(&super::repo_path("")).and_then(|hip_cpu| {
        let out = Path::new(env!("CARGO_TARGET_TMPDIR")).join("emulated").join(name);
        emulated_kernels::build(&hip_cpu, kernels_dir, &kiln::plan::all_sources(), &kiln::plan::all_symbols(), &out)
    });
    match built {
        Ok(lib) => Some(lib),
        Err(e) => {
            assert!(!required, "KILN_REQUIRE_EMULATED is set but the emulated device cannot be built: {e}");
            eprintln!("SKIPPED: {e}");
            None
        }
    }
}

pub fn emulated_gpu(lib: &Path) -> Gpu {
    let device = Arc::new(EmulatedDevice::open(lib).unwrap_or_else(|e| panic!("{e}")));
    Gpu::new(device, &kiln::plan::all_symbols()).unwrap_or_else(|e| panic!("{e}"))
}

/// The emulated device built from the repository's kernels, or None when it cannot be built.
pub fn repo_gpu() -> Option<Arc<Gpu>> {
    let lib = emulated_library(&super::repo_path("kernels"), "kernels")?;
    Some(Arc::new(emulated_gpu(&lib)))
}
