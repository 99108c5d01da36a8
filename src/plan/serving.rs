//! How the model is served: parallel layout, speculative decoding, KV cache, server limits.

use serde::{Deserialize, Serialize};

/// GPUs of a node = dp replicas x tp ranks. Within a replica, attention and dense MLPs are
/// split over tp; routed experts are split over ep groups, and each expert's width over
/// tp / ep ranks.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Parallel {
    pub tp: u32,
    pub dp: u32,
    #[serde(default = "one")]
    pub ep: u32,
}

fn one() -> u32 {
    1
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Speculative {
    pub method: SpecMethod,
    /// Draft tokens proposed per step (0 with method = "none").
    pub depth: u32,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum SpecMethod {
    None,
    Mtp,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KvCache {
    pub dtype: KvDtype,
    /// Tokens per page.
    pub page_size: u32,
    /// Fraction of each device's memory kiln may fill with weights and KV cache; the rest
    /// is left to activations, workspaces and the runtime.
    pub memory_fraction: f64,
    pub prefix_cache: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum KvDtype {
    Bf16,
    Fp8E4m3,
}

impl KvDtype {
    pub fn as_str(self) -> &'static str {
        match self {
            KvDtype::Bf16 => "bf16",
            KvDtype::Fp8E4m3 => "fp8_e4m3",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Server {
    /// Default listen address (`kiln serve --bind` overrides it).
    pub bind: String,
    /// Requests decoding at once on the node, spread over the dp replicas.
    pub max_running_requests: u32,
    /// Requests admitted but waiting; beyond this the server answers 429.
    pub max_queued_requests: u32,
    pub max_prompt_tokens: u64,
    pub max_output_tokens: u64,
    /// Chunked-prefill budget: prompt tokens processed per engine step.
    pub prefill_chunk_tokens: u64,
    /// A request running longer than this is cancelled.
    pub request_timeout_s: u64,
    /// On SIGTERM, how long requests in flight may run to completion before the process
    /// exits anyway (new requests are refused from the signal on).
    pub drain_timeout_s: u64,
}

impl Server {
    /// The longest sequence one request can reach.
    pub fn max_request_tokens(&self) -> u64 {
        self.max_prompt_tokens.saturating_add(self.max_output_tokens)
    }
}
