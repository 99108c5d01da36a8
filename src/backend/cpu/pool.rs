//! The engine thread as one of the CPU backend's workers.
//!
//! An op's parallel loop started from a thread outside rayon's pool is handed to a worker,
//! and the caller sleeps on a futex until it is done: two context switches per op, which at
//! decode sizes cost as much as the op. Run from a thread of the pool, the same loop is split
//! in place: the caller works on one half while a warm worker steals the other.

/// Runs `f` on the current thread as worker 0 of a pool of the global pool's size (so
/// `RAYON_NUM_THREADS` still sets it); every rayon loop inside `f` runs in that pool.
pub fn run_as_worker<R: Send>(f: impl FnOnce() -> R + Send) -> R {
    // The steps run from here: their freed buffers stay mapped for the next ones.
    super::heap::keep_step_buffers();
    let threads = rayon::current_num_threads();
    match rayon::ThreadPoolBuilder::new()
        .num_threads(threads)
        .use_current_thread()
        .thread_name(|i| format!("kiln-cpu-{i}"))
        .build()
    {
        // The current thread is a worker of `pool`, so install runs f right here.
        Ok(pool) => pool.install(f),
        Err(e) => {
            crate::log::warn("cpu_pool", format!("cannot start the CPU worker pool ({e}); ops use the global pool"))
                .emit();
            f()
        }
    }
}
