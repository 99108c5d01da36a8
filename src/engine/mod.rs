//! The engine thread: admits requests from a channel, schedules them into batched forward
//! steps over the paged KV pool, and streams tokens back.
//!
//! Each step mixes one decode token of every running request with chunks of waiting prompts
//! (up to the plan's prefill_chunk_tokens), so long prompts never stall decoding. Admission
//! is bounded by the running limit and by free pages; when pages run out mid-decode the most
//! recently admitted request is preempted (its pages freed, its tokens recomputed later).

mod constrained;
pub mod constraint;
mod request;
mod speculate;
mod step;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::mpsc::{self, Sender};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

pub use constraint::{Constraint, TokenMask};
pub use request::{CancelFlag, Event, FinishReason, GenerationRequest, Usage};

use crate::backend::Backend;
use crate::kv::{KvFormat, PageTable};
use crate::metrics::Metrics;
use crate::model::Model;

/// Limits and KV sizing the engine works with, from the plan.
#[derive(Debug, Clone)]
pub struct EngineConfig {
    pub max_running: usize,
    pub max_queued: usize,
    pub request_timeout: Duration,
    /// Prompt tokens prefilled per step, across requests.
    pub prefill_chunk_tokens: usize,
    pub kv_format: KvFormat,
    pub page_size: usize,
    pub kv_pages: usize,
    pub prefix_cache: bool,
    /// MTP draft tokens per step (0 = no speculative decoding).
    pub spec_depth: usize,
    /// Steps in which more requests than this decode draft nothing (usize::MAX: no limit).
    pub spec_max_batch: usize,
}

/// What `EngineHandle::inspect` reports.
#[derive(Debug, Clone, PartialEq)]
pub struct PoolReport {
    pub total_pages: usize,
    pub available_pages: usize,
    pub running: usize,
    pub waiting: usize,
    /// The pool's integrity check over every live sequence.
    pub integrity: Result<(), String>,
}

enum Msg {
    Submit(Box<GenerationRequest>),
    Inspect(Sender<PoolReport>),
    /// Fault injection for health tests: block the engine thread this long.
    Stall(Duration),
    /// Fault injection for tests: sleep this long before every step (a slow model).
    Throttle(Duration),
}

/// Liveness and admission state shared between the engine and the server.
struct Shared {
    started: Instant,
    /// Milliseconds since `started` at the engine's last step.
    last_beat_ms: AtomicU64,
    alive: AtomicBool,
    /// Requests submitted and not yet finished (running + waiting).
    in_flight: AtomicUsize,
}

impl Shared {
    fn beat(&self) {
        self.last_beat_ms.store(self.started.elapsed().as_millis() as u64, Ordering::Release);
    }
}

/// Marks the engine dead when its thread ends, panics included.
struct AliveGuard(Arc<Shared>);

impl Drop for AliveGuard {
    fn drop(&mut self) {
        self.0.alive.store(false, Ordering::Release);
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Rejected {
    /// Running and waiting slots are all taken.
    QueueFull,
    /// The engine thread is gone.
    EngineDown,
}

#[derive(Clone)]
pub struct EngineHandle {
    tx: Sender<Msg>,
    shared: Arc<Shared>,
    limit: usize,
}

impl EngineHandle {
    /// Queues a request, or refuses it when max_running + max_queued are in flight.
    pub fn submit(&self, req: GenerationRequest) -> Result<(), Rejected> {
        if !self.shared.alive.load(Ordering::Acquire) {
            return Err(Rejected::EngineDown);
        }
        let admitted = self
            .shared
            .in_flight
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| (n < self.limit).then_some(n + 1));
        if admitted.is_err() {
            return Err(Rejected::QueueFull);
        }
        self.tx.send(Msg::Submit(Box::new(req))).map_err(|_| {
            self.shared.in_flight.fetch_sub(1, Ordering::AcqRel);
            Rejected::EngineDown
        })
    }

    /// Whether the engine thread is alive, and how long ago it last stepped.
    pub fn health(&self) -> (bool, Duration) {
        let now = self.shared.started.elapsed().as_millis() as u64;
        let last = self.shared.last_beat_ms.load(Ordering::Acquire);
        (self.shared.alive.load(Ordering::Acquire), Duration::from_millis(now.saturating_sub(last)))
    }

    pub fn in_flight(&self) -> usize {
        self.shared.in_flight.load(Ordering::Acquire)
    }

    /// The KV pool's occupancy and integrity, as the engine sees it between steps.
    pub fn inspect(&self) -> Option<PoolReport> {
        let (tx, rx) = mpsc::channel();
        self.tx.send(Msg::Inspect(tx)).ok()?;
        rx.recv_timeout(Duration::from_secs(30)).ok()
    }

    #[doc(hidden)]
    /// Blocks the engine thread for `d` (fault injection for health tests).
    pub fn stall(&self, d: Duration) {
        let _ = self.tx.send(Msg::Stall(d));
    }

    #[doc(hidden)]
    /// Makes every engine step take at least `d` (fault injection: a slow model).
    pub fn throttle(&self, d: Duration) {
        let _ = self.tx.send(Msg::Throttle(d));
    }
}

/// Starts the engine thread with a KV cache sized by `config`: its page table, and its store on
/// the model's backend.
pub fn spawn<B: Backend>(
    model: Arc<Model<B>>,
    config: EngineConfig,
    metrics: Arc<Metrics>,
) -> (EngineHandle, JoinHandle<()>) {
    let (tx, rx) = mpsc::channel();
    let shared = Arc::new(Shared {
        started: Instant::now(),
        last_beat_ms: AtomicU64::new(0),
        alive: AtomicBool::new(true),
        in_flight: AtomicUsize::new(0),
    });
    let limit = config.max_running + config.max_queued;
    let handle = EngineHandle { tx, shared: shared.clone(), limit };
    let join = std::thread::Builder::new()
        .name("kiln-engine".into())
        .spawn(move || {
            let _guard = AliveGuard(shared.clone());
            // With speculation the MTP layer's entries live in the same pages as the main
            // layers': one page table, one prefix cache, one rollback.
            let speculate = config.spec_depth > 0 && !model.weights.mtp.is_empty();
            let geometry = if speculate { model.kv_geometry_with_mtp() } else { model.kv_geometry() };
            let table = PageTable::new(config.page_size, config.kv_pages, config.prefix_cache);
            let store = match model.backend.kv_store(config.kv_format, geometry, table.total_slots()) {
                Ok(s) => s,
                Err(e) => {
                    crate::log::error("kv_store", format!("cannot allocate the KV cache: {e}")).emit();
                    return;
                }
            };
            crate::log::info(
                "kv_cache",
                format!(
                    "KV cache: {} pages of {} tokens ({} tokens) on {}",
                    config.kv_pages,
                    config.page_size,
                    config.kv_pages * config.page_size,
                    model.backend.describe()
                ),
            )
            .emit();
            // The engine thread computes the CPU backend's ops itself, next to the pool's
            // other workers (a GPU backend's host work is serial and unaffected).
            crate::backend::cpu::pool::run_as_worker(|| {
                step::Engine::new(model, config, metrics, shared, rx, table, store, speculate).run()
            });
        })
        .expect("spawn the engine thread");
    (handle, join)
}
