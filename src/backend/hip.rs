//! The HIP runtime side of a `target = "hip"` plan: loads the embedded code objects with
//! hipModuleLoadData and resolves every kernel symbol, so a wrong arch or a missing kernel
//! stops start-up instead of surfacing at the first request.

use std::ffi::{CString, c_void};

use hip_runtime_sys as hip;

use crate::baked::CodeObject;
use crate::error::{Error, Result};

/// Loaded modules and their resolved kernels (kept for the life of the process).
pub struct LoadedKernels {
    pub device: String,
    pub functions: Vec<(String, usize)>,
    _modules: Vec<usize>,
}

fn check(code: hip::hipError_t, what: &str) -> Result<()> {
    if code == hip::hipError_t::hipSuccess { Ok(()) } else { Err(Error::Usage(format!("{what} failed: {code:?}"))) }
}

pub fn load(objects: &[CodeObject]) -> Result<LoadedKernels> {
    // SAFETY: plain HIP runtime calls with valid out-pointers; code object bytes are
    // 'static and outlive the modules.
    unsafe {
        check(hip::hipInit(0), "hipInit")?;
        let mut count = 0;
        check(hip::hipGetDeviceCount(&mut count), "hipGetDeviceCount")?;
        if count == 0 {
            return Err(Error::Usage("no AMD GPU is visible to the HIP runtime".into()));
        }
        check(hip::hipSetDevice(0), "hipSetDevice(0)")?;
        let mut modules = Vec::new();
        let mut functions = Vec::new();
        for co in objects {
            let mut module: hip::hipModule_t = std::ptr::null_mut();
            check(
                hip::hipModuleLoadData(&mut module, co.bytes.as_ptr() as *const c_void),
                &format!("hipModuleLoadData({} for {})", co.source, co.arch),
            )?;
            modules.push(module as usize);
            for sym in co.symbols {
                let name = CString::new(*sym).expect("symbol names have no NUL");
                let mut f: hip::hipFunction_t = std::ptr::null_mut();
                check(
                    hip::hipModuleGetFunction(&mut f, module, name.as_ptr()),
                    &format!("hipModuleGetFunction({sym})"),
                )?;
                functions.push((sym.to_string(), f as usize));
            }
        }
        Ok(LoadedKernels { device: format!("{count} HIP device(s)"), functions, _modules: modules })
    }
}
