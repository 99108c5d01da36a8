//! Dot-product kernels over weights in their stored format: weight rows against tiles of
//! activation rows (`block_dots` takes a block of rows per call), each row decoded into
//! registers a block at a time and never into memory.
//!
//! Five kernel sets, chosen once at run time (the release binary runs on any x86-64):
//! AVX-512 with VNNI (MXFP4 rows as integer dot products against activations in two int8
//! terms, `int8x2`; everything else as AVX-512F), AVX-512F (16 lanes, a 16-entry E2M1 table
//! in one register), AVX2 + FMA with MXFP4 rows as integer dot products against int16
//! activations (`int16`; int8, `int8`, where a W4A4 plan has put them on the MXFP4 grid),
//! AVX2 + FMA all in f32 (8 lanes), and a portable path that is also the reference the
//! others are tested against. `KILN_CPU_ISA` (`avx512-vnni`, `avx512`,
//! `avx2-int16`, `avx2` or `portable`) picks a lower one than the CPU has, for comparisons;
//! `avx512` and `avx2` are the best all-f32 sets.
//!
//! Every token's arithmetic is the same whatever tile it falls in (its own accumulators, the
//! same block order, the same final reduction), so a request's numbers do not depend on what
//! else is in its batch.

#[cfg(target_arch = "x86_64")]
mod accumulate;
#[cfg(target_arch = "x86_64")]
mod accumulate_avx2;
pub mod aligned;
#[cfg(target_arch = "x86_64")]
mod avx2;
#[cfg(target_arch = "x86_64")]
mod avx2_int16;
#[cfg(target_arch = "x86_64")]
mod avx2_int8;
#[cfg(target_arch = "x86_64")]
mod avx2_mxfp4;
#[cfg(target_arch = "x86_64")]
mod avx512;
#[cfg(target_arch = "x86_64")]
mod hsum;
mod int16;
mod int8;
mod int8x2;
mod portable;
#[cfg(target_arch = "x86_64")]
mod vnni;
#[cfg(target_arch = "x86_64")]
mod vnni_group;
#[cfg(target_arch = "x86_64")]
mod vnni_whole;

use std::sync::OnceLock;

/// A weight row's stored bytes.
#[derive(Debug, Clone, Copy)]
pub enum RowRef<'a> {
    /// MXFP4: `codes` [cols/2] (low nibble = even element), E8M0 `scales` [cols/32].
    Mxfp4 { codes: &'a [u8], scales: &'a [u8] },
    /// bf16 [cols], little-endian.
    Bf16(&'a [u8]),
    /// f32 [cols], little-endian.
    F32(&'a [u8]),
}

impl<'a> RowRef<'a> {
    /// This row as a block of rows starting with it.
    fn as_rows(self) -> RowsRef<'a> {
        match self {
            RowRef::Mxfp4 { codes, scales } => RowsRef::Mxfp4 { codes, scales },
            RowRef::Bf16(b) => RowsRef::Bf16(b),
            RowRef::F32(b) => RowsRef::F32(b),
        }
    }
}

/// Consecutive rows of one weight, stored bytes from the first of them on.
#[derive(Debug, Clone, Copy)]
pub enum RowsRef<'a> {
    /// codes [rows, cols/2], E8M0 scales [rows, cols/32].
    Mxfp4 { codes: &'a [u8], scales: &'a [u8] },
    /// bf16 [rows, cols].
    Bf16(&'a [u8]),
    /// f32 [rows, cols].
    F32(&'a [u8]),
}

impl<'a> RowsRef<'a> {
    /// Row `r` of rows `cols` wide.
    #[inline]
    pub fn row(self, r: usize, cols: usize) -> RowRef<'a> {
        match self {
            RowsRef::Mxfp4 { codes, scales } => {
                let (cb, sb) = (cols.div_ceil(2), cols.div_ceil(32));
                RowRef::Mxfp4 { codes: &codes[r * cb..(r + 1) * cb], scales: &scales[r * sb..(r + 1) * sb] }
            }
            RowsRef::Bf16(b) => RowRef::Bf16(&b[r * cols * 2..(r + 1) * cols * 2]),
            RowsRef::F32(b) => RowRef::F32(&b[r * cols * 4..(r + 1) * cols * 4]),
        }
    }
}

/// The instruction set the kernels use.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Isa {
    Portable,
    /// AVX2 + FMA, every weight format against f32 activations.
    Avx2,
    /// AVX2 + FMA, MXFP4 rows against int16 activations (`int16`), or int8 ones on the
    /// MXFP4 grid (`int8`).
    Avx2Int16,
    Avx512,
    /// AVX-512 plus BW and VNNI: MXFP4 rows against int8 activations (`int8x2`).
    Avx512Vnni,
}

impl Isa {
    pub fn name(self) -> &'static str {
        match self {
            Isa::Portable => "portable",
            Isa::Avx2 => "avx2",
            Isa::Avx2Int16 => "avx2-int16",
            Isa::Avx512 => "avx512",
            Isa::Avx512Vnni => "avx512-vnni",
        }
    }

    /// Every instruction set this CPU can run, lowest first.
    pub fn available() -> Vec<Isa> {
        let mut v = vec![Isa::Portable];
        #[cfg(target_arch = "x86_64")]
        {
            if std::arch::is_x86_feature_detected!("avx2") && std::arch::is_x86_feature_detected!("fma") {
                v.push(Isa::Avx2);
                v.push(Isa::Avx2Int16);
            }
            if std::arch::is_x86_feature_detected!("avx512f") {
                v.push(Isa::Avx512);
                if std::arch::is_x86_feature_detected!("avx512bw") && std::arch::is_x86_feature_detected!("avx512vnni")
                {
                    v.push(Isa::Avx512Vnni);
                }
            }
        }
        v
    }

    /// Whether the AVX2 kernels (f32, or int16 for MXFP4) run.
    pub fn is_avx2(self) -> bool {
        matches!(self, Isa::Avx2 | Isa::Avx2Int16)
    }

    /// Whether the AVX-512 kernels (F, and VNNI for MXFP4) run.
    pub fn is_avx512(self) -> bool {
        self >= Isa::Avx512
    }

    /// The best this CPU has, capped by `KILN_CPU_ISA` when that names a lower one.
    pub fn current() -> Isa {
        static ISA: OnceLock<Isa> = OnceLock::new();
        *ISA.get_or_init(|| {
            let best = *Isa::available().last().expect("portable is always there");
            match std::env::var("KILN_CPU_ISA").ok().as_deref() {
                None | Some("") | Some("avx512-vnni") => best,
                Some("avx512") => best.min(Isa::Avx512),
                Some("portable") => Isa::Portable,
                Some("avx2-int16") => best.min(Isa::Avx2Int16),
                Some("avx2") => best.min(Isa::Avx2),
                Some(other) => {
                    crate::log::warn(
                        "cpu_isa",
                        format!(
                            "KILN_CPU_ISA={other:?} is not avx512-vnni, avx512, avx2-int16, avx2 or portable; using {}",
                            best.name()
                        ),
                    )
                    .emit();
                    best
                }
            }
        })
    }
}

/// Weights of at most this many bytes are taken to stay in cache (L2 and L3) from one use
/// to the next: a model whose matrices are this small (the demo model) is compute-bound,
/// and its dense rows go in register tiles even against a few tokens.
pub const CACHED_WEIGHT_BYTES: usize = 512 << 10;

/// Activation rows handled together per pass over a weight row: enough for the weight block
/// in registers to be reused, few enough that the accumulators stay in registers.
const TILE: usize = 8;

/// Activation rows x [n, cols] as the kernels read them. For MXFP4 weights on AVX-512 the
/// kernel wants each whole block of 32 as its 16 even elements and then its 16 odd ones (the
/// order a block's code bytes decode in without shuffling), so that copy is made once per
/// matmul here; the elements past the last whole block stay where they are. With VNNI,
/// MXFP4 weights meet the activations as two int8 terms (`int8x2`), on AVX2-int16 as int16
/// (`int16`) or, on the MXFP4 grid (`Acts::on_mxfp4_grid`), as int8 (`int8`), also made once
/// here. Dense rows on AVX2 read 16 bf16 weights as 8 even and 8 odd ones (`avx2::dense`),
/// so there each whole 16 of x is copied as its 8 even elements and then its 8 odd ones
/// (`bf16_split`).
pub struct Acts<'a> {
    isa: Isa,
    x: XRows<'a>,                  // [n, cols]
    int8: Option<int8x2::Int8x2>,  // [n, groups, ...], VNNI and MXFP4 only
    avx2_mxfp4: Option<Avx2Mxfp4>, // [n, blocks, 32], AVX2-int16 and MXFP4 only
    /// [n, cols], each whole 16 of a row as [8 even | 8 odd], the rest as given: AVX2 dense only.
    bf16_split: Option<aligned::Aligned<f32>>,
    pub n: usize,
    pub cols: usize,
}

impl<'a> Acts<'a> {
    /// x [n, cols] for a weight of the given kind on `isa`.
    pub fn new(isa: Isa, mxfp4: bool, x: &'a [f32], n: usize, cols: usize) -> Acts<'a> {
        assert!(x.len() >= n * cols, "Acts: x holds {} values, not [{n}, {cols}]", x.len());
        let x = &x[..n * cols];
        if mxfp4 && isa == Isa::Avx512Vnni {
            let int8 = Some(int8x2::Int8x2::new(x, n, cols));
            return Acts { isa, x: XRows::Given(x), int8, avx2_mxfp4: None, bf16_split: None, n, cols };
        }
        if mxfp4 && isa == Isa::Avx2Int16 {
            let avx2_mxfp4 = Some(Avx2Mxfp4::Int16(int16::Int16Acts::new(x, n, cols)));
            return Acts { isa, x: XRows::Given(x), int8: None, avx2_mxfp4, bf16_split: None, n, cols };
        }
        let x = if mxfp4 && isa == Isa::Avx512 {
            XRows::Copied(split_even_odd(x, cols, 32))
        } else if isa != Isa::Portable && !(x.as_ptr() as usize).is_multiple_of(64) {
            // The SIMD kernels' vector loads each span two cache lines from a misaligned
            // start (see `aligned`); the copy is one pass over x, the kernels make many.
            XRows::Copied(aligned::Aligned::copy_of(x))
        } else {
            XRows::Given(x)
        };
        let bf16_split = (isa.is_avx2() && !mxfp4).then(|| split_even_odd(x.deref_rows(), cols, 16));
        Acts { isa, x, int8: None, avx2_mxfp4: None, bf16_split, n, cols }
    }

    /// x [n, cols] on the MXFP4 grid (a W4A4 plan's input to MXFP4 weights) for MXFP4
    /// weights on `isa`. The AVX2 kernel takes such inputs as int8, which holds them
    /// exactly; an input that turns out not to be on the grid goes as `new` makes it. The
    /// choice is the plan's, not the batch's, so a token's numbers stay those of its own.
    pub fn on_mxfp4_grid(isa: Isa, x: &'a [f32], n: usize, cols: usize) -> Acts<'a> {
        assert!(x.len() >= n * cols, "Acts: x holds {} values, not [{n}, {cols}]", x.len());
        let x = &x[..n * cols];
        if isa == Isa::Avx2Int16
            && let Some(q) = int8::Int8Acts::on_grid(x, n, cols)
        {
            let avx2_mxfp4 = Some(Avx2Mxfp4::Int8(q));
            return Acts { isa, x: XRows::Given(x), int8: None, avx2_mxfp4, bf16_split: None, n, cols };
        }
        Acts::new(isa, true, x, n, cols)
    }

    /// Rows [t0, t0 + len) in the kernel's layout.
    fn rows(&self, t0: usize, len: usize) -> &[f32] {
        &self.x.deref_rows()[t0 * self.cols..(t0 + len) * self.cols]
    }

    /// Rows [t0, t0 + len) as the dense kernel reads them against bf16 rows or others.
    fn dense_rows(&self, bf16: bool, t0: usize, len: usize) -> &[f32] {
        match &self.bf16_split {
            Some(split) if bf16 => &split[t0 * self.cols..(t0 + len) * self.cols],
            _ => self.rows(t0, len),
        }
    }
}

/// x [n, cols] with each whole `width` of a row as its even elements, then its odd ones; the
/// elements past the last whole `width` stay where they are.
fn split_even_odd(x: &[f32], cols: usize, width: usize) -> aligned::Aligned<f32> {
    let mut split = aligned::Aligned::copy_of(x);
    let half = width / 2;
    for (row, src) in split.chunks_mut(cols).zip(x.chunks(cols)) {
        for (blk, s) in row.chunks_exact_mut(width).zip(src.chunks_exact(width)) {
            for i in 0..half {
                blk[i] = s[2 * i];
                blk[half + i] = s[2 * i + 1];
            }
        }
    }
    split
}

/// MXFP4 activations for the AVX2 kernel (`avx2_mxfp4`): int16, or int8 on the MXFP4 grid.
enum Avx2Mxfp4 {
    Int16(int16::Int16Acts),
    Int8(int8::Int8Acts),
}

/// The activation rows a kernel reads: the caller's, or a copy (aligned, reordered).
enum XRows<'a> {
    Given(&'a [f32]),
    Copied(aligned::Aligned<f32>),
}

impl XRows<'_> {
    fn deref_rows(&self) -> &[f32] {
        match self {
            XRows::Given(x) => x,
            XRows::Copied(x) => x,
        }
    }
}

/// One weight row's dot products with each of n activation rows, x [n, cols] -> out [n], on a
/// given instruction set (tests compare them); `isa` must be available.
pub fn row_dots_on(isa: Isa, w: RowRef<'_>, x: &[f32], cols: usize, out: &mut [f32]) {
    let acts = Acts::new(isa, matches!(w, RowRef::Mxfp4 { .. }), x, out.len(), cols);
    acts_dots(&acts, w, 0, out);
}

/// One weight row against activation rows [t0, t0 + out.len()) -> out, in tiles of TILE
/// tokens that share each decoded block of the row.
pub fn acts_dots(acts: &Acts<'_>, w: RowRef<'_>, t0: usize, out: &mut [f32]) {
    let cols = acts.cols;
    assert!(t0 + out.len() <= acts.n, "acts_dots: tokens {t0}..{} of {}", t0 + out.len(), acts.n);
    check_row(&w, cols);
    if acts.isa.is_avx512() || (acts.avx2_mxfp4.is_some() && matches!(w, RowRef::Mxfp4 { .. })) {
        // The AVX-512 and AVX2 MXFP4 kernels tile tokens themselves.
        let n = out.len();
        return block_dots(acts, w.as_rows(), false, 1, t0, n, out, n);
    }
    for (t, o) in (0..out.len()).step_by(TILE).zip(out.chunks_mut(TILE)) {
        let xs = acts.dense_rows(matches!(w, RowRef::Bf16(_)), t0 + t, o.len());
        match acts.isa {
            #[cfg(target_arch = "x86_64")]
            // SAFETY: `Isa::available` listed AVX2 and FMA before anyone could ask for them;
            // the row was checked against cols and xs holds o.len() rows.
            Isa::Avx2 | Isa::Avx2Int16 => unsafe { avx2::row_dots(w, xs, cols, o) },
            _ => portable::row_dots(w, xs, cols, o),
        }
    }
}

/// `nrows` rows of one weight against activation rows [t0, t0 + tb) ->
/// out[r * ostride + t]: `acts_dots` for each row, in one call (a decode step's rows are
/// short, and a call per row costs as much as the row). `cached`: the weight is small enough
/// to stay in cache between uses (see `CACHED_WEIGHT_BYTES`), so its rows are not prefetched
/// nor read as far-apart streams.
#[allow(clippy::too_many_arguments)]
pub fn block_dots(
    acts: &Acts<'_>,
    w: RowsRef<'_>,
    cached: bool,
    nrows: usize,
    t0: usize,
    tb: usize,
    out: &mut [f32],
    ostride: usize,
) {
    let cols = acts.cols;
    assert!(t0 + tb <= acts.n, "block_dots: tokens {t0}..{} of {}", t0 + tb, acts.n);
    assert!(nrows == 0 || out.len() >= (nrows - 1) * ostride + tb, "block_dots: out too short");
    match w {
        RowsRef::Mxfp4 { codes, scales } => assert!(
            codes.len() >= nrows * cols.div_ceil(2) && scales.len() >= nrows * cols.div_ceil(32),
            "block_dots: short MXFP4 rows"
        ),
        RowsRef::Bf16(b) => assert!(b.len() >= nrows * cols * 2, "block_dots: short bf16 rows"),
        RowsRef::F32(b) => assert!(b.len() >= nrows * cols * 4, "block_dots: short f32 rows"),
    }
    #[cfg(target_arch = "x86_64")]
    if let (Some(q), RowsRef::Mxfp4 { codes, scales }) = (&acts.int8, w) {
        // SAFETY: `int8` is made only for Isa::Avx512Vnni, which `Isa::available` listed
        // after checking AVX-512F, BW and VNNI; rows and buffers were checked above.
        unsafe { vnni::block_dots(codes, scales, nrows, q, acts.rows(0, acts.n), t0, tb, cols, out, ostride) };
        return;
    }
    #[cfg(target_arch = "x86_64")]
    if let (Some(a), RowsRef::Mxfp4 { codes, scales }) = (&acts.avx2_mxfp4, w) {
        let x = acts.rows(t0, tb);
        // SAFETY (both): `avx2_mxfp4` is made only for Isa::Avx2Int16, which
        // `Isa::available` listed after checking AVX2 and FMA; rows and buffers were checked
        // above.
        match a {
            Avx2Mxfp4::Int16(a) => unsafe {
                avx2_mxfp4::block_dots(codes, scales, nrows, a, x, t0, tb, cols, out, ostride)
            },
            Avx2Mxfp4::Int8(a) => unsafe {
                avx2_mxfp4::block_dots(codes, scales, nrows, a, x, t0, tb, cols, out, ostride)
            },
        }
        return;
    }
    let xs = acts.dense_rows(matches!(w, RowsRef::Bf16(_)), t0, tb);
    match (acts.isa, w) {
        #[cfg(target_arch = "x86_64")]
        // SAFETY: `Isa::available` listed AVX-512F before anyone could ask for it; rows and
        // buffers were checked above.
        (Isa::Avx512 | Isa::Avx512Vnni, _) => unsafe {
            avx512::block_dots(w, nrows, xs, tb, cols, out, ostride, cached)
        },
        #[cfg(target_arch = "x86_64")]
        // SAFETY (both): `Isa::available` listed AVX2 and FMA before anyone could ask for
        // them; rows and buffers were checked above.
        (Isa::Avx2 | Isa::Avx2Int16, RowsRef::Bf16(b)) => unsafe {
            avx2::dense_block_dots::<true>(b, nrows, xs, tb, cols, out, ostride, !cached)
        },
        #[cfg(target_arch = "x86_64")]
        (Isa::Avx2 | Isa::Avx2Int16, RowsRef::F32(b)) => unsafe {
            avx2::dense_block_dots::<false>(b, nrows, xs, tb, cols, out, ostride, !cached)
        },
        _ => {
            for r in 0..nrows {
                acts_dots(acts, w.row(r, cols), t0, &mut out[r * ostride..r * ostride + tb]);
            }
        }
    }
}

/// out[t, :] += sum over r < nrows of coef(t, r) * row r of `w`, for t < n, where
/// coef(t, r) = coefs[t * cstride + r]; out is [n, cols]. (x W for a weight stored as
/// W's rows: MLA's query absorption through kv_b.) Rows are added in order, so a token's
/// result does not depend on n.
pub fn accumulate_rows(w: RowsRef<'_>, nrows: usize, cols: usize, coefs: &[f32], cstride: usize, out: &mut [f32]) {
    let n = out.len() / cols.max(1);
    assert!(n == 0 || coefs.len() >= (n - 1) * cstride + nrows, "accumulate_rows: coefs too short");
    #[cfg(target_arch = "x86_64")]
    let isa = Isa::current();
    #[cfg(target_arch = "x86_64")]
    if (isa.is_avx512() || isa.is_avx2()) && !matches!(w, RowsRef::Mxfp4 { .. }) {
        for r in 0..nrows {
            check_row(&w.row(r, cols), cols);
        }
        // SAFETY: AVX-512F (or AVX2 and FMA) is current only where the CPU has it; rows
        // checked above, out is [n, cols] and coefs reach every (t, r).
        unsafe {
            match (isa.is_avx512(), w) {
                (true, _) => accumulate::accumulate_rows(w, nrows, cols, coefs, cstride, out),
                (false, RowsRef::Bf16(b)) => {
                    accumulate_avx2::accumulate_rows::<true>(b, nrows, cols, coefs, cstride, out)
                }
                (false, RowsRef::F32(b)) => {
                    accumulate_avx2::accumulate_rows::<false>(b, nrows, cols, coefs, cstride, out)
                }
                (false, RowsRef::Mxfp4 { .. }) => {} // not taken: dense rows only
            }
        }
        return;
    }
    let mut row = vec![0.0f32; cols]; // [cols], row r decoded
    for r in 0..nrows {
        decode_range(w.row(r, cols), 0, &mut row);
        for (t, o) in out.chunks_mut(cols).enumerate() {
            let c = coefs[t * cstride + r];
            for (a, b) in o.iter_mut().zip(&row) {
                *a += c * b;
            }
        }
    }
}

fn check_row(w: &RowRef<'_>, cols: usize) {
    match w {
        RowRef::Mxfp4 { codes, scales } => {
            assert!(codes.len() >= cols.div_ceil(2) && scales.len() >= cols.div_ceil(32), "short MXFP4 row")
        }
        RowRef::Bf16(b) => assert!(b.len() >= cols * 2, "short bf16 row"),
        RowRef::F32(b) => assert!(b.len() >= cols * 4, "short f32 row"),
    }
}

/// a . b over f32 slices of the same length.
#[inline]
pub fn dot(a: &[f32], b: &[f32]) -> f32 {
    let n = a.len().min(b.len());
    let (a, b) = (&a[..n], &b[..n]);
    match Isa::current() {
        #[cfg(target_arch = "x86_64")]
        // SAFETY: as in row_dots_on.
        Isa::Avx512 | Isa::Avx512Vnni => unsafe { avx512::dot(a, b) },
        #[cfg(target_arch = "x86_64")]
        // SAFETY: as in row_dots_on.
        Isa::Avx2 | Isa::Avx2Int16 => unsafe { avx2::dot(a, b) },
        _ => portable::dot(a, b),
    }
}

/// Elements [c0, c0 + out.len()) of a weight row as f32 (c0 a multiple of 32 for MXFP4).
pub fn decode_range(w: RowRef<'_>, c0: usize, out: &mut [f32]) {
    match w {
        RowRef::Mxfp4 { codes, scales } => crate::weights::decode::mxfp4_row(&codes[c0 / 2..], &scales[c0 / 32..], out),
        RowRef::Bf16(b) => {
            for (o, c) in out.iter_mut().zip(b[c0 * 2..].chunks_exact(2)) {
                *o = f32::from_bits(u32::from(u16::from_le_bytes([c[0], c[1]])) << 16);
            }
        }
        RowRef::F32(b) => {
            for (o, c) in out.iter_mut().zip(b[c0 * 4..].chunks_exact(4)) {
                *o = f32::from_le_bytes([c[0], c[1], c[2], c[3]]);
            }
        }
    }
}

/// Bytes of one stored value of a dense row: bf16 or f32.
const fn value_bytes<const BF16: bool>() -> usize {
    if BF16 { 2 } else { 4 }
}

/// Element `c` of a dense row: bf16 (widened by a shift) or f32.
#[inline]
fn dense_scalar<const BF16: bool>(w: &[u8], c: usize) -> f32 {
    if BF16 {
        f32::from_bits(u32::from(u16::from_le_bytes([w[2 * c], w[2 * c + 1]])) << 16)
    } else {
        f32::from_le_bytes([w[4 * c], w[4 * c + 1], w[4 * c + 2], w[4 * c + 3]])
    }
}

/// E2M1 values by 4-bit code (bit 3 the sign), the table the SIMD paths permute.
const E2M1_SIGNED: [f32; 16] = [0.0, 0.5, 1.0, 1.5, 2.0, 3.0, 4.0, 6.0, -0.0, -0.5, -1.0, -1.5, -2.0, -3.0, -4.0, -6.0];

/// The tail of an MXFP4 row past its last whole block of 32: elements [32 * blocks, cols)
/// against x, summed in element order.
fn mxfp4_tail(codes: &[u8], scales: &[u8], x: &[f32], cols: usize) -> f32 {
    let start = cols / 32 * 32;
    if start == cols {
        return 0.0;
    }
    let s = crate::weights::decode::e8m0(scales[cols / 32]);
    let mut sum = 0.0f32;
    for (i, xv) in x[start..cols].iter().enumerate() {
        let b = codes[(start + i) / 2];
        let code = if (start + i).is_multiple_of(2) { b & 0x0F } else { b >> 4 };
        sum += E2M1_SIGNED[code as usize] * s * xv;
    }
    sum
}

#[cfg(test)]
mod tests;
