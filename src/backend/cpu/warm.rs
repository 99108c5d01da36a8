//! Keeping the pool's other workers awake while steps run.
//!
//! A rayon worker with nothing to do spins for a few dozen rounds of `sched_yield` and then
//! sleeps on a futex. A decode step of a small model is a chain of ops a few microseconds
//! each, with serial stretches between its parallel ones (norms, the router, sampling), long
//! enough for the worker to fall asleep; the next parallel op then pays a futex wake on the
//! engine thread and the worker's wake-up latency (measured on a 2-vCPU VM: 12% of the
//! indexer's time in `futex_wake` alone). So while steps keep coming, each other worker runs
//! a spinner: a job that takes whatever work the pool has (`rayon::yield_now`) and otherwise
//! yields its core (`sched_yield`, so the HTTP threads still get it: a pure spin measured no
//! faster and left them less), never sleeping, until no step has touched it for `GRACE`; an
//! idle server then sleeps as before.

use std::cell::OnceCell;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

/// How long the spinners outlive the last op: longer than the host's work between two
/// steps (sampling, scheduling), short enough that an idle engine stops spinning at once.
const GRACE: Duration = Duration::from_millis(1);

struct Warmth {
    origin: Instant,
    /// Nanoseconds after `origin` when the spinners stop.
    deadline: AtomicU64,
    /// Spinners started and not yet stopped.
    live: AtomicUsize,
}

impl Warmth {
    fn now(&self) -> u64 {
        self.origin.elapsed().as_nanos() as u64
    }

    /// Moves the spinners' stop to `GRACE` from now.
    fn extend(&self) {
        self.deadline.store(self.now() + GRACE.as_nanos() as u64, Ordering::Relaxed);
    }
}

thread_local! {
    static WARMTH: OnceCell<Arc<Warmth>> = const { OnceCell::new() };
}

/// Marks the calling thread's pool as busy for `GRACE` more, starting spinners on its other
/// workers when none runs. Does nothing outside a rayon pool or in a pool of one thread.
/// Called by the thread that runs the steps (the engine thread, worker 0), never from
/// inside a parallel op: a spinner started from another worker would run on this one.
pub fn keep_warm() {
    let Some(me) = rayon::current_thread_index() else { return };
    let threads = rayon::current_num_threads();
    if threads < 2 {
        return;
    }
    WARMTH.with(|cell| {
        let w = cell.get_or_init(|| {
            Arc::new(Warmth { origin: Instant::now(), deadline: AtomicU64::new(0), live: AtomicUsize::new(0) })
        });
        w.extend();
        if w.live.compare_exchange(0, threads - 1, Ordering::AcqRel, Ordering::Relaxed).is_ok() {
            let w = Arc::clone(w);
            rayon::spawn_broadcast(move |ctx| {
                if ctx.index() != me {
                    spin(&w);
                }
            });
        }
    });
}

/// Renews the grace when the calling thread runs steps and its spinners are up (a long
/// step, such as a prefill, outlasts one grace); anywhere else it does nothing.
pub fn renew() {
    WARMTH.with(|cell| {
        if let Some(w) = cell.get() {
            w.extend();
        }
    });
}

/// Runs the pool's jobs as they come, yielding the core in between, until the deadline passes.
fn spin(w: &Warmth) {
    while w.now() <= w.deadline.load(Ordering::Relaxed) {
        if rayon::yield_now() != Some(rayon::Yield::Executed) {
            std::thread::yield_now();
        }
    }
    w.live.fetch_sub(1, Ordering::AcqRel);
}

#[cfg(test)]
mod tests {
    use super::*;
    use rayon::prelude::*;

    #[test]
    fn spinners_run_the_pools_work_and_stop_after_the_grace() {
        let pool = rayon::ThreadPoolBuilder::new().num_threads(2).build().expect("a pool of two");
        pool.install(|| {
            keep_warm();
            // Work still gets done (the spinner takes it), with the same result.
            let sum: u64 = (0..100_000u64).into_par_iter().map(|i| i * 2).sum();
            assert_eq!(sum, 99_999 * 100_000);
            let live = || WARMTH.with(|c| c.get().map(|w| w.live.load(Ordering::Acquire)));
            assert!(live().is_some());
            let start = Instant::now();
            while live() != Some(0) {
                assert!(start.elapsed() < Duration::from_secs(5), "the spinner outlived its grace");
                std::thread::sleep(Duration::from_millis(1));
            }
        });
        // Outside a pool: nothing to keep warm.
        keep_warm();
    }
}
