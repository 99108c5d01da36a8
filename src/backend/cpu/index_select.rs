//! The indexer's choice of keys for a step: each query past top-k scores the keys of its
//! sequence (`indexer::score_span`, in spans split over the threads) and keeps its top-k.

use rayon::prelude::*;

use super::kernels::aligned::Aligned;
use super::{
    CpuBatch, HostKvStore, KeySelection, Rows, par_map, score_span, span_part, span_scores, splits, top_k_into,
};

/// Keys an indexer span holds at least (unless its sequence has fewer): a page or more, so
/// that each kernel call over a run of consecutive slots is long.
const SPAN_MIN_KEYS: usize = 64;
/// Multiply-adds per indexer span beyond the one each thread gets: a span is then long
/// against the cost of handing it to a thread.
const SPAN_WORK: usize = 1 << 21;

/// The keys each query of `b` keeps: its `topk` best under the indexer's scores, for
/// q [N, Hi x Di] and w [N, Hi] (already scaled); a query whose causal window fits in top-k
/// keeps every key.
pub fn select_keys(
    kv: &HostKvStore,
    layer: usize,
    b: &CpuBatch,
    q: &Rows,
    w: &Rows,
    topk: usize,
    dot_scale: f32,
) -> KeySelection {
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
    let seqs = groups.len() - 1; // no query scoring: groups [0], no sequence
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
        let mut slots = Aligned::<usize>::for_overwrite(k1 - k0); // [k1 - k0], each written below
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
    KeySelection::new(chosen, rows)
}
