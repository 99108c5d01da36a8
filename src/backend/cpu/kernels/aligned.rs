//! Activation buffers that start on a cache line. The kernels read activations in 32- and
//! 64-byte vectors; from a `Vec` (16-byte aligned by the C allocator) every other 32-byte
//! load, and every 64-byte one, spans two cache lines and costs two. Measured on Zen 3
//! (`kernel_tile_speed`, bf16 rows against 4 to 64 tokens from L2, one core): 17-19 ->
//! 22.6-23.5 G multiply-adds/s with the tokens' rows aligned.
//!
//! They are also a step's scratch: a buffer's lines come from a pool the process keeps and go
//! back to it when the buffer is dropped, so the kernels' activation copies and the buffers
//! an op needs per token, key span or expert reuse memory from step to step instead of
//! asking the allocator for it each time (a one-token demo step made about 480 allocations,
//! each token more about 60; now a step makes about 260 whatever its tokens).

use std::marker::PhantomData;
use std::sync::{Mutex, PoisonError};

/// One cache line.
#[derive(Clone, Copy)]
#[repr(C, align(64))]
struct Line([u8; 64]);

/// Buffers kept for reuse at most. A step holds a few dozen at a time (an op's activation
/// copies, attention's per-token buffers, each expert's MLP); beyond these, a dropped buffer
/// is freed.
const KEPT: usize = 64;

/// Bytes kept for reuse at most: a large model's prefill chunk makes buffers of hundreds of
/// MiB, which go back to the C allocator (and its thresholds, `heap.rs`) beyond this.
const KEPT_BYTES: usize = 256 << 20;

/// Storage of dropped buffers, for the next ones of any thread. One pool for the process, not
/// one per thread: a buffer made on one thread is often dropped on another (an expert's
/// output goes back to the thread that sums them), and pools per thread then filled on one
/// side and emptied on the other, which allocated on every step.
static POOL: Mutex<Pool> = Mutex::new(Pool { kept: Vec::new(), lines: 0 });

struct Pool {
    kept: Vec<Vec<Line>>,
    /// The kept buffers' capacities, in lines.
    lines: usize,
}

/// Storage for `lines` cache lines: the kept one that fits most tightly, else new (a kept
/// one grown would have its old contents copied by the reallocation). Zeroed when `zero`;
/// else only the lines it never held are (a storage's length is the lines written so far),
/// and the rest keep what its last buffer left there.
fn take(lines: usize, zero: bool) -> Vec<Line> {
    let kept = {
        let mut pool = POOL.lock().unwrap_or_else(PoisonError::into_inner);
        let kept = &pool.kept;
        let fit = (0..kept.len()).filter(|&i| kept[i].capacity() >= lines).min_by_key(|&i| kept[i].capacity());
        fit.map(|i| {
            let v = pool.kept.swap_remove(i);
            pool.lines -= v.capacity();
            v
        })
    };
    let mut v = kept.unwrap_or_else(|| Vec::with_capacity(lines));
    if zero {
        v.clear();
    } else {
        v.truncate(lines);
    }
    let held = v.len();
    // One memset: `resize` copied a 64-byte line at a time from the stack through 16-byte
    // registers, 3% of a 512-token mid-size prefill's samples.
    // SAFETY: capacity >= lines (the kept one fits, or was made so), lines [held, lines) are
    // inside it, and zero bytes are a Line.
    unsafe {
        std::ptr::write_bytes(v.as_mut_ptr().add(held), 0, lines - held);
        v.set_len(lines);
    }
    v
}

/// Back to the pool, within KEPT and KEPT_BYTES; when it is full of buffers, the smaller of
/// this and its smallest is freed.
fn give_back(v: Vec<Line>) {
    let cap = v.capacity();
    let most = KEPT_BYTES / size_of::<Line>();
    if cap == 0 {
        return;
    }
    let mut pool = POOL.lock().unwrap_or_else(PoisonError::into_inner);
    if pool.kept.len() < KEPT {
        if pool.lines + cap <= most {
            pool.lines += cap;
            pool.kept.push(v);
        }
    } else if let Some(i) = (0..pool.kept.len()).min_by_key(|&i| pool.kept[i].capacity()) {
        let smallest = pool.kept[i].capacity();
        if smallest < cap && pool.lines - smallest + cap <= most {
            pool.lines = pool.lines - smallest + cap;
            pool.kept[i] = v;
        }
    }
}

/// A buffer of `len` values of T (f32, i16, i8, i32, u32, u64, u8, usize: plain numbers
/// whose size divides 64) whose first value starts a cache line; zeroed when made, its
/// storage from the pool and back to it when dropped.
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
impl Plain for u32 {}
impl Plain for u64 {}
impl Plain for u8 {}
impl Plain for usize {}

impl<T: Plain> Aligned<T> {
    pub fn zeroed(len: usize) -> Aligned<T> {
        Self::taken(len, true)
    }

    /// A buffer whose values are whatever its storage last held (zeros where it never held
    /// any), for a caller that writes every value before it reads one: zeroing a prefill's
    /// outputs and activation copies first, only to overwrite them, was 3% of a 512-token
    /// mid-size prefill (its large buffers come back from memory to be zeroed).
    pub fn for_overwrite(len: usize) -> Aligned<T> {
        Self::taken(len, false)
    }

    fn taken(len: usize, zero: bool) -> Aligned<T> {
        const { assert!(64 % size_of::<T>() == 0 && align_of::<T>() <= 64) };
        let lines = take((len * size_of::<T>()).div_ceil(64), zero);
        Aligned { lines, len, _values: PhantomData }
    }

    /// A copy of `values`, starting on a cache line.
    pub fn copy_of(values: &[T]) -> Aligned<T> {
        let mut a = Aligned::for_overwrite(values.len());
        a.copy_from_slice(values);
        a
    }
}

impl<T> Drop for Aligned<T> {
    fn drop(&mut self) {
        give_back(std::mem::take(&mut self.lines));
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

    #[test]
    fn reused_storage_comes_back_zeroed_and_sized() {
        // Buffers dirtied and dropped, then taken again at smaller, equal and larger sizes:
        // whichever kept storage each gets, it starts on a line and holds only zeros.
        for round in 0..50usize {
            let dirty: Vec<Aligned<u32>> = (1..8).map(|k| Aligned::zeroed(k * 100 + round)).collect();
            let dirty: Vec<Aligned<u32>> = dirty
                .into_iter()
                .map(|mut a| {
                    a.fill(u32::MAX);
                    a
                })
                .collect();
            drop(dirty);
            for len in [1usize, 99, 450, 800, 2000] {
                let a = Aligned::<f32>::zeroed(len);
                assert_eq!((a.len(), a.as_ptr() as usize % 64), (len, 0));
                assert!(a.iter().all(|&v| v.to_bits() == 0), "round {round}, {len} values: not zeroed");
            }
        }
    }
}
