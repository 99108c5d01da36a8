//! `kiln serve`: start-up, then serve until a signal or a weights mismatch ends it.

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, mpsc};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use super::EXIT_WEIGHTS;
use super::lifecycle::{Ended, Stop, serve_until_stopped};
use super::weights_watch;
use crate::app::{App, engine_config};
use crate::backend::{Backend, Selected, select};
use crate::error::Result;
use crate::plan::Plan;
use crate::server::{self, ServerContext};
use crate::signals::Signal;
use crate::weights::WeightsSource;
use crate::{baked, log, signals};

pub fn serve(plan: &Plan, bind: Option<String>, src: WeightsSource) -> Result<ExitCode> {
    // Before any thread exists, so that every thread inherits the mask and only the signal
    // thread sees SIGTERM, SIGINT and SIGHUP.
    let signals = signals::block()?;
    let (stop_tx, stop_rx) = mpsc::channel();
    let to_stop = stop_tx.clone();
    // Loading a large checkpoint takes minutes; a stop asked for before serving has nothing
    // to drain and should not wait for the load.
    let serving = Arc::new(AtomicBool::new(false));
    let serving_seen = serving.clone();
    signals.forward(move |s| {
        if let Signal::Terminate(name) = s
            && !serving_seen.load(Ordering::Acquire)
        {
            log::info("stopped", format!("{name} during start-up: exiting before serving")).emit();
            std::process::exit(0);
        }
        let _ = to_stop.send(Stop::Signal(s));
    })?;

    let open_files = super::process::prepare()?;
    let bind = bind.unwrap_or_else(|| plan.server.bind.clone());
    // The device first: a GPU appliance without its GPU stops here, before any weights load.
    let selected = select(plan)?;
    log::info("backend", format!("the forward runs on {}", selected.describe())).emit();
    let kv_pages = selected.kv_pages(plan, engine_config(plan).kv_pages);
    let (context, engine) = match selected {
        Selected::Cpu(b) => start(App::open_on(b, plan, baked::PLAN_TEXT, &src)?, kv_pages, open_files),
        Selected::Gpu(b) => start(App::open_on(b, plan, baked::PLAN_TEXT, &src)?, kv_pages, open_files),
    };
    let running = server::start(context, &bind)?;
    weights_watch::spawn(plan.weights.pin.clone(), src.clone(), running.context.metrics.clone(), stop_tx)?;
    serving.store(true, Ordering::Release);
    log::info("serving", format!("serving {} from {} on http://{}", plan.appliance.name, src.describe(), running.addr))
        .field("addr", running.addr.to_string())
        .field("plan", plan.appliance.name.clone())
        .field("plan_hash", baked::PLAN_HASH)
        .field("weights", src.describe())
        .emit();
    let drain = Duration::from_secs(plan.server.drain_timeout_s);
    Ok(match serve_until_stopped(running, &stop_rx, drain) {
        Ended::Drained => {
            stop_engine(engine);
            ExitCode::SUCCESS
        }
        Ended::Forced => ExitCode::FAILURE,
        Ended::WeightsMismatch => {
            stop_engine(engine);
            ExitCode::from(EXIT_WEIGHTS)
        }
    })
}

/// How long an exiting server waits for its engine thread to free the model and the KV cache.
const ENGINE_EXIT_WAIT: Duration = Duration::from_secs(10);

/// Waits (bounded) for the engine thread to end, which it does once the server has let go of
/// it: it frees the weights and the KV cache on its backend. Exiting while it still frees
/// device memory would race the device runtime's own teardown at process exit.
fn stop_engine(engine: JoinHandle<()>) {
    let deadline = Instant::now() + ENGINE_EXIT_WAIT;
    while !engine.is_finished() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(10));
    }
    if engine.is_finished() {
        let _ = engine.join();
        log::info("engine_stopped", "engine stopped: the model and the KV cache are freed").emit();
    } else {
        log::warn(
            "engine_busy",
            format!("the engine thread did not stop within {} s; exiting without it", ENGINE_EXIT_WAIT.as_secs()),
        )
        .emit();
    }
}

/// The engine and server of `app`, with the backend's KV pages and connections that fit the
/// open-files limit.
fn start<B: Backend>(
    mut app: App<B>,
    kv_pages: usize,
    open_files: Option<u64>,
) -> (Arc<ServerContext>, JoinHandle<()>) {
    app.engine.kv_pages = kv_pages;
    fit_connections(&mut app.server.transport, open_files);
    app.start()
}

/// Caps client connections below the open-files limit, saying so when it lowers the plan's.
fn fit_connections(t: &mut server::Transport, open_files: Option<u64>) {
    let planned = t.max_connections;
    if let Some(limit) = open_files
        && let Some(cap) = t.fit_open_files(limit)
    {
        log::warn(
            "connections_capped",
            format!(
                "server.max_connections = {planned} does not fit the open-files limit {limit}: at most {cap} \
                 connections (the rest of the files stay for the weights checks and /metrics)"
            ),
        )
        .field("max_connections", cap)
        .emit();
    }
}

/// `--weights DIR`, else the model built into the binary, else the plan's weights.path.
pub fn source(plan: &Plan, weights: Option<PathBuf>) -> WeightsSource {
    WeightsSource::choose(weights, &plan.weights.path, baked::embedded_files())
}
