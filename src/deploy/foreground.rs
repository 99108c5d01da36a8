//! Pieces of the foreground commands (`verify`, `plan pin`): the tensor check with its
//! report, and hashing under a progress bar.

use std::process::ExitCode;

use indicatif::{ProgressBar, ProgressStyle};

use super::EXIT_WEIGHTS;
use crate::error::Result;
use crate::plan::{IN_WEIGHTS, render_problems};
use crate::plan::{Plan, WeightsPin};
use crate::weights::pin::make_pin;
use crate::weights::{Checkpoint, WeightsSource, verify};

/// Every tensor against the plan; on a mismatch, the problems on stderr and the exit status.
pub fn tensors_mismatch(plan: &Plan, src: &WeightsSource, ckpt: &Checkpoint) -> Option<ExitCode> {
    let problems = verify(plan, ckpt);
    if problems.is_empty() {
        return None;
    }
    eprint!("{}: {}", src.describe(), render_problems(IN_WEIGHTS, &problems));
    Some(ExitCode::from(EXIT_WEIGHTS))
}

/// The model's pin as it is now, hashed on all cores under a progress bar.
pub fn pin_now(src: &WeightsSource, ckpt: &Checkpoint) -> Result<WeightsPin> {
    let total = src.files_read(ckpt).iter().filter_map(|f| src.file_size(f).ok().flatten()).sum();
    let bar = bytes_bar(total, "hashing");
    let pin = make_pin(src, ckpt, &mut |n| bar.inc(n));
    bar.finish_and_clear();
    pin
}

/// A byte progress bar on stderr (hidden when stderr is not a terminal).
pub fn bytes_bar(total: u64, what: &str) -> ProgressBar {
    let bar = ProgressBar::new(total);
    let style = ProgressStyle::with_template("{msg} [{bar:40}] {bytes}/{total_bytes} {binary_bytes_per_sec} eta {eta}")
        .unwrap_or_else(|_| ProgressStyle::default_bar())
        .progress_chars("=> ");
    bar.set_style(style);
    bar.set_message(what.to_string());
    bar
}
