//! The background half of the weights checks, while the server runs: with a pin, every
//! pinned file hashed (progress in the log and /metrics); then every tensor not checked
//! before listening scanned for non-finite values. A mismatch or a NaN is reported as a stop.

use std::sync::Arc;
use std::sync::mpsc::Sender;
use std::time::{Duration, Instant};

use super::lifecycle::Stop;
use crate::error::{Error, Result};
use crate::log;
use crate::metrics::{Metrics, PinState};
use crate::plan::{IN_PIN, IN_WEIGHTS, Problem, WeightsPin};
use crate::weights::pin::check_contents;
use crate::weights::{WeightsSource, finite};

/// Progress lines at most this often (and at each tenth of the total).
const LOG_EVERY: Duration = Duration::from_secs(5);

pub fn spawn(pin: Option<WeightsPin>, src: WeightsSource, metrics: Arc<Metrics>, stops: Sender<Stop>) -> Result<()> {
    let spawned = std::thread::Builder::new().name("kiln-weights".into()).spawn(move || {
        if let Some(pin) = pin
            && !hash(&pin, &src, &metrics, &stops)
        {
            return;
        }
        scan(&src, &stops);
    });
    spawned.map(|_| ()).map_err(|e| Error::Usage(format!("cannot start the background weights check: {e}")))
}

/// Every tensor the start-up check left for later; false (and a stop sent) on a problem.
fn scan(src: &WeightsSource, stops: &Sender<Stop>) -> bool {
    let start = Instant::now();
    let ckpt = match src.checkpoint() {
        Ok(c) => c,
        Err(e) => {
            let _ = stops
                .send(Stop::BadWeights { place: IN_WEIGHTS, problems: vec![Problem::new("weights", e.to_string())] });
            return false;
        }
    };
    let problems = finite::scan(&ckpt, &|n| !finite::checked_first(n, &ckpt), false, &|_| {});
    if !problems.is_empty() {
        let _ = stops.send(Stop::BadWeights { place: IN_WEIGHTS, problems });
        return false;
    }
    log::info(
        "weights_scanned",
        format!("weights: no NaN or infinity in {} tensors ({:.2} s)", ckpt.len(), start.elapsed().as_secs_f64()),
    )
    .emit();
    true
}

/// Every pinned file against its digest; false (and a stop sent) on a mismatch.
fn hash(pin: &WeightsPin, src: &WeightsSource, metrics: &Metrics, stops: &Sender<Stop>) -> bool {
    let total = pin.total_bytes();
    metrics.set_pin(0, total, PinState::Hashing);
    let start = Instant::now();
    log::info(
        "pin_check",
        format!("weights pin: hashing {} file(s), {} in the background", pin.files.len(), gb(total)),
    )
    .field("bytes_total", total)
    .emit();
    let mut done = 0u64;
    let mut last_log = Instant::now();
    let mut last_tenth = 0;
    for f in &pin.files {
        let mut progress = |n: u64| {
            done += n;
            metrics.set_pin(done, total, PinState::Hashing);
            let tenth = done * 10 / total.max(1);
            if tenth > last_tenth && last_log.elapsed() >= LOG_EVERY {
                last_tenth = tenth;
                last_log = Instant::now();
                log::info(
                    "pin_progress",
                    format!(
                        "weights pin: hashed {} of {} ({:.0}%)",
                        gb(done),
                        gb(total),
                        100.0 * done as f64 / total as f64
                    ),
                )
                .field("bytes_hashed", done)
                .field("bytes_total", total)
                .emit();
            }
        };
        if let Some(problem) = check_contents(f, src, false, &mut progress) {
            metrics.set_pin(done, total, PinState::Mismatch);
            let _ = stops.send(Stop::BadWeights { place: IN_PIN, problems: vec![problem] });
            return false;
        }
    }
    metrics.set_pin(total, total, PinState::Verified);
    let secs = start.elapsed().as_secs_f64();
    log::info(
        "pin_verified",
        format!(
            "weights pin: every byte matches ({} in {secs:.2} s, {:.2} GB/s)",
            gb(total),
            total as f64 / secs.max(1e-9) / 1e9
        ),
    )
    .emit();
    true
}

fn gb(bytes: u64) -> String {
    crate::plan::gb(bytes as f64)
}
