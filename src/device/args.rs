//! Kernel arguments packed as hipModuleLaunchKernel wants them: each value in its own
//! 8-byte slot, and an array of pointers, one per parameter, into those slots.

use std::ffi::c_void;

use super::Buffer;

#[derive(Debug, Default, Clone)]
pub struct KernelArgs {
    /// One slot per parameter; 4-byte values sit in the low (first, little-endian) bytes.
    slots: Vec<u64>,
}

impl KernelArgs {
    pub fn new() -> KernelArgs {
        KernelArgs::default()
    }

    /// A device pointer parameter.
    pub fn buf(mut self, b: &Buffer) -> Self {
        self.slots.push(b.ptr());
        self
    }

    /// A pointer parameter the kernel may take as null.
    pub fn buf_or_null(mut self, b: Option<&Buffer>) -> Self {
        self.slots.push(b.map_or(0, Buffer::ptr));
        self
    }

    pub fn i32(mut self, v: i32) -> Self {
        self.slots.push(u64::from(v as u32));
        self
    }

    /// A size the kernel takes as `int`. Op shapes come from validated plans and declared
    /// cases, far below 2^31; a larger one is a kiln bug, not user input.
    pub fn int(self, v: usize) -> Self {
        self.i32(i32::try_from(v).expect("kernel int parameter beyond i32"))
    }

    pub fn f32(mut self, v: f32) -> Self {
        self.slots.push(u64::from(v.to_bits()));
        self
    }

    /// The parameter array; valid while `self` is neither moved nor changed.
    pub fn params(&mut self) -> Vec<*mut c_void> {
        self.slots.iter_mut().map(|s| s as *mut u64 as *mut c_void).collect()
    }

    pub fn len(&self) -> usize {
        self.slots.len()
    }

    pub fn is_empty(&self) -> bool {
        self.slots.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn values_sit_where_the_kernel_reads_them() {
        let mut a = KernelArgs::new().i32(-3).f32(1.5).int(7);
        let p = a.params();
        // SAFETY: each pointer addresses a live 8-byte slot of `a`.
        unsafe {
            assert_eq!(*(p[0] as *const i32), -3);
            assert_eq!(*(p[1] as *const f32), 1.5);
            assert_eq!(*(p[2] as *const i32), 7);
        }
    }
}
