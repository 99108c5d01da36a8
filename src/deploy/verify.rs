//! `kiln verify`: the weights against the baked plan, everything `kiln serve` checks before
//! listening (pin sizes and headers, every tensor, config.json, the tokenizer against the
//! vocabulary, the small tensors and the head for non-finite values). With `--full`, every
//! byte against the plan's pin (or the digests to pin, when it has none) and every tensor for
//! non-finite values.

use std::process::ExitCode;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Instant;

use super::EXIT_WEIGHTS;
use super::foreground::{bytes_bar, pin_now};
use crate::app::{self, Tokenizing};
use crate::error::Result;
use crate::plan::{IN_PIN, IN_WEIGHTS, Plan, render_problems};
use crate::weights::pin::check_contents;
use crate::weights::{WeightsSource, finite};

pub fn verify(plan: &Plan, src: &WeightsSource, full: bool) -> Result<ExitCode> {
    let checked = app::check(plan, src, Tokenizing::IfPresent)?;
    let ckpt = &checked.ckpt;
    println!("{}: {} tensors match plan {}", src.describe(), ckpt.len(), plan.appliance.name);
    match checked.tokenizer {
        Some(_) => println!("{}: config.json matches; the tokenizer fits the vocabulary", src.describe()),
        None => println!(
            "{}: no tokenizer.json: token ids work on the command line, `kiln serve` needs one",
            src.describe()
        ),
    }
    if !full {
        return Ok(ExitCode::SUCCESS);
    }
    let start = Instant::now();
    let total: u64 = ckpt.tensors().map(|(_, t)| t.range.len() as u64).sum();
    let bar = bytes_bar(total, "scanning");
    let done = AtomicU64::new(0);
    let problems = finite::scan(ckpt, &|_| true, true, &|n| {
        done.fetch_add(n, Ordering::Relaxed);
        bar.set_position(done.load(Ordering::Relaxed));
    });
    bar.finish_and_clear();
    if !problems.is_empty() {
        eprint!("{}: {}", src.describe(), render_problems(IN_WEIGHTS, &problems));
        return Ok(ExitCode::from(EXIT_WEIGHTS));
    }
    println!(
        "{}: no NaN or infinity in {} tensors ({:.1} s)",
        src.describe(),
        ckpt.len(),
        start.elapsed().as_secs_f64()
    );
    let start = Instant::now();
    let Some(pin) = &plan.weights.pin else {
        let pin = pin_now(src, ckpt)?;
        println!("the baked plan has no weights.pin; blake3 of every file serving reads:");
        for f in &pin.files {
            println!("  {}  {:>14}  {}", f.blake3, f.bytes, f.name);
        }
        println!("(`kiln plan pin --weights DIR PLAN.toml` writes them into a plan)");
        return Ok(ExitCode::SUCCESS);
    };
    let bar = bytes_bar(pin.total_bytes(), "verifying");
    let mut problems = Vec::new();
    for f in &pin.files {
        problems.extend(check_contents(f, src, true, &mut |n| bar.inc(n)));
    }
    bar.finish_and_clear();
    if !problems.is_empty() {
        eprint!("{}: {}", src.describe(), render_problems(IN_PIN, &problems));
        return Ok(ExitCode::from(EXIT_WEIGHTS));
    }
    let secs = start.elapsed().as_secs_f64();
    println!(
        "{}: every byte of {} file(s) matches weights.pin ({} in {secs:.1} s, {:.2} GB/s)",
        src.describe(),
        pin.files.len(),
        crate::plan::gb(pin.total_bytes() as f64),
        pin.total_bytes() as f64 / secs.max(1e-9) / 1e9
    );
    Ok(ExitCode::SUCCESS)
}
