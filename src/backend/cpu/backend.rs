//! The CPU backend: the ops of the forward in f32 over weights kept in their checkpoint
//! format (read in place by the kernels of `kernels/`, never expanded), with the KV store in
//! host memory, its entries also read in place. Every token is computed on its own (no
//! reduction spans tokens, and the kernels give a token the same arithmetic in any tile), so
//! a request's numbers do not depend on what else is in its batch.

use rayon::prelude::*;

use super::kernels::aligned::Aligned;
use super::kernels::{Acts, Isa, accumulate_rows, block_dots};
use super::matmul::rows_ref;
use super::{
    HostKvStore, KeySelection, KeySet, Route, RouterConfig, Routing, attend_heads, dot, layer_norm_rows, matmul,
    matmul_many, rms_norm_rows,
    rope::{rotate_by, sin_cos},
    routing, score_span, silu_mul, softmax, span_part, span_scores, top_k_into,
};
use crate::backend::{Backend, MlaDims, MlpLinears, Selection, StepBatch};
use crate::error::{Error, Result};
use crate::kv::{KvFormat, KvGeometry, PageCopy, PageId};
use crate::weights::Linear;

/// The CPU backend (rayon's global pool does the threading).
#[derive(Debug, Clone, Copy, Default)]
pub struct Cpu;

/// Rows of f32: [n, width], row-major.
#[derive(Debug, Clone, PartialEq)]
pub struct Rows {
    pub width: usize,
    pub data: Vec<f32>,
}

impl Rows {
    pub fn new(data: Vec<f32>, width: usize) -> Rows {
        debug_assert!(width == 0 || data.len().is_multiple_of(width));
        Rows { width, data }
    }

    pub fn n(&self) -> usize {
        self.data.len().checked_div(self.width).unwrap_or(0)
    }

    pub fn row(&self, i: usize) -> &[f32] {
        &self.data[i * self.width..(i + 1) * self.width]
    }
}

/// Keys an indexer span holds at least (unless its sequence has fewer): a page or more, so
/// that each kernel call over a run of consecutive slots is long.
const SPAN_MIN_KEYS: usize = 64;
/// Multiply-adds per indexer span beyond the one each thread gets: a span is then long
/// against the cost of handing it to a thread.
const SPAN_WORK: usize = 1 << 21;

/// A step as the CPU ops read it: each token's id, position, sequence and own slot, and the
/// sequences' page tables one after the other (one buffer, not one per sequence: a decode
/// batch has a sequence per token).
pub struct CpuBatch {
    pub tokens: Vec<u32>,      // [N]
    pub positions: Vec<usize>, // [N]
    pub seq: Vec<usize>,       // [N] each token's sequence
    pub slots: Vec<usize>,     // [N] each token's own entry
    pages: Vec<PageId>,        // [every sequence's pages]
    page_start: Vec<usize>,    // [S + 1]: sequence s's table is pages[page_start[s]..page_start[s + 1]]
    page_size: usize,
}

impl CpuBatch {
    fn new(b: &StepBatch) -> CpuBatch {
        let mut page_start = Vec::with_capacity(b.page_tables.len() + 1);
        page_start.push(0);
        for t in &b.page_tables {
            page_start.push(page_start.last().copied().unwrap_or(0) + t.len());
        }
        let mut pages = Vec::with_capacity(page_start.last().copied().unwrap_or(0));
        for t in &b.page_tables {
            pages.extend_from_slice(t);
        }
        CpuBatch {
            tokens: b.tokens.clone(),
            positions: b.positions.clone(),
            seq: b.seq.clone(),
            slots: b.slots(),
            pages,
            page_start,
            page_size: b.page_size,
        }
    }

    /// Tokens in the step.
    fn len(&self) -> usize {
        self.tokens.len()
    }

    /// Sequences in the step.
    fn sequences(&self) -> usize {
        self.page_start.len() - 1
    }

    /// The slot of position `pos` in the sequence of token `i`.
    fn slot(&self, i: usize, pos: usize) -> usize {
        let table = &self.pages[self.page_start[self.seq[i]]..self.page_start[self.seq[i] + 1]];
        table[pos / self.page_size] as usize * self.page_size + pos % self.page_size
    }

    /// Slots of positions `positions` in the sequence of token `i`.
    fn slots_of(&self, i: usize, positions: &[usize]) -> Vec<usize> {
        positions.iter().map(|&p| self.slot(i, p)).collect()
    }

    /// Slots of the keys token `i` at `pos` attends to under `sel`, written to the front of
    /// `out` (at least `sel.key_count(i, pos)` long); how many.
    fn slots_into(&self, i: usize, sel: &KeySelection, pos: usize, out: &mut [usize]) -> usize {
        let mut count = 0;
        let mut put = |p: usize| {
            out[count] = self.slot(i, p);
            count += 1;
        };
        match sel.row(i) {
            None => (0..=pos).for_each(&mut put),
            Some(set) => set.iter().map(|&t| t as usize).filter(|&t| t <= pos).for_each(&mut put),
        }
        count
    }
}

/// Maps `f` over 0..n items of `work_each` multiply-adds each, in parallel when there is more
/// than one item and enough work to share.
fn par_map<T: Send>(n: usize, work_each: usize, f: impl Fn(usize) -> T + Sync + Send) -> Vec<T> {
    if splits(n, work_each) { (0..n).into_par_iter().map(f).collect() } else { (0..n).map(f).collect() }
}

/// Whether `par_map` runs n items of `work_each` multiply-adds in parallel.
fn splits(n: usize, work_each: usize) -> bool {
    n >= 2 && n * work_each >= super::PARALLEL_MIN_WORK
}

/// Per-head results [H][n, w] as rows [n, H * w].
fn interleave_heads(per_head: &[Aligned<f32>], n: usize, w: usize) -> Rows {
    let h = per_head.len();
    let mut out = vec![0.0f32; n * h * w]; // [n, H, w]
    for (head, part) in per_head.iter().enumerate() {
        for t in 0..n {
            out[(t * h + head) * w..(t * h + head + 1) * w].copy_from_slice(&part[t * w..(t + 1) * w]);
        }
    }
    Rows::new(out, h * w)
}

fn shape_error(what: String) -> Error {
    Error::Usage(format!("CPU backend: {what}"))
}

impl Backend for Cpu {
    type Tensor = Rows;
    type Weight = Linear;
    type Vector = Vec<f32>;
    type Experts = Vec<MlpLinears>;
    type KvStore = HostKvStore;
    type Batch = CpuBatch;
    type Selection = KeySelection;
    type Routing = Routing;

    fn describe(&self) -> String {
        format!("CPU ({} threads)", rayon::current_num_threads())
    }

    fn both<RA: Send, RB: Send>(&self, a: impl FnOnce() -> RA + Send, b: impl FnOnce() -> RB + Send) -> (RA, RB) {
        rayon::join(a, b)
    }

    fn weight(&self, w: Linear) -> Result<Linear> {
        Ok(w)
    }

    fn vector(&self, v: Vec<f32>) -> Result<Vec<f32>> {
        Ok(v)
    }

    fn experts(&self, experts: Vec<MlpLinears>) -> Result<Vec<MlpLinears>> {
        Ok(experts)
    }

    fn kv_store(&self, format: KvFormat, geometry: KvGeometry, slots: usize) -> Result<HostKvStore> {
        Ok(HostKvStore::new(format, geometry, slots))
    }

    fn kv_grow(&self, kv: &mut HostKvStore, slots: usize) -> Result<()> {
        kv.grow(slots);
        Ok(())
    }

    fn kv_copy_page(&self, kv: &mut HostKvStore, copy: PageCopy, page_size: usize) -> Result<()> {
        kv.copy_page(copy, page_size);
        Ok(())
    }

    fn batch(&self, b: &StepBatch) -> Result<CpuBatch> {
        // A step starts: keep the other workers from falling asleep between its ops.
        super::warm::keep_warm();
        Ok(CpuBatch::new(b))
    }

    fn upload(&self, rows: Vec<f32>, width: usize) -> Result<Rows> {
        if width == 0 || !rows.len().is_multiple_of(width) {
            return Err(shape_error(format!("{} values are not rows of {width}", rows.len())));
        }
        Ok(Rows::new(rows, width))
    }

    fn download(&self, t: &Rows) -> Result<Vec<f32>> {
        Ok(t.data.clone())
    }

    fn gather(&self, t: &Rows, rows: &[usize]) -> Result<Rows> {
        let mut data = Vec::with_capacity(rows.len() * t.width);
        for &r in rows {
            data.extend_from_slice(t.row(r));
        }
        Ok(Rows::new(data, t.width))
    }

    fn read_selection(&self, s: &KeySelection) -> Result<Selection> {
        Ok(s.to_selection())
    }

    fn read_routing(&self, r: &Routing) -> Result<Vec<Route>> {
        Ok(r.to_routes())
    }

    fn argmax(&self, t: &Rows) -> Result<Vec<u32>> {
        Ok(t.data.chunks(t.width.max(1)).map(super::arg_first).collect())
    }

    fn embed(&self, table: &Linear, b: &CpuBatch) -> Result<Rows> {
        let d = table.cols;
        let mut h = vec![0.0f32; b.len() * d]; // [N, D]
        for (row, &t) in h.chunks_mut(d).zip(&b.tokens) {
            table.row_into(t as usize, row);
        }
        Ok(Rows::new(h, d))
    }

    fn rms_norm(&self, x: &Rows, w: &Vec<f32>, eps: f32) -> Result<Rows> {
        let mut y = x.clone();
        rms_norm_rows(&mut y.data, w, eps);
        Ok(y)
    }

    fn layer_norm(&self, x: &Rows, w: &Vec<f32>, bias: &Vec<f32>, eps: f32) -> Result<Rows> {
        let mut y = x.clone();
        layer_norm_rows(&mut y.data, w, bias, eps);
        Ok(y)
    }

    fn linear(&self, x: &Rows, w: &Linear, act_quant: bool) -> Result<Rows> {
        if x.width != w.cols {
            return Err(shape_error(format!("linear of [{}, {}] over rows of {}", w.rows, w.cols, x.width)));
        }
        Ok(Rows::new(matmul(&x.data, x.n(), w, act_quant), w.rows))
    }

    fn linears(&self, x: &Rows, ws: &[&Linear], act_quant: bool) -> Result<Vec<Rows>> {
        if let Some(w) = ws.iter().find(|w| w.cols != x.width) {
            return Err(shape_error(format!("linear of [{}, {}] over rows of {}", w.rows, w.cols, x.width)));
        }
        let ys = matmul_many(&x.data, x.n(), ws, act_quant);
        Ok(ws.iter().zip(ys).map(|(w, y)| Rows::new(y, w.rows)).collect())
    }

    fn add(&self, acc: &mut Rows, x: &Rows) -> Result<()> {
        acc.data.iter_mut().zip(&x.data).for_each(|(a, b)| *a += b);
        Ok(())
    }

    fn scale(&self, x: &mut Rows, s: f32) -> Result<()> {
        x.data.iter_mut().for_each(|v| *v *= s);
        Ok(())
    }

    fn silu_mul(&self, gate: &Rows, up: &Rows) -> Result<Rows> {
        let mut g = gate.clone();
        silu_mul(&mut g.data, &up.data);
        Ok(g)
    }

    fn split(&self, x: &Rows, at: usize) -> Result<(Rows, Rows)> {
        let (mut a, mut b) = (Vec::with_capacity(x.n() * at), Vec::with_capacity(x.n() * (x.width - at)));
        for row in x.data.chunks(x.width) {
            a.extend_from_slice(&row[..at]);
            b.extend_from_slice(&row[at..]);
        }
        Ok((Rows::new(a, at), Rows::new(b, x.width - at)))
    }

    fn concat(&self, a: &Rows, b: &Rows) -> Result<Rows> {
        let mut out = Vec::with_capacity(a.data.len() + b.data.len());
        for (x, y) in a.data.chunks(a.width).zip(b.data.chunks(b.width)) {
            out.extend_from_slice(x);
            out.extend_from_slice(y);
        }
        Ok(Rows::new(out, a.width + b.width))
    }

    fn rope(&self, x: &mut Rows, b: &CpuBatch, inv_freq: &Vec<f32>, heads: usize, offset: usize) -> Result<()> {
        let stride = x.width / heads;
        let rot = 2 * inv_freq.len();
        let mut angles = vec![(0.0, 0.0); inv_freq.len()]; // [rot/2], one position's
        for (t, &pos) in b.positions.iter().enumerate() {
            sin_cos(inv_freq, pos, &mut angles);
            for h in 0..heads {
                let base = (t * heads + h) * stride + offset;
                rotate_by(&angles, &mut x.data[base..base + rot]);
            }
        }
        Ok(())
    }

    fn write_kv(&self, kv: &mut HostKvStore, layer: usize, b: &CpuBatch, latent: &Rows, k_rope: &Rows) -> Result<()> {
        for (t, &slot) in b.slots.iter().enumerate() {
            kv.write_mla(layer, slot, latent.row(t), k_rope.row(t));
        }
        Ok(())
    }

    fn write_index(&self, kv: &mut HostKvStore, layer: usize, b: &CpuBatch, keys: &Rows) -> Result<()> {
        for (t, &slot) in b.slots.iter().enumerate() {
            kv.write_index(layer, slot, keys.row(t));
        }
        Ok(())
    }

    fn select_all(&self, b: &CpuBatch) -> Result<KeySelection> {
        Ok(KeySelection::all(b.len()))
    }

    fn indexer_select(
        &self,
        kv: &HostKvStore,
        layer: usize,
        b: &CpuBatch,
        q: &Rows,
        w: &Rows,
        topk: usize,
        dot_scale: f32,
    ) -> Result<KeySelection> {
        // The queries that score (a query whose causal window fits in top-k keeps every key),
        // by sequence, in position order: each sequence's keys are read once for all its
        // queries (a verification step's, a prompt chunk's), in spans that are the tasks.
        let mut order = Vec::with_capacity(b.len()); // [Q]
        order.extend((0..b.len()).filter(|&i| b.positions[i] >= topk));
        order.sort_by_key(|&i| (b.seq[i], b.positions[i]));
        // Each sequence's queries: order[groups[g]..groups[g + 1]].
        let mut groups = Vec::with_capacity(order.len() + 1);
        groups.extend((0..order.len()).filter(|&j| j == 0 || b.seq[order[j]] != b.seq[order[j - 1]]));
        groups.push(order.len());
        if order.is_empty() {
            groups.clear();
        }
        let seqs = groups.len().saturating_sub(1);
        // Fewer sequences than threads (a decode step): each sequence's keys split so that
        // every thread has a span. A long prompt chunk's triangle of work splits further, up
        // to four spans a thread, so that a thread done early takes another. Spans of at
        // least a page of keys keep the kernel calls long.
        let threads = rayon::current_num_threads();
        let (least, most) = ((threads / seqs.max(1)).max(1), (4 * threads / seqs.max(1)).max(1));
        // Gathered once for all the spans: the queries' limits (position + 1) [Q], q [Q, Hi * Di]
        // and w [Q, Hi].
        let limits: Vec<usize> = order.iter().map(|&i| b.positions[i] + 1).collect();
        let (mut qq, mut ww) = (Vec::with_capacity(order.len() * q.width), Vec::with_capacity(order.len() * w.width));
        for &i in &order {
            qq.extend_from_slice(q.row(i));
            ww.extend_from_slice(w.row(i));
        }
        let mut tasks: Vec<(usize, usize, usize)> = Vec::with_capacity(seqs * most); // (sequence group, first key, end key)
        let mut work = 0;
        for g in 0..seqs {
            let lim = &limits[groups[g]..groups[g + 1]];
            let keys = *lim.last().expect("a query");
            let seq_work: usize = lim.iter().map(|&l| l * q.width).sum();
            let spans = seq_work.div_ceil(SPAN_WORK).clamp(least, most).min(keys.div_ceil(SPAN_MIN_KEYS));
            tasks.extend((0..spans).map(|s| (g, keys * s / spans, keys * (s + 1) / spans)));
            work += seq_work;
        }
        let (hd, hi) = (q.width, w.width);
        // Per span: its queries' parts of their rows, one after the other (`score_span`).
        let spans = par_map(tasks.len(), work / tasks.len().max(1), |t| {
            let (g, k0, k1) = tasks[t];
            let (j0, j1) = (groups[g], groups[g + 1]);
            let mut slots = Aligned::<usize>::zeroed(k1 - k0); // [k1 - k0]
            for (s, p) in slots.iter_mut().zip(k0..k1) {
                *s = b.slot(order[j0], p);
            }
            let lim = &limits[j0..j1];
            let mut out = Aligned::<f32>::zeroed(span_scores(k0, k1 - k0, lim));
            let (qs, ws) = (&qq[j0 * hd..j1 * hd], &ww[j0 * hi..j1 * hi]);
            score_span(qs, ws, kv, layer, &slots, k0, lim, dot_scale, &mut out);
            out
        });
        // Each query's row [its limit] is its spans' parts in key order (a sequence's spans
        // are consecutive tasks, in key order); then its top-k.
        let mut row_at = vec![0usize; order.len() + 1]; // [Q + 1] each query's row in `scored`
        for j in 0..order.len() {
            row_at[j + 1] = row_at[j] + limits[j];
        }
        let mut scored = vec![0.0f32; row_at[order.len()]]; // [sum of limits]
        for (span, &(g, k0, k1)) in spans.iter().zip(&tasks) {
            let mut at = 0;
            for j in groups[g]..groups[g + 1] {
                let len = span_part(k0, k1 - k0, limits[j]);
                scored[row_at[j] + k0..row_at[j] + k0 + len].copy_from_slice(&span[at..at + len]);
                at += len;
            }
        }
        // Every scoring query keeps exactly topk keys: its window is longer.
        let mut chosen = vec![0u32; order.len() * topk]; // [Q, topk]
        let pick = |(j, out): (usize, &mut [u32])| {
            top_k_into(&scored[row_at[j]..row_at[j + 1]], topk, out);
        };
        if splits(order.len(), limits.first().copied().unwrap_or(0)) {
            chosen.par_chunks_mut(topk.max(1)).enumerate().for_each(pick);
        } else {
            chosen.chunks_mut(topk.max(1)).enumerate().for_each(pick);
        }
        let mut rows = vec![None; b.len()];
        for (j, &i) in order.iter().enumerate() {
            rows[i] = Some((j * topk, topk));
        }
        Ok(KeySelection::new(chosen, rows))
    }

    fn absorb_query(&self, q: &Rows, kv_b: &Linear, d: &MlaDims) -> Result<Rows> {
        let (n, h, r) = (q.n(), d.heads, d.latent);
        let stride = d.nope + d.rope;
        // Per head [n, r] = q_nope [n, nope] x (the key half of kv_b: nope rows of r), the
        // rows read in place and added into every token's output.
        let per_head: Vec<Aligned<f32>> = par_map(h, n * d.nope * r, |head| {
            let mut out = Aligned::<f32>::zeroed(n * r); // [n, r]
            let first = head * (d.nope + d.v);
            match rows_ref(kv_b, first) {
                Some(rows) => accumulate_rows(rows, d.nope, r, &q.data[head * stride..], h * stride, &mut out),
                None => {
                    let mut wk = Aligned::<f32>::zeroed(r); // [r]
                    for dn in 0..d.nope {
                        kv_b.row_into(first + dn, &mut wk);
                        for t in 0..n {
                            let qv = q.data[(t * h + head) * stride + dn];
                            for (a, b) in out[t * r..(t + 1) * r].iter_mut().zip(wk.iter()) {
                                *a += qv * b;
                            }
                        }
                    }
                }
            }
            out
        });
        Ok(interleave_heads(&per_head, n, r))
    }

    fn mla_attention(
        &self,
        kv: &HostKvStore,
        layer: usize,
        b: &CpuBatch,
        q_abs: &Rows,
        q: &Rows,
        sel: &KeySelection,
        d: &MlaDims,
    ) -> Result<Rows> {
        let (n, h, r) = (b.len(), d.heads, d.latent);
        let stride = d.nope + d.rope;
        // The work is the selected keys, not the context: a decode step's attention over a long
        // context still reads index_topk entries per head.
        let keys_each = (0..n).map(|i| sel.key_count(i, b.positions[i])).max().unwrap_or(0);
        // A token's heads split into groups when there are fewer tokens than threads (a decode
        // step): each group reads the token's entries again, which costs less than a thread
        // left idle. Not when the work is too small to go parallel at all: the groups would
        // then gather the same entries one after the other on one thread. Heads never mix, so
        // the grouping does not change a result.
        let groups = if splits(n * h, keys_each * (r + d.rope)) {
            (rayon::current_num_threads() / n.max(1)).clamp(1, h)
        } else {
            1
        };
        let per = h.div_ceil(groups);
        let mut out = vec![0.0f32; n * h * r]; // [n, H, r]
        // (token, first head, its heads' rows of `out`): a token's groups of heads in order.
        let mut tasks: Vec<(usize, usize, &mut [f32])> = Vec::with_capacity(n * groups);
        tasks.extend(
            out.chunks_mut(h * r)
                .enumerate()
                .flat_map(|(i, token)| token.chunks_mut(per * r).enumerate().map(move |(g, c)| (i, g * per, c))),
        );
        let attend = |(i, h0, o): (usize, usize, &mut [f32])| {
            let h1 = h0 + o.len() / r.max(1);
            let pos = b.positions[i];
            let mut slots = Aligned::<usize>::zeroed(sel.key_count(i, pos)); // [keys]
            let count = b.slots_into(i, sel, pos, &mut slots);
            let part = MlaDims { heads: h1 - h0, ..*d };
            let (qa, qr) = (&q_abs.row(i)[h0 * r..h1 * r], &q.row(i)[h0 * stride..h1 * stride]);
            attend_heads(kv, layer, &slots[..count], qa, qr, &part, o);
        };
        if splits(n * groups, keys_each * per * (r + d.rope)) {
            tasks.into_par_iter().for_each(attend);
        } else {
            tasks.into_iter().for_each(attend);
        }
        Ok(Rows::new(out, h * r))
    }

    fn expand_values(&self, o_lat: &Rows, kv_b: &Linear, d: &MlaDims) -> Result<Rows> {
        let (n, h, r, dv) = (o_lat.n(), d.heads, d.latent, d.v);
        // Per head [n, v]: each row of the value half read in place by the kernels against
        // every token's latent.
        let per_head: Vec<Aligned<f32>> = par_map(h, n * dv * r, |head| {
            let mut lat = Aligned::<f32>::zeroed(n * r); // [n, r]
            for (t, row) in lat.chunks_exact_mut(r.max(1)).enumerate() {
                row.copy_from_slice(&o_lat.row(t)[head * r..(head + 1) * r]);
            }
            let mut out_t = Aligned::<f32>::zeroed(dv * n); // [v, n]
            let first = head * (d.nope + dv) + d.nope;
            match rows_ref(kv_b, first) {
                Some(rows) => {
                    let acts = Acts::new(Isa::current(), kv_b.is_mxfp4(), &lat, n, r);
                    block_dots(&acts, rows, false, dv, 0, n, &mut out_t, n);
                }
                None => {
                    let mut decoded = Aligned::<f32>::zeroed(r); // [r]
                    for (j, o) in out_t.chunks_mut(n).enumerate() {
                        kv_b.row_into(first + j, &mut decoded);
                        for (t, y) in o.iter_mut().enumerate() {
                            *y = dot(&decoded, &lat[t * r..(t + 1) * r]);
                        }
                    }
                }
            }
            let mut out = Aligned::<f32>::zeroed(n * dv); // [n, v]
            for (i, o) in out.iter_mut().enumerate() {
                *o = out_t[(i % dv) * n + i / dv];
            }
            out
        });
        Ok(interleave_heads(&per_head, n, dv))
    }

    fn mla_attention_naive(
        &self,
        kv: &HostKvStore,
        layer: usize,
        b: &CpuBatch,
        q: &Rows,
        kv_b: &Linear,
        sel: &KeySelection,
        d: &MlaDims,
    ) -> Result<Rows> {
        let (h, dn, dr, dv) = (d.heads, d.nope, d.rope, d.v);
        let mut out = vec![0.0f32; b.len() * h * dv]; // [n, H, v]
        for s in 0..b.sequences() {
            let mine: Vec<usize> = (0..b.len()).filter(|&i| b.seq[i] == s).collect();
            let Some(len) = mine.iter().map(|&i| b.positions[i] + 1).max() else { continue };
            // Every key of the sequence expanded through kv_b: [T, H, nope + v].
            let all: Vec<usize> = (0..len).collect();
            let set = KeySet::read(kv, layer, &b.slots_of(mine[0], &all));
            let expanded = matmul(&set.latent, len, kv_b, false);
            for &i in &mine {
                let keys = sel.keys(i, b.positions[i]);
                for head in 0..h {
                    let qh = &q.row(i)[head * (dn + dr)..(head + 1) * (dn + dr)];
                    let mut scores: Vec<f32> = keys
                        .iter()
                        .map(|&t| {
                            let kn = &expanded[(t * h + head) * (dn + dv)..(t * h + head) * (dn + dv) + dn];
                            (dot(&qh[..dn], kn) + dot(&qh[dn..], &set.rope[t * dr..(t + 1) * dr])) * d.scale
                        })
                        .collect();
                    softmax(&mut scores);
                    let o = &mut out[(i * h + head) * dv..(i * h + head + 1) * dv];
                    for (p, &t) in scores.iter().zip(&keys) {
                        let v = &expanded[(t * h + head) * (dn + dv) + dn..(t * h + head + 1) * (dn + dv)];
                        for (a, x) in o.iter_mut().zip(v) {
                            *a += p * x;
                        }
                    }
                }
            }
        }
        Ok(Rows::new(out, h * dv))
    }

    fn route(&self, x: &Rows, router: &Vec<f32>, bias: &Vec<f32>, c: &RouterConfig) -> Result<Routing> {
        Ok(routing(&x.data, x.n(), router, bias, c))
    }

    fn moe(&self, x: &Rows, routes: &Routing, experts: &Vec<MlpLinears>, act_quant: bool) -> Result<Rows> {
        Ok(Rows::new(super::moe::grouped_experts(&x.data, x.width, routes, experts, act_quant), x.width))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::mpsc;
    use std::time::Duration;

    #[test]
    fn both_runs_its_two_halves_at_once() {
        // `a` can finish only if `b` runs while `a` waits: run one after the other, `a` would
        // give up after its timeout and report false.
        let pool = rayon::ThreadPoolBuilder::new().num_threads(2).build().expect("a pool of two");
        let (tx, rx) = mpsc::channel();
        let (met, sent) = pool.install(|| {
            Cpu.both(
                move || rx.recv_timeout(Duration::from_secs(20)).is_ok(),
                move || {
                    tx.send(()).expect("a is waiting");
                    7
                },
            )
        });
        assert!(met, "the second half did not run while the first waited");
        assert_eq!(sent, 7);
    }
}
