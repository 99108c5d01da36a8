//! The CPU backend: the ops of the forward in f32 over weights kept in their checkpoint
//! format (read in place by the kernels of `kernels/`, never expanded), with the KV store in
//! host memory, its entries also read in place. Every token is computed on its own (no
//! reduction spans tokens, and the kernels give a token the same arithmetic in any tile), so
//! a request's numbers do not depend on what else is in its batch.

use rayon::prelude::*;

use super::index_select::select_keys;
use super::kernels::aligned::Aligned;
use super::kernels::{Acts, Isa, accumulate_rows, block_dots};
use super::matmul::rows_ref;
use super::transpose::transpose_into;
use super::{
    CpuBatch, HostKvStore, KeySelection, KeySet, Route, RouterConfig, Routing, attend_heads, dot, layer_norm_rows,
    matmul, matmul_many, par_map, rms_norm_rows,
    rope::{rotate_by, sin_cos},
    routing, silu_mul, softmax, splits,
};
use crate::backend::{Backend, MlaDims, MlpLinears, Selection, StepBatch};
use crate::error::{Error, Result};
use crate::kv::{KvFormat, KvGeometry, PageCopy};
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
        Ok(select_keys(kv, layer, b, q, w, topk, dot_scale))
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
            let mut lat = Aligned::<f32>::for_overwrite(n * r); // [n, r], every row copied in
            for (t, row) in lat.chunks_exact_mut(r.max(1)).enumerate() {
                row.copy_from_slice(&o_lat.row(t)[head * r..(head + 1) * r]);
            }
            let mut out_t = Aligned::<f32>::for_overwrite(dv * n); // [v, n], every value a dot product
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
            let mut out = Aligned::<f32>::for_overwrite(n * dv); // [n, v]
            transpose_into(&out_t, dv, n, &mut out);
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
