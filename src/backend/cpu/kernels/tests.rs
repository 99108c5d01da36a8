//! Every instruction set against the portable path and an f64 reference, on sizes that leave
//! tails (odd columns, a single block, partial tiles), and each token's result independent of
//! the tile it was computed in.

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

use super::*;
use crate::weights::decode::{e2m1, e8m0};

const COLS: [usize; 12] = [1, 7, 16, 31, 32, 33, 48, 64, 100, 257, 1024, 1100];
const TOKENS: [usize; 7] = [1, 2, 3, 5, 8, 9, 17];

struct Row {
    bytes: Vec<u8>,
    scales: Vec<u8>,
    values: Vec<f64>, // [cols], the row decoded exactly
}

impl Row {
    fn as_ref(&self, kind: &str) -> RowRef<'_> {
        match kind {
            "mxfp4" => RowRef::Mxfp4 { codes: &self.bytes, scales: &self.scales },
            "bf16" => RowRef::Bf16(&self.bytes),
            _ => RowRef::F32(&self.bytes),
        }
    }
}

fn random_row(kind: &str, cols: usize, rng: &mut ChaCha8Rng) -> Row {
    match kind {
        "mxfp4" => {
            let bytes: Vec<u8> = (0..cols.div_ceil(2)).map(|_| rng.random()).collect();
            let scales: Vec<u8> = (0..cols.div_ceil(32)).map(|_| rng.random_range(120..134)).collect();
            let values = (0..cols)
                .map(|c| {
                    let b = bytes[c / 2];
                    let code = if c % 2 == 0 { b & 0x0F } else { b >> 4 };
                    f64::from(e2m1(code)) * f64::from(e8m0(scales[c / 32]))
                })
                .collect();
            Row { bytes, scales, values }
        }
        "bf16" => {
            let v: Vec<half::bf16> = (0..cols).map(|_| half::bf16::from_f32(rng.random_range(-2.0..2.0))).collect();
            Row {
                bytes: v.iter().flat_map(|x| x.to_le_bytes()).collect(),
                scales: Vec::new(),
                values: v.iter().map(|x| f64::from(x.to_f32())).collect(),
            }
        }
        _ => {
            let v: Vec<f32> = (0..cols).map(|_| rng.random_range(-2.0..2.0)).collect();
            Row {
                bytes: v.iter().flat_map(|x| x.to_le_bytes()).collect(),
                scales: Vec::new(),
                values: v.iter().map(|&x| f64::from(x)).collect(),
            }
        }
    }
}

#[test]
fn every_isa_matches_the_reference_on_odd_sizes() {
    let mut rng = ChaCha8Rng::seed_from_u64(7);
    for kind in ["mxfp4", "bf16", "f32"] {
        for cols in COLS {
            let row = random_row(kind, cols, &mut rng);
            for n in TOKENS {
                let x: Vec<f32> = (0..n * cols).map(|_| rng.random_range(-1.0..1.0)).collect();
                let want: Vec<f64> = (0..n)
                    .map(|t| row.values.iter().zip(&x[t * cols..]).map(|(w, &v)| w * f64::from(v)).sum())
                    .collect();
                let bound: Vec<f64> = (0..n)
                    .map(|t| row.values.iter().zip(&x[t * cols..]).map(|(w, &v)| (w * f64::from(v)).abs()).sum())
                    .collect();
                let mut portable = vec![0.0f32; n];
                row_dots_on(Isa::Portable, row.as_ref(kind), &x, cols, &mut portable);
                // The int8x2 and int16 activations' error: at most 1/32000 of the block's
                // amax per element (see int8x2.rs, int16.rs), times |w|, over the whole blocks.
                let quant: Vec<f64> = (0..n)
                    .map(|t| {
                        let xt = &x[t * cols..(t + 1) * cols];
                        (0..cols / 32 * 32)
                            .map(|c| {
                                let amax = xt[c / 32 * 32..c / 32 * 32 + 32].iter().fold(0.0f32, |m, v| m.max(v.abs()));
                                row.values[c].abs() * f64::from(amax) / 32000.0
                            })
                            .sum()
                    })
                    .collect();
                for isa in Isa::available() {
                    let mut got = vec![f32::NAN; n];
                    row_dots_on(isa, row.as_ref(kind), &x, cols, &mut got);
                    for t in 0..n {
                        // f32 accumulation error: a few ulps of the sum of |products|.
                        let mut tol = 1e-6 * bound[t] * (cols as f64).sqrt().max(1.0) + 1e-30;
                        if matches!(isa, Isa::Avx512Vnni | Isa::Avx2Int16) && kind == "mxfp4" {
                            tol += quant[t];
                        }
                        let (g, p) = (f64::from(got[t]), f64::from(portable[t]));
                        assert!(
                            (g - want[t]).abs() <= tol && (g - p).abs() <= 2.0 * tol,
                            "{kind} {} cols {cols} n {n} token {t}: got {g}, portable {p}, exact {}",
                            isa.name(),
                            want[t]
                        );
                    }
                }
            }
        }
    }
}

#[test]
fn split_activations_hold_each_whole_width_as_evens_then_odds() {
    // Two rows of 37: two whole 16s (then 5 left as given), one whole 32 (then 5).
    let (n, cols) = (2, 37);
    let x: Vec<f32> = (0..n * cols).map(|i| i as f32).collect(); // [n, cols]
    for width in [16, 32] {
        let split = split_even_odd(&x, cols, width);
        for t in 0..n {
            let (row, src) = (&split[t * cols..(t + 1) * cols], &x[t * cols..(t + 1) * cols]);
            let whole = cols / width * width;
            for b in (0..whole).step_by(width) {
                let want: Vec<f32> =
                    (0..width / 2).map(|i| src[b + 2 * i]).chain((0..width / 2).map(|i| src[b + 2 * i + 1])).collect();
                assert_eq!(&row[b..b + width], &want[..], "width {width} row {t} block at {b}");
            }
            assert_eq!(&row[whole..], &src[whole..], "width {width} row {t}: the tail moved");
        }
    }
}

#[test]
fn a_token_gets_the_same_bits_in_any_tile() {
    let mut rng = ChaCha8Rng::seed_from_u64(11);
    for kind in ["mxfp4", "bf16", "f32"] {
        let cols = 100;
        let row = random_row(kind, cols, &mut rng);
        let x: Vec<f32> = (0..17 * cols).map(|_| rng.random_range(-1.0..1.0)).collect();
        for isa in Isa::available() {
            let mut all = vec![0.0f32; 17];
            row_dots_on(isa, row.as_ref(kind), &x, cols, &mut all);
            for t in 0..17 {
                let mut alone = [0.0f32];
                row_dots_on(isa, row.as_ref(kind), &x[t * cols..(t + 1) * cols], cols, &mut alone);
                assert_eq!(alone[0].to_bits(), all[t].to_bits(), "{kind} {} token {t}", isa.name());
            }
        }
    }
}

#[test]
fn a_token_gets_the_same_bits_in_any_row_block_and_tile() {
    let mut rng = ChaCha8Rng::seed_from_u64(13);
    for kind in ["mxfp4", "bf16", "f32"] {
        // 256 and 512 are whole groups of four blocks (`vnni_whole::whole_rows` for a long row);
        // 1048 is a long row with a half step of 16 and a tail of 8 past its steps of 32; 1560
        // too, and from 8 tokens on its activations outgrow L1, where dense rows go in quads;
        // 2048's whole groups do at 9 tokens for MXFP4 rows too.
        for cols in [64, 100, 256, 320, 512, 1048, 1560, 2048] {
            // Eight-row groups, a pair and a single row.
            let nrows = 11;
            let rows: Vec<Row> = (0..nrows).map(|_| random_row(kind, cols, &mut rng)).collect();
            let bytes: Vec<u8> = rows.iter().flat_map(|r| r.bytes.iter().copied()).collect();
            let scales: Vec<u8> = rows.iter().flat_map(|r| r.scales.iter().copied()).collect();
            let w = match kind {
                "mxfp4" => RowsRef::Mxfp4 { codes: &bytes, scales: &scales },
                "bf16" => RowsRef::Bf16(&bytes),
                _ => RowsRef::F32(&bytes),
            };
            let x: Vec<f32> = (0..9 * cols).map(|_| rng.random_range(-1.0..1.0)).collect();
            for isa in Isa::available() {
                for cached in [false, true] {
                    for tb in 1..=9 {
                        let acts = Acts::new(isa, kind == "mxfp4", &x[..tb * cols], tb, cols);
                        let mut out = vec![f32::NAN; nrows * tb]; // [rows, tb]
                        block_dots(&acts, w, cached, nrows, 0, tb, &mut out, tb);
                        for (r, row) in rows.iter().enumerate() {
                            for t in 0..tb {
                                let mut alone = [0.0f32];
                                row_dots_on(isa, row.as_ref(kind), &x[t * cols..(t + 1) * cols], cols, &mut alone);
                                assert_eq!(
                                    alone[0].to_bits(),
                                    out[r * tb + t].to_bits(),
                                    "{kind} {} cols {cols} cached {cached}: row {r} token {t} of {tb}",
                                    isa.name()
                                );
                            }
                        }
                    }
                }
            }
        }
    }
}

#[test]
fn nan_scales_and_zero_rows_propagate_as_the_decoder_does() {
    let codes = [0x22u8; 16];
    let x = [1.0f32; 32];
    for isa in Isa::available() {
        let mut out = [0.0f32];
        row_dots_on(isa, RowRef::Mxfp4 { codes: &codes, scales: &[0xFF] }, &x, 32, &mut out);
        assert!(out[0].is_nan(), "{}: a NaN scale must give NaN", isa.name());
        row_dots_on(isa, RowRef::Mxfp4 { codes: &[0u8; 16], scales: &[127] }, &x, 32, &mut out);
        assert_eq!(out[0], 0.0, "{}", isa.name());
    }
}

#[test]
fn special_scales_in_rows_of_whole_groups_are_fixed_up() {
    // Eleven rows of 512 (a group of eight, then a pair and a single row): rows 1 and 9 have
    // every scale 0 (2^-127, where reading the exponent as is would give 0), rows 2 and 10 a
    // NaN scale (0xFF, which as is would be infinity) on block 9 of codes 1.0, against
    // positive activations there. 9 tokens: a tile of eight and one.
    let mut rng = ChaCha8Rng::seed_from_u64(19);
    let (cols, nrows) = (512, 11);
    let (zero_rows, nan_rows) = ([1, 9], [2, 10]);
    let mut rows: Vec<Row> = (0..nrows).map(|_| random_row("mxfp4", cols, &mut rng)).collect();
    for r in zero_rows {
        rows[r].scales.fill(0);
    }
    for r in nan_rows {
        rows[r].scales[9] = 0xFF;
        rows[r].bytes[144..160].fill(0x22);
    }
    for row in &mut rows {
        for c in 0..cols {
            let byte = row.bytes[c / 2];
            let code = if c % 2 == 0 { byte & 0x0F } else { byte >> 4 };
            row.values[c] = f64::from(e2m1(code)) * f64::from(e8m0(row.scales[c / 32]));
        }
    }
    let codes: Vec<u8> = rows.iter().flat_map(|r| r.bytes.iter().copied()).collect();
    let scales: Vec<u8> = rows.iter().flat_map(|r| r.scales.iter().copied()).collect();
    for tb in [1, 2, 5, 9] {
        let x: Vec<f32> = (0..tb * cols)
            .map(|i| if i % cols / 32 == 9 { rng.random_range(0.5..1.0) } else { rng.random_range(-1.0..1.0) })
            .collect();
        for isa in Isa::available() {
            let acts = Acts::new(isa, true, &x, tb, cols);
            let mut out = vec![0.0f32; nrows * tb]; // [rows, tb]
            block_dots(&acts, RowsRef::Mxfp4 { codes: &codes, scales: &scales }, false, nrows, 0, tb, &mut out, tb);
            for t in 0..tb {
                let xt = &x[t * cols..(t + 1) * cols];
                for r in 0..nrows {
                    let got = f64::from(out[r * tb + t]);
                    if nan_rows.contains(&r) {
                        assert!(got.is_nan(), "{} row {r} token {t}: a NaN scale must give NaN", isa.name());
                        continue;
                    }
                    let want: f64 = rows[r].values.iter().zip(xt).map(|(w, &v)| w * f64::from(v)).sum();
                    let bound: f64 = rows[r].values.iter().zip(xt).map(|(w, &v)| (w * f64::from(v)).abs()).sum();
                    assert!(
                        (got - want).abs() <= 1e-4 * bound,
                        "{} row {r} token {t} of {tb}: got {got}, exact {want}",
                        isa.name()
                    );
                }
            }
        }
    }
}

#[test]
fn a_non_finite_activation_gives_a_non_finite_result_on_every_isa() {
    let mut rng = ChaCha8Rng::seed_from_u64(17);
    for kind in ["mxfp4", "bf16", "f32"] {
        let cols = 96;
        let row = random_row(kind, cols, &mut rng);
        for bad in [f32::NAN, f32::INFINITY] {
            let mut x: Vec<f32> = (0..2 * cols).map(|_| rng.random_range(-1.0..1.0)).collect();
            x[cols + 40] = bad; // token 1 only
            for isa in Isa::available() {
                let mut out = [0.0f32; 2];
                row_dots_on(isa, row.as_ref(kind), &x, cols, &mut out);
                assert!(out[0].is_finite(), "{kind} {}: token 0 is untouched", isa.name());
                assert!(!out[1].is_finite(), "{kind} {}: {bad} in gave {}", isa.name(), out[1]);
            }
        }
    }
}

#[test]
fn dot_matches_on_every_length() {
    let mut rng = ChaCha8Rng::seed_from_u64(3);
    for n in [0, 1, 7, 8, 15, 16, 17, 31, 32, 33, 63, 64, 65, 200] {
        let a: Vec<f32> = (0..n).map(|_| rng.random_range(-1.0..1.0)).collect();
        let b: Vec<f32> = (0..n).map(|_| rng.random_range(-1.0..1.0)).collect();
        let want: f64 = a.iter().zip(&b).map(|(x, y)| f64::from(*x) * f64::from(*y)).sum();
        assert!((f64::from(portable::dot(&a, &b)) - want).abs() < 1e-5, "portable n {n}");
        assert!((f64::from(dot(&a, &b)) - want).abs() < 1e-5, "dispatched n {n}");
    }
}

#[test]
fn decode_range_gives_the_row_from_any_block() {
    let mut rng = ChaCha8Rng::seed_from_u64(5);
    for kind in ["mxfp4", "bf16", "f32"] {
        for cols in [32, 96, 300] {
            let row = random_row(kind, cols, &mut rng);
            for c0 in (0..cols).step_by(32) {
                let mut out = vec![f32::NAN; cols - c0];
                decode_range(row.as_ref(kind), c0, &mut out);
                for (i, v) in out.iter().enumerate() {
                    assert_eq!(f64::from(*v), row.values[c0 + i], "{kind} cols {cols} at {}", c0 + i);
                }
            }
        }
    }
}

/// Single-thread speed of one pass over 256 MB of weights from memory, row by row against
/// one token and in blocks of 16 rows against 1 to 16 (not a check: run by hand with
/// --ignored --nocapture).
#[test]
#[ignore]
fn kernel_read_speed() {
    let cols = 1024;
    let rows = (256 << 20) / (cols / 2);
    let mut rng = ChaCha8Rng::seed_from_u64(1);
    let codes: Vec<u8> = (0..rows * cols / 2).map(|_| rng.random()).collect();
    let scales: Vec<u8> = (0..rows * cols / 32).map(|_| rng.random_range(120..130)).collect();
    let bf: Vec<u8> = (0..rows * cols).map(|_| rng.random_range(0..0x3F)).collect();
    let x: Vec<f32> = (0..cols).map(|_| rng.random_range(-1.0..1.0)).collect();
    for isa in Isa::available() {
        let mut out = [0.0f32];
        let acts = Acts::new(isa, true, &x, 1, cols);
        let t = std::time::Instant::now();
        for q in 0..rows {
            let (c, s) = (&codes[q * cols / 2..(q + 1) * cols / 2], &scales[q * cols / 32..(q + 1) * cols / 32]);
            acts_dots(&acts, RowRef::Mxfp4 { codes: c, scales: s }, 0, &mut out);
        }
        let s = t.elapsed().as_secs_f64();
        println!("{} mxfp4: {:.1} GB/s", isa.name(), (codes.len() + scales.len()) as f64 / s / 1e9);
        let acts = Acts::new(isa, false, &x, 1, cols);
        let t = std::time::Instant::now();
        for q in 0..bf.len() / (2 * cols) {
            acts_dots(&acts, RowRef::Bf16(&bf[q * cols * 2..(q + 1) * cols * 2]), 0, &mut out);
        }
        let s = t.elapsed().as_secs_f64();
        println!("{} bf16: {:.1} GB/s", isa.name(), bf.len() as f64 / s / 1e9);
        // Blocks of 16 rows, as a matmul's tasks take them.
        for n in [1usize, 2, 4, 8, 16] {
            let x2: Vec<f32> = x.iter().cycle().take(n * cols).copied().collect();
            let acts = Acts::new(isa, false, &x2, n, cols);
            let mut out2 = vec![0.0f32; 16 * n];
            let t = std::time::Instant::now();
            for q in (0..bf.len() / (2 * cols)).step_by(16) {
                block_dots(&acts, RowsRef::Bf16(&bf[q * cols * 2..]), false, 16, 0, n, &mut out2, n);
            }
            let s = t.elapsed().as_secs_f64();
            println!("{} bf16 x{n} tokens: {:.1} GB/s", isa.name(), bf.len() as f64 / s / 1e9);
            let acts = Acts::new(isa, true, &x2, n, cols);
            let t = std::time::Instant::now();
            for q in (0..rows).step_by(16) {
                let w = RowsRef::Mxfp4 { codes: &codes[q * cols / 2..], scales: &scales[q * cols / 32..] };
                block_dots(&acts, w, false, 16, 0, n, &mut out2, n);
            }
            let s = t.elapsed().as_secs_f64();
            println!("{} mxfp4 x{n} tokens: {:.1} GB/s", isa.name(), (codes.len() + scales.len()) as f64 / s / 1e9);
        }
    }
}

#[test]
fn accumulate_rows_adds_every_tokens_weighted_rows() {
    let mut rng = ChaCha8Rng::seed_from_u64(9);
    for kind in ["mxfp4", "bf16", "f32"] {
        for cols in [32, 100, 257] {
            // A tile of four tokens and two left over.
            let (nrows, n, cstride) = (5, 6, 7);
            let rows: Vec<Row> = (0..nrows).map(|_| random_row(kind, cols, &mut rng)).collect();
            let mut bytes = Vec::new();
            let mut scales = Vec::new();
            for r in &rows {
                bytes.extend_from_slice(&r.bytes);
                scales.extend_from_slice(&r.scales);
            }
            let w = match kind {
                "mxfp4" => RowsRef::Mxfp4 { codes: &bytes, scales: &scales },
                "bf16" => RowsRef::Bf16(&bytes),
                _ => RowsRef::F32(&bytes),
            };
            let coefs: Vec<f32> = (0..n * cstride).map(|_| rng.random_range(-1.0..1.0)).collect();
            let mut out = vec![0.5f32; n * cols];
            accumulate_rows(w, nrows, cols, &coefs, cstride, &mut out);
            for t in 0..n {
                for c in 0..cols {
                    let want: f64 =
                        0.5 + (0..nrows).map(|r| f64::from(coefs[t * cstride + r]) * rows[r].values[c]).sum::<f64>();
                    let size: f64 = 0.5
                        + (0..nrows)
                            .map(|r| (f64::from(coefs[t * cstride + r]) * rows[r].values[c]).abs())
                            .sum::<f64>();
                    assert!(
                        (f64::from(out[t * cols + c]) - want).abs() <= 1e-6 * size,
                        "{kind} cols {cols} token {t} col {c}: {} vs {want}",
                        out[t * cols + c]
                    );
                }
                // Each element takes the rows in order, one fused multiply-add each.
                for c in 0..cols {
                    let fused = rows
                        .iter()
                        .enumerate()
                        .fold(0.5f32, |acc, (r, row)| coefs[t * cstride + r].mul_add(row.values[c] as f32, acc));
                    assert_eq!(
                        fused.to_bits(),
                        out[t * cols + c].to_bits(),
                        "{kind} cols {cols} token {t} col {c}: fused order"
                    );
                }
                // A token alone gets the same bits as in the tile.
                let mut alone = vec![0.5f32; cols];
                accumulate_rows(w, nrows, cols, &coefs[t * cstride..], cstride, &mut alone);
                for c in 0..cols {
                    assert_eq!(alone[c].to_bits(), out[t * cols + c].to_bits(), "{kind} cols {cols} token {t} col {c}");
                }
            }
        }
    }
}

/// One core's multiply-add rate on rows in L2 against 1 to 64 tokens, as a share of its
/// FMA peak (not a check: run by hand with --ignored --nocapture). The best of many short
/// rounds, the formats taking turns in each: on a shared VM the same loop ran at 9 or at 15
/// G multiply-adds a second for a second or more at a time, and one long timing per format
/// caught whichever phase it fell in.
#[test]
#[ignore]
fn kernel_tile_speed() {
    let cols = 1024;
    let rows = 64; // 128 KiB of bf16, 256 KiB of f32: stays in L2
    let mut rng = ChaCha8Rng::seed_from_u64(1);
    let bf: Vec<u8> = (0..rows * cols * 2).map(|_| rng.random_range(0..0x3F)).collect();
    let f32w: Vec<u8> = (0..rows * cols).flat_map(|_| rng.random_range(-1.0f32..1.0).to_le_bytes()).collect();
    let codes: Vec<u8> = (0..rows * cols / 2).map(|_| rng.random()).collect();
    let scales: Vec<u8> = (0..rows * cols / 32).map(|_| rng.random_range(120..130)).collect();
    // One core's f32 multiply-add rate, measured in the same run: the clock moves.
    let peak = crate::bench::fma_peak::fma_gmacs_one_thread();
    let rounds = 20;
    for n in [1usize, 2, 4, 8, 64] {
        let x: Vec<f32> = (0..n * cols).map(|_| rng.random_range(-1.0..1.0)).collect();
        let mut out = vec![0.0f32; rows * n];
        let reps = 1000 / n + 1; // about 5 ms a round
        let macs = (reps * rows * cols * n) as f64;
        let dense = Acts::new(Isa::current(), false, &x, n, cols);
        let mxfp4 = Acts::new(Isa::current(), true, &x, n, cols);
        let grid = crate::backend::cpu::quantize_mxfp4_activations(&x, cols);
        let w4a4 = Acts::on_mxfp4_grid(Isa::current(), &grid, n, cols);
        let weights = [
            ("bf16", &dense, RowsRef::Bf16(&bf)),
            ("f32", &dense, RowsRef::F32(&f32w)),
            ("mxfp4", &mxfp4, RowsRef::Mxfp4 { codes: &codes, scales: &scales }),
            ("mxfp4 w4a4", &w4a4, RowsRef::Mxfp4 { codes: &codes, scales: &scales }),
        ];
        let mut best = [0.0f64; 4];
        for _ in 0..rounds {
            for ((_, acts, w), best) in weights.iter().zip(&mut best) {
                let t = std::time::Instant::now();
                for _ in 0..reps {
                    block_dots(acts, *w, false, rows, 0, n, &mut out, n);
                }
                *best = best.max(macs / t.elapsed().as_secs_f64() / 1e9);
            }
        }
        for ((name, _, _), gmacs) in weights.iter().zip(best) {
            println!("{name} n={n}: {gmacs:.1} GMAC/s, {:.0}% of one core's FMA peak", 100.0 * gmacs / peak);
        }
    }
}

#[test]
fn w4a4_inputs_skip_the_second_term_with_the_same_bits() {
    // Inputs on the MXFP4 grid (a W4A4 layer's) have no second int8 term, and the
    // whole-group loops then skip its products: the same bits as with them, for one token
    // (eight rows, a pair, a single row) and for tiles of several.
    if !Isa::available().contains(&Isa::Avx512Vnni) {
        return;
    }
    let mut rng = ChaCha8Rng::seed_from_u64(23);
    let (cols, nrows) = (512, 11);
    let rows: Vec<Row> = (0..nrows).map(|_| random_row("mxfp4", cols, &mut rng)).collect();
    let codes: Vec<u8> = rows.iter().flat_map(|r| r.bytes.iter().copied()).collect();
    let scales: Vec<u8> = rows.iter().flat_map(|r| r.scales.iter().copied()).collect();
    let w = RowsRef::Mxfp4 { codes: &codes, scales: &scales };
    for tb in [1, 2, 5] {
        let raw: Vec<f32> = (0..tb * cols).map(|_| rng.random_range(-3.0..3.0)).collect(); // [tb, cols]
        let off_grid = Acts::new(Isa::Avx512Vnni, true, &raw, tb, cols);
        assert!(!off_grid.int8.as_ref().expect("VNNI activations").one_term, "random activations have a second term");
        let x = crate::backend::cpu::quantize_mxfp4_activations(&raw, cols);
        let mut acts = Acts::new(Isa::Avx512Vnni, true, &x, tb, cols);
        assert!(acts.int8.as_ref().expect("VNNI activations").one_term, "{tb} tokens on the MXFP4 grid");
        let mut skipped = vec![f32::NAN; nrows * tb]; // [rows, tb]
        block_dots(&acts, w, false, nrows, 0, tb, &mut skipped, tb);
        acts.int8.as_mut().expect("VNNI activations").one_term = false;
        let mut both = vec![f32::NAN; nrows * tb]; // [rows, tb]
        block_dots(&acts, w, false, nrows, 0, tb, &mut both, tb);
        for (i, (a, b)) in skipped.iter().zip(&both).enumerate() {
            assert_eq!(a.to_bits(), b.to_bits(), "{tb} tokens: row {} token {}", i / tb, i % tb);
        }
    }
}

#[test]
fn mxfp4_grid_inputs_go_to_avx2_as_exact_int8_dots() {
    // W4A4 inputs (rounded to the MXFP4 grid) meet MXFP4 rows as int8 on AVX2: dot products
    // within f32 accumulation of the exact sums, each token's bits the same alone as in a
    // batch (pairs of rows against one token, tiles of 4, 2 and 1), close to the int16 path.
    if !Isa::available().contains(&Isa::Avx2Int16) {
        return;
    }
    let mut rng = ChaCha8Rng::seed_from_u64(29);
    let nrows = 5;
    for cols in [32, 64, 96, 100, 257, 1024] {
        let rows: Vec<Row> = (0..nrows).map(|_| random_row("mxfp4", cols, &mut rng)).collect();
        let codes: Vec<u8> = rows.iter().flat_map(|r| r.bytes.iter().copied()).collect();
        let scales: Vec<u8> = rows.iter().flat_map(|r| r.scales.iter().copied()).collect();
        let w = RowsRef::Mxfp4 { codes: &codes, scales: &scales };
        for tb in [1, 2, 3, 5, 9] {
            let raw: Vec<f32> = (0..tb * cols).map(|_| rng.random_range(-3.0..3.0)).collect(); // [tb, cols]
            let x = crate::backend::cpu::quantize_mxfp4_activations(&raw, cols);
            let acts = Acts::on_mxfp4_grid(Isa::Avx2Int16, &x, tb, cols);
            assert!(matches!(acts.avx2_mxfp4, Some(Avx2Mxfp4::Int8(_))), "cols {cols}: on the grid, int8");
            let mut got = vec![f32::NAN; nrows * tb]; // [rows, tb]
            block_dots(&acts, w, false, nrows, 0, tb, &mut got, tb);
            let int16 = Acts::new(Isa::Avx2Int16, true, &x, tb, cols);
            assert!(matches!(int16.avx2_mxfp4, Some(Avx2Mxfp4::Int16(_))));
            let mut by_int16 = vec![f32::NAN; nrows * tb]; // [rows, tb]
            block_dots(&int16, w, false, nrows, 0, tb, &mut by_int16, tb);
            for t in 0..tb {
                let xt = &x[t * cols..(t + 1) * cols];
                let alone_acts = Acts::on_mxfp4_grid(Isa::Avx2Int16, xt, 1, cols);
                let mut alone = vec![f32::NAN; nrows]; // [rows, 1]
                block_dots(&alone_acts, w, false, nrows, 0, 1, &mut alone, 1);
                for (r, row) in rows.iter().enumerate() {
                    let want: f64 = row.values.iter().zip(xt).map(|(w, &v)| w * f64::from(v)).sum();
                    let size: f64 = row.values.iter().zip(xt).map(|(w, &v)| (w * f64::from(v)).abs()).sum();
                    let tol = 1e-6 * size * (cols as f64).sqrt() + 1e-30;
                    let g = got[r * tb + t];
                    assert!((f64::from(g) - want).abs() <= tol, "cols {cols} tb {tb} row {r} token {t}: {g} vs {want}");
                    assert!(
                        (g - by_int16[r * tb + t]).abs() as f64 <= 2.0 * tol,
                        "cols {cols}: int16 gave {}",
                        by_int16[r * tb + t]
                    );
                    assert_eq!(g.to_bits(), alone[r].to_bits(), "cols {cols} tb {tb} row {r} token {t}: alone");
                }
            }
        }
        // Inputs off the grid, though the caller said otherwise, go as int16.
        let raw: Vec<f32> = (0..cols).map(|_| rng.random_range(-3.0..3.0)).collect();
        let acts = Acts::on_mxfp4_grid(Isa::Avx2Int16, &raw, 1, cols);
        assert!(cols < 32 || matches!(acts.avx2_mxfp4, Some(Avx2Mxfp4::Int16(_))), "cols {cols}: off the grid");
    }
}
