//! The engine thread: admits requests from a channel, runs the model, streams tokens back.
//!
//! Each step admits waiting requests up to the plan's running limit (prefilling each prompt
//! in one forward), then advances every running request by one token. The batched engine
//! with paged KV and chunked prefill replaces the step, not this interface.

mod request;

use std::collections::VecDeque;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError, Sender};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

pub use request::{CancelFlag, Event, FinishReason, GenerationRequest, Usage};

use crate::metrics::Metrics;
use crate::model::{Model, SeqCache};
use crate::sample::{Sampler, logprobs};

/// Limits the engine enforces, from the plan.
#[derive(Debug, Clone)]
pub struct EngineConfig {
    pub max_running: usize,
    pub max_queued: usize,
    pub request_timeout: Duration,
    /// KV tokens the plan budgets for; kv_cache_usage_perc is measured against it.
    pub kv_capacity_tokens: usize,
}

/// How long the idle engine waits for work before it beats again.
const IDLE_WAIT: Duration = Duration::from_millis(50);

enum Msg {
    Submit(Box<GenerationRequest>),
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

/// Starts the engine thread.
pub fn spawn(model: Arc<Model>, config: EngineConfig, metrics: Arc<Metrics>) -> (EngineHandle, JoinHandle<()>) {
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
            Engine {
                model,
                config,
                metrics,
                shared,
                rx,
                waiting: VecDeque::new(),
                running: Vec::new(),
                throttle: Duration::ZERO,
            }
            .run();
        })
        .expect("spawn the engine thread");
    (handle, join)
}

/// A request in the engine.
struct Seq {
    req: GenerationRequest,
    cache: SeqCache,
    sampler: Sampler,
    /// The last token's final hidden state [D], the input of the next sample.
    last_hidden: Vec<f32>,
    generated: usize,
    first_token: Option<Instant>,
    last_token: Instant,
}

struct Engine {
    model: Arc<Model>,
    config: EngineConfig,
    metrics: Arc<Metrics>,
    shared: Arc<Shared>,
    rx: Receiver<Msg>,
    waiting: VecDeque<GenerationRequest>,
    running: Vec<Seq>,
    throttle: Duration,
}

impl Engine {
    fn run(mut self) {
        loop {
            self.shared.beat();
            if !self.intake() {
                return;
            }
            self.sweep_waiting();
            let busy = !self.running.is_empty() || !self.waiting.is_empty();
            if busy && !self.throttle.is_zero() {
                std::thread::sleep(self.throttle);
            }
            self.admit();
            self.decode();
            self.report();
        }
    }

    /// Takes new messages; blocks briefly when idle. False when the server is gone.
    fn intake(&mut self) -> bool {
        if self.running.is_empty() && self.waiting.is_empty() {
            match self.rx.recv_timeout(IDLE_WAIT) {
                Ok(m) => self.on(m),
                Err(RecvTimeoutError::Timeout) => return true,
                Err(RecvTimeoutError::Disconnected) => return false,
            }
        }
        while let Ok(m) = self.rx.try_recv() {
            self.on(m);
        }
        true
    }

    fn on(&mut self, m: Msg) {
        match m {
            Msg::Submit(r) => self.waiting.push_back(*r),
            Msg::Stall(d) => std::thread::sleep(d),
            Msg::Throttle(d) => self.throttle = d,
        }
    }

    /// Waiting requests whose client left or whose time ran out leave the queue at once.
    fn sweep_waiting(&mut self) {
        let timeout = self.config.request_timeout;
        let (gone, stay): (Vec<_>, Vec<_>) = std::mem::take(&mut self.waiting)
            .into_iter()
            .partition(|r| r.cancel.is_cancelled() || r.arrival.elapsed() > timeout);
        self.waiting = stay.into();
        for r in gone {
            let reason = if r.cancel.is_cancelled() { FinishReason::Abort } else { FinishReason::Timeout };
            self.end(&r, reason, 0, 0);
        }
    }

    fn admit(&mut self) {
        while self.running.len() < self.config.max_running {
            let Some(req) = self.waiting.pop_front() else { break };
            let mut cache = self.model.new_cache();
            let hidden = match self.model.forward(&req.prompt, &mut cache, None) {
                Ok(h) => h,
                Err(e) => {
                    let _ = req.events.send(Event::Failed(e.to_string()));
                    self.end(&req, FinishReason::Abort, 0, 0);
                    continue;
                }
            };
            self.metrics.add_prompt(req.prompt.len(), 0);
            let d = self.model.shape.hidden_size as usize;
            let sampler = Sampler::new(req.params.clone(), &req.prompt);
            let last_hidden = hidden[hidden.len() - d..].to_vec();
            let seq =
                Seq { req, cache, sampler, last_hidden, generated: 0, first_token: None, last_token: Instant::now() };
            self.running.push(seq);
            self.shared.beat();
        }
    }

    /// One token for every running request; finished ones leave.
    fn decode(&mut self) {
        if self.running.is_empty() {
            return;
        }
        let mut keep = Vec::with_capacity(self.running.len());
        for mut seq in std::mem::take(&mut self.running) {
            match self.advance(&mut seq) {
                None => keep.push(seq),
                Some(reason) => {
                    let (p, g) = (seq.req.prompt.len(), seq.generated);
                    self.end(&seq.req, reason, p, g);
                }
            }
            self.shared.beat();
        }
        self.running = keep;
        self.metrics.step();
    }

    /// Samples the next token of `seq` and runs it through the model; Some(reason) when the
    /// request is over.
    fn advance(&self, seq: &mut Seq) -> Option<FinishReason> {
        if seq.req.cancel.is_cancelled() {
            return Some(FinishReason::Abort);
        }
        if seq.req.arrival.elapsed() > self.config.request_timeout {
            return Some(FinishReason::Timeout);
        }
        let logits = self.model.logits(&seq.last_hidden);
        let token = seq.sampler.sample(&logits);
        seq.generated += 1;
        let now = Instant::now();
        match seq.first_token {
            None => {
                seq.first_token = Some(now);
                self.metrics.observe_ttft((now - seq.req.arrival).as_secs_f64());
            }
            Some(_) => self.metrics.observe_itl((now - seq.last_token).as_secs_f64()),
        }
        seq.last_token = now;
        self.metrics.add_generated(1);
        if seq.req.stop_token_ids.contains(&token) {
            return Some(FinishReason::Stop);
        }
        let logprob = seq.req.logprobs.map(|n| logprobs(&logits, token, n));
        if seq.req.events.send(Event::Token { id: token, logprob }).is_err() {
            return Some(FinishReason::Abort);
        }
        let context = self.model.shape.max_position_embeddings as usize;
        if seq.generated >= seq.req.max_tokens || seq.cache.len() + 1 >= context {
            return Some(FinishReason::Length);
        }
        match self.model.forward(&[token], &mut seq.cache, None) {
            Ok(h) => {
                seq.last_hidden = h;
                None
            }
            Err(e) => {
                let _ = seq.req.events.send(Event::Failed(e.to_string()));
                Some(FinishReason::Abort)
            }
        }
    }

    fn end(&self, req: &GenerationRequest, reason: FinishReason, prompt_tokens: usize, completion_tokens: usize) {
        let usage = Usage { prompt_tokens, completion_tokens, cached_tokens: 0 };
        let _ = req.events.send(Event::Done { reason, usage });
        self.metrics.finish(reason.as_str(), req.arrival.elapsed().as_secs_f64());
        self.shared.in_flight.fetch_sub(1, Ordering::AcqRel);
    }

    fn report(&self) {
        let kv: usize = self.running.iter().map(|s| s.cache.len()).sum();
        let usage = kv as f64 / self.config.kv_capacity_tokens.max(1) as f64;
        self.metrics.set_queue(self.running.len(), self.waiting.len(), usage.min(1.0));
    }
}
