//! One engine step: intake, admission, the mixed decode + chunked-prefill batch, sampling,
//! finishing, preemption.

use std::collections::VecDeque;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::sync::mpsc::{Receiver, RecvTimeoutError};
use std::time::{Duration, Instant};

use super::{EngineConfig, Event, FinishReason, GenerationRequest, Msg, PoolReport, Shared, Usage};
use crate::kv::{KvPool, SeqKv};
use crate::metrics::Metrics;
use crate::model::{Model, SeqInput};
use crate::sample::{Sampler, logprobs};

/// How long the idle engine waits for work before it beats again.
const IDLE_WAIT: Duration = Duration::from_millis(50);

/// A request inside the engine.
struct Seq {
    req: GenerationRequest,
    kv: SeqKv,
    /// Prompt, then generated tokens; KV is written for tokens[..kv.len].
    tokens: Vec<u32>,
    sampler: Sampler,
    generated: usize,
    /// Prompt tokens found in the prefix cache at first admission.
    cached: usize,
    admitted: bool,
    first_token: Option<Instant>,
    last_token: Instant,
}

impl Seq {
    fn new(req: GenerationRequest) -> Seq {
        let sampler = Sampler::new(req.params.clone(), &req.prompt);
        Seq {
            tokens: req.prompt.clone(),
            req,
            kv: SeqKv::default(),
            sampler,
            generated: 0,
            cached: 0,
            admitted: false,
            first_token: None,
            last_token: Instant::now(),
        }
    }

    /// Tokens whose KV is still to be computed.
    fn pending(&self) -> usize {
        self.tokens.len() - self.kv.len
    }
}

pub struct Engine {
    model: Arc<Model>,
    config: EngineConfig,
    metrics: Arc<Metrics>,
    shared: Arc<Shared>,
    rx: Receiver<Msg>,
    pool: KvPool,
    waiting: VecDeque<Seq>,
    /// In admission order (preemption takes from the back).
    running: Vec<Seq>,
    throttle: Duration,
}

impl Engine {
    pub fn new(
        model: Arc<Model>,
        config: EngineConfig,
        metrics: Arc<Metrics>,
        shared: Arc<Shared>,
        rx: Receiver<Msg>,
        pool: KvPool,
    ) -> Engine {
        Engine {
            model,
            config,
            metrics,
            shared,
            rx,
            pool,
            waiting: VecDeque::new(),
            running: Vec::new(),
            throttle: Duration::ZERO,
        }
    }

    pub fn run(mut self) {
        loop {
            self.shared.beat();
            if !self.intake() {
                return;
            }
            self.drop_finished_early();
            let busy = !self.running.is_empty() || !self.waiting.is_empty();
            if busy && !self.throttle.is_zero() {
                std::thread::sleep(self.throttle);
            }
            self.admit();
            self.step();
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
            Msg::Submit(r) => self.waiting.push_back(Seq::new(*r)),
            Msg::Inspect(tx) => {
                let live: Vec<&SeqKv> = self.running.iter().map(|s| &s.kv).collect();
                let _ = tx.send(PoolReport {
                    total_pages: self.pool.total_pages(),
                    available_pages: self.pool.available_pages(),
                    running: self.running.len(),
                    waiting: self.waiting.len(),
                    integrity: self.pool.check(&live),
                });
            }
            Msg::Stall(d) => std::thread::sleep(d),
            Msg::Throttle(d) => self.throttle = d,
        }
    }

    /// Cancelled and timed-out requests leave at once, their pages freed.
    fn drop_finished_early(&mut self) {
        let timeout = self.config.request_timeout;
        let gone = |s: &Seq| s.req.cancel.is_cancelled() || s.req.arrival.elapsed() > timeout;
        let reason = |s: &Seq| if s.req.cancel.is_cancelled() { FinishReason::Abort } else { FinishReason::Timeout };
        for queue in [0, 1] {
            let seqs: Vec<Seq> = if queue == 0 {
                std::mem::take(&mut self.waiting).into_iter().collect()
            } else {
                std::mem::take(&mut self.running)
            };
            let (out, stay): (Vec<Seq>, Vec<Seq>) = seqs.into_iter().partition(gone);
            for s in out {
                let r = reason(&s);
                self.end(s, r);
            }
            if queue == 0 {
                self.waiting = stay.into();
            } else {
                self.running = stay;
            }
        }
    }

    /// Moves waiting requests into the running set while slots and pages allow, first come
    /// first served. A request's whole prompt must fit in the pages available.
    fn admit(&mut self) {
        while self.running.len() < self.config.max_running {
            let Some(mut seq) = self.waiting.pop_front() else { break };
            let cached = self.pool.attach_prefix(&mut seq.kv, &seq.tokens);
            let need = self.pool.pages_needed(&seq.kv, seq.tokens.len() + 1);
            if need > self.pool.available_pages() {
                self.pool.release(&mut seq.kv);
                if self.running.is_empty() && need > self.pool.total_pages() {
                    let msg = format!("the prompt needs {need} KV pages; the pool has {}", self.pool.total_pages());
                    let _ = seq.req.events.send(Event::Failed(msg));
                    self.end(seq, FinishReason::Abort);
                    continue;
                }
                self.waiting.push_front(seq);
                break;
            }
            if !seq.admitted {
                seq.admitted = true;
                seq.cached = cached;
                self.metrics.add_prompt(seq.req.prompt.len(), cached);
            }
            self.running.push(seq);
        }
    }

    /// One batched forward: a decode token for every request that has one, and prompt chunks
    /// within the prefill budget.
    fn step(&mut self) {
        if self.running.is_empty() {
            return;
        }
        // Pages for this step's tokens; preempt the newest requests when they run out.
        let mut budget = self.config.prefill_chunk_tokens;
        let mut plan: Vec<(usize, usize)> = Vec::new(); // (running index, tokens this step)
        let mut i = 0;
        while i < self.running.len() {
            let pending = self.running[i].pending();
            // Decode tokens always run; prompt chunks share the prefill budget.
            let n = if pending <= 1 { pending } else { pending.min(budget) };
            if n == 0 {
                i += 1;
                continue;
            }
            let end = self.running[i].kv.len + n;
            let seq = &mut self.running[i];
            if self.pool.reserve(&mut seq.kv, end).is_err() {
                // Free pages by preempting the newest request; if this is the newest, it waits.
                // Entries before i keep their places, so `plan` stays valid; look at i again.
                if !self.preempt_newest(i) {
                    self.preempt(i);
                }
                continue;
            }
            if pending > 1 {
                budget -= n;
            }
            plan.push((i, n));
            i += 1;
        }
        if plan.is_empty() {
            return;
        }

        let inputs: Vec<SeqInput> = plan
            .iter()
            .map(|&(i, n)| {
                let s = &self.running[i];
                SeqInput { tokens: &s.tokens[s.kv.len..s.kv.len + n], kv: &s.kv }
            })
            .collect();
        let hidden = self.model.forward_batch(&inputs, &mut self.pool, None);
        drop(inputs);
        let hidden = match hidden {
            Ok(h) => h,
            Err(e) => {
                for (i, _) in plan.iter().rev() {
                    let s = self.running.remove(*i);
                    let _ = s.req.events.send(Event::Failed(e.to_string()));
                    self.end(s, FinishReason::Abort);
                }
                return;
            }
        };
        self.metrics.step();
        self.shared.beat();

        let d = self.model.shape.hidden_size as usize;
        let mut row = 0;
        let mut finished = Vec::new();
        for &(i, n) in &plan {
            row += n;
            let seq = &mut self.running[i];
            seq.kv.len += n;
            self.pool.commit(&mut seq.kv, &seq.tokens);
            if seq.pending() == 0 {
                let last = &hidden[(row - 1) * d..row * d];
                if let Some(reason) = self.sample(i, last) {
                    finished.push((i, reason));
                }
            }
        }
        for (i, reason) in finished.into_iter().rev() {
            let s = self.running.remove(i);
            self.end(s, reason);
        }
    }

    /// Samples the next token of running request `i`; Some(reason) when it is over.
    fn sample(&mut self, i: usize, hidden: &[f32]) -> Option<FinishReason> {
        let logits = self.model.logits(hidden);
        let seq = &mut self.running[i];
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
        seq.tokens.push(token);
        let context = self.model.shape.max_position_embeddings as usize;
        if seq.generated >= seq.req.max_tokens || seq.tokens.len() >= context {
            return Some(FinishReason::Length);
        }
        None
    }

    /// Preempts the most recently admitted running request after `i`; false if none.
    fn preempt_newest(&mut self, i: usize) -> bool {
        if self.running.len() <= i + 1 {
            return false;
        }
        let last = self.running.len() - 1;
        self.preempt(last);
        true
    }

    /// Frees request `i`'s pages and puts it at the head of the waiting queue; its tokens so
    /// far (prompt and generated) are recomputed when it is admitted again.
    fn preempt(&mut self, i: usize) {
        let mut s = self.running.remove(i);
        self.pool.release(&mut s.kv);
        self.metrics.preempted();
        self.waiting.push_front(s);
    }

    fn end(&mut self, mut seq: Seq, reason: FinishReason) {
        self.pool.release(&mut seq.kv);
        let usage =
            Usage { prompt_tokens: seq.req.prompt.len(), completion_tokens: seq.generated, cached_tokens: seq.cached };
        let _ = seq.req.events.send(Event::Done { reason, usage });
        self.metrics.finish(reason.as_str(), seq.req.arrival.elapsed().as_secs_f64());
        self.shared.in_flight.fetch_sub(1, Ordering::AcqRel);
    }

    fn report(&self) {
        self.metrics.set_queue(self.running.len(), self.waiting.len(), self.pool.usage());
    }
}
