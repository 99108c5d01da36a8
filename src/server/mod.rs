//! The OpenAI-compatible HTTP server: HTTP/1.1 on hyper, on a small tokio runtime of its own
//! beside the engine thread. Connections are served asynchronously under the limits of the
//! plan's `[server]` section (`connection.rs`); a generation request's validation,
//! tokenization and wait on the engine run on a bounded pool of blocking threads. It knows the
//! engine, the tokenizer and the metrics, nothing of plans or weights: `app` hands it a
//! `ServerConfig`.

mod api_error;
mod auth;
mod completion;
mod connection;
pub mod glm_output;
mod http;
pub mod params;
mod refusals;
mod routes;
mod tools;

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::thread::JoinHandle;
use std::time::Duration;

use serde_json::Value;

pub use api_error::ApiError;
pub use auth::Token;
pub use connection::PROBE_SLOTS;
pub use params::Limits;

use crate::constrain::Grammars;
use crate::engine::EngineHandle;
use crate::error::{Error, Result};
use crate::metrics::Metrics;
use crate::tokenizer::Tokenizer;

/// By default the engine must have stepped within this long for /health to say 200.
pub const HEALTH_STALE_AFTER: Duration = Duration::from_secs(10);

/// What the server enforces and reports, decided by the application.
#[derive(Debug, Clone)]
pub struct ServerConfig {
    pub limits: Limits,
    pub transport: Transport,
    pub request_timeout: Duration,
    /// Largest request body accepted.
    pub body_limit: usize,
    /// Generation requests handled at once; beyond it, 503.
    pub max_handlers: usize,
    /// What /v1/plan shows: the plan text and what is being served.
    pub plan_info: Value,
    /// When set, every route but /health needs it as a bearer token.
    pub token: Option<Token>,
}

/// What a client may hold of the server: connections, header sizes, and how long it may take.
#[derive(Debug, Clone)]
pub struct Transport {
    pub max_connections: usize,
    pub max_header_bytes: usize,
    pub max_headers: usize,
    /// From a request's first byte to the end of its headers.
    pub header_timeout: Duration,
    /// To receive a whole body.
    pub body_timeout: Duration,
    /// A keep-alive connection with nothing in flight.
    pub idle_timeout: Duration,
    /// A response the client does not take.
    pub write_timeout: Duration,
}

/// Open files the process keeps for itself beyond client connections and probes: the
/// weights files the background checks open, /proc reads for /metrics, the runtime's own.
pub const RESERVED_FILES: usize = 32;

impl Transport {
    /// Lowers max_connections so that clients never take the files the process needs for
    /// itself under an open-files limit of `limit` (a background weights check failing on
    /// EMFILE would stop the server). Returns the lowered cap when it lowered it.
    pub fn fit_open_files(&mut self, limit: u64) -> Option<usize> {
        let room = usize::try_from(limit).unwrap_or(usize::MAX).saturating_sub(RESERVED_FILES + PROBE_SLOTS).max(1);
        (room < self.max_connections).then(|| {
            self.max_connections = room;
            room
        })
    }
}

/// Everything a request handler needs.
pub struct ServerContext {
    pub tokenizer: Arc<Tokenizer>,
    /// Constrained decoding over the tokenizer's vocabulary, or why it is not available.
    pub grammars: std::result::Result<Grammars, String>,
    pub engine: EngineHandle,
    pub metrics: Arc<Metrics>,
    pub limits: Limits,
    pub transport: Transport,
    token: Option<Token>,
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
    /// Open connections with full service, and those over the cap allowed one probe.
    connections: AtomicUsize,
    probes: AtomicUsize,
    refusals: refusals::Refusals,
}

impl ServerContext {
    pub fn new(
        tokenizer: Tokenizer,
        engine: EngineHandle,
        metrics: Arc<Metrics>,
        c: ServerConfig,
    ) -> Arc<ServerContext> {
        let grammars = Grammars::new(&tokenizer, c.limits.vocab);
        if let Err(e) = &grammars {
            crate::log::warn("grammars", format!("constrained decoding is off: {e}")).emit();
        }
        Arc::new(ServerContext {
            grammars,
            tokenizer: Arc::new(tokenizer),
            engine,
            metrics,
            limits: c.limits,
            transport: c.transport,
            token: c.token,
            request_timeout: c.request_timeout,
            body_limit: c.body_limit,
            plan_info: c.plan_info,
            health_stale_after: HEALTH_STALE_AFTER,
            draining: AtomicBool::new(false),
            next_id: AtomicU64::new(1),
            handlers: AtomicUsize::new(0),
            max_handlers: c.max_handlers,
            connections: AtomicUsize::new(0),
            probes: AtomicUsize::new(0),
            refusals: refusals::Refusals::default(),
        })
    }

    /// A generation handler's place, counted until its reply's last byte; None when
    /// max_handlers are busy.
    fn handler_slot(self: &Arc<Self>) -> Option<HandlerSlot> {
        self.handlers
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| (n < self.max_handlers).then_some(n + 1))
            .ok()
            .map(|_| HandlerSlot(self.clone()))
    }

    /// Counts and (at most every few seconds per reason) logs a request turned away.
    fn refuse(&self, reason: &'static str, why: &str) {
        self.refusals.note(&self.metrics, reason, why);
    }

    /// Connections open now (full service).
    pub fn open_connections(&self) -> usize {
        self.connections.load(Ordering::Acquire)
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

/// One generation handler's place; released on drop.
struct HandlerSlot(Arc<ServerContext>);

impl Drop for HandlerSlot {
    fn drop(&mut self) {
        self.0.handlers.fetch_sub(1, Ordering::AcqRel);
    }
}

/// A listening server.
pub struct Running {
    pub addr: SocketAddr,
    pub context: Arc<ServerContext>,
    stop: tokio::sync::watch::Sender<bool>,
    thread: JoinHandle<()>,
}

impl Running {
    /// Stops accepting and closes every connection.
    pub fn stop(self) {
        let _ = self.stop.send(true);
        let _ = self.thread.join();
    }

    /// Serves until the server stops.
    pub fn wait(self) {
        let _ = self.thread.join();
    }
}

/// Listens on `bind` and serves on a runtime of its own (two worker threads for the
/// connections, and a blocking pool sized to the generation handlers).
pub fn start(ctx: Arc<ServerContext>, bind: &str) -> Result<Running> {
    let listener =
        std::net::TcpListener::bind(bind).map_err(|e| Error::Usage(format!("cannot listen on {bind}: {e}")))?;
    let addr = listener.local_addr().map_err(|e| Error::Usage(format!("cannot listen on {bind}: {e}")))?;
    listener.set_nonblocking(true).map_err(|e| Error::Usage(format!("cannot listen on {bind}: {e}")))?;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .max_blocking_threads(ctx.max_handlers + 4)
        .thread_name("kiln-http")
        .enable_all()
        .build()
        .map_err(|e| Error::Usage(format!("cannot start the HTTP runtime: {e}")))?;
    let listener = {
        let _enter = runtime.enter();
        tokio::net::TcpListener::from_std(listener)
            .map_err(|e| Error::Usage(format!("cannot listen on {bind}: {e}")))?
    };
    let (stop, stopped) = tokio::sync::watch::channel(false);
    let context = ctx.clone();
    let thread = std::thread::Builder::new()
        .name("kiln-http".into())
        .spawn(move || {
            runtime.block_on(connection::accept_loop(listener, ctx, stopped));
            // Connections still open are closed with the runtime.
            runtime.shutdown_timeout(Duration::from_secs(1));
        })
        .map_err(|e| Error::Usage(format!("cannot start the HTTP thread: {e}")))?;
    Ok(Running { addr, context, stop, thread })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn transport(max_connections: usize) -> Transport {
        let t = Duration::from_secs(1);
        Transport {
            max_connections,
            max_header_bytes: 1,
            max_headers: 1,
            header_timeout: t,
            body_timeout: t,
            idle_timeout: t,
            write_timeout: t,
        }
    }

    #[test]
    fn connections_leave_the_process_its_files() {
        let mut t = transport(1024);
        assert_eq!(t.fit_open_files(1 << 20), None);
        assert_eq!(t.max_connections, 1024);
        assert_eq!(t.fit_open_files(1024), Some(1024 - RESERVED_FILES - PROBE_SLOTS));
        let mut tiny = transport(1024);
        assert_eq!(tiny.fit_open_files(10), Some(1), "a limit below the reserve still serves one");
    }
}
