//! The OpenAI-compatible HTTP server on tiny_http. One thread accepts connections; each
//! request is handled on its own thread (bounded), and generation runs on the engine thread.
//! It knows the engine, the tokenizer and the metrics, nothing of plans or weights: `app`
//! hands it a `ServerConfig`.

mod api_error;
mod completion;
mod http;
pub mod params;
mod routes;

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::thread::JoinHandle;
use std::time::Duration;

use serde_json::Value;

pub use api_error::ApiError;
pub use params::Limits;

use crate::engine::EngineHandle;
use crate::error::{Error, Result};
use crate::log;
use crate::metrics::Metrics;
use crate::tokenizer::Tokenizer;

/// By default the engine must have stepped within this long for /health to say 200.
pub const HEALTH_STALE_AFTER: Duration = Duration::from_secs(10);

/// What the server enforces and reports, decided by the application.
#[derive(Debug, Clone)]
pub struct ServerConfig {
    pub limits: Limits,
    pub request_timeout: Duration,
    /// Largest request body accepted.
    pub body_limit: usize,
    /// Requests handled at once; beyond it, 503.
    pub max_handlers: usize,
    /// What /v1/plan shows: the plan text and what is being served.
    pub plan_info: Value,
}

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
    pub fn new(
        tokenizer: Tokenizer,
        engine: EngineHandle,
        metrics: Arc<Metrics>,
        c: ServerConfig,
    ) -> Arc<ServerContext> {
        Arc::new(ServerContext {
            tokenizer: Arc::new(tokenizer),
            engine,
            metrics,
            limits: c.limits,
            request_timeout: c.request_timeout,
            body_limit: c.body_limit,
            plan_info: c.plan_info,
            health_stale_after: HEALTH_STALE_AFTER,
            draining: AtomicBool::new(false),
            next_id: AtomicU64::new(1),
            handlers: AtomicUsize::new(0),
            max_handlers: c.max_handlers,
        })
    }

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
