//! An NVIDIA GPU through the CUDA driver API, the validation device for machines that have
//! no AMD GPU but an NVIDIA one: the same kernels/ sources built by nvcc through compat.h.
//!
//! libcuda is loaded at start-up (libloading), not linked, so a `cuda` build compiles and
//! fails with a clear error anywhere. Kernels come from the plan's baked cubins (a `target =
//! "cuda"` plan) and from every `*.cubin`, `*.fatbin` and `*.ptx` in the directory
//! `KILN_CUDA_MODULES` names (what tools/validate_nvidia.sh compiles on the machine itself),
//! so one binary built without nvcc can check every op there.
//!
//! Everything runs on the legacy default stream of device 0's primary context: copies and
//! launches are in order, and the context is made current on whichever thread calls.

use std::ffi::{CStr, CString, c_char, c_int, c_uint, c_void};
use std::path::Path;

use super::{Device, KernelFn, Launch, check_launch};
use crate::baked::CodeObject;
use crate::error::{Error, Result};

/// Environment variable naming a directory of compiled kernel modules.
pub const MODULES_ENV: &str = "KILN_CUDA_MODULES";

type CuResult = c_int;
type Ptr = *mut c_void;

/// The driver entry points kiln uses, resolved once (names as libcuda exports them).
struct Api {
    init: unsafe extern "C" fn(c_uint) -> CuResult,
    device_count: unsafe extern "C" fn(*mut c_int) -> CuResult,
    device_get: unsafe extern "C" fn(*mut c_int, c_int) -> CuResult,
    device_name: unsafe extern "C" fn(*mut c_char, c_int, c_int) -> CuResult,
    device_attribute: unsafe extern "C" fn(*mut c_int, c_int, c_int) -> CuResult,
    primary_ctx_retain: unsafe extern "C" fn(*mut Ptr, c_int) -> CuResult,
    ctx_set_current: unsafe extern "C" fn(Ptr) -> CuResult,
    ctx_synchronize: unsafe extern "C" fn() -> CuResult,
    module_load_data: unsafe extern "C" fn(*mut Ptr, *const c_void) -> CuResult,
    module_get_function: unsafe extern "C" fn(*mut Ptr, Ptr, *const c_char) -> CuResult,
    mem_alloc: unsafe extern "C" fn(*mut u64, usize) -> CuResult,
    mem_free: unsafe extern "C" fn(u64) -> CuResult,
    htod: unsafe extern "C" fn(u64, *const c_void, usize) -> CuResult,
    dtoh: unsafe extern "C" fn(*mut c_void, u64, usize) -> CuResult,
    dtod: unsafe extern "C" fn(u64, u64, usize) -> CuResult,
    memset_d8: unsafe extern "C" fn(u64, u8, usize) -> CuResult,
    #[allow(clippy::type_complexity)]
    launch: unsafe extern "C" fn(
        Ptr,
        c_uint,
        c_uint,
        c_uint,
        c_uint,
        c_uint,
        c_uint,
        c_uint,
        Ptr,
        *mut *mut c_void,
        *mut *mut c_void,
    ) -> CuResult,
    error_string: unsafe extern "C" fn(CuResult, *mut *const c_char) -> CuResult,
}

// cuDeviceGetAttribute attributes.
const ATTR_MEMORY_CLOCK_KHZ: c_int = 36;
const ATTR_BUS_WIDTH_BITS: c_int = 37;
const ATTR_CC_MAJOR: c_int = 75;
const ATTR_CC_MINOR: c_int = 76;

pub struct CudaDevice {
    name: String,
    /// Peak memory bandwidth in bytes/s from the memory clock and bus width, if reported.
    peak: Option<f64>,
    context: usize,
    /// CUmodule handles, searched in order for a kernel.
    modules: Vec<usize>,
    api: Api,
    _lib: libloading::Library,
}

// SAFETY: the handles are driver objects of one primary context; the driver API is
// thread-safe and every call first makes that context current on the calling thread.
unsafe impl Send for CudaDevice {}
// SAFETY: as above.
unsafe impl Sync for CudaDevice {}

fn device_error(message: String) -> Error {
    Error::Device { device: "CUDA".into(), message }
}

/// A module image: where it came from, its bytes (NUL-terminated for PTX).
struct Image {
    origin: String,
    bytes: Vec<u8>,
}

impl CudaDevice {
    /// Device 0 with every module of `objects` (those built for an sm_ arch) and of the
    /// `KILN_CUDA_MODULES` directory loaded.
    pub fn open(objects: &[CodeObject]) -> Result<CudaDevice> {
        let mut images: Vec<Image> = objects
            .iter()
            .filter(|o| o.arch.starts_with("sm_"))
            .map(|o| Image { origin: format!("{} for {}", o.source, o.arch), bytes: o.bytes.to_vec() })
            .collect();
        if let Some(dir) = std::env::var_os(MODULES_ENV) {
            images.extend(read_modules(Path::new(&dir))?);
        }
        if images.is_empty() {
            return Err(device_error(format!(
                "no kernels to load: the plan has no cubins and {MODULES_ENV} names no directory of compiled kernels (tools/validate_nvidia.sh builds them with nvcc)"
            )));
        }
        // SAFETY: loading the driver library runs its initializers, which is what it is for.
        let lib = unsafe { libloading::Library::new("libcuda.so.1") }.map_err(|e| {
            device_error(format!("cannot load the CUDA driver (libcuda.so.1): {e}; is an NVIDIA driver installed?"))
        })?;
        let api = resolve(&lib)?;
        let mut dev = CudaDevice { name: String::new(), peak: None, context: 0, modules: Vec::new(), api, _lib: lib };
        dev.start(&images)?;
        Ok(dev)
    }

    fn check(&self, code: CuResult, what: &str) -> Result<()> {
        if code == 0 {
            return Ok(());
        }
        let mut text: *const c_char = std::ptr::null();
        // SAFETY: a valid out-pointer; the driver returns a static string or leaves it null.
        let known = unsafe { (self.api.error_string)(code, &mut text) } == 0 && !text.is_null();
        // SAFETY: non-null and NUL-terminated when the call succeeded.
        let text = if known { unsafe { CStr::from_ptr(text) }.to_string_lossy().into_owned() } else { "?".into() };
        Err(device_error(format!("{what} failed: {text} (CUresult {code})")))
    }

    /// Makes device 0's primary context current on this thread.
    fn current(&self) -> Result<()> {
        // SAFETY: the context was retained in start and is never released.
        self.check(unsafe { (self.api.ctx_set_current)(self.context as Ptr) }, "cuCtxSetCurrent")
    }

    fn start(&mut self, images: &[Image]) -> Result<()> {
        let a = &self.api;
        // SAFETY: plain driver calls with valid out-pointers.
        unsafe {
            self.check((a.init)(0), "cuInit").map_err(|e| device_error(format!("no NVIDIA GPU is usable ({e})")))?;
            let mut count = 0;
            self.check((a.device_count)(&mut count), "cuDeviceGetCount")?;
            if count == 0 {
                return Err(device_error("no NVIDIA GPU is visible to the driver".into()));
            }
            let mut dev = 0;
            self.check((a.device_get)(&mut dev, 0), "cuDeviceGet(0)")?;
            let mut name = [0 as c_char; 256];
            self.check((a.device_name)(name.as_mut_ptr(), name.len() as c_int, dev), "cuDeviceGetName")?;
            let name = CStr::from_ptr(name.as_ptr()).to_string_lossy().into_owned();
            let attr = |which: c_int| -> Option<i64> {
                let mut v = 0;
                ((a.device_attribute)(&mut v, which, dev) == 0 && v > 0).then_some(i64::from(v))
            };
            let cc = match (attr(ATTR_CC_MAJOR), attr(ATTR_CC_MINOR)) {
                (Some(major), Some(minor)) => format!("sm_{major}{minor}"),
                _ => "sm_?".into(),
            };
            self.peak = match (attr(ATTR_MEMORY_CLOCK_KHZ), attr(ATTR_BUS_WIDTH_BITS)) {
                // Double data rate: two transfers per clock over the whole bus.
                (Some(khz), Some(bits)) => Some(2.0 * khz as f64 * 1e3 * bits as f64 / 8.0),
                _ => None,
            };
            self.name = format!("{name} ({cc}, device 0 of {count})");
            let mut ctx: Ptr = std::ptr::null_mut();
            self.check((a.primary_ctx_retain)(&mut ctx, dev), "cuDevicePrimaryCtxRetain")?;
            self.context = ctx as usize;
            self.current()?;
            for image in images {
                let mut module: Ptr = std::ptr::null_mut();
                let code = (self.api.module_load_data)(&mut module, image.bytes.as_ptr() as *const c_void);
                self.check(code, &format!("cuModuleLoadData({})", image.origin))?;
                self.modules.push(module as usize);
            }
        }
        Ok(())
    }
}

/// Every module file in `dir`, in name order.
fn read_modules(dir: &Path) -> Result<Vec<Image>> {
    let listing = std::fs::read_dir(dir).map_err(|e| Error::io(dir, e))?;
    let mut paths: Vec<_> = listing
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| matches!(p.extension().and_then(|e| e.to_str()), Some("cubin" | "fatbin" | "ptx")))
        .collect();
    paths.sort();
    paths
        .into_iter()
        .map(|p| {
            let mut bytes = std::fs::read(&p).map_err(|e| Error::io(&p, e))?;
            // PTX is loaded as a C string.
            if p.extension().is_some_and(|e| e == "ptx") {
                bytes.push(0);
            }
            Ok(Image { origin: p.display().to_string(), bytes })
        })
        .collect()
}

fn resolve(lib: &libloading::Library) -> Result<Api> {
    fn sym<T: Copy>(lib: &libloading::Library, name: &str) -> Result<T> {
        // SAFETY: each name is paired with its documented C signature in Api.
        unsafe { lib.get::<T>(name.as_bytes()) }
            .map(|s| *s)
            .map_err(|e| device_error(format!("libcuda.so.1 lacks {name}: {e}")))
    }
    Ok(Api {
        init: sym(lib, "cuInit")?,
        device_count: sym(lib, "cuDeviceGetCount")?,
        device_get: sym(lib, "cuDeviceGet")?,
        device_name: sym(lib, "cuDeviceGetName")?,
        device_attribute: sym(lib, "cuDeviceGetAttribute")?,
        primary_ctx_retain: sym(lib, "cuDevicePrimaryCtxRetain")?,
        ctx_set_current: sym(lib, "cuCtxSetCurrent")?,
        ctx_synchronize: sym(lib, "cuCtxSynchronize")?,
        module_load_data: sym(lib, "cuModuleLoadData")?,
        module_get_function: sym(lib, "cuModuleGetFunction")?,
        mem_alloc: sym(lib, "cuMemAlloc_v2")?,
        mem_free: sym(lib, "cuMemFree_v2")?,
        htod: sym(lib, "cuMemcpyHtoD_v2")?,
        dtoh: sym(lib, "cuMemcpyDtoH_v2")?,
        dtod: sym(lib, "cuMemcpyDtoD_v2")?,
        memset_d8: sym(lib, "cuMemsetD8_v2")?,
        launch: sym(lib, "cuLaunchKernel")?,
        error_string: sym(lib, "cuGetErrorString")?,
    })
}

impl Device for CudaDevice {
    fn describe(&self) -> String {
        self.name.clone()
    }

    fn wave(&self) -> u32 {
        32
    }

    fn peak_bandwidth(&self) -> Option<f64> {
        self.peak
    }

    fn kernel(&self, symbol: &str) -> Result<KernelFn> {
        self.current()?;
        let cname = CString::new(symbol).map_err(|_| device_error(format!("kernel name {symbol:?} has a NUL")))?;
        for &m in &self.modules {
            let mut f: Ptr = std::ptr::null_mut();
            // SAFETY: a loaded module and a valid out-pointer; a miss is an error code.
            if unsafe { (self.api.module_get_function)(&mut f, m as Ptr, cname.as_ptr()) } == 0 {
                return Ok(KernelFn::new(f as usize));
            }
        }
        Err(Error::Device {
            device: self.describe(),
            message: format!("kernel {symbol} is in none of the loaded modules"),
        })
    }

    fn alloc(&self, bytes: usize) -> Result<u64> {
        self.current()?;
        let mut p = 0u64;
        // SAFETY: a valid out-pointer; a zero-byte request is rounded up (cuMemAlloc refuses 0).
        self.check(unsafe { (self.api.mem_alloc)(&mut p, bytes.max(1)) }, &format!("cuMemAlloc({bytes})"))?;
        Ok(p)
    }

    fn free(&self, ptr: u64) {
        if self.current().is_ok() {
            // SAFETY: `ptr` came from alloc and is freed once (Buffer's contract).
            unsafe { (self.api.mem_free)(ptr) };
        }
    }

    fn upload(&self, dst: u64, src: &[u8]) -> Result<()> {
        self.current()?;
        // SAFETY: dst addresses at least src.len() device bytes; the copy from pageable
        // memory has consumed `src` when it returns.
        self.check(unsafe { (self.api.htod)(dst, src.as_ptr() as *const c_void, src.len()) }, "cuMemcpyHtoD")
    }

    fn zero(&self, dst: u64, bytes: usize) -> Result<()> {
        self.current()?;
        // SAFETY: dst addresses at least `bytes` device bytes; on the default stream, in order.
        self.check(unsafe { (self.api.memset_d8)(dst, 0, bytes) }, "cuMemsetD8")
    }

    fn download(&self, src: u64, dst: &mut [u8]) -> Result<()> {
        self.current()?;
        // SAFETY: src addresses at least dst.len() device bytes; synchronous with the host.
        self.check(unsafe { (self.api.dtoh)(dst.as_mut_ptr() as *mut c_void, src, dst.len()) }, "cuMemcpyDtoH")
    }

    fn copy(&self, dst: u64, src: u64, bytes: usize) -> Result<()> {
        self.current()?;
        // SAFETY: both address at least `bytes` device bytes.
        self.check(unsafe { (self.api.dtod)(dst, src, bytes) }, "cuMemcpyDtoD")
    }

    unsafe fn launch(&self, f: KernelFn, l: &Launch, params: &mut [*mut c_void]) -> Result<()> {
        check_launch("CUDA kernel", l)?;
        self.current()?;
        let (g, b) = (l.grid, l.block);
        // SAFETY: the caller guarantees params match the kernel (Device::launch's contract).
        let code = unsafe {
            (self.api.launch)(
                f.handle as Ptr,
                g.x,
                g.y,
                g.z,
                b.x,
                b.y,
                b.z,
                l.shared_bytes,
                std::ptr::null_mut(),
                params.as_mut_ptr(),
                std::ptr::null_mut(),
            )
        };
        self.check(code, "cuLaunchKernel")
    }

    fn synchronize(&self) -> Result<()> {
        self.current()?;
        // SAFETY: a plain driver call.
        self.check(unsafe { (self.api.ctx_synchronize)() }, "cuCtxSynchronize")
    }
}
