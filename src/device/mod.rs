//! Devices that run kiln's kernels, behind one launch path: buffers, argument packing,
//! grid and block from the op declarations, one stream per device.
//!
//! - [`hip::HipDevice`] (feature `hip`): an AMD GPU through the ROCm runtime, kernels from the
//!   code objects build.rs embedded (hipModuleLoadData, hipModuleLaunchKernel).
//! - [`emulated::EmulatedDevice`]: the same kernel sources compiled by g++ against HIP-CPU,
//!   AMD's HIP runtime for CPUs, loaded as a shared library. It proves indexing, reductions,
//!   barriers and layouts on any machine; it says nothing about speed.
//! - [`cuda::CudaDevice`] (feature `cuda`): an NVIDIA GPU through the CUDA driver, the same
//!   sources built by nvcc; where a GPU is lent for validation and no AMD one is.
//!
//! All take kernel arguments the way hipModuleLaunchKernel does: an array with one pointer
//! per kernel parameter, pointing at the parameter's value ([`KernelArgs`]).

mod args;
mod buffer;
mod built_in;
#[cfg(feature = "cuda")]
pub mod cuda;
#[cfg(not(target_feature = "crt-static"))]
pub mod emulated;
#[cfg(feature = "hip")]
pub mod hip;

use std::ffi::c_void;

pub use args::KernelArgs;
pub use buffer::{Buffer, Element};
pub use built_in::built_in;

use crate::error::Result;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Dim3 {
    pub x: u32,
    pub y: u32,
    pub z: u32,
}

impl Dim3 {
    pub const fn x(x: u32) -> Dim3 {
        Dim3 { x, y: 1, z: 1 }
    }

    pub const fn xy(x: u32, y: u32) -> Dim3 {
        Dim3 { x, y, z: 1 }
    }

    pub const fn xyz(x: u32, y: u32, z: u32) -> Dim3 {
        Dim3 { x, y, z }
    }

    pub fn count(self) -> u64 {
        u64::from(self.x) * u64::from(self.y) * u64::from(self.z)
    }
}

/// Grid, block and dynamic shared memory of one kernel launch.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Launch {
    pub grid: Dim3,
    pub block: Dim3,
    pub shared_bytes: u32,
}

impl Launch {
    pub const fn new(grid: Dim3, block: Dim3) -> Launch {
        Launch { grid, block, shared_bytes: 0 }
    }
}

/// Threads per block every supported device allows.
pub const MAX_BLOCK_THREADS: u64 = 1024;

/// A kernel resolved on a device, ready to launch.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct KernelFn {
    handle: usize,
}

impl KernelFn {
    fn new(handle: usize) -> KernelFn {
        KernelFn { handle }
    }
}

/// What every device provides. Addresses are device addresses as u64 (host pointers on the
/// emulated device).
pub trait Device: Send + Sync {
    /// For logs and reports, e.g. "AMD Instinct MI300X (gfx942)".
    fn describe(&self) -> String;
    /// Threads per wave (warp): what a kernel's KILN_WAVE is on this device, so that a
    /// wave-per-row launch gives each row one wave.
    fn wave(&self) -> u32 {
        64
    }
    /// Peak memory bandwidth in bytes/s as the device reports it, if it does.
    fn peak_bandwidth(&self) -> Option<f64> {
        None
    }
    /// Resolves a kernel by its extern "C" name, once, at start-up.
    fn kernel(&self, symbol: &str) -> Result<KernelFn>;
    fn alloc(&self, bytes: usize) -> Result<u64>;
    /// Frees what `alloc` returned.
    fn free(&self, ptr: u64);
    fn upload(&self, dst: u64, src: &[u8]) -> Result<()>;
    /// Zeroes `bytes` at `dst`, in stream order. A GPU fills on the device, without a host
    /// transfer or a wait; the default writes zeros from a bounded host chunk.
    fn zero(&self, dst: u64, bytes: usize) -> Result<()> {
        const CHUNK: usize = 64 << 20;
        let zeros = vec![0u8; bytes.min(CHUNK)];
        let mut at = 0;
        while at < bytes {
            let len = (bytes - at).min(CHUNK);
            self.upload(dst + at as u64, &zeros[..len])?;
            at += len;
        }
        Ok(())
    }
    fn download(&self, src: u64, dst: &mut [u8]) -> Result<()>;
    /// Device-to-device copy (also what the bench measures bandwidth against).
    fn copy(&self, dst: u64, src: u64, bytes: usize) -> Result<()>;
    /// Queues `f` on the device's stream. `params` holds one pointer per kernel parameter.
    ///
    /// # Safety
    /// `params` must match the kernel's parameter list in count and types, and every device
    /// pointer in it must address memory of this device large enough for what the kernel
    /// touches at this geometry.
    unsafe fn launch(&self, f: KernelFn, launch: &Launch, params: &mut [*mut c_void]) -> Result<()>;
    /// Waits for everything queued.
    fn synchronize(&self) -> Result<()>;
}

/// Checks a launch against the limits every device shares before it reaches the runtime.
pub fn check_launch(symbol: &str, l: &Launch) -> Result<()> {
    let threads = l.block.count();
    if threads == 0 || threads > MAX_BLOCK_THREADS {
        return Err(crate::Error::Device {
            device: "launch".into(),
            message: format!("{symbol}: a block of {threads} threads (1 to {MAX_BLOCK_THREADS} allowed)"),
        });
    }
    Ok(())
}

/// A device with the kernels it will run resolved: what op declarations launch on.
pub struct Gpu {
    pub device: std::sync::Arc<dyn Device>,
    kernels: std::collections::HashMap<&'static str, KernelFn>,
}

impl Gpu {
    /// Resolves every symbol now, so a missing kernel is found before any launch.
    pub fn new(device: std::sync::Arc<dyn Device>, symbols: &[&'static str]) -> Result<Gpu> {
        let mut kernels = std::collections::HashMap::new();
        for &s in symbols {
            kernels.insert(s, device.kernel(s)?);
        }
        Ok(Gpu { device, kernels })
    }

    pub fn describe(&self) -> String {
        self.device.describe()
    }

    /// Threads per wave on this device.
    pub fn wave(&self) -> usize {
        self.device.wave() as usize
    }

    /// A device copy of `v`.
    pub fn upload<T: Element>(&self, v: &[T]) -> Result<Buffer> {
        Buffer::from_slice(&self.device, v)
    }

    pub fn zeros<T: Element>(&self, n: usize) -> Result<Buffer> {
        Buffer::zeroed::<T>(&self.device, n)
    }

    /// Launches `symbol`; an empty grid launches nothing.
    ///
    /// # Safety
    /// `args` must match the kernel's parameters in count and types, with every buffer large
    /// enough for what the kernel touches at this geometry (each op declaration states how).
    pub unsafe fn launch(&self, symbol: &'static str, l: Launch, mut args: KernelArgs) -> Result<()> {
        if l.grid.count() == 0 {
            return Ok(());
        }
        let f = *self.kernels.get(symbol).ok_or_else(|| crate::Error::Device {
            device: self.describe(),
            message: format!("kernel {symbol} was not resolved for this device"),
        })?;
        // SAFETY: forwarded from the caller.
        unsafe { self.device.launch(f, &l, &mut args.params()) }
    }

    pub fn synchronize(&self) -> Result<()> {
        self.device.synchronize()
    }
}
