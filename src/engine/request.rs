//! What the server hands the engine, and what the engine sends back.

use std::collections::BTreeSet;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{self, Receiver, Sender};
use std::time::Instant;

use super::constraint::Constraint;
use crate::sample::{SamplingParams, TokenLogprob};

/// One generation request, tokenized and validated.
pub struct GenerationRequest {
    pub prompt: Vec<u32>,
    pub params: SamplingParams,
    /// New tokens at most.
    pub max_tokens: usize,
    /// Tokens that end generation (EOS ids unless the client set ignore_eos, plus its
    /// stop_token_ids). They count as generated but are not sent as text.
    pub stop_token_ids: BTreeSet<u32>,
    /// Report logprobs with this many alternatives per token (None = no logprobs).
    pub logprobs: Option<usize>,
    pub arrival: Instant,
    pub events: Sender<Event>,
    pub cancel: CancelFlag,
    /// A grammar the output must follow (None = free text).
    pub constraint: Option<Box<dyn Constraint>>,
}

impl GenerationRequest {
    /// A request with no stop tokens and no logprobs, arriving now, and the receiver of its
    /// events.
    pub fn new(prompt: Vec<u32>, params: SamplingParams, max_tokens: usize) -> (GenerationRequest, Receiver<Event>) {
        let (events, rx) = mpsc::channel();
        let req = GenerationRequest {
            prompt,
            params,
            max_tokens,
            stop_token_ids: BTreeSet::new(),
            logprobs: None,
            arrival: Instant::now(),
            events,
            cancel: CancelFlag::default(),
            constraint: None,
        };
        (req, rx)
    }
}

/// Set by the server when the client is gone or a stop string matched; the engine drops the
/// request at its next step and frees what it held.
#[derive(Debug, Clone, Default)]
pub struct CancelFlag(Arc<AtomicBool>);

impl CancelFlag {
    pub fn cancel(&self) {
        self.0.store(true, Ordering::Release);
    }

    pub fn is_cancelled(&self) -> bool {
        self.0.load(Ordering::Acquire)
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FinishReason {
    /// An EOS or stop token (or, set by the server, a stop string).
    Stop,
    /// max_tokens, or the context is full.
    Length,
    /// Cancelled by the server.
    Abort,
    /// server.request_timeout_s passed.
    Timeout,
}

impl FinishReason {
    pub fn as_str(self) -> &'static str {
        match self {
            FinishReason::Stop => "stop",
            FinishReason::Length => "length",
            FinishReason::Abort => "abort",
            FinishReason::Timeout => "timeout",
        }
    }
}

#[derive(Debug, Clone, PartialEq)]
pub enum Event {
    /// A generated token to show (stop tokens are not sent).
    Token {
        id: u32,
        logprob: Option<TokenLogprob>,
    },
    Done {
        reason: FinishReason,
        usage: Usage,
    },
    /// The engine could not run the request.
    Failed(String),
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Usage {
    pub prompt_tokens: usize,
    pub completion_tokens: usize,
    /// Prompt tokens served from the prefix cache.
    pub cached_tokens: usize,
}
