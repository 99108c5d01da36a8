//! Connections: the accept loop (errors such as EMFILE are logged and retried with backoff;
//! it never stops while the server runs), the connection cap (beyond it a connection may ask
//! /health or /metrics once; beyond those few, it is closed at once), HTTP/1.1 on hyper with
//! header size and count limits, and a watchdog per connection that closes it when a client
//! holds it without progress: idle between requests, slow to send its headers, or not taking
//! the response.

use std::io;
use std::pin::Pin;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;

use super::http::hold;
use super::refusals::Quiet;
use super::{ServerContext, routes};
use crate::log;

/// Connections beyond the cap that may still ask /health or /metrics, each at most once.
pub const PROBE_SLOTS: usize = 16;
/// How long such a connection may take to send its one request.
const PROBE_TIMEOUT: Duration = Duration::from_secs(2);
/// The longest pause between retries of a failing accept.
const MAX_BACKOFF: Duration = Duration::from_secs(1);

pub async fn accept_loop(listener: TcpListener, ctx: Arc<ServerContext>, mut stop: watch::Receiver<bool>) {
    let mut backoff = Duration::from_millis(5);
    let mut quiet = Quiet::default();
    loop {
        tokio::select! {
            _ = stop.changed() => return,
            accepted = listener.accept() => match accepted {
                Ok((socket, _)) => {
                    backoff = Duration::from_millis(5);
                    admit(socket, &ctx);
                }
                Err(e) => {
                    // EMFILE, ENFILE, ENOBUFS, ECONNABORTED...: the listener stays; wait and retry.
                    if quiet.ready() {
                        log::warn("accept_error", format!("accept failed: {e}; retrying in {} ms", backoff.as_millis()))
                            .field("error", e.to_string())
                            .emit();
                    }
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(MAX_BACKOFF);
                }
            }
        }
    }
}

/// Which service a connection gets.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Admission {
    Full,
    /// Over the cap: one request, /health and /metrics only.
    Probe,
}

/// Counts a connection in or out of its pool.
struct Slot {
    ctx: Arc<ServerContext>,
    admission: Admission,
}

impl Drop for Slot {
    fn drop(&mut self) {
        let counter = match self.admission {
            Admission::Full => &self.ctx.connections,
            Admission::Probe => &self.ctx.probes,
        };
        counter.fetch_sub(1, Ordering::AcqRel);
    }
}

fn take(counter: &std::sync::atomic::AtomicUsize, limit: usize) -> bool {
    counter.fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| (n < limit).then_some(n + 1)).is_ok()
}

fn admit(socket: TcpStream, ctx: &Arc<ServerContext>) {
    let admission = if take(&ctx.connections, ctx.transport.max_connections) {
        Admission::Full
    } else if take(&ctx.probes, PROBE_SLOTS) {
        Admission::Probe
    } else {
        let why = format!(
            "{} connections open (server.max_connections) and every probe slot taken: closed at once",
            ctx.transport.max_connections
        );
        ctx.refuse("connections_full", &why);
        return; // dropped: closed at once
    };
    let slot = Slot { ctx: ctx.clone(), admission };
    tokio::spawn(serve(socket, ctx.clone(), slot));
}

async fn serve(socket: TcpStream, ctx: Arc<ServerContext>, slot: Slot) {
    let _ = socket.set_nodelay(true);
    let t = &ctx.transport;
    let (header, idle) = match slot.admission {
        Admission::Full => (t.header_timeout, t.idle_timeout),
        Admission::Probe => (PROBE_TIMEOUT.min(t.header_timeout), PROBE_TIMEOUT),
    };
    let state = Arc::new(ConnState::new());
    let io = TokioIo::new(Watched { inner: socket, state: state.clone() });
    let mut builder = http1::Builder::new();
    builder
        .timer(TokioTimer::new())
        // The watchdog times headers from their first byte; hyper's own timer would also
        // run while the connection idles.
        .header_read_timeout(None)
        .max_buf_size(t.max_header_bytes.max(8192))
        .max_headers(t.max_headers)
        .keep_alive(slot.admission == Admission::Full);
    let admission = slot.admission;
    let service_state = state.clone();
    let service_ctx = ctx.clone();
    let service = service_fn(move |req| {
        let (ctx, state) = (service_ctx.clone(), service_state.clone());
        async move {
            state.begin();
            let reply = routes::handle(&ctx, req, admission).await;
            Ok::<_, std::convert::Infallible>(hold(reply, Box::new(RequestDone(state))))
        }
    });
    let conn = builder.serve_connection(io, service);
    tokio::pin!(conn);
    tokio::select! {
        _ = conn.as_mut() => {}
        _why = watchdog(&state, header, idle, t.write_timeout) => {
            conn.as_mut().graceful_shutdown();
            // Whatever it was doing, it gets a moment to finish, then the socket goes.
            let _ = tokio::time::timeout(Duration::from_secs(1), conn.as_mut()).await;
        }
    }
    drop(slot);
}

/// What a connection is doing, for its watchdog.
struct ConnState(Mutex<Activity>);

struct Activity {
    phase: Phase,
    /// When the phase began.
    since: Instant,
    /// Since when a write has been waiting for the client to take bytes.
    write_stalled: Option<Instant>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    /// No request in flight.
    Idle,
    /// A request's first bytes arrived; its headers are not complete.
    Headers,
    /// Requests in flight.
    Busy(usize),
}

impl ConnState {
    fn new() -> ConnState {
        ConnState(Mutex::new(Activity { phase: Phase::Idle, since: Instant::now(), write_stalled: None }))
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Activity> {
        self.0.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn read_some(&self) {
        let mut a = self.lock();
        if a.phase == Phase::Idle {
            a.phase = Phase::Headers;
            a.since = Instant::now();
        }
    }

    fn begin(&self) {
        let mut a = self.lock();
        a.phase = match a.phase {
            Phase::Busy(n) => Phase::Busy(n + 1),
            _ => Phase::Busy(1),
        };
        a.since = Instant::now();
    }

    fn end(&self) {
        let mut a = self.lock();
        a.phase = match a.phase {
            Phase::Busy(n) if n > 1 => Phase::Busy(n - 1),
            _ => Phase::Idle,
        };
        a.since = Instant::now();
    }

    fn wrote(&self, progress: bool) {
        let mut a = self.lock();
        match (progress, a.write_stalled) {
            (true, _) => a.write_stalled = None,
            (false, None) => a.write_stalled = Some(Instant::now()),
            (false, Some(_)) => {}
        }
    }
}

/// Ends a request's Busy phase when its reply has been written (or dropped).
struct RequestDone(Arc<ConnState>);

impl Drop for RequestDone {
    fn drop(&mut self) {
        self.0.end();
    }
}

/// Returns when the connection has been held without progress for too long, saying how.
async fn watchdog(state: &ConnState, header: Duration, idle: Duration, write: Duration) -> &'static str {
    loop {
        let now = Instant::now();
        let (deadline, why) = {
            let a = state.lock();
            match (a.phase, a.write_stalled) {
                (Phase::Idle, _) => (a.since + idle, "idle"),
                (Phase::Headers, _) => (a.since + header, "headers not received in time"),
                (Phase::Busy(_), Some(t)) => (t + write, "the client stopped taking the response"),
                (Phase::Busy(_), None) => (now + write, ""),
            }
        };
        if !why.is_empty() && now >= deadline {
            return why;
        }
        // Re-check at the deadline, or within a second when nothing is due.
        tokio::time::sleep_until((deadline.min(now + Duration::from_secs(1))).into()).await;
    }
}

/// The socket, reporting reads and write progress to the connection's state.
struct Watched {
    inner: TcpStream,
    state: Arc<ConnState>,
}

impl AsyncRead for Watched {
    fn poll_read(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        let r = Pin::new(&mut self.inner).poll_read(cx, buf);
        if matches!(r, Poll::Ready(Ok(()))) && buf.filled().len() > before {
            self.state.read_some();
        }
        r
    }
}

impl AsyncWrite for Watched {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        let r = Pin::new(&mut self.inner).poll_write(cx, buf);
        self.state.wrote(!r.is_pending());
        r
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let r = Pin::new(&mut self.inner).poll_write_vectored(cx, bufs);
        self.state.wrote(!r.is_pending());
        r
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let r = Pin::new(&mut self.inner).poll_flush(cx);
        self.state.wrote(!r.is_pending());
        r
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}
