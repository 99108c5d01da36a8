//! MTP drafting for speculative decoding (the GLM-DSA spec's section 3.11).
//!
//! The MTP layer's KV lives in the same pages as the main layers' (one more pool layer), so
//! it shares page tables, the prefix cache and rollback. After each forward the MTP layer
//! catches up on the main model's new hidden states: the pair (h_j, t_{j+1}) at every position
//! j the main model just computed, batched over requests; pages then join the prefix cache with
//! both kinds of entries written. The last catch-up output drafts the token after the pending
//! one; further drafts chain on the MTP layer's own output. Chained input variant: the
//! shared_head-normed output fed back as the next h (sglang's choice; training feeds the layer
//! model.norm's output, the same space). Chained entries sit at positions the next forward and
//! catch-up rewrite from true hidden states. Drafts are drawn from the request's own sampling
//! distribution (greedy, or a drafter with an independent random stream), so verification is
//! exact, and they depend only on the request, so seeded requests repeat.

use super::step::{Engine, Seq};
use crate::backend::Backend;
use crate::kv::SeqKv;
use crate::model::StepBatch;
use crate::sample::Sampler;

/// `kv` as seen from position `len` (same pages).
fn at(kv: &SeqKv, len: usize) -> SeqKv {
    let mut v = kv.clone();
    v.len = len;
    v
}

/// What lm_head gave for one MTP output row.
enum Choice {
    /// The greedy token, picked on the backend (plain greedy requests).
    Token(u32),
    /// The logits [V].
    Logits(Vec<f32>),
}

impl Choice {
    /// The drafter's token and the distribution it came from.
    fn pick(&self, drafter: &mut Sampler) -> (u32, Option<Vec<f32>>) {
        match self {
            Choice::Token(t) => (*t, None),
            Choice::Logits(l) => drafter.pick(l),
        }
    }
}

/// lm_head over MTP outputs [n, D]: the token of rows whose request is plain greedy
/// (`plain[r]`), the logits of the others. None (no drafts) if the backend fails.
fn draft_choices<B: Backend>(e: &Engine<B>, rows: &[f32], plain: &[bool]) -> Option<Vec<Choice>> {
    let d = e.model.shape.hidden_size as usize;
    let v = e.model.vocab_size();
    let pick = |want: bool| -> Vec<f32> {
        rows.chunks(d).zip(plain).filter(|(_, p)| **p == want).flat_map(|(r, _)| r.iter().copied()).collect()
    };
    let (greedy, sampled) = (pick(true), pick(false));
    let tokens = if greedy.is_empty() { Vec::new() } else { e.model.lm_head_argmax(&greedy).ok()? };
    let logits = if sampled.is_empty() { Vec::new() } else { e.model.lm_head(&sampled).ok()? };
    let (mut t, mut l) = (tokens.into_iter(), logits.chunks(v).map(<[f32]>::to_vec).collect::<Vec<_>>().into_iter());
    plain.iter().map(|&p| if p { t.next().map(Choice::Token) } else { l.next().map(Choice::Logits) }).collect()
}

/// Drafts `s` may take at `depth`: no more than the tokens it may still emit past the
/// verified one, nor than its context has room for.
fn drafts_allowed(s: &Seq, depth: usize, context: usize) -> usize {
    let remaining = s.req.max_tokens.saturating_sub(s.generated);
    let room = context.saturating_sub(s.tokens.len() + 1);
    depth.min(remaining.saturating_sub(1)).min(room)
}

/// Whether request `i` drafts from greedy tokens alone.
fn plain<B: Backend>(e: &Engine<B>, i: usize) -> bool {
    let s = &e.running[i];
    s.sampler.is_plain_greedy() && s.req.constraint.is_none()
}

/// A draft for `s` from `choice`, within its constraint: the token, the distribution it was
/// drawn from, and whether a further draft may chain on it. A constrained draft is committed
/// (and counted, to be rolled back once drafting is over). None: no draft.
fn pick_draft(s: &mut Seq, choice: &Choice, drafter: &mut Sampler) -> Option<(u32, Option<Vec<f32>>, bool)> {
    let Choice::Logits(l) = choice else { return Some((choice.pick(drafter).0, None, true)) };
    match s.constrained(l) {
        Ok(None) => {
            let (t, q) = drafter.pick(l);
            Some((t, q, true))
        }
        Ok(Some(m)) => {
            let (t, q) = drafter.pick(&m);
            if s.req.stop_token_ids.contains(&t) {
                return Some((t, q, false));
            }
            s.commit(t).ok()?;
            s.draft_commits += 1;
            Some((t, q, !s.constraint_complete()))
        }
        Err(_) => None,
    }
}

/// Drafts for every decoding request; constraints are left as verification expects them, in
/// the state after the request's last emitted token.
pub(super) fn draft<B: Backend>(e: &mut Engine<B>) {
    draft_all(e);
    for s in &mut e.running {
        let n = std::mem::take(&mut s.draft_commits);
        if n > 0
            && let Some(c) = s.req.constraint.as_mut()
            && c.rollback(n).is_err()
        {
            // Verification would start from the wrong state: draft nothing instead.
            s.drafts.clear();
            s.draft_probs.clear();
            let _ = s.req.events.send(super::Event::Failed("the output constraint could not roll back".into()));
            s.finish = Some(super::FinishReason::Abort);
        }
    }
}

fn draft_all<B: Backend>(e: &mut Engine<B>) {
    // Above the plan's batch limit no request drafts, but the MTP layer still catches up, so
    // its entries are whole (and pages can join the prefix cache) when the batch shrinks.
    let paused = e.drafting_paused();
    if paused {
        e.metrics.drafting_paused();
    }
    let depth = if paused { 0 } else { e.spec_depth() };
    let d = e.model.shape.hidden_size as usize;
    let context = e.model.shape.max_position_embeddings as usize;
    let layer = e.model.mtp_kv_layer(0);

    // 1. Catch-up: every request with unconsumed hidden rows whose next tokens are known.
    let mut catch: Vec<(usize, Vec<u32>, SeqKv)> = Vec::new(); // (running index, next tokens, view)
    let mut hidden = Vec::new();
    for (i, s) in e.running.iter_mut().enumerate() {
        let rows = s.mtp_hidden.len() / d;
        if rows == 0 {
            continue;
        }
        // A request that just stopped on a stop token never pushed it: its last position has
        // no known next token. Its hidden rows end here.
        let known = (s.tokens.len() - 1).saturating_sub(s.mtp_len).min(rows);
        if known > 0 {
            catch.push((i, s.tokens[s.mtp_len + 1..s.mtp_len + 1 + known].to_vec(), at(&s.kv, s.mtp_len)));
            hidden.extend_from_slice(&s.mtp_hidden[..known * d]);
        }
        s.mtp_hidden.clear();
    }
    if catch.is_empty() {
        return;
    }
    // The drafts wanted of each request, and the catch-up rows they come from (each
    // drafting request's last): only those rows need the MTP layer's output.
    let wants: Vec<usize> = catch
        .iter()
        .map(|(i, _, _)| {
            let s = &e.running[*i];
            if s.finish.is_some() || s.pending() != 1 { 0 } else { drafts_allowed(s, depth, context) }
        })
        .collect();
    let mut batch = StepBatch::new(e.table.page_size);
    let mut outputs = Vec::new();
    for ((_, t, kv), &want) in catch.iter().zip(&wants) {
        let rows = batch.push(kv, t);
        if want > 0 {
            outputs.push(rows.end - 1);
        }
    }
    let Ok(out) = e.model.mtp_step(0, &batch, &hidden, &mut e.store, layer, &outputs) else { return };

    // 2. Pages whose main and MTP entries are both written join the prefix cache; the first
    //    draft of every decoding request comes from its last catch-up row.
    let mut first: Vec<(usize, Vec<f32>, usize)> = Vec::new(); // (running index, last output, drafts wanted)
    let mut out_rows = out.chunks(d); // [R, D]: one row per request that wants drafts, in order
    for ((i, t, _), &want) in catch.iter().zip(&wants) {
        let s = &mut e.running[*i];
        s.mtp_len += t.len();
        let upto = s.mtp_len.min(s.kv.len);
        e.table.commit(&mut s.kv, &s.tokens[..upto]);
        if want == 0 {
            continue;
        }
        let o = out_rows.next().expect("an output row per request that drafts");
        let end = s.kv.len + want;
        if e.table.reserve(&mut s.kv, end).is_err() {
            continue;
        }
        first.push((*i, o.to_vec(), want));
    }
    let rows: Vec<f32> = first.iter().flat_map(|(_, o, _)| o.iter().copied()).collect();
    let plains: Vec<bool> = first.iter().map(|(i, _, _)| plain(e, *i)).collect();
    let Some(choices) = draft_choices(e, &rows, &plains) else { return };
    let mut chain: Vec<(usize, Vec<f32>, Sampler, bool)> = Vec::new(); // (index, last output, drafter, open)
    for ((i, o, want), choice) in first.into_iter().zip(&choices) {
        let s = &mut e.running[i];
        let mut drafter = s.sampler.drafter();
        let Some((tok, q, open)) = pick_draft(s, choice, &mut drafter) else { continue };
        drafter.record(tok);
        s.drafts = vec![tok];
        s.draft_probs = vec![q];
        if want > 1 && open {
            chain.push((i, o, drafter, true));
        }
    }

    // 3. Chained drafts, one batched MTP step per depth, at positions past the pending token.
    for k in 1..depth {
        let active: Vec<usize> = (0..chain.len())
            .filter(|&c| {
                let s = &e.running[chain[c].0];
                chain[c].3 && s.drafts.len() == k && k < drafts_allowed(s, depth, context)
            })
            .collect();
        if active.is_empty() {
            break;
        }
        let mut batch = StepBatch::new(e.table.page_size);
        for &c in &active {
            let s = &e.running[chain[c].0];
            batch.push(&at(&s.kv, s.kv.len + k - 1), &[*s.drafts.last().expect("one draft")]);
        }
        let hidden: Vec<f32> = active.iter().flat_map(|&c| chain[c].1.iter().copied()).collect();
        let every: Vec<usize> = (0..active.len()).collect();
        let Ok(out) = e.model.mtp_step(0, &batch, &hidden, &mut e.store, layer, &every) else { break };
        let plains: Vec<bool> = active.iter().map(|&c| plain(e, chain[c].0)).collect();
        let Some(choices) = draft_choices(e, &out, &plains) else { break };
        for (n, &c) in active.iter().enumerate() {
            let o = out[n * d..(n + 1) * d].to_vec();
            let (i, _, drafter, open) = &mut chain[c];
            let s = &mut e.running[*i];
            let Some((tok, q, more)) = pick_draft(s, &choices[n], drafter) else {
                *open = false;
                continue;
            };
            drafter.record(tok);
            s.drafts.push(tok);
            s.draft_probs.push(q);
            *open = more;
            chain[c].1 = o;
        }
    }
}
