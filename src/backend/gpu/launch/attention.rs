//! Launches of the attention kernels: RoPE, KV and indexer-key writes into the paged store,
//! indexer scores and top-k, absorbed MLA decode and its two ends through kv_b.

use super::*;

/// x [rows, heads, stride] rotated in place on dims [offset, offset + rot) of each head at
/// positions [rows].
#[allow(clippy::too_many_arguments)]
pub fn rope(
    gpu: &Gpu,
    x: &Buffer,
    positions: &Buffer,
    inv_freq: &Buffer,
    rows: usize,
    heads: usize,
    stride: usize,
    offset: usize,
    rot: usize,
) -> Result<()> {
    const K: &str = "kiln_rope_interleaved_f32";
    if offset + rot > stride {
        return Err(refused(format!("{K}: dims beyond the head")));
    }
    f32s(x, rows * heads * stride, "x", K)?;
    i32s(positions, rows, "positions", K)?;
    f32s(inv_freq, rot / 2, "inv_freq", K)?;
    let args =
        KernelArgs::new().buf(x).buf(positions).buf(inv_freq).int(rows).int(heads).int(stride).int(offset).int(rot);
    // SAFETY: kiln_rope_interleaved_f32(float* x, const int* positions, const float* inv_freq,
    // int rows, int heads, int stride, int offset, int rot); one thread per (row, head, pair).
    unsafe { gpu.launch(K, flat(rows * heads * rot / 2), args) }
}

/// Where a layer's entries live: `slots` entries of `entry` bytes.
pub struct Paged<'a> {
    pub store: &'a Buffer,
    pub slots: usize,
    pub entry: usize,
}

impl Paged<'_> {
    fn check(&self, kernel: &str) -> Result<()> {
        need(self.store, self.slots, self.entry, "the KV store", kernel)
    }
}

/// latent [n, r], rope [n, dr] into the entries at slots [n].
#[allow(clippy::too_many_arguments)]
pub fn kv_write(
    gpu: &Gpu,
    format: KvFormat,
    latent: &Buffer,
    rope: &Buffer,
    slots: &Buffer,
    kv: &Paged,
    n: usize,
    r: usize,
    dr: usize,
) -> Result<()> {
    let k = match format {
        KvFormat::F32 => "kiln_kv_write_f32",
        KvFormat::Bf16 => "kiln_kv_write_bf16",
        KvFormat::Fp8E4m3 => "kiln_kv_write_fp8",
    };
    f32s(latent, n * r, "latent", k)?;
    f32s(rope, n * dr, "rope", k)?;
    i32s(slots, n, "slots", k)?;
    kv.check(k)?;
    let args = KernelArgs::new().buf(latent).buf(rope).buf(slots).buf(kv.store).int(r).int(dr).int(kv.entry);
    // SAFETY: kiln_kv_write_{f32,bf16,fp8}(const float* latent, const float* rope, const int*
    // slots, uint8_t* kv, int r, int dr, int entry); one block per token; slots come from the
    // page table, within the store.
    unsafe { gpu.launch(k, Launch::new(Dim3::x(count(n)), Dim3::x(KV_BLOCK as u32)), args) }
}

/// key [n, di] into the indexer entries at slots [n].
pub fn index_write(
    gpu: &Gpu,
    format: KvFormat,
    key: &Buffer,
    slots: &Buffer,
    keys: &Paged,
    n: usize,
    di: usize,
) -> Result<()> {
    let k = match format {
        KvFormat::F32 => "kiln_index_write_f32",
        KvFormat::Bf16 => "kiln_index_write_bf16",
        KvFormat::Fp8E4m3 => "kiln_index_write_fp8",
    };
    f32s(key, n * di, "key", k)?;
    i32s(slots, n, "slots", k)?;
    keys.check(k)?;
    let args = KernelArgs::new().buf(key).buf(slots).buf(keys.store).int(di).int(keys.entry);
    // SAFETY: kiln_index_write_*(const float* key, const int* slots, uint8_t* keys, int di, int
    // entry); one block per token.
    unsafe { gpu.launch(k, Launch::new(Dim3::x(count(n)), Dim3::x(KV_BLOCK as u32)), args) }
}

/// Each query's page table and visible length.
pub struct Tables<'a> {
    pub pages: &'a Buffer, // [T, max_pages] i32
    pub lens: &'a Buffer,  // [T] i32
    pub page: usize,
    pub max_pages: usize,
}

impl Tables<'_> {
    fn check(&self, t: usize, kernel: &str) -> Result<()> {
        i32s(self.pages, t * self.max_pages, "pages", kernel)?;
        i32s(self.lens, t, "lens", kernel)
    }
}

/// Indexer scores of queries q [T, hi, di] with head weights w [T, hi] over each one's keys
/// -> scores [T, stride] (positions at or past its length are -inf); stride >= every length.
#[allow(clippy::too_many_arguments)]
pub fn indexer_scores(
    gpu: &Gpu,
    format: KvFormat,
    q: &Buffer,
    w: &Buffer,
    keys: &Paged,
    tables: &Tables,
    scores: &Buffer,
    t: usize,
    hi: usize,
    di: usize,
    stride: usize,
    dot_scale: f32,
) -> Result<()> {
    let k = match format {
        KvFormat::F32 => "kiln_indexer_scores_f32",
        KvFormat::Bf16 => "kiln_indexer_scores_bf16",
        KvFormat::Fp8E4m3 => "kiln_indexer_scores_fp8",
    };
    if hi * di > 8192 {
        return Err(refused(format!("{k}: {hi} x {di} query beyond 8192")));
    }
    f32s(q, t * hi * di, "q", k)?;
    f32s(w, t * hi, "w", k)?;
    f32s(scores, t * stride, "scores", k)?;
    keys.check(k)?;
    tables.check(t, k)?;
    let args = KernelArgs::new()
        .buf(q)
        .buf(w)
        .buf(keys.store)
        .buf(tables.pages)
        .buf(tables.lens)
        .buf(scores)
        .int(hi)
        .int(di)
        .int(keys.entry)
        .int(tables.page)
        .int(tables.max_pages)
        .int(stride)
        .f32(dot_scale);
    // SAFETY: kiln_indexer_scores_*(const float* q, const float* w, const uint8_t* keys, const
    // int* pages, const int* lens, float* scores, int hi, int di, int entry, int page, int
    // max_pages, int stride, float dot_scale); grid (T, ceil(stride / 256)), one key a thread.
    unsafe { gpu.launch(k, Launch::new(Dim3::xy(count(t), grid(stride, BLOCK)), Dim3::x(BLOCK as u32)), args) }
}

/// The `k` first positions of each row of scores [T, stride] under the ranking rule ->
/// idx [T, k] (unused = -1); rows no longer than k keep every position.
pub fn top_k(gpu: &Gpu, scores: &Buffer, lens: &Buffer, idx: &Buffer, t: usize, stride: usize, k: usize) -> Result<()> {
    const K: &str = "kiln_topk_f32";
    f32s(scores, t * stride, "scores", K)?;
    i32s(lens, t, "lens", K)?;
    i32s(idx, t * k, "idx", K)?;
    let args = KernelArgs::new().buf(scores).buf(lens).buf(idx).int(stride).int(k);
    // SAFETY: kiln_topk_f32(const float* scores, const int* lens, int* idx, int stride, int k);
    // one block per row; lens <= stride (the caller sizes stride to the longest).
    unsafe { gpu.launch(K, per_row(t), args) }
}

/// Absorbed MLA attention: q_abs [T, H, r], q_rope [T, H, dr] over each query's keys (its
/// selection sel [T, topk] of positions, or every visible key) -> out [T, H, r].
pub struct Attention<'a> {
    pub q_abs: &'a Buffer,
    pub q_rope: &'a Buffer,
    pub sel: Option<(&'a Buffer, usize)>,
    pub out: &'a Buffer,
    pub t: usize,
    pub heads: usize,
    pub r: usize,
    pub dr: usize,
    pub scale: f32,
}

pub fn mla_decode(gpu: &Gpu, format: KvFormat, a: &Attention, kv: &Paged, tables: &Tables) -> Result<()> {
    let k = match format {
        KvFormat::F32 => "kiln_mla_decode_f32",
        KvFormat::Bf16 => "kiln_mla_decode_bf16",
        KvFormat::Fp8E4m3 => "kiln_mla_decode_fp8",
    };
    if a.r > 1024 || a.dr > 128 {
        return Err(refused(format!("{k}: r {} > 1024 or dr {} > 128", a.r, a.dr)));
    }
    f32s(a.q_abs, a.t * a.heads * a.r, "q_abs", k)?;
    f32s(a.q_rope, a.t * a.heads * a.dr, "q_rope", k)?;
    f32s(a.out, a.t * a.heads * a.r, "out", k)?;
    kv.check(k)?;
    tables.check(a.t, k)?;
    let topk = match a.sel {
        Some((sel, topk)) => {
            i32s(sel, a.t * topk, "sel", k)?;
            topk
        }
        None => 0,
    };
    let args = KernelArgs::new()
        .buf(a.q_abs)
        .buf(a.q_rope)
        .buf(kv.store)
        .buf(tables.pages)
        .buf(tables.lens)
        .buf_or_null(a.sel.map(|s| s.0))
        .buf(a.out)
        .int(a.heads)
        .int(a.r)
        .int(a.dr)
        .int(kv.entry)
        .int(tables.page)
        .int(tables.max_pages)
        .int(topk)
        .f32(a.scale);
    // SAFETY: kiln_mla_decode_*(const float* q_abs, const float* q_rope, const uint8_t* kv,
    // const int* pages, const int* lens, const int* sel, float* out, int heads, int r, int dr,
    // int entry, int page, int max_pages, int topk, float scale); grid (T, H), block 256.
    unsafe { gpu.launch(k, Launch::new(Dim3::xy(count(a.t), count(a.heads)), Dim3::x(BLOCK as u32)), args) }
}

/// kv_b [H * (nope + v), r] in its stored format.
pub struct KvB<'a> {
    pub w: WeightView<'a>,
    pub heads: usize,
    pub nope: usize,
    pub rope: usize,
    pub v: usize,
    pub r: usize,
}

impl KvB<'_> {
    /// (absorb symbol, expand symbol, codes or elements, MXFP4 scales, bytes of w).
    fn parts(&self) -> (&'static str, &'static str, &Buffer, Option<&Buffer>, usize) {
        let elems = self.heads * (self.nope + self.v) * self.r;
        match self.w {
            WeightView::Dense { format: Dense::Bf16, w } => {
                ("kiln_absorb_q_bf16", "kiln_expand_v_bf16", w, None, elems * 2)
            }
            WeightView::Dense { format: Dense::F32, w } => {
                ("kiln_absorb_q_f32", "kiln_expand_v_f32", w, None, elems * 4)
            }
            WeightView::Mxfp4 { codes, scales } => {
                ("kiln_absorb_q_mxfp4", "kiln_expand_v_mxfp4", codes, Some(scales), elems / 2)
            }
        }
    }
}

/// q [n, H, nope + rope] -> q_abs [n, H, r] through kv_b's key half.
pub fn absorb_q(gpu: &Gpu, kv_b: &KvB, q: &Buffer, q_abs: &Buffer, n: usize) -> Result<()> {
    let (sym, _, w, scales, bytes) = kv_b.parts();
    need(w, bytes, 1, "kv_b", sym)?;
    f32s(q, n * kv_b.heads * (kv_b.nope + kv_b.rope), "q", sym)?;
    f32s(q_abs, n * kv_b.heads * kv_b.r, "q_abs", sym)?;
    let args = KernelArgs::new()
        .buf(w)
        .buf_or_null(scales)
        .buf(q)
        .buf(q_abs)
        .int(n)
        .int(kv_b.heads)
        .int(kv_b.nope)
        .int(kv_b.rope)
        .int(kv_b.v)
        .int(kv_b.r);
    // SAFETY: kiln_absorb_q_*(const void* w, const uint8_t* scales, const float* q, float*
    // q_abs, int n, int heads, int nope, int rope, int v, int r); one thread per output.
    unsafe { gpu.launch(sym, flat(n * kv_b.heads * kv_b.r), args) }
}

/// o_lat [n, H, r] -> out [n, H, v] through kv_b's value half.
pub fn expand_v(gpu: &Gpu, kv_b: &KvB, o_lat: &Buffer, out: &Buffer, n: usize) -> Result<()> {
    let (_, sym, w, scales, bytes) = kv_b.parts();
    need(w, bytes, 1, "kv_b", sym)?;
    f32s(o_lat, n * kv_b.heads * kv_b.r, "o_lat", sym)?;
    f32s(out, n * kv_b.heads * kv_b.v, "out", sym)?;
    let args = KernelArgs::new()
        .buf(w)
        .buf_or_null(scales)
        .buf(o_lat)
        .buf(out)
        .int(n)
        .int(kv_b.heads)
        .int(kv_b.nope)
        .int(kv_b.v)
        .int(kv_b.r);
    // SAFETY: kiln_expand_v_*(const void* w, const uint8_t* scales, const float* o_lat, float*
    // out, int n, int heads, int nope, int v, int r); one thread per output.
    unsafe { gpu.launch(sym, flat(n * kv_b.heads * kv_b.v), args) }
}
