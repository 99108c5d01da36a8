//! The engine's side of constrained decoding: a constrained request's logits masked by its
//! grammar, chosen tokens committed, forced text emitted at once, and the request ended when
//! the grammar admits nothing more.

use super::constraint::masked;
use super::step::{Engine, Picked, Seq};
use super::{Event, FinishReason};
use crate::backend::Backend;

impl Seq {
    /// Whether the next token is the logits' argmax and nothing else, so the backend may
    /// pick it where the logits are.
    pub fn wants_argmax_only(&self) -> bool {
        self.sampler.is_plain_greedy() && self.req.logprobs.is_none() && self.req.constraint.is_none()
    }

    /// `logits` [V] with what the request's constraint forbids masked out; None without one.
    pub fn constrained(&mut self, logits: &[f32]) -> Result<Option<Vec<f32>>, String> {
        match self.req.constraint.as_mut() {
            None => Ok(None),
            Some(c) => Ok(Some(masked(logits, &c.allowed()?)?)),
        }
    }

    /// Advances the constraint past a chosen token; stop tokens end the request instead.
    pub fn commit(&mut self, token: u32) -> Result<(), String> {
        match self.req.constraint.as_mut() {
            Some(c) if !self.req.stop_token_ids.contains(&token) => c.commit(token),
            _ => Ok(()),
        }
    }

    /// Whether the constraint admits nothing more.
    pub fn constraint_complete(&self) -> bool {
        self.req.constraint.as_ref().is_some_and(|c| c.is_complete())
    }

    /// The request's token from row `k` of `picked`, within its constraint.
    pub(super) fn choose(&mut self, picked: &Picked, k: usize) -> Result<u32, String> {
        let Some(l) = picked.logits(k) else { return Ok(picked.sample(&mut self.sampler, k)) };
        let token = match self.constrained(l)? {
            Some(m) => self.sampler.sample(&m),
            None => self.sampler.sample(l),
        };
        self.commit(token)?;
        Ok(token)
    }
}

impl<B: Backend> Engine<B> {
    /// After a constrained request's tokens of this step: the text its grammar now forces is
    /// emitted at once (it becomes pending, and the next forward computes it as one chunk),
    /// and a grammar that admits nothing more ends the request with its last token.
    pub(super) fn after_constrained_token(&mut self, i: usize) {
        let seq = &mut self.running[i];
        if seq.req.constraint.is_none() {
            return;
        }
        // Requests that report logprobs take every token from the model's logits.
        if seq.finish.is_none()
            && seq.req.logprobs.is_none()
            && let Some(c) = seq.req.constraint.as_mut()
        {
            match c.forced() {
                Ok(forced) => {
                    for t in forced {
                        if self.running[i].finish.is_some() {
                            break;
                        }
                        self.running[i].sampler.record(t);
                        self.emit(i, t, None);
                    }
                }
                Err(e) => self.fail(i, e),
            }
        }
        let seq = &mut self.running[i];
        if seq.constraint_complete() && matches!(seq.finish, None | Some(FinishReason::Length)) {
            seq.finish = Some(FinishReason::Stop);
        }
    }

    /// Ends running request `i` with an error the client sees.
    pub(super) fn fail(&mut self, i: usize, message: String) {
        let seq = &mut self.running[i];
        let _ = seq.req.events.send(Event::Failed(message));
        seq.finish = Some(FinishReason::Abort);
    }
}
