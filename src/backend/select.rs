//! Which backend this binary runs a plan on, decided once at start-up:
//!
//! - built with `--features hip` and `appliance.target = hip`: the GPU backend on the HIP
//!   device, with the code objects baked in. No visible device is a fatal error
//!   ([`Error::NoDevice`]); there is never a silent fall back to the CPU.
//! - built with `--features emulated-hip`: the GPU backend on the emulated HIP device, for any
//!   plan, so every checkpoint can be run through the GPU path and compared with the CPU.
//! - built with `--features cuda`: the same on an NVIDIA GPU (the validation device).
//! - otherwise the CPU backend for `appliance.target = cpu`, and an error for a GPU target
//!   this binary cannot drive.

use std::sync::Arc;

use super::cpu::Cpu;
use super::gpu::GpuBackend;
use crate::error::{Error, Result};
use crate::plan::{Plan, Target};

pub enum Selected {
    Cpu(Cpu),
    Gpu(GpuBackend),
}

impl Selected {
    pub fn describe(&self) -> String {
        match self {
            Selected::Cpu(_) => "the CPU backend".into(),
            Selected::Gpu(g) => format!("the GPU backend on {}", g.gpu.describe()),
        }
    }

    /// KV pages the device can hold for this plan: the plan's, except on the emulated device,
    /// whose memory is the host's, where it is capped at twice the running requests at full
    /// length (what `kiln plan init` gives a CPU plan).
    pub fn kv_pages(&self, plan: &Plan, planned: usize) -> usize {
        match self {
            Selected::Gpu(g) if g.is_emulated() => {
                let s = &plan.server;
                let tokens = 2 * s.max_running_requests as usize * (s.max_prompt_tokens + s.max_output_tokens) as usize;
                planned.min(tokens.div_ceil(plan.kv_cache.page_size as usize).max(1))
            }
            _ => planned,
        }
    }
}

pub fn select(plan: &Plan) -> Result<Selected> {
    if (cfg!(feature = "emulated-hip") || cfg!(feature = "cuda")) && !cfg!(feature = "hip") {
        return gpu(plan);
    }
    match plan.appliance.target {
        Target::Cpu => Ok(Selected::Cpu(Cpu)),
        Target::Hip if cfg!(feature = "hip") => {
            if plan.parallel.tp > 1 {
                return Err(Error::Usage(format!(
                    "parallel.tp = {}: this build runs the forward on one device per process; tensor parallelism across devices is not implemented yet (serve a tp = 1 plan per device)",
                    plan.parallel.tp
                )));
            }
            gpu(plan)
        }
        Target::Hip => Err(Error::Usage(
            "appliance.target = hip, but this binary was built without the ROCm runtime: build it with `cargo build --release --features hip`".into(),
        )),
        Target::Cuda => Err(Error::Usage(
            "appliance.target = cuda builds and checks kernels with nvcc; serving needs a CUDA runtime loader kiln does not have yet".into(),
        )),
    }
}

fn gpu(plan: &Plan) -> Result<Selected> {
    gpu_backend(plan).map(Selected::Gpu)
}

/// The GPU backend on the device this binary drives, every kernel it carries resolved.
pub fn gpu_backend(plan: &Plan) -> Result<GpuBackend> {
    let device = crate::device::built_in().map_err(|e| Error::NoDevice(e.to_string()))?;
    let symbols: Vec<&'static str> =
        crate::plan::all_symbols().into_iter().filter(|s| device.kernel(s).is_ok()).collect();
    let gpu = crate::device::Gpu::new(device, &symbols)?;
    Ok(GpuBackend::new(Arc::new(gpu), plan))
}
