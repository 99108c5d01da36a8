//! Activation buffers that start on a cache line. The kernels read activations in 32- and
//! 64-byte vectors; from a `Vec` (16-byte aligned by the C allocator) every other 32-byte
//! load, and every 64-byte one, spans two cache lines and costs two. Measured on Zen 3
//! (`kernel_tile_speed`, bf16 rows against 4 to 64 tokens from L2, one core): 17-19 ->
//! 22.6-23.5 G multiply-adds/s with the tokens' rows aligned.

use std::marker::PhantomData;

/// One cache line.
#[derive(Clone, Copy)]
#[repr(C, align(64))]
struct Line([u8; 64]);

/// A buffer of `len` values of T (f32, i16, i8, i32: plain numbers whose size divides 64)
/// whose first value starts a cache line; zeroed when made.
pub struct Aligned<T> {
    lines: Vec<Line>,
    len: usize,
    _values: PhantomData<T>,
}

/// Plain numbers: every bit pattern is a value, and a line holds a whole number of them.
pub trait Plain: Copy {}
impl Plain for f32 {}
impl Plain for i16 {}
impl Plain for i8 {}
impl Plain for i32 {}

impl<T: Plain> Aligned<T> {
    pub fn zeroed(len: usize) -> Aligned<T> {
        const { assert!(64 % size_of::<T>() == 0 && align_of::<T>() <= 64) };
        let lines = vec![Line([0; 64]); (len * size_of::<T>()).div_ceil(64)];
        Aligned { lines, len, _values: PhantomData }
    }

    /// A copy of `values`, starting on a cache line.
    pub fn copy_of(values: &[T]) -> Aligned<T> {
        let mut a = Aligned::zeroed(values.len());
        a.copy_from_slice(values);
        a
    }
}

impl<T: Plain> std::ops::Deref for Aligned<T> {
    type Target = [T];
    fn deref(&self) -> &[T] {
        // SAFETY: the lines hold at least len * size_of::<T>() initialised bytes, aligned
        // for T (64 is a multiple of T's alignment), and any bit pattern is a T (`Plain`).
        unsafe { std::slice::from_raw_parts(self.lines.as_ptr().cast::<T>(), self.len) }
    }
}

impl<T: Plain> std::ops::DerefMut for Aligned<T> {
    fn deref_mut(&mut self) -> &mut [T] {
        // SAFETY: as for `deref`, and the borrow of self is exclusive.
        unsafe { std::slice::from_raw_parts_mut(self.lines.as_mut_ptr().cast::<T>(), self.len) }
    }
}

#[cfg(test)]
mod tests {
    use super::Aligned;

    #[test]
    fn starts_on_a_line_and_holds_exactly_its_values() {
        for len in [0usize, 1, 15, 16, 17, 1000] {
            let v: Vec<f32> = (0..len).map(|i| i as f32).collect();
            let a = Aligned::copy_of(&v);
            assert_eq!(a.as_ptr() as usize % 64, 0);
            assert_eq!(&a[..], &v[..]);
            let z = Aligned::<i16>::zeroed(len);
            assert_eq!((z.len(), z.as_ptr() as usize % 64), (len, 0));
            assert!(z.iter().all(|&q| q == 0));
        }
    }
}
