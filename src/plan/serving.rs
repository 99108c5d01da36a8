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
    /// Drafts are proposed only in steps where at most this many requests decode; in a
    /// larger batch each request's forward is compute, not weight reads, and a draft costs
    /// about what it saves (absent: at any batch size).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_batch: Option<u32>,
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
    /// Connections served at once. Beyond it a connection may ask /health or /metrics once
    /// (a few such at a time), everything else gets 503 and the connection is closed.
    #[serde(default = "default_max_connections")]
    pub max_connections: u32,
    /// Request line and headers together, in bytes (431 beyond; 8192 to 1048576).
    #[serde(default = "default_max_header_bytes")]
    pub max_header_bytes: u32,
    /// Header lines per request (431 beyond).
    #[serde(default = "default_max_headers")]
    pub max_headers: u32,
    /// From a request's first byte to the end of its headers; the connection is closed after.
    #[serde(default = "default_header_timeout_s")]
    pub header_timeout_s: u64,
    /// To receive a whole request body (408 and the connection closed after).
    #[serde(default = "default_body_timeout_s")]
    pub body_timeout_s: u64,
    /// A keep-alive connection with no request in flight is closed after this long.
    #[serde(default = "default_idle_timeout_s")]
    pub idle_timeout_s: u64,
    /// A client that takes no response bytes for this long is gone: its request is cancelled.
    #[serde(default = "default_write_timeout_s")]
    pub write_timeout_s: u64,
    /// Bearer-token authentication for every route but /health, when present.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub auth: Option<Auth>,
}

/// Where the API token is read from at start-up; the plan never holds the token itself.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Auth {
    /// An environment variable holding the token.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub token_env: Option<String>,
    /// A file holding the token (surrounding whitespace ignored).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub token_file: Option<String>,
}

/// Defaults of the transport limits (what a plan without them gets).
pub mod transport_defaults {
    pub const MAX_CONNECTIONS: u32 = 1024;
    pub const MAX_HEADER_BYTES: u32 = 16 * 1024;
    pub const MAX_HEADERS: u32 = 64;
    pub const HEADER_TIMEOUT_S: u64 = 10;
    pub const BODY_TIMEOUT_S: u64 = 30;
    pub const IDLE_TIMEOUT_S: u64 = 60;
    pub const WRITE_TIMEOUT_S: u64 = 30;
}

fn default_max_connections() -> u32 {
    transport_defaults::MAX_CONNECTIONS
}
fn default_max_header_bytes() -> u32 {
    transport_defaults::MAX_HEADER_BYTES
}
fn default_max_headers() -> u32 {
    transport_defaults::MAX_HEADERS
}
fn default_header_timeout_s() -> u64 {
    transport_defaults::HEADER_TIMEOUT_S
}
fn default_body_timeout_s() -> u64 {
    transport_defaults::BODY_TIMEOUT_S
}
fn default_idle_timeout_s() -> u64 {
    transport_defaults::IDLE_TIMEOUT_S
}
fn default_write_timeout_s() -> u64 {
    transport_defaults::WRITE_TIMEOUT_S
}

impl Server {
    /// The longest sequence one request can reach.
    pub fn max_request_tokens(&self) -> u64 {
        self.max_prompt_tokens.saturating_add(self.max_output_tokens)
    }
}
