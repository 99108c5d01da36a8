//! MTP drafting for speculative decoding (reference/glm-dsa-spec.md 3.11).
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

use super::step::Engine;
use crate::kv::SeqKv;
use crate::model::SeqInput;

/// `kv` as seen from position `len` (same pages).
fn at(kv: &SeqKv, len: usize) -> SeqKv {
    let mut v = kv.clone();
    v.len = len;
    v
}

pub(super) fn draft(e: &mut Engine) {
    let depth = e.spec_depth();
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
    let inputs: Vec<SeqInput> = catch.iter().map(|(_, t, kv)| SeqInput { tokens: t, kv }).collect();
    let Ok(out) = e.model.mtp_forward_batch(0, &inputs, &hidden, &mut e.pool, layer) else { return };
    drop(inputs);

    // 2. Pages whose main and MTP entries are both written join the prefix cache; the first
    //    draft of every decoding request comes from its last catch-up row.
    let mut chain: Vec<(usize, Vec<f32>, crate::sample::Sampler)> = Vec::new(); // (index, last output, drafter)
    let mut row = 0;
    for (i, t, _) in &catch {
        let s = &mut e.running[*i];
        s.mtp_len += t.len();
        row += t.len();
        let upto = s.mtp_len.min(s.kv.len);
        e.pool.commit(&mut s.kv, &s.tokens[..upto]);
        let remaining = s.req.max_tokens.saturating_sub(s.generated);
        let room = context.saturating_sub(s.tokens.len() + 1);
        let want = depth.min(remaining.saturating_sub(1)).min(room);
        let end = s.kv.len + want;
        if s.finish.is_some() || s.pending() != 1 || want == 0 || e.pool.reserve(&mut s.kv, end).is_err() {
            continue;
        }
        let o = out[(row - 1) * d..row * d].to_vec();
        let mut drafter = s.sampler.drafter();
        let (tok, q) = drafter.pick(&e.model.logits(&o));
        drafter.record(tok);
        s.drafts = vec![tok];
        s.draft_probs = vec![q];
        if want > 1 {
            chain.push((*i, o, drafter));
        }
    }

    // 3. Chained drafts, one batched MTP step per depth, at positions past the pending token.
    for k in 1..depth {
        let active: Vec<usize> = (0..chain.len())
            .filter(|&c| {
                let s = &e.running[chain[c].0];
                let remaining = s.req.max_tokens.saturating_sub(s.generated);
                let room = context.saturating_sub(s.tokens.len() + 1);
                s.drafts.len() == k && k < depth.min(remaining.saturating_sub(1)).min(room)
            })
            .collect();
        if active.is_empty() {
            break;
        }
        let tokens: Vec<[u32; 1]> =
            active.iter().map(|&c| [*e.running[chain[c].0].drafts.last().expect("one draft")]).collect();
        let views: Vec<SeqKv> = active
            .iter()
            .map(|&c| {
                let s = &e.running[chain[c].0];
                at(&s.kv, s.kv.len + k - 1)
            })
            .collect();
        let hidden: Vec<f32> = active.iter().flat_map(|&c| chain[c].1.iter().copied()).collect();
        let inputs: Vec<SeqInput> = tokens.iter().zip(&views).map(|(t, kv)| SeqInput { tokens: t, kv }).collect();
        let Ok(out) = e.model.mtp_forward_batch(0, &inputs, &hidden, &mut e.pool, layer) else { break };
        drop(inputs);
        for (n, &c) in active.iter().enumerate() {
            let o = out[n * d..(n + 1) * d].to_vec();
            let (i, _, drafter) = &mut chain[c];
            let s = &mut e.running[*i];
            let (tok, q) = drafter.pick(&e.model.logits(&o));
            drafter.record(tok);
            s.drafts.push(tok);
            s.draft_probs.push(q);
            chain[c].1 = o;
        }
    }
}
