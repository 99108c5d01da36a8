//! An AMD GPU through the ROCm runtime (hip-runtime-sys): the plan's embedded code objects
//! loaded with hipModuleLoadData, every kernel resolved at start-up (a wrong arch or a
//! missing kernel stops start-up, not the first request), buffers from hipMalloc, copies and
//! launches on one stream.

use std::collections::HashMap;
use std::ffi::{CStr, CString, c_void};

use hip_runtime_sys as hip;

use super::{Device, KernelFn, Launch, check_launch};
use crate::baked::CodeObject;
use crate::error::{Error, Result};

pub struct HipDevice {
    name: String,
    stream: usize,
    /// symbol -> hipFunction_t
    functions: HashMap<String, usize>,
    _modules: Vec<usize>,
}

// SAFETY: the handles are process-global HIP objects; the runtime is thread-safe.
unsafe impl Send for HipDevice {}
// SAFETY: as above.
unsafe impl Sync for HipDevice {}

fn check(code: hip::hipError_t, what: &str) -> Result<()> {
    if code == hip::hipError_t::hipSuccess {
        return Ok(());
    }
    // SAFETY: hipGetErrorString returns a static string for any code.
    let text = unsafe { CStr::from_ptr(hip::hipGetErrorString(code)) }.to_string_lossy().into_owned();
    Err(Error::Device { device: "HIP".into(), message: format!("{what} failed: {text} ({code:?})") })
}

impl HipDevice {
    /// GPU 0 with every kernel of `objects` loaded.
    pub fn open(objects: &[CodeObject]) -> Result<HipDevice> {
        // SAFETY: plain HIP runtime calls with valid out-pointers; code object bytes are
        // 'static and outlive the modules.
        unsafe {
            check(hip::hipInit(0), "hipInit").map_err(|e| Error::Device {
                device: "HIP".into(),
                message: format!("no AMD GPU is usable by the ROCm runtime ({e})"),
            })?;
            let mut count = 0;
            check(hip::hipGetDeviceCount(&mut count), "hipGetDeviceCount")?;
            if count == 0 {
                return Err(Error::Device {
                    device: "HIP".into(),
                    message: "no AMD GPU is visible to the HIP runtime".into(),
                });
            }
            check(hip::hipSetDevice(0), "hipSetDevice(0)")?;
            // hipDeviceProp_t grew across ROCm releases; give the runtime room for any of them
            // and read only the name, its first field in all.
            let mut props = vec![0u64; 1024];
            check(
                hip::hipGetDeviceProperties(props.as_mut_ptr() as *mut hip::hipDeviceProp_t, 0),
                "hipGetDeviceProperties",
            )?;
            let name = CStr::from_ptr(props.as_ptr() as *const std::ffi::c_char).to_string_lossy().into_owned();
            let mut stream: hip::hipStream_t = std::ptr::null_mut();
            check(hip::hipStreamCreate(&mut stream), "hipStreamCreate")?;
            let mut modules = Vec::new();
            let mut functions = HashMap::new();
            for co in objects {
                let mut module: hip::hipModule_t = std::ptr::null_mut();
                check(
                    hip::hipModuleLoadData(&mut module, co.bytes.as_ptr() as *const c_void),
                    &format!("hipModuleLoadData({} for {})", co.source, co.arch),
                )?;
                modules.push(module as usize);
                for sym in co.symbols {
                    let cname = CString::new(*sym).expect("symbol names have no NUL");
                    let mut f: hip::hipFunction_t = std::ptr::null_mut();
                    check(
                        hip::hipModuleGetFunction(&mut f, module, cname.as_ptr()),
                        &format!("hipModuleGetFunction({sym})"),
                    )?;
                    functions.insert(sym.to_string(), f as usize);
                }
            }
            Ok(HipDevice {
                name: format!("{name} (device 0 of {count})"),
                stream: stream as usize,
                functions,
                _modules: modules,
            })
        }
    }

    /// Kernels resolved from the code objects.
    pub fn kernel_count(&self) -> usize {
        self.functions.len()
    }

    fn stream(&self) -> hip::hipStream_t {
        self.stream as hip::hipStream_t
    }
}

impl Device for HipDevice {
    fn describe(&self) -> String {
        self.name.clone()
    }

    fn kernel(&self, symbol: &str) -> Result<KernelFn> {
        self.functions.get(symbol).map(|&f| KernelFn::new(f)).ok_or_else(|| Error::Device {
            device: self.describe(),
            message: format!("kernel {symbol} is not in this binary's code objects (is it in the plan's kernel map?)"),
        })
    }

    fn alloc(&self, bytes: usize) -> Result<u64> {
        let mut p: *mut c_void = std::ptr::null_mut();
        // SAFETY: a valid out-pointer.
        check(unsafe { hip::hipMalloc(&mut p, bytes) }, &format!("hipMalloc({bytes})"))?;
        Ok(p as u64)
    }

    fn free(&self, ptr: u64) {
        // SAFETY: `ptr` came from alloc and is freed once (Buffer's contract).
        unsafe { hip::hipFree(ptr as *mut c_void) };
    }

    fn upload(&self, dst: u64, src: &[u8]) -> Result<()> {
        // SAFETY: dst addresses at least src.len() device bytes; the copy is synchronized
        // before `src` can go away.
        unsafe {
            check(
                hip::hipMemcpyHtoDAsync(
                    dst as hip::hipDeviceptr_t,
                    src.as_ptr() as *mut c_void,
                    src.len(),
                    self.stream(),
                ),
                "hipMemcpyHtoDAsync",
            )?;
        }
        self.synchronize()
    }

    fn zero(&self, dst: u64, bytes: usize) -> Result<()> {
        // SAFETY: dst addresses at least `bytes` device bytes; queued on the one stream.
        let code = unsafe { hip::hipMemsetAsync(dst as *mut c_void, 0, bytes, self.stream()) };
        check(code, "hipMemsetAsync")
    }

    fn download(&self, src: u64, dst: &mut [u8]) -> Result<()> {
        // SAFETY: src addresses at least dst.len() device bytes; synchronized before return.
        unsafe {
            check(
                hip::hipMemcpyDtoHAsync(
                    dst.as_mut_ptr() as *mut c_void,
                    src as hip::hipDeviceptr_t,
                    dst.len(),
                    self.stream(),
                ),
                "hipMemcpyDtoHAsync",
            )?;
        }
        self.synchronize()
    }

    fn copy(&self, dst: u64, src: u64, bytes: usize) -> Result<()> {
        // SAFETY: both address at least `bytes` device bytes.
        let code = unsafe {
            hip::hipMemcpyDtoDAsync(dst as hip::hipDeviceptr_t, src as hip::hipDeviceptr_t, bytes, self.stream())
        };
        check(code, "hipMemcpyDtoDAsync")
    }

    unsafe fn launch(&self, f: KernelFn, l: &Launch, params: &mut [*mut c_void]) -> Result<()> {
        check_launch("HIP kernel", l)?;
        let (g, b) = (l.grid, l.block);
        // SAFETY: the caller guarantees params match the kernel (Device::launch's contract).
        let code = unsafe {
            hip::hipModuleLaunchKernel(
                f.handle as hip::hipFunction_t,
                g.x,
                g.y,
                g.z,
                b.x,
                b.y,
                b.z,
                l.shared_bytes,
                self.stream(),
                params.as_mut_ptr(),
                std::ptr::null_mut(),
            )
        };
        check(code, "hipModuleLaunchKernel")
    }

    fn synchronize(&self) -> Result<()> {
        // SAFETY: the stream lives as long as self.
        check(unsafe { hip::hipStreamSynchronize(self.stream()) }, "hipStreamSynchronize")
    }
}
