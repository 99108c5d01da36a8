//! Device memory, freed when dropped.

use std::sync::Arc;

use super::Device;
use crate::error::Result;

/// Plain element types that move between host and device as bytes: every bit pattern is a
/// value, and there is no padding.
pub trait Element: Copy + Default + 'static {}
impl Element for f32 {}
impl Element for i32 {}
impl Element for u32 {}
impl Element for u8 {}

fn bytes_of<T: Element>(v: &[T]) -> &[u8] {
    // SAFETY: Element types have no padding and any byte pattern is valid for u8.
    unsafe { std::slice::from_raw_parts(v.as_ptr() as *const u8, std::mem::size_of_val(v)) }
}

fn bytes_of_mut<T: Element>(v: &mut [T]) -> &mut [u8] {
    // SAFETY: as above; every byte pattern written is a valid T (Element's contract).
    unsafe { std::slice::from_raw_parts_mut(v.as_mut_ptr() as *mut u8, std::mem::size_of_val(v)) }
}

/// `bytes` of device memory.
pub struct Buffer {
    device: Arc<dyn Device>,
    ptr: u64,
    bytes: usize,
}

impl Buffer {
    /// Uninitialized memory (at least one byte, so the pointer is never null).
    pub fn alloc(device: &Arc<dyn Device>, bytes: usize) -> Result<Buffer> {
        let ptr = device.alloc(bytes.max(1))?;
        Ok(Buffer { device: device.clone(), ptr, bytes })
    }

    /// A device copy of `v`.
    pub fn from_slice<T: Element>(device: &Arc<dyn Device>, v: &[T]) -> Result<Buffer> {
        let b = Buffer::alloc(device, std::mem::size_of_val(v))?;
        device.upload(b.ptr, bytes_of(v))?;
        Ok(b)
    }

    /// `n` zeroed elements of T.
    pub fn zeroed<T: Element>(device: &Arc<dyn Device>, n: usize) -> Result<Buffer> {
        let bytes = n * std::mem::size_of::<T>();
        let b = Buffer::alloc(device, bytes)?;
        device.zero(b.ptr, bytes)?;
        Ok(b)
    }

    pub fn ptr(&self) -> u64 {
        self.ptr
    }

    pub fn bytes(&self) -> usize {
        self.bytes
    }

    /// The whole buffer as T, after everything queued before has finished.
    pub fn read<T: Element>(&self) -> Result<Vec<T>> {
        self.device.synchronize()?;
        let mut v = vec![T::default(); self.bytes / std::mem::size_of::<T>()];
        self.device.download(self.ptr, bytes_of_mut(&mut v))?;
        Ok(v)
    }

    /// Overwrites the start of the buffer with `v`.
    pub fn write<T: Element>(&self, v: &[T]) -> Result<()> {
        let bytes = bytes_of(v);
        if bytes.len() > self.bytes {
            return Err(crate::Error::Device {
                device: self.device.describe(),
                message: format!("a write of {} bytes into a buffer of {}", bytes.len(), self.bytes),
            });
        }
        self.device.upload(self.ptr, bytes)
    }
}

impl Drop for Buffer {
    fn drop(&mut self) {
        self.device.free(self.ptr);
    }
}
