//! One engine step: intake, admission, the mixed decode + chunked-prefill batch (with MTP
//! drafts verified in the same forward), sampling, finishing, preemption.

use std::collections::VecDeque;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::sync::mpsc::{Receiver, RecvTimeoutError};
use std::time::{Duration, Instant};

use super::speculate;
use super::{EngineConfig, Event, FinishReason, GenerationRequest, Msg, PoolReport, Shared, Usage};
use crate::backend::Backend;
use crate::kv::{PageTable, SeqKv};
use crate::metrics::Metrics;
use crate::model::{Model, StepBatch};
use crate::sample::{Sampler, Verdict, logprobs};

/// How long the idle engine waits for work before it beats again.
const IDLE_WAIT: Duration = Duration::from_millis(50);

/// A request inside the engine.
pub(super) struct Seq {
    pub req: GenerationRequest,
    pub kv: SeqKv,
    /// Prompt, then generated tokens; KV is written for tokens[..kv.len].
    pub tokens: Vec<u32>,
    pub sampler: Sampler,
    pub generated: usize,
    /// Prompt tokens found in the prefix cache at first admission.
    cached: usize,
    admitted: bool,
    first_token: Option<Instant>,
    last_token: Instant,
    /// Speculative decoding: positions whose MTP entries are written (the MTP layer is one
    /// more layer of the same pages), the main model's hidden rows it has not consumed yet
    /// (positions mtp_len .. kv.len), and the drafts (with the distributions they were
    /// drawn from) to verify next step.
    pub mtp_len: usize,
    pub mtp_hidden: Vec<f32>,
    pub drafts: Vec<u32>,
    pub draft_probs: Vec<Option<Vec<f32>>>,
    /// Drafts committed to the constraint while drafting, rolled back before verification.
    pub draft_commits: usize,
    pub finish: Option<FinishReason>,
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
            mtp_len: 0,
            mtp_hidden: Vec::new(),
            drafts: Vec::new(),
            draft_probs: Vec::new(),
            draft_commits: 0,
            finish: None,
        }
    }

    /// Tokens whose KV is still to be computed.
    pub fn pending(&self) -> usize {
        self.tokens.len() - self.kv.len
    }
}

pub struct Engine<B: Backend> {
    pub(super) model: Arc<Model<B>>,
    config: EngineConfig,
    pub(super) metrics: Arc<Metrics>,
    shared: Arc<Shared>,
    rx: Receiver<Msg>,
    /// Which pages each sequence holds (host data).
    pub(super) table: PageTable,
    /// The KV bytes, on the model's backend.
    pub(super) store: B::KvStore,
    /// Whether MTP speculation is on (the store then has the MTP layer too).
    speculate: bool,
    waiting: VecDeque<Seq>,
    /// In admission order (preemption takes from the back).
    pub(super) running: Vec<Seq>,
    throttle: Duration,
}

impl<B: Backend> Engine<B> {
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        model: Arc<Model<B>>,
        config: EngineConfig,
        metrics: Arc<Metrics>,
        shared: Arc<Shared>,
        rx: Receiver<Msg>,
        table: PageTable,
        store: B::KvStore,
        speculate: bool,
    ) -> Engine<B> {
        Engine {
            model,
            config,
            metrics,
            shared,
            rx,
            table,
            store,
            speculate,
            waiting: VecDeque::new(),
            running: Vec::new(),
            throttle: Duration::ZERO,
        }
    }

    pub fn spec_depth(&self) -> usize {
        if self.speculate { self.config.spec_depth } else { 0 }
    }

    /// Whether the next step decodes more requests than the plan lets draft
    /// (`speculative.max_batch`).
    pub(super) fn drafting_paused(&self) -> bool {
        let decoding = self.running.iter().filter(|s| s.finish.is_none() && s.pending() == 1).count();
        decoding > self.config.spec_max_batch
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
                let integrity = self.table.check(&live);
                let _ = tx.send(PoolReport {
                    total_pages: self.table.total_pages(),
                    available_pages: self.table.available_pages(),
                    running: self.running.len(),
                    waiting: self.waiting.len(),
                    integrity,
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
        let (out, stay): (Vec<Seq>, Vec<Seq>) = std::mem::take(&mut self.waiting).into_iter().partition(gone);
        self.waiting = stay.into();
        let (out2, stay): (Vec<Seq>, Vec<Seq>) = std::mem::take(&mut self.running).into_iter().partition(gone);
        self.running = stay;
        for s in out.into_iter().chain(out2) {
            let r = reason(&s);
            self.end(s, r);
        }
    }

    /// Moves waiting requests into the running set while slots and pages allow, first come
    /// first served. A request's whole prompt must fit in the pages available.
    fn admit(&mut self) {
        while self.running.len() < self.config.max_running {
            let Some(mut seq) = self.waiting.pop_front() else { break };
            let cached = self.table.attach_prefix(&mut seq.kv, &seq.tokens);
            let need = self.table.pages_needed(&seq.kv, seq.tokens.len() + 1 + self.spec_depth());
            if need > self.table.available_pages() {
                self.table.release(&mut seq.kv);
                if self.running.is_empty() && need > self.table.total_pages() {
                    let msg = format!("the prompt needs {need} KV pages; the pool has {}", self.table.total_pages());
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
            // Cached pages carry the MTP layer's entries too.
            seq.mtp_len = seq.kv.len;
            self.running.push(seq);
        }
    }

    /// One batched forward: the pending token (and drafts) of every decoding request, and
    /// prompt chunks within the prefill budget.
    fn step(&mut self) {
        if self.running.is_empty() {
            return;
        }
        let mut budget = self.config.prefill_chunk_tokens;
        let mut plan: Vec<(usize, usize)> = Vec::new(); // (running index, tokens this step)
        let mut i = 0;
        while i < self.running.len() {
            let seq = &self.running[i];
            let pending = seq.pending();
            // Decode: the pending token plus its drafts; prompt chunks share the budget.
            let n = if pending <= 1 { pending + seq.drafts.len() } else { pending.min(budget) };
            if n == 0 {
                i += 1;
                continue;
            }
            let end = seq.kv.len + n;
            let seq = &mut self.running[i];
            if self.table.reserve(&mut seq.kv, end).is_err() {
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

        // A decoding request's drafts ride after its pending token. The rows that sample are
        // a verified request's every row and a request's last row once its pending tokens all
        // run this step. A plain greedy request without logprobs needs only each row's argmax,
        // picked where the logits are; the others get their logits rows.
        let mut batch = StepBatch::new(self.table.page_size);
        batch.want_hidden = self.spec_depth() > 0;
        let mut picks: Vec<(bool, std::ops::Range<usize>)> = Vec::new(); // per plan entry: (argmax?, rows)
        for &(i, n) in &plan {
            let s = &self.running[i];
            let own = &s.tokens[s.kv.len..s.kv.len + n - s.drafts.len()];
            let tokens: Vec<u32> = own.iter().chain(&s.drafts).copied().collect();
            let rows = batch.push(&s.kv, &tokens);
            let argmax = s.wants_argmax_only();
            let list = if argmax { &mut batch.argmax_rows } else { &mut batch.logits_rows };
            let first = list.len();
            if !s.drafts.is_empty() {
                list.extend(rows);
            } else if s.pending() == n {
                list.push(rows.end - 1);
            }
            picks.push((argmax, first..list.len()));
        }
        let out = match self.model.step(&batch, &mut self.store, None) {
            Ok(out) => out,
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

        let (d, v) = (self.model.shape.hidden_size as usize, self.model.vocab_size());
        let mut row = 0;
        for (&(i, n), (argmax, r)) in plan.iter().zip(&picks) {
            let hidden = if out.hidden.is_empty() { &[][..] } else { &out.hidden[row * d..(row + n) * d] };
            row += n;
            let picked = if *argmax {
                Picked::Argmax(&out.argmax[r.clone()])
            } else {
                Picked::Logits(out.logits[r.start * v..r.end * v].chunks(v).collect())
            };
            if self.running[i].drafts.is_empty() {
                self.advance_plain(i, n, hidden, &picked);
            } else {
                self.advance_speculative(i, hidden, &picked);
            }
        }
        if self.spec_depth() > 0 {
            speculate::draft(self);
        }
        let mut k = 0;
        while k < self.running.len() {
            if let Some(reason) = self.running[k].finish {
                let s = self.running.remove(k);
                self.end(s, reason);
            } else {
                k += 1;
            }
        }
    }

    /// A prompt chunk or a single decode token of running request `i`: `hidden` its hidden
    /// states [n, D] (empty without speculation), `picked` its last row's logits or argmax
    /// when its pending tokens are all computed.
    fn advance_plain(&mut self, i: usize, n: usize, hidden: &[f32], picked: &Picked) {
        let spec = self.spec_depth() > 0;
        let seq = &mut self.running[i];
        seq.kv.len += n;
        if spec {
            // Pages join the prefix cache once their MTP entries are written too (speculate.rs).
            seq.mtp_hidden.extend_from_slice(hidden);
        } else {
            self.table.commit(&mut seq.kv, &seq.tokens);
        }
        if seq.pending() == 0 {
            match seq.choose(picked, 0) {
                Ok(token) => self.emit(i, token, picked.logits(0)),
                Err(e) => self.fail(i, e),
            }
            self.after_constrained_token(i);
        }
    }

    /// Verification of running request `i`'s drafts: `hidden` [1 + drafts, D] and `picked`
    /// (1 + drafts rows) are those of its pending token and each draft. Accepts the longest
    /// agreeing prefix plus one token from the model, and rolls the rejected drafts' KV back.
    fn advance_speculative(&mut self, i: usize, hidden: &[f32], picked: &Picked) {
        let d = self.model.shape.hidden_size as usize;
        let seq = &mut self.running[i];
        let start = seq.kv.len;
        let drafts = std::mem::take(&mut seq.drafts);
        let probs = std::mem::take(&mut seq.draft_probs);
        let mut out = Vec::with_capacity(drafts.len() + 1);
        let mut accepted = 0;
        // A constrained request verifies each draft against the target's logits masked in
        // the state its accepted prefix leaves, and ends verification once complete.
        let mut ended = false;
        let mut failed = None;
        for (k, &draft) in drafts.iter().enumerate() {
            let verdict = match picked {
                Picked::Logits(l) => match seq.constrained(l[k]) {
                    Ok(Some(m)) => seq.sampler.verify(&m, draft, probs[k].as_deref()),
                    Ok(None) => seq.sampler.verify(l[k], draft, probs[k].as_deref()),
                    Err(e) => {
                        failed = Some(e);
                        break;
                    }
                },
                Picked::Argmax(a) => seq.sampler.verify_argmax(a[k], draft),
            };
            let token = match verdict {
                Verdict::Accept => draft,
                Verdict::Replace(t) => t,
            };
            if let Err(e) = seq.commit(token) {
                failed = Some(e);
                break;
            }
            out.push((token, k));
            if verdict != Verdict::Accept {
                ended = true;
                break;
            }
            accepted += 1;
            if seq.constraint_complete() {
                ended = true;
                break;
            }
        }
        if !ended && failed.is_none() {
            // Every draft stood: the model's own next token comes free.
            match seq.choose(picked, drafts.len()) {
                Ok(t) => out.push((t, drafts.len())),
                Err(e) => failed = Some(e),
            }
        }
        self.metrics.speculated(drafts.len(), accepted);
        // Valid KV: the pending token and the accepted drafts.
        let keep = start + 1 + accepted;
        seq.kv.len = start + 1 + drafts.len();
        match self.table.truncate(&mut seq.kv, keep) {
            Err(_) => {
                seq.finish = Some(FinishReason::Abort);
                return;
            }
            Ok(Some(copy)) => {
                if self.model.backend.kv_copy_page(&mut self.store, copy, self.table.page_size).is_err() {
                    seq.finish = Some(FinishReason::Abort);
                    return;
                }
            }
            Ok(None) => {}
        }
        seq.mtp_hidden.extend_from_slice(&hidden[..(1 + accepted) * d]);
        for (t, k) in out {
            if self.running[i].finish.is_some() {
                break;
            }
            self.emit(i, t, picked.logits(k));
        }
        if let Some(e) = failed
            && self.running[i].finish.is_none()
        {
            self.fail(i, e);
        }
        self.after_constrained_token(i);
    }

    /// Delivers a sampled token of running request `i` (the logits it came from, when they
    /// came back): counts, latencies, stop and length checks, the event.
    pub(super) fn emit(&mut self, i: usize, token: u32, logits: Option<&[f32]>) {
        let context = self.model.shape.max_position_embeddings as usize;
        let seq = &mut self.running[i];
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
            seq.finish = Some(FinishReason::Stop);
            return;
        }
        // Requests that ask for logprobs always get their logits rows back.
        let logprob = seq.req.logprobs.and_then(|n| logits.map(|l| logprobs(l, token, n)));
        if seq.req.events.send(Event::Token { id: token, logprob }).is_err() {
            seq.finish = Some(FinishReason::Abort);
            return;
        }
        seq.tokens.push(token);
        if seq.generated >= seq.req.max_tokens || seq.tokens.len() >= context {
            seq.finish = Some(FinishReason::Length);
        }
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
        self.release(&mut s);
        self.metrics.preempted();
        self.waiting.push_front(s);
    }

    fn release(&mut self, s: &mut Seq) {
        self.table.release(&mut s.kv);
        s.mtp_len = 0;
        s.mtp_hidden.clear();
        s.drafts.clear();
        s.draft_probs.clear();
    }

    fn end(&mut self, mut seq: Seq, reason: FinishReason) {
        self.release(&mut seq);
        let usage =
            Usage { prompt_tokens: seq.req.prompt.len(), completion_tokens: seq.generated, cached_tokens: seq.cached };
        let _ = seq.req.events.send(Event::Done { reason, usage });
        self.metrics.finish(reason.as_str(), seq.req.arrival.elapsed().as_secs_f64());
        self.shared.in_flight.fetch_sub(1, Ordering::AcqRel);
    }

    fn report(&self) {
        self.metrics.set_queue(self.running.len(), self.waiting.len(), self.table.usage());
    }
}

/// What a step gave back for one request's sampling rows.
pub(super) enum Picked<'a> {
    /// Each row's logits [V].
    Logits(Vec<&'a [f32]>),
    /// Each row's greedy token, picked on the backend (plain greedy requests).
    Argmax(&'a [u32]),
}

impl Picked<'_> {
    /// The request's token from row `k`.
    pub(super) fn sample(&self, sampler: &mut crate::sample::Sampler, k: usize) -> u32 {
        match self {
            Picked::Logits(l) => sampler.sample(l[k]),
            Picked::Argmax(a) => sampler.take_argmax(a[k]),
        }
    }

    pub(super) fn logits(&self, k: usize) -> Option<&[f32]> {
        match self {
            Picked::Logits(l) => Some(l[k]),
            Picked::Argmax(_) => None,
        }
    }
}
