//! The background half of the pin check: hashes every pinned shard while the server runs,
//! with progress in the log and /metrics, and reports a mismatch as a stop.

use std::sync::Arc;
use std::sync::mpsc::Sender;
use std::time::{Duration, Instant};

use super::lifecycle::Stop;
use crate::error::{Error, Result};
use crate::log;
use crate::metrics::{Metrics, PinState};
use crate::plan::WeightsPin;
use crate::weights::WeightsSource;
use crate::weights::pin::check_contents;

/// Progress lines at most this often (and at each tenth of the total).
const LOG_EVERY: Duration = Duration::from_secs(5);

pub fn spawn(pin: WeightsPin, src: WeightsSource, metrics: Arc<Metrics>, stops: Sender<Stop>) -> Result<()> {
    let total = pin.total_bytes();
    metrics.set_pin(0, total, PinState::Hashing);
    let spawned = std::thread::Builder::new().name("kiln-pin".into()).spawn(move || {
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
            if let Some(problem) = check_contents(f, &src, false, &mut progress) {
                metrics.set_pin(done, total, PinState::Mismatch);
                let _ = stops.send(Stop::WeightsMismatch(vec![problem]));
                return;
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
    });
    spawned.map(|_| ()).map_err(|e| Error::Usage(format!("cannot start the weights pin check: {e}")))
}

fn gb(bytes: u64) -> String {
    crate::plan::gb(bytes as f64)
}
