//! Every declared op on a device against the CPU backend: each variant of each family at the
//! declaration's check shapes, compared under its error budget.

use super::{Case, OpDecl, Output, all, variants};
use crate::device::Gpu;

/// One case's verdict.
#[derive(Debug, Clone)]
pub struct CheckRow {
    pub family: &'static str,
    pub variant: &'static str,
    pub shape: String,
    /// Largest float error relative to max(1, max |cpu|) (0 when the output is indices only).
    pub error: f64,
    pub tolerance: f64,
    /// Why it failed, if it did.
    pub failure: Option<String>,
}

impl CheckRow {
    pub fn passed(&self) -> bool {
        self.failure.is_none()
    }
}

/// Runs `decls` (every declaration when None) on `gpu`. Variants whose kernels this device
/// does not have (a HIP binary carries only its plan's) are left out.
pub fn check(gpu: &Gpu, decls: Option<&[&'static OpDecl]>) -> Vec<CheckRow> {
    let decls: Vec<&'static OpDecl> = decls.map(<[_]>::to_vec).unwrap_or_else(all);
    let mut rows = Vec::new();
    for d in decls {
        for v in variants(d.family) {
            if !v.symbols.iter().all(|s| gpu.device.kernel(s).is_ok()) {
                continue;
            }
            for case in (d.checks)(v) {
                rows.push(run(gpu, d, case));
            }
        }
    }
    rows
}

fn run(gpu: &Gpu, d: &OpDecl, case: Case) -> CheckRow {
    let mut row = CheckRow {
        family: d.family,
        variant: case.variant.name,
        shape: case.shape.clone(),
        error: 0.0,
        tolerance: d.tolerance,
        failure: None,
    };
    let got = (case.setup)(gpu).and_then(|p| {
        p.launch(gpu)?;
        p.output()
    });
    match got {
        Err(e) => row.failure = Some(e.to_string()),
        Ok(got) => match compare(&case.expected, &got, d.tolerance) {
            Ok(err) => row.error = err,
            Err((err, why)) => {
                row.error = err;
                row.failure = Some(why);
            }
        },
    }
    row
}

/// The largest relative float error, or the first disagreement.
pub fn compare(want: &Output, got: &Output, tolerance: f64) -> Result<f64, (f64, String)> {
    match (want, got) {
        (Output::Floats(a), Output::Floats(b)) => {
            if a.len() != b.len() {
                return Err((f64::NAN, format!("{} values, expected {}", b.len(), a.len())));
            }
            let scale = a.iter().filter(|v| v.is_finite()).fold(1.0f64, |m, v| m.max(f64::from(v.abs())));
            let mut worst = (0.0f64, 0usize);
            for (i, (x, y)) in a.iter().zip(b).enumerate() {
                // Equal values (infinities included) agree; anything else, NaN included, is measured.
                let d = if x == y { 0.0 } else { f64::from((x - y).abs()) / scale };
                if d.is_nan() || d > worst.0 {
                    worst = (if d.is_nan() { f64::INFINITY } else { d }, i);
                }
            }
            if worst.0 <= tolerance {
                Ok(worst.0)
            } else {
                let i = worst.1;
                Err((worst.0, format!("value {i}: {} where the CPU gives {} (error {:.2e})", b[i], a[i], worst.0)))
            }
        }
        (Output::Indices(a), Output::Indices(b)) => rows_equal(a, b, false).map(|_| 0.0),
        (Output::IndexSets(a), Output::IndexSets(b)) => rows_equal(a, b, true).map(|_| 0.0),
        (Output::Draws { p, u }, Output::Indices(b)) => draws_fit(p, u, b, tolerance),
        (Output::Many(a), Output::Many(b)) if a.len() == b.len() => {
            let mut worst = 0.0f64;
            for (x, y) in a.iter().zip(b) {
                worst = worst.max(compare(x, y, tolerance)?);
            }
            Ok(worst)
        }
        _ => Err((f64::NAN, "the output has another form than the reference's".into())),
    }
}

/// How far each drawn token's slice of the cumulative mass is from its variate.
fn draws_fit(p: &[Vec<f32>], u: &[f32], got: &[Vec<i32>], tolerance: f64) -> Result<f64, (f64, String)> {
    if got.len() != p.len() {
        return Err((0.0, format!("{} rows, expected {}", got.len(), p.len())));
    }
    let mut worst = 0.0f64;
    for (i, ((p, &u), row)) in p.iter().zip(u).zip(got).enumerate() {
        let t = row.first().copied().unwrap_or(-1);
        let Some(&pt) = usize::try_from(t).ok().and_then(|t| p.get(t)) else {
            return Err((f64::INFINITY, format!("row {i}: token {t} is outside the vocabulary")));
        };
        if pt <= 0.0 {
            return Err((f64::INFINITY, format!("row {i}: token {t} has probability 0")));
        }
        let total: f64 = p.iter().map(|&x| f64::from(x)).sum();
        let below: f64 = p[..t as usize].iter().map(|&x| f64::from(x)).sum::<f64>() / total;
        let (lo, hi) = (below, below + f64::from(pt) / total);
        let target = f64::from(u);
        let off = if target < lo {
            lo - target
        } else if target > hi {
            target - hi
        } else {
            0.0
        };
        worst = worst.max(off);
        if off > tolerance {
            return Err((
                off,
                format!("row {i}: token {t} covers [{lo:.6}, {hi:.6}) of the mass but the draw was at {target:.6}"),
            ));
        }
    }
    Ok(worst)
}

fn rows_equal(a: &[Vec<i32>], b: &[Vec<i32>], as_sets: bool) -> Result<(), (f64, String)> {
    if a.len() != b.len() {
        return Err((0.0, format!("{} rows, expected {}", b.len(), a.len())));
    }
    for (i, (x, y)) in a.iter().zip(b).enumerate() {
        let (mut x, mut y) = (x.clone(), y.clone());
        if as_sets {
            // Unused slots (-1) carry nothing.
            x.retain(|&v| v >= 0);
            y.retain(|&v| v >= 0);
            x.sort_unstable();
            y.sort_unstable();
        }
        if x != y {
            return Err((0.0, format!("row {i}: {y:?} where the CPU gives {x:?}")));
        }
    }
    Ok(())
}

/// A table of rows, one line each, failures spelled out.
pub fn table(rows: &[CheckRow]) -> String {
    let mut s = format!("{:<20} {:<28} {:<58} {:>9} {:>8}  result\n", "op", "kernel", "shape", "error", "budget");
    for r in rows {
        s.push_str(&format!(
            "{:<20} {:<28} {:<58} {:>9.2e} {:>8.0e}  {}\n",
            r.family,
            r.variant,
            r.shape,
            r.error,
            r.tolerance,
            r.failure.as_deref().map_or("ok".to_string(), |f| format!("FAILED: {f}"))
        ));
    }
    let failed = rows.iter().filter(|r| !r.passed()).count();
    s.push_str(&format!("{} cases, {} failed\n", rows.len(), failed));
    s
}
