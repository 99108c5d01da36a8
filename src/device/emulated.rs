//! The emulated HIP device: kernels/ compiled against HIP-CPU (build_support/emulated_kernels.rs)
//! into a shared library, loaded here. Device memory is host memory; every launch runs to
//! completion before it returns, one at a time (HIP-CPU's runtime state is global to the
//! library), so the stream is trivially in order. A loaded library stays for the life of the
//! process; HIP-CPU's runtime thread polls its streams, so it costs some CPU while it does.
//!
//! Not in statically linked binaries: they cannot load a shared library.

use std::ffi::{CStr, CString, c_char, c_int, c_uint, c_void};
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use super::{Device, KernelFn, Launch, check_launch};
use crate::error::{Error, Result};

type KernelLookup = unsafe extern "C" fn(*const c_char) -> *mut c_void;
type LaunchFn = unsafe extern "C" fn(
    *mut c_void,
    c_uint,
    c_uint,
    c_uint,
    c_uint,
    c_uint,
    c_uint,
    c_uint,
    *mut *mut c_void,
) -> c_int;
type SyncFn = unsafe extern "C" fn() -> c_int;
type MallocFn = unsafe extern "C" fn(*mut *mut c_void, usize) -> c_int;
type FreeFn = unsafe extern "C" fn(*mut c_void) -> c_int;
type MemcpyFn = unsafe extern "C" fn(*mut c_void, *const c_void, usize) -> c_int;
type ErrorFn = unsafe extern "C" fn(c_int) -> *const c_char;

/// The library's entry points, resolved once.
struct Api {
    kernel: KernelLookup,
    launch: LaunchFn,
    synchronize: SyncFn,
    malloc: MallocFn,
    free: FreeFn,
    memcpy: MemcpyFn,
    error: ErrorFn,
}

pub struct EmulatedDevice {
    path: PathBuf,
    api: Api,
    _lib: libloading::Library,
}

/// One call into HIP-CPU at a time, across every loaded library (they share TBB's workers).
static HIP_CPU: Mutex<()> = Mutex::new(());

impl EmulatedDevice {
    /// Loads a kernel library built by build_support/emulated_kernels.rs.
    pub fn open(path: &Path) -> Result<EmulatedDevice> {
        let fail =
            |message: String| Error::Device { device: format!("emulated HIP device {}", path.display()), message };
        // Never unloaded (RTLD_NODELETE): HIP-CPU keeps a runtime thread and thread-local
        // fiber state on TBB's workers, which would run unmapped code after a dlclose.
        let flags = libloading::os::unix::RTLD_NOW | libloading::os::unix::RTLD_LOCAL | libc::RTLD_NODELETE;
        // SAFETY: loading runs the library's static initializers: HIP-CPU's runtime and TBB,
        // which have no preconditions on the loading process.
        let lib: libloading::Library =
            unsafe { libloading::os::unix::Library::open(Some(path), flags) }.map_err(|e| fail(e.to_string()))?.into();
        // SAFETY: each symbol is declared with the signature the generated C++ defines.
        let api = unsafe {
            Api {
                kernel: *lib.get::<KernelLookup>(b"kiln_emulated_kernel\0").map_err(|e| fail(e.to_string()))?,
                launch: *lib.get::<LaunchFn>(b"kiln_emulated_launch\0").map_err(|e| fail(e.to_string()))?,
                synchronize: *lib.get::<SyncFn>(b"kiln_emulated_synchronize\0").map_err(|e| fail(e.to_string()))?,
                malloc: *lib.get::<MallocFn>(b"kiln_emulated_malloc\0").map_err(|e| fail(e.to_string()))?,
                free: *lib.get::<FreeFn>(b"kiln_emulated_free\0").map_err(|e| fail(e.to_string()))?,
                memcpy: *lib.get::<MemcpyFn>(b"kiln_emulated_memcpy\0").map_err(|e| fail(e.to_string()))?,
                error: *lib.get::<ErrorFn>(b"kiln_emulated_error\0").map_err(|e| fail(e.to_string()))?,
            }
        };
        Ok(EmulatedDevice { path: path.to_path_buf(), api, _lib: lib })
    }

    fn check(&self, code: c_int, what: &str) -> Result<()> {
        if code == 0 {
            return Ok(());
        }
        // SAFETY: hipGetErrorString returns a static NUL-terminated string for any code.
        let text = unsafe { CStr::from_ptr((self.api.error)(code)) }.to_string_lossy().into_owned();
        Err(Error::Device { device: self.describe(), message: format!("{what}: {text} ({code})") })
    }

    fn guard(&self) -> std::sync::MutexGuard<'static, ()> {
        HIP_CPU.lock().unwrap_or_else(|p| p.into_inner())
    }
}

impl Device for EmulatedDevice {
    fn describe(&self) -> String {
        format!("emulated HIP device (HIP-CPU, {})", self.path.display())
    }

    fn kernel(&self, symbol: &str) -> Result<KernelFn> {
        let name = CString::new(symbol).map_err(|_| Error::Usage(format!("kernel name {symbol:?} has a NUL")))?;
        // SAFETY: a lookup in the library's static table; the name outlives the call.
        let f = unsafe { (self.api.kernel)(name.as_ptr()) };
        if f.is_null() {
            return Err(Error::Device {
                device: self.describe(),
                message: format!("no kernel {symbol} in the emulated kernel library"),
            });
        }
        Ok(KernelFn::new(f as usize))
    }

    fn alloc(&self, bytes: usize) -> Result<u64> {
        let _g = self.guard();
        let mut p: *mut c_void = std::ptr::null_mut();
        // SAFETY: a valid out-pointer.
        self.check(unsafe { (self.api.malloc)(&mut p, bytes) }, &format!("hipMalloc({bytes})"))?;
        Ok(p as u64)
    }

    fn free(&self, ptr: u64) {
        let _g = self.guard();
        // SAFETY: `ptr` came from alloc (Buffer's contract) and is freed once.
        unsafe { (self.api.free)(ptr as *mut c_void) };
    }

    fn upload(&self, dst: u64, src: &[u8]) -> Result<()> {
        let _g = self.guard();
        // SAFETY: dst is a live allocation of at least src.len() bytes (Buffer checks).
        let code = unsafe { (self.api.memcpy)(dst as *mut c_void, src.as_ptr() as *const c_void, src.len()) };
        self.check(code, "hipMemcpy to the device")
    }

    fn download(&self, src: u64, dst: &mut [u8]) -> Result<()> {
        let _g = self.guard();
        // SAFETY: src is a live allocation of at least dst.len() bytes.
        let code = unsafe { (self.api.memcpy)(dst.as_mut_ptr() as *mut c_void, src as *const c_void, dst.len()) };
        self.check(code, "hipMemcpy from the device")
    }

    fn copy(&self, dst: u64, src: u64, bytes: usize) -> Result<()> {
        let _g = self.guard();
        // SAFETY: both are live allocations of at least `bytes`.
        let code = unsafe { (self.api.memcpy)(dst as *mut c_void, src as *const c_void, bytes) };
        self.check(code, "hipMemcpy on the device")
    }

    unsafe fn launch(&self, f: KernelFn, l: &Launch, params: &mut [*mut c_void]) -> Result<()> {
        check_launch("emulated kernel", l)?;
        let _g = self.guard();
        let (g, b) = (l.grid, l.block);
        // SAFETY: the caller guarantees params match the kernel (Device::launch's contract);
        // f came from this library's table.
        let code = unsafe {
            (self.api.launch)(
                f.handle as *mut c_void,
                g.x,
                g.y,
                g.z,
                b.x,
                b.y,
                b.z,
                l.shared_bytes,
                params.as_mut_ptr(),
            )
        };
        self.check(code, "kernel launch")?;
        // SAFETY: no arguments.
        self.check(unsafe { (self.api.synchronize)() }, "hipDeviceSynchronize")
    }

    fn synchronize(&self) -> Result<()> {
        Ok(())
    }
}
