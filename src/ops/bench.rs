//! The kernel map of a plan, timed on a device: every (op, kernel, bucket) row at the plan's
//! shapes, its achieved bandwidth (bytes it must move / time) and that over the device's own
//! copy bandwidth, measured in the same run. Figures, not tests.

use std::time::Instant;

use super::decl;
use crate::device::{Buffer, Gpu};
use crate::error::{Error, Result};
use crate::plan::{Plan, required_ops, variant};

#[derive(Debug, Clone)]
pub struct BenchRow {
    pub op: String,
    pub kernel: &'static str,
    pub shape: String,
    pub tokens: usize,
    pub micros: f64,
    pub gb_s: f64,
}

/// Device-to-device copy bandwidth: 2 x `bytes` moved per copy (read and write), best of a few.
pub fn copy_bandwidth(gpu: &Gpu, bytes: usize) -> Result<f64> {
    let (a, b) = (Buffer::alloc(&gpu.device, bytes)?, Buffer::alloc(&gpu.device, bytes)?);
    let mut best = f64::INFINITY;
    for _ in 0..5 {
        let t = Instant::now();
        gpu.device.copy(b.ptr(), a.ptr(), bytes)?;
        gpu.synchronize()?;
        best = best.min(t.elapsed().as_secs_f64());
    }
    Ok(2.0 * bytes as f64 / best / 1e9)
}

/// Every kernel map row of `plan` at `buckets` (those it serves), or at its own smallest and
/// largest bucket; `reps` timed launches after one warm-up.
pub fn bench(gpu: &Gpu, plan: &Plan, buckets: Option<&[u64]>, reps: usize) -> Result<Vec<BenchRow>> {
    let required = required_ops(plan);
    let mut rows = Vec::new();
    for e in &plan.kernels.entries {
        let (Some(req), Some(v)) = (required.iter().find(|r| r.op == e.op), variant(&e.kernel)) else {
            continue;
        };
        let d = decl(v.op).ok_or_else(|| Error::Usage(format!("no op declaration for kernel family {}", v.op)))?;
        let ends = [e.buckets.first().copied(), e.buckets.last().copied()];
        let mut chosen: Vec<u64> = match buckets {
            Some(list) => e.buckets.iter().copied().filter(|b| list.contains(b)).collect(),
            None => ends.into_iter().flatten().collect(),
        };
        chosen.dedup();
        for b in chosen {
            let case = (d.at)(v, &req.shape, b as usize);
            let prepared = (case.setup)(gpu)?;
            prepared.launch(gpu)?;
            gpu.synchronize()?;
            let t = Instant::now();
            for _ in 0..reps.max(1) {
                prepared.launch(gpu)?;
            }
            gpu.synchronize()?;
            let secs = t.elapsed().as_secs_f64() / reps.max(1) as f64;
            rows.push(BenchRow {
                op: e.op.clone(),
                kernel: v.name,
                shape: case.shape,
                tokens: b as usize,
                micros: secs * 1e6,
                gb_s: case.bytes as f64 / secs / 1e9,
            });
        }
    }
    Ok(rows)
}

/// The bench rows; `peak_gb_s` is the device's reported peak, when it reports one.
pub fn table(rows: &[BenchRow], copy_gb_s: f64, peak_gb_s: Option<f64>) -> String {
    let w = rows.iter().map(|r| r.op.len()).max().unwrap_or(0).max(12);
    let mut s = format!(
        "{:<w$} {:<28} {:>6} {:>11} {:>9} {:>8} {:>8}  shape\n",
        "op", "kernel", "tokens", "us/launch", "GB/s", "of copy", "of peak"
    );
    for r in rows {
        let of_peak = peak_gb_s.map_or("-".to_string(), |p| format!("{:.1}%", 100.0 * r.gb_s / p));
        s.push_str(&format!(
            "{:<w$} {:<28} {:>6} {:>11.1} {:>9.2} {:>7.1}% {:>8}  {}\n",
            r.op,
            r.kernel,
            r.tokens,
            r.micros,
            r.gb_s,
            100.0 * r.gb_s / copy_gb_s,
            of_peak,
            r.shape
        ));
    }
    s.push_str(&format!("device copy bandwidth (read + write): {copy_gb_s:.2} GB/s, measured in this run\n"));
    if let Some(p) = peak_gb_s {
        s.push_str(&format!(
            "device peak memory bandwidth: {p:.0} GB/s (memory clock x bus width, as the driver reports)\n"
        ));
    }
    s
}
