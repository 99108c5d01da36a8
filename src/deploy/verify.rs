//! `kiln verify`: the weights against the baked plan. Shapes and formats always; with
//! `--full`, every byte against the plan's pin (or the digests to pin, when it has none).

use std::process::ExitCode;
use std::time::Instant;

use super::EXIT_WEIGHTS;
use super::foreground::{bytes_bar, pin_now, tensors_mismatch};
use crate::error::Result;
use crate::plan::Plan;
use crate::plan::{IN_PIN, render_problems};
use crate::weights::WeightsSource;
use crate::weights::pin::{check_contents, check_quick};

pub fn verify(plan: &Plan, src: &WeightsSource, full: bool) -> Result<ExitCode> {
    let ckpt = src.checkpoint()?;
    if let Some(code) = tensors_mismatch(plan, src, &ckpt) {
        return Ok(code);
    }
    println!("{}: {} tensors match plan {}", src.describe(), ckpt.len(), plan.appliance.name);
    if !full {
        return Ok(ExitCode::SUCCESS);
    }
    let start = Instant::now();
    let Some(pin) = &plan.weights.pin else {
        let pin = pin_now(src, &ckpt)?;
        println!("the baked plan has no weights.pin; blake3 of every file serving reads:");
        for f in &pin.files {
            println!("  {}  {:>14}  {}", f.blake3, f.bytes, f.name);
        }
        println!("(`kiln plan pin --weights DIR PLAN.toml` writes them into a plan)");
        return Ok(ExitCode::SUCCESS);
    };
    let mut problems = check_quick(pin, src, &ckpt);
    let bar = bytes_bar(pin.total_bytes(), "verifying");
    for f in &pin.files {
        if problems.iter().any(|p| p.key == f.name) {
            bar.inc(f.bytes);
            continue;
        }
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
