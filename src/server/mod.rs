//! The OpenAI-compatible HTTP server on tiny_http. One thread accepts connections; each
//! request is handled on its own thread (bounded), and generation runs on the engine thread.

mod api_error;
mod completion;
mod http;
pub mod lifecycle;
pub mod params;
mod pin_watch;
mod routes;

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::mpsc::Sender;
use std::thread::JoinHandle;
use std::time::Duration;

use serde_json::Value;

pub use api_error::ApiError;
pub use lifecycle::{Ended, Stop, serve_until_stopped};
pub use params::Limits;

use crate::engine::{self, EngineConfig, EngineHandle};
use crate::error::{Error, Result};
use crate::kv::KvFormat;
use crate::log;
use crate::metrics::Metrics;
use crate::model::Model;
use crate::plan::{Plan, SpecMethod, memory_report};
use crate::tokenizer::Tokenizer;
use crate::weights::WeightsSource;
use crate::weights::pin::check_quick;

/// By default the engine must have stepped within this long for /health to say 200.
pub const HEALTH_STALE_AFTER: Duration = Duration::from_secs(10);

/// Everything a request handler needs.
pub struct ServerContext {
    pub tokenizer: Arc<Tokenizer>,
    pub engine: EngineHandle,
    pub metrics: Arc<Metrics>,
    pub limits: Limits,
    pub request_timeout: Duration,
    /// Largest request body accepted.
    pub body_limit: usize,
    /// What /v1/plan shows: the plan text and the build manifest.
    pub plan_info: Value,
    /// /health answers 503 when the engine has not stepped for longer than this.
    pub health_stale_after: Duration,
    /// Set by SIGTERM (or a weights mismatch): new generation requests get 503.
    draining: AtomicBool,
    next_id: AtomicU64,
    handlers: AtomicUsize,
    max_handlers: usize,
}

impl ServerContext {
    fn next_id(&self) -> u64 {
        self.next_id.fetch_add(1, Ordering::Relaxed)
    }

    /// Requests being handled right now, from accept to the last byte written.
    pub fn busy_handlers(&self) -> usize {
        self.handlers.load(Ordering::Acquire)
    }

    pub fn start_draining(&self) {
        self.draining.store(true, Ordering::Release);
    }

    pub fn is_draining(&self) -> bool {
        self.draining.load(Ordering::Acquire)
    }
}

/// Identity of what is being served, for /v1/plan.
pub struct Manifest {
    pub plan_text: String,
    pub plan_hash: String,
    pub weights_path: String,
    /// blake3 over every tensor's name, dtype, shape and size (headers, not contents).
    pub weights_id: String,
    pub weights_tensors: usize,
}

/// Starts the engine and builds the request context.
pub fn context(
    plan: &Plan,
    model: Model,
    tokenizer: Tokenizer,
    manifest: Manifest,
) -> (Arc<ServerContext>, JoinHandle<()>) {
    let metrics = Arc::new(Metrics::default());
    let s = &plan.server;
    let page_size = plan.kv_cache.page_size as usize;
    let config = EngineConfig {
        max_running: s.max_running_requests as usize,
        max_queued: s.max_queued_requests as usize,
        request_timeout: Duration::from_secs(s.request_timeout_s),
        prefill_chunk_tokens: s.prefill_chunk_tokens as usize,
        kv_format: KvFormat::from(plan.kv_cache.dtype),
        page_size,
        kv_pages: memory_report(plan).kv_tokens_per_device as usize / page_size,
        prefix_cache: plan.kv_cache.prefix_cache,
        spec_depth: match plan.speculative.method {
            SpecMethod::Mtp => plan.speculative.depth as usize,
            SpecMethod::None => 0,
        },
    };
    let limits = Limits {
        model_name: plan.appliance.name.clone(),
        max_prompt_tokens: s.max_prompt_tokens as usize,
        max_output_tokens: s.max_output_tokens as usize,
        context: model.shape.max_position_embeddings as usize,
        vocab: model.vocab_size(),
    };
    let kernels = toml::to_string(&plan.kernels).unwrap_or_default();
    let plan_info = serde_json::json!({
        "kiln_version": env!("CARGO_PKG_VERSION"),
        "name": plan.appliance.name,
        "target": plan.appliance.target.as_str(),
        "arch": plan.appliance.arch,
        "plan_hash": manifest.plan_hash,
        "kernel_map_hash": blake3::hash(kernels.as_bytes()).to_hex().to_string(),
        "weights": {"path": manifest.weights_path, "id": manifest.weights_id, "tensors": manifest.weights_tensors},
        "plan": manifest.plan_text,
    });
    let (engine, join) = engine::spawn(Arc::new(model), config.clone(), metrics.clone());
    let ctx = ServerContext {
        tokenizer: Arc::new(tokenizer),
        engine,
        metrics,
        limits,
        request_timeout: config.request_timeout,
        body_limit: (s.max_prompt_tokens as usize * 32).max(1 << 20),
        plan_info,
        health_stale_after: HEALTH_STALE_AFTER,
        draining: AtomicBool::new(false),
        next_id: AtomicU64::new(1),
        handlers: AtomicUsize::new(0),
        max_handlers: config.max_running + config.max_queued + 64,
    };
    (Arc::new(ctx), join)
}

/// Opens the weights (checked against the plan's pin and shapes before anything runs),
/// starts the engine and listens on `bind`. With a pin, the contents are hashed in the
/// background and a mismatch is sent on `stops`. Returns the server and the engine thread.
pub fn launch(
    plan: &Plan,
    plan_text: &str,
    weights: &WeightsSource,
    bind: &str,
    stops: Sender<Stop>,
) -> Result<(Running, JoinHandle<()>)> {
    let ckpt = weights.checkpoint()?;
    if let Some(pin) = &plan.weights.pin {
        let problems = check_quick(pin, weights, &ckpt);
        if !problems.is_empty() {
            return Err(Error::Pin(problems));
        }
        log::info("pin_quick", format!("weights pin: {} file sizes and shard headers match", pin.files.len())).emit();
    }
    let model = Model::load(plan, &ckpt)?;
    let tokenizer = Tokenizer::from_files(&weights.tokenizer_files()?)?;
    if tokenizer.vocab_size() > model.vocab_size() {
        return Err(Error::Config {
            path: Path::new(&weights.describe()).join("tokenizer.json"),
            message: format!(
                "the tokenizer has {} tokens but the model's vocabulary is {}",
                tokenizer.vocab_size(),
                model.vocab_size()
            ),
        });
    }
    let manifest = Manifest {
        plan_text: plan_text.to_string(),
        plan_hash: blake3::hash(plan_text.as_bytes()).to_hex().to_string(),
        weights_path: weights.describe(),
        weights_id: ckpt.header_digest(),
        weights_tensors: ckpt.len(),
    };
    let (ctx, engine) = context(plan, model, tokenizer, manifest);
    let running = start(ctx, bind)?;
    if let Some(pin) = &plan.weights.pin {
        pin_watch::spawn(pin.clone(), weights.clone(), running.context.metrics.clone(), stops)?;
    }
    Ok((running, engine))
}

/// A listening server; `stop` unblocks the accept loop.
pub struct Running {
    pub addr: SocketAddr,
    pub context: Arc<ServerContext>,
    server: Arc<tiny_http::Server>,
    accept: JoinHandle<()>,
}

impl Running {
    pub fn stop(self) {
        self.server.unblock();
        let _ = self.accept.join();
    }

    /// Serves until the accept loop ends.
    pub fn wait(self) {
        let _ = self.accept.join();
    }
}

pub fn start(ctx: Arc<ServerContext>, bind: &str) -> Result<Running> {
    let server = tiny_http::Server::http(bind).map_err(|e| Error::Usage(format!("cannot listen on {bind}: {e}")))?;
    let addr = server.server_addr().to_ip().ok_or_else(|| Error::Usage(format!("{bind} is not an IP address")))?;
    let server = Arc::new(server);
    let accept_server = server.clone();
    let context = ctx.clone();
    let accept = std::thread::Builder::new()
        .name("kiln-http".into())
        .spawn(move || {
            for req in accept_server.incoming_requests() {
                let ctx = ctx.clone();
                if ctx.handlers.fetch_add(1, Ordering::AcqRel) >= ctx.max_handlers {
                    ctx.handlers.fetch_sub(1, Ordering::AcqRel);
                    routes::overloaded(req);
                    continue;
                }
                let spawned = std::thread::Builder::new().name("kiln-request".into()).spawn(move || {
                    // A bug in a handler must not leak its slot; the client sees the
                    // connection close.
                    let handled = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| routes::handle(&ctx, req)));
                    ctx.handlers.fetch_sub(1, Ordering::AcqRel);
                    if handled.is_err() {
                        log::error("handler_panic", "a request handler panicked").emit();
                    }
                });
                if spawned.is_err() {
                    log::error("thread", "cannot start a request thread").emit();
                }
            }
        })
        .map_err(|e| Error::Usage(format!("cannot start the accept thread: {e}")))?;
    Ok(Running { addr, context, server, accept })
}
