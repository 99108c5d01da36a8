//! The GPU backend: every op of the forward as a kernel launch on a `device::Gpu` (an AMD GPU
//! through ROCm, or the emulated HIP device), weights uploaded once in their stored format,
//! the KV store in device memory. Inside a step nothing comes back to the host; the model
//! downloads the logits rows (and hidden rows when asked) at the end.
//!
//! Every launch goes through `launch`, the same code the op declarations check against the
//! CPU backend; which variant serves an op at a step's size is the plan's kernel map
//! (`choice`).

mod choice;
pub mod launch;
mod memory;
mod upload;

use std::sync::Arc;
use std::sync::Mutex;
use std::sync::atomic::AtomicU64;
use std::time::Instant;

pub use choice::KernelChoice;
pub use memory::{
    DeviceBatch, DeviceExperts, DeviceKvStore, DeviceRouting, DeviceRows, DeviceSelection, DeviceVector, DeviceWeight,
};

use launch::{Attention, Columns, Dispatch, Groups, KvB, LinearKernel, Paged, Tables};

use super::{Backend, MlaDims, MlpLinears, Route, RouterConfig, Selection, StepBatch};
use crate::device::Gpu;
use crate::error::{Error, Result};
use crate::kv::{KvFormat, KvGeometry, PageCopy};
use crate::plan::Plan;
use crate::weights::Linear;

pub struct GpuBackend {
    pub gpu: Arc<Gpu>,
    kernels: KernelChoice,
    /// Weight bytes copied to the device so far, and when progress was last logged.
    uploaded: AtomicU64,
    last_progress: Mutex<Instant>,
}

/// Seconds between weight-upload progress lines.
const PROGRESS_EVERY_S: u64 = 5;

fn usage(m: String) -> Error {
    Error::Usage(format!("GPU backend: {m}"))
}

impl GpuBackend {
    pub fn new(gpu: Arc<Gpu>, plan: &Plan) -> GpuBackend {
        GpuBackend {
            gpu,
            kernels: KernelChoice::for_plan(plan),
            uploaded: AtomicU64::new(0),
            last_progress: Mutex::new(Instant::now()),
        }
    }

    /// Whether the device is the emulated one (host memory, no speed).
    pub fn is_emulated(&self) -> bool {
        self.gpu.describe().starts_with("emulated")
    }

    fn rows(&self, n: usize, width: usize) -> Result<DeviceRows> {
        Ok(DeviceRows { buf: self.gpu.zeros::<f32>(n * width)?, n, width })
    }

    /// The linear kernel of `family` the map picks for a step of `tokens` tokens.
    fn linear_kernel(&self, family: &str, tokens: usize) -> Result<LinearKernel> {
        let v = self.kernels.pick(family, tokens).ok_or_else(|| usage(format!("no kernel variant of {family}")))?;
        Ok(if v.symbols.contains(&"kiln_moe_mxfp4_prefill") { LinearKernel::Tile } else { LinearKernel::WavePerRow })
    }

    /// x onto the MXFP4 grid when the weight is MXFP4 and the plan quantizes activations.
    fn maybe_quantized(&self, x: &DeviceRows, w: &DeviceWeight, act_quant: bool) -> Result<Option<DeviceRows>> {
        if !(act_quant && w.is_mxfp4()) {
            return Ok(None);
        }
        let q = self.rows(x.n, x.width)?;
        launch::mxfp4_quantize(&self.gpu, &x.buf, &q.buf, x.n, x.width)?;
        Ok(Some(q))
    }

    /// y = x W_g^T over groups of rows; `tokens` is the step's size the map picks by.
    fn grouped(
        &self,
        x: &DeviceRows,
        w: &DeviceWeight,
        groups: &Groups,
        tokens: usize,
        act_quant: bool,
    ) -> Result<DeviceRows> {
        let q = self.maybe_quantized(x, w, act_quant)?;
        let x = q.as_ref().unwrap_or(x);
        let y = self.rows(x.n, w.rows)?;
        let kernel = self.linear_kernel(w.family, tokens)?;
        launch::linear(&self.gpu, kernel, w.matrix(), &x.buf, groups, &y.buf)?;
        Ok(y)
    }

    fn check_width(&self, what: &str, x: &DeviceRows, width: usize) -> Result<()> {
        if x.width != width {
            return Err(usage(format!("{what}: rows of {} where {width} are needed", x.width)));
        }
        Ok(())
    }

    fn kv_b<'a>(&self, w: &'a DeviceWeight, d: &MlaDims) -> Result<KvB<'a>> {
        if w.rows != d.heads * (d.nope + d.v) || w.cols != d.latent {
            return Err(usage(format!(
                "kv_b is [{}, {}], not [{}, {}]",
                w.rows,
                w.cols,
                d.heads * (d.nope + d.v),
                d.latent
            )));
        }
        Ok(KvB { w: w.bufs.view(), heads: d.heads, nope: d.nope, rope: d.rope, v: d.v, r: d.latent })
    }

    fn tables<'a>(&self, b: &'a DeviceBatch, page: usize) -> Tables<'a> {
        Tables { pages: &b.pages, lens: &b.lens, page, max_pages: b.max_pages }
    }
}

impl Backend for GpuBackend {
    type Tensor = DeviceRows;
    type Weight = DeviceWeight;
    type Vector = DeviceVector;
    type Experts = DeviceExperts;
    type KvStore = DeviceKvStore;
    type Batch = DeviceBatch;
    type Selection = DeviceSelection;
    type Routing = DeviceRouting;

    fn describe(&self) -> String {
        format!("GPU ({})", self.gpu.describe())
    }

    fn weight(&self, w: Linear) -> Result<DeviceWeight> {
        let (bufs, family) = self.weight_bufs(&w)?;
        Ok(DeviceWeight { bufs, rows: w.rows, cols: w.cols, family })
    }

    fn vector(&self, v: Vec<f32>) -> Result<DeviceVector> {
        Ok(DeviceVector { buf: self.gpu.upload(&v)?, len: v.len() })
    }

    fn experts(&self, experts: Vec<MlpLinears>) -> Result<DeviceExperts> {
        let count = experts.len();
        let gate: Vec<&Linear> = experts.iter().map(|e| &e.gate).collect();
        let up: Vec<&Linear> = experts.iter().map(|e| &e.up).collect();
        let down: Vec<&Linear> = experts.iter().map(|e| &e.down).collect();
        let (gate, up, down) = (self.stacked(&gate)?, self.stacked(&up)?, self.stacked(&down)?);
        Ok(DeviceExperts { width: gate.rows, gate, up, down, experts: count })
    }

    fn kv_store(&self, format: KvFormat, geometry: KvGeometry, slots: usize) -> Result<DeviceKvStore> {
        DeviceKvStore::new(&self.gpu, format, geometry, slots)
    }

    fn kv_grow(&self, kv: &mut DeviceKvStore, slots: usize) -> Result<()> {
        kv.grow(&self.gpu, slots)
    }

    fn kv_copy_page(&self, kv: &mut DeviceKvStore, copy: PageCopy, page_size: usize) -> Result<()> {
        kv.copy_page(&self.gpu, copy, page_size)
    }

    fn batch(&self, b: &StepBatch) -> Result<DeviceBatch> {
        DeviceBatch::new(&self.gpu, b)
    }

    fn upload(&self, rows: Vec<f32>, width: usize) -> Result<DeviceRows> {
        if width == 0 || !rows.len().is_multiple_of(width) {
            return Err(usage(format!("{} values are not rows of {width}", rows.len())));
        }
        Ok(DeviceRows { buf: self.gpu.upload(&rows)?, n: rows.len() / width, width })
    }

    fn download(&self, t: &DeviceRows) -> Result<Vec<f32>> {
        let mut v: Vec<f32> = t.buf.read()?;
        v.truncate(t.len());
        Ok(v)
    }

    fn gather(&self, t: &DeviceRows, rows: &[usize]) -> Result<DeviceRows> {
        if let Some(r) = rows.iter().find(|&&r| r >= t.n) {
            return Err(usage(format!("row {r} of {} rows", t.n)));
        }
        let idx: Vec<i32> = rows.iter().map(|&r| r as i32).collect();
        let y = self.rows(rows.len(), t.width)?;
        launch::gather_rows(&self.gpu, &t.buf, t.n, &self.gpu.upload(&idx)?, &y.buf, rows.len(), t.width)?;
        Ok(y)
    }

    fn read_selection(&self, s: &DeviceSelection) -> Result<Selection> {
        Ok(match s {
            DeviceSelection::All { n } => Selection { rows: vec![None; *n] },
            DeviceSelection::TopK { idx, n, topk, positions } => {
                let all: Vec<i32> = idx.read()?;
                let rows = (0..*n)
                    .map(|i| {
                        if positions[i] < *topk {
                            return None;
                        }
                        let mut keys: Vec<u32> =
                            all[i * topk..(i + 1) * topk].iter().filter(|&&k| k >= 0).map(|&k| k as u32).collect();
                        keys.sort_unstable();
                        Some(keys)
                    })
                    .collect();
                Selection { rows }
            }
        })
    }

    fn read_routing(&self, r: &DeviceRouting) -> Result<Vec<Route>> {
        let idx: Vec<i32> = r.idx.read()?;
        let w: Vec<f32> = r.weights.read()?;
        Ok((0..r.n)
            .map(|t| Route {
                experts: idx[t * r.k..(t + 1) * r.k].iter().map(|&e| e as u32).collect(),
                weights: w[t * r.k..(t + 1) * r.k].to_vec(),
            })
            .collect())
    }

    fn argmax(&self, t: &DeviceRows) -> Result<Vec<u32>> {
        let out = self.gpu.zeros::<i32>(t.n)?; // [n]
        launch::sample_greedy(&self.gpu, &t.buf, &out, t.n, t.width)?;
        let mut v: Vec<i32> = out.read()?;
        v.truncate(t.n);
        Ok(v.into_iter().map(|x| x as u32).collect())
    }

    fn embed(&self, table: &DeviceWeight, b: &DeviceBatch) -> Result<DeviceRows> {
        let n = b.step.len();
        let y = self.rows(n, table.cols)?;
        launch::embed(&self.gpu, table.matrix(), &b.tokens, &y.buf, n)?;
        Ok(y)
    }

    fn rms_norm(&self, x: &DeviceRows, w: &DeviceVector, eps: f32) -> Result<DeviceRows> {
        self.check_width("rms_norm", x, w.len)?;
        let y = self.rows(x.n, x.width)?;
        launch::rms_norm(&self.gpu, &x.buf, &w.buf, &y.buf, x.n, x.width, eps)?;
        Ok(y)
    }

    fn layer_norm(&self, x: &DeviceRows, w: &DeviceVector, bias: &DeviceVector, eps: f32) -> Result<DeviceRows> {
        self.check_width("layer_norm", x, w.len)?;
        let y = self.rows(x.n, x.width)?;
        launch::layer_norm(&self.gpu, &x.buf, &w.buf, &bias.buf, &y.buf, x.n, x.width, eps)?;
        Ok(y)
    }

    fn linear(&self, x: &DeviceRows, w: &DeviceWeight, act_quant: bool) -> Result<DeviceRows> {
        self.check_width("linear", x, w.cols)?;
        self.grouped(x, w, &Groups::One { m: x.n }, x.n, act_quant)
    }

    fn add(&self, acc: &mut DeviceRows, x: &DeviceRows) -> Result<()> {
        if acc.len() != x.len() {
            return Err(usage(format!("add of {} values onto {}", x.len(), acc.len())));
        }
        launch::add(&self.gpu, &acc.buf, &x.buf, acc.len())
    }

    fn scale(&self, x: &mut DeviceRows, s: f32) -> Result<()> {
        launch::scale(&self.gpu, &x.buf, s, x.len())
    }

    fn silu_mul(&self, gate: &DeviceRows, up: &DeviceRows) -> Result<DeviceRows> {
        if gate.len() != up.len() {
            return Err(usage(format!("silu_mul of {} and {} values", gate.len(), up.len())));
        }
        let y = self.rows(gate.n, gate.width)?;
        launch::silu_mul(&self.gpu, &gate.buf, &up.buf, &y.buf, gate.len())?;
        Ok(y)
    }

    fn split(&self, x: &DeviceRows, at: usize) -> Result<(DeviceRows, DeviceRows)> {
        if at > x.width {
            return Err(usage(format!("split at {at} of rows of {}", x.width)));
        }
        let (a, b) = (self.rows(x.n, at)?, self.rows(x.n, x.width - at)?);
        let cols =
            |y_width, x_offset, cols| Columns { rows: x.n, x_width: x.width, x_offset, y_width, y_offset: 0, cols };
        launch::copy_cols(&self.gpu, &x.buf, &a.buf, &cols(at, 0, at))?;
        launch::copy_cols(&self.gpu, &x.buf, &b.buf, &cols(x.width - at, at, x.width - at))?;
        Ok((a, b))
    }

    fn concat(&self, a: &DeviceRows, b: &DeviceRows) -> Result<DeviceRows> {
        if a.n != b.n {
            return Err(usage(format!("concat of {} and {} rows", a.n, b.n)));
        }
        let w = a.width + b.width;
        let y = self.rows(a.n, w)?;
        let cols = |x_width, y_offset| Columns { rows: a.n, x_width, x_offset: 0, y_width: w, y_offset, cols: x_width };
        launch::copy_cols(&self.gpu, &a.buf, &y.buf, &cols(a.width, 0))?;
        launch::copy_cols(&self.gpu, &b.buf, &y.buf, &cols(b.width, a.width))?;
        Ok(y)
    }

    fn rope(
        &self,
        x: &mut DeviceRows,
        b: &DeviceBatch,
        inv_freq: &DeviceVector,
        heads: usize,
        offset: usize,
    ) -> Result<()> {
        if heads == 0 || !x.width.is_multiple_of(heads) {
            return Err(usage(format!("rope over {heads} heads of rows of {}", x.width)));
        }
        launch::rope(
            &self.gpu,
            &x.buf,
            &b.positions,
            &inv_freq.buf,
            x.n,
            heads,
            x.width / heads,
            offset,
            2 * inv_freq.len,
        )
    }

    fn write_kv(
        &self,
        kv: &mut DeviceKvStore,
        layer: usize,
        b: &DeviceBatch,
        latent: &DeviceRows,
        k_rope: &DeviceRows,
    ) -> Result<()> {
        let store = kv.mla.get(layer).ok_or_else(|| usage(format!("KV layer {layer} of {}", kv.mla.len())))?;
        let paged = Paged { store, slots: kv.slots, entry: kv.mla_bytes() };
        let n = b.step.len();
        launch::kv_write(
            &self.gpu,
            kv.format,
            &latent.buf,
            &k_rope.buf,
            &b.slots,
            &paged,
            n,
            latent.width,
            k_rope.width,
        )
    }

    fn write_index(&self, kv: &mut DeviceKvStore, layer: usize, b: &DeviceBatch, keys: &DeviceRows) -> Result<()> {
        let paged = Paged { store: kv.index_layer(layer)?, slots: kv.slots, entry: kv.index_bytes() };
        launch::index_write(&self.gpu, kv.format, &keys.buf, &b.slots, &paged, b.step.len(), keys.width)
    }

    fn select_all(&self, b: &DeviceBatch) -> Result<DeviceSelection> {
        Ok(DeviceSelection::All { n: b.step.len() })
    }

    fn indexer_select(
        &self,
        kv: &DeviceKvStore,
        layer: usize,
        b: &DeviceBatch,
        q: &DeviceRows,
        w: &DeviceRows,
        topk: usize,
        dot_scale: f32,
    ) -> Result<DeviceSelection> {
        let (n, hi) = (b.step.len(), w.width);
        if hi == 0 || !q.width.is_multiple_of(hi) {
            return Err(usage(format!("indexer queries of {} over {hi} heads", q.width)));
        }
        let stride = b.max_len.max(1);
        let scores = self.gpu.zeros::<f32>(n * stride)?; // [n, stride]
        let keys = Paged { store: kv.index_layer(layer)?, slots: kv.slots, entry: kv.index_bytes() };
        let tables = self.tables(b, b.step.page_size);
        launch::indexer_scores(
            &self.gpu,
            kv.format,
            &q.buf,
            &w.buf,
            &keys,
            &tables,
            &scores,
            n,
            hi,
            q.width / hi,
            stride,
            dot_scale,
        )?;
        let idx = self.gpu.zeros::<i32>(n * topk)?; // [n, topk]
        launch::top_k(&self.gpu, &scores, &b.lens, &idx, n, stride, topk)?;
        Ok(DeviceSelection::TopK { idx, n, topk, positions: b.step.positions.clone() })
    }

    fn absorb_query(&self, q: &DeviceRows, kv_b: &DeviceWeight, d: &MlaDims) -> Result<DeviceRows> {
        self.check_width("absorb_query", q, d.heads * (d.nope + d.rope))?;
        let y = self.rows(q.n, d.heads * d.latent)?;
        launch::absorb_q(&self.gpu, &self.kv_b(kv_b, d)?, &q.buf, &y.buf, q.n)?;
        Ok(y)
    }

    fn mla_attention(
        &self,
        kv: &DeviceKvStore,
        layer: usize,
        b: &DeviceBatch,
        q_abs: &DeviceRows,
        q: &DeviceRows,
        sel: &DeviceSelection,
        d: &MlaDims,
    ) -> Result<DeviceRows> {
        let n = b.step.len();
        self.check_width("mla_attention", q, d.heads * (d.nope + d.rope))?;
        // q's rope dims of every head, [n * H, rope].
        let q_rope = self.gpu.zeros::<f32>(n * d.heads * d.rope)?;
        let cols = Columns {
            rows: n * d.heads,
            x_width: d.nope + d.rope,
            x_offset: d.nope,
            y_width: d.rope,
            y_offset: 0,
            cols: d.rope,
        };
        launch::copy_cols(&self.gpu, &q.buf, &q_rope, &cols)?;
        let out = self.rows(n, d.heads * d.latent)?;
        let sel = match sel {
            DeviceSelection::All { .. } => None,
            DeviceSelection::TopK { idx, topk, .. } => Some((idx, *topk)),
        };
        let store = kv.mla.get(layer).ok_or_else(|| usage(format!("KV layer {layer} of {}", kv.mla.len())))?;
        let paged = Paged { store, slots: kv.slots, entry: kv.mla_bytes() };
        let a = Attention {
            q_abs: &q_abs.buf,
            q_rope: &q_rope,
            sel,
            out: &out.buf,
            t: n,
            heads: d.heads,
            r: d.latent,
            dr: d.rope,
            scale: d.scale,
        };
        launch::mla_decode(&self.gpu, kv.format, &a, &paged, &self.tables(b, b.step.page_size))?;
        Ok(out)
    }

    fn expand_values(&self, o_lat: &DeviceRows, kv_b: &DeviceWeight, d: &MlaDims) -> Result<DeviceRows> {
        self.check_width("expand_values", o_lat, d.heads * d.latent)?;
        let y = self.rows(o_lat.n, d.heads * d.v)?;
        launch::expand_v(&self.gpu, &self.kv_b(kv_b, d)?, &o_lat.buf, &y.buf, o_lat.n)?;
        Ok(y)
    }

    fn mla_attention_naive(
        &self,
        _kv: &DeviceKvStore,
        _layer: usize,
        _b: &DeviceBatch,
        _q: &DeviceRows,
        _kv_b: &DeviceWeight,
        _sel: &DeviceSelection,
        _d: &MlaDims,
    ) -> Result<DeviceRows> {
        Err(usage("the GPU backend runs the absorbed attention form only (the naive form is the CPU's oracle)".into()))
    }

    fn route(
        &self,
        x: &DeviceRows,
        router: &DeviceVector,
        bias: &DeviceVector,
        c: &RouterConfig,
    ) -> Result<DeviceRouting> {
        let n = x.n;
        let (idx, weights) = (self.gpu.zeros::<i32>(n * c.top_k)?, self.gpu.zeros::<f32>(n * c.top_k)?);
        let c = RouterConfig { groups: c.groups.max(1), ..*c };
        let logits = self.gpu.zeros::<f32>(n * c.experts)?; // [n, E]
        let bufs = launch::RouterBufs {
            x: &x.buf,
            w: &router.buf,
            bias: &bias.buf,
            logits: &logits,
            idx: &idx,
            weights: &weights,
        };
        launch::router(&self.gpu, &bufs, n, x.width, &c)?;
        Ok(DeviceRouting { idx, weights, n, k: c.top_k })
    }

    fn moe(&self, x: &DeviceRows, r: &DeviceRouting, e: &DeviceExperts, act_quant: bool) -> Result<DeviceRows> {
        let (n, k, d) = (x.n, r.k, x.width);
        let g = &self.gpu;
        let (counts, offsets, cursor) =
            (g.zeros::<i32>(e.experts)?, g.zeros::<i32>(e.experts + 1)?, g.zeros::<i32>(e.experts)?);
        let pos = g.zeros::<i32>(n * k)?; // [n, k] each choice's row in expert order
        let dispatch = Dispatch {
            idx: &r.idx,
            counts: &counts,
            offsets: &offsets,
            cursor: &cursor,
            pos: &pos,
            n,
            k,
            experts: e.experts,
        };
        launch::moe_dispatch(g, &dispatch)?;
        let xs = self.rows(n * k, d)?; // [n * k, D] rows sorted by expert
        launch::moe_gather(g, &x.buf, &pos, &xs.buf, n, k, d)?;
        // Each token picks distinct experts, so no expert holds more than n rows.
        let groups = Groups::Many { offsets: &offsets, groups: e.experts, m: n * k, most: n };
        let gate = self.grouped(&xs, &e.gate, &groups, n, act_quant)?;
        let up = self.grouped(&xs, &e.up, &groups, n, act_quant)?;
        let h = self.silu_mul(&gate, &up)?;
        let ys = self.grouped(&h, &e.down, &groups, n, act_quant)?; // [n * k, D]
        let y = self.rows(n, d)?;
        launch::moe_combine(g, &ys.buf, &pos, &r.weights, &y.buf, n, k, d)?;
        Ok(y)
    }
}
