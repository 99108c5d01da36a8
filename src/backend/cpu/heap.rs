//! Step buffers reused from one step to the next, through the C allocator.
//!
//! A step's ops allocate their outputs and scratch as they go (a 512-token prefill of the
//! mid-size bench model: about 110 thousand allocations, 2 GB, the largest 8 MiB). glibc's
//! malloc gives every block above its mmap threshold (128 KiB at start, moving up to the
//! largest block freed so far) its own mapping, and returns the free top of a heap to the
//! kernel once it exceeds the trim threshold. Each step then faulted its large buffers in
//! again, a page at a time, each page zeroed by the kernel: 5-8% of that prefill.
//!
//! So the CPU backend fixes both thresholds when it starts: blocks up to `MMAP_ABOVE` come
//! from the heaps, and a heap keeps up to `TRIM_ABOVE` of free memory at its top. Freed step
//! buffers then serve the next step's allocations from pages already mapped. What the
//! process holds is bounded by the largest step's working set (set by the plan's batch and
//! prefill chunk) plus `TRIM_ABOVE` per heap, not by how many steps ran.

/// Blocks at least this large still get their own mapping: glibc's largest allowed
/// threshold (half its 64 MiB heap size), 4x the largest step buffer measured.
pub const MMAP_ABOVE: usize = 32 << 20;
/// Free memory a heap keeps at its top instead of returning it.
pub const TRIM_ABOVE: usize = 256 << 20;

/// Sets the thresholds (once per process; later calls do nothing). False, and a warning in
/// the log, when the C library refused them: steps still run, paying the faults.
pub fn keep_step_buffers() -> bool {
    static SET: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *SET.get_or_init(|| {
        let ok = set_thresholds();
        if !ok {
            crate::log::warn(
                "cpu_heap",
                "the C allocator refused its thresholds; step buffers are mapped anew each step",
            )
            .emit();
        }
        ok
    })
}

#[cfg(all(target_os = "linux", target_env = "gnu"))]
fn set_thresholds() -> bool {
    // SAFETY: mallopt only sets allocator parameters; it takes the allocator's own lock.
    unsafe {
        libc::mallopt(libc::M_MMAP_THRESHOLD, MMAP_ABOVE as libc::c_int) == 1
            && libc::mallopt(libc::M_TRIM_THRESHOLD, TRIM_ABOVE as libc::c_int) == 1
    }
}

/// Other C libraries: their allocator as it is.
#[cfg(not(all(target_os = "linux", target_env = "gnu")))]
fn set_thresholds() -> bool {
    true
}

#[cfg(all(test, target_os = "linux", target_env = "gnu"))]
mod tests {
    use super::*;

    /// Whether glibc gave the block at `p` (`len` bytes asked for, a multiple of the page
    /// size) a mapping of its own: such a block's usable size is rounded up to whole pages
    /// past its header (a page more than asked), a heap block's to 16 bytes. Asked per
    /// block, so other tests' allocations at the same moment cannot change the answer.
    fn mapped_on_its_own<T>(p: *const T, len: usize) -> bool {
        // SAFETY: p is a live block from malloc (the Vec's, of align at most 16).
        let usable = unsafe { libc::malloc_usable_size(p as *mut libc::c_void) };
        usable >= len + 1024
    }

    #[test]
    fn a_step_sized_buffer_comes_from_the_heap_and_a_larger_one_is_mapped() {
        // Before the thresholds, glibc maps a first block over 128 KiB on its own (unless
        // another test already set them: the setting is the process's).
        assert!(keep_step_buffers());
        assert!(keep_step_buffers(), "a second call keeps the first one's answer");
        // 8 MiB, the largest buffer of a mid-size prefill, several times over: from a heap.
        for _ in 0..3 {
            let step = vec![1.0f32; (8 << 20) / 4];
            assert!(!mapped_on_its_own(step.as_ptr(), 8 << 20), "an 8 MiB step buffer was mapped on its own");
        }
        // Above the threshold: its own mapping, so a rare huge block still goes back at once.
        let huge = vec![1u8; MMAP_ABOVE + (1 << 20)];
        assert!(mapped_on_its_own(huge.as_ptr(), huge.len()), "a block above the threshold came from a heap");
    }
}
