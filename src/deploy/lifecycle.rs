//! How a serving process ends: a signal drains it, a weights mismatch stops it at once.

use std::sync::mpsc::{Receiver, RecvTimeoutError};
use std::time::{Duration, Instant};

use crate::log;
use crate::plan::{Problem, render_problems};
use crate::server::Running;
use crate::signals::Signal;

/// Why serving should end.
#[derive(Debug, Clone)]
pub enum Stop {
    Signal(Signal),
    /// The background checks found the weights differ from the plan's pin, or hold NaN
    /// (`place` says which list the problems are).
    BadWeights {
        place: &'static str,
        problems: Vec<Problem>,
    },
}

/// How serving ended, which decides the exit status.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Ended {
    /// Every request in flight finished (or the drain timeout cut the rest; the log says
    /// how many).
    Drained,
    /// A second SIGTERM/SIGINT during the drain.
    Forced,
    /// The weights are not the pinned ones.
    WeightsMismatch,
}

/// Serves until a stop arrives, then drains for at most `drain_timeout`.
pub fn serve_until_stopped(running: Running, stops: &Receiver<Stop>, drain_timeout: Duration) -> Ended {
    loop {
        match stops.recv() {
            Ok(Stop::Signal(Signal::Hangup)) => {
                log::info("sighup", "SIGHUP ignored: the plan is baked into the binary; restart kiln to change it")
                    .emit();
            }
            Ok(Stop::Signal(Signal::Terminate(name))) => {
                log::info(
                    "draining",
                    format!(
                        "{name}: refusing new requests, draining {} in flight (at most {} s)",
                        running.context.engine.in_flight(),
                        drain_timeout.as_secs()
                    ),
                )
                .field("signal", name)
                .emit();
                return drain(running, stops, drain_timeout);
            }
            Ok(Stop::BadWeights { place, problems }) => return refuse(running, place, &problems),
            // Nobody can send a stop any more: serve until the accept loop ends.
            Err(_) => {
                running.wait();
                return Ended::Drained;
            }
        }
    }
}

fn refuse(running: Running, place: &str, problems: &[Problem]) -> Ended {
    running.context.start_draining();
    let at_fault = problems.first().map(|p| p.key.clone()).unwrap_or_default();
    log::error("weights_mismatch", format!("stopped serving: {}", render_problems(place, problems).trim_end()))
        .field("shard", at_fault)
        .emit();
    running.stop();
    Ended::WeightsMismatch
}

/// Requests in flight finish; new ones get 503 until none is left or the timeout passes.
fn drain(running: Running, stops: &Receiver<Stop>, timeout: Duration) -> Ended {
    let ctx = running.context.clone();
    ctx.start_draining();
    let start = Instant::now();
    loop {
        // Handlers cover requests from accept to the last byte written; the engine count
        // covers requests whose handler is between submit and its first read.
        let busy = ctx.busy_handlers().max(ctx.engine.in_flight());
        if busy == 0 {
            log::info("drained", format!("drained in {:.1} s; exiting", start.elapsed().as_secs_f64())).emit();
            running.stop();
            return Ended::Drained;
        }
        let left = timeout.saturating_sub(start.elapsed());
        if left.is_zero() {
            log::warn(
                "drain_timeout",
                format!("drain timeout of {} s passed with {busy} request(s) in flight; exiting", timeout.as_secs()),
            )
            .field("cut", busy)
            .emit();
            running.stop();
            return Ended::Drained;
        }
        match stops.recv_timeout(left.min(Duration::from_millis(20))) {
            Ok(Stop::Signal(Signal::Terminate(name))) => {
                log::warn("forced", format!("second {name} during the drain: exiting with {busy} in flight")).emit();
                return Ended::Forced;
            }
            Ok(Stop::BadWeights { place, problems }) => return refuse(running, place, &problems),
            Ok(Stop::Signal(Signal::Hangup)) | Err(RecvTimeoutError::Timeout | RecvTimeoutError::Disconnected) => {}
        }
    }
}
