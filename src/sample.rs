//! Choosing the next token from logits: penalties, temperature, top-k / top-p / min-p, and
//! a seeded random stream; plus the logprobs reported to clients.

use std::collections::HashMap;

use crate::backend::cpu::rank_order;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

/// OpenAI / vLLM sampling parameters. Neutral values turn each stage off.
#[derive(Debug, Clone, PartialEq)]
pub struct SamplingParams {
    /// 0 = greedy.
    pub temperature: f32,
    /// Keep the smallest set of tokens whose probability reaches top_p (1 = off).
    pub top_p: f32,
    /// Keep the k most likely tokens (0 = off).
    pub top_k: usize,
    /// Drop tokens below min_p x the top token's probability (0 = off).
    pub min_p: f32,
    /// Subtracted once from every token already generated (OpenAI semantics).
    pub presence_penalty: f32,
    /// Subtracted per occurrence in the generated text.
    pub frequency_penalty: f32,
    /// HF-style: logits of tokens in the prompt or output are divided (if > 0) or
    /// multiplied (if < 0) by it (1 = off).
    pub repetition_penalty: f32,
    /// Same seed + same request = same tokens. None draws a seed.
    pub seed: Option<u64>,
}

impl Default for SamplingParams {
    fn default() -> Self {
        SamplingParams {
            temperature: 1.0,
            top_p: 1.0,
            top_k: 0,
            min_p: 0.0,
            presence_penalty: 0.0,
            frequency_penalty: 0.0,
            repetition_penalty: 1.0,
            seed: None,
        }
    }
}

impl SamplingParams {
    pub fn greedy() -> SamplingParams {
        SamplingParams { temperature: 0.0, ..Default::default() }
    }
}

/// One request's sampler: its parameters, its random stream, and the token history the
/// penalties need.
#[derive(Clone)]
pub struct Sampler {
    params: SamplingParams,
    rng: ChaCha8Rng,
    /// Generated tokens and their counts.
    generated: HashMap<u32, u32>,
    /// Tokens of the prompt (repetition penalty only).
    prompt: HashMap<u32, ()>,
}

/// What speculative verification decided for one draft token.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    Accept,
    /// Rejected; this token replaces it and ends the step.
    Replace(u32),
}

impl Sampler {
    pub fn new(params: SamplingParams, prompt: &[u32]) -> Sampler {
        let seed = params.seed.unwrap_or_else(rand::random);
        Sampler {
            rng: ChaCha8Rng::seed_from_u64(seed),
            params,
            generated: HashMap::new(),
            prompt: prompt.iter().map(|&t| (t, ())).collect(),
        }
    }

    pub fn is_greedy(&self) -> bool {
        self.params.temperature <= 0.0
    }

    /// Greedy with no penalty: the next token is the logits' argmax and nothing else, so the
    /// backend can pick it where the logits are.
    pub fn is_plain_greedy(&self) -> bool {
        let p = &self.params;
        self.is_greedy() && p.repetition_penalty == 1.0 && p.presence_penalty == 0.0 && p.frequency_penalty == 0.0
    }

    /// Records `argmax`, the logits' argmax picked elsewhere (plain greedy only), as this
    /// step's token.
    pub fn take_argmax(&mut self, argmax: u32) -> u32 {
        debug_assert!(self.is_plain_greedy());
        self.record(argmax);
        argmax
    }

    /// Greedy verification of `draft` against the target's argmax picked elsewhere (plain
    /// greedy only).
    pub fn verify_argmax(&mut self, argmax: u32, draft: u32) -> Verdict {
        self.record(argmax);
        if argmax == draft { Verdict::Accept } else { Verdict::Replace(argmax) }
    }

    /// Picks the next token and records it in the history.
    pub fn sample(&mut self, logits: &[f32]) -> u32 {
        let (token, _) = self.pick(logits);
        self.record(token);
        token
    }

    /// The next token and, when sampling, the distribution it was drawn from; the history is
    /// not changed (drafting uses this).
    pub fn pick(&mut self, logits: &[f32]) -> (u32, Option<Vec<f32>>) {
        match self.distribution(logits) {
            None => (argmax(&self.penalized(logits)), None),
            Some(p) => (self.draw(&p), Some(p)),
        }
    }

    pub fn record(&mut self, token: u32) {
        *self.generated.entry(token).or_default() += 1;
    }

    /// A sampler for drafting ahead of this one: the same history, an independent random
    /// stream (draft and verification draws must not be correlated).
    pub fn drafter(&self) -> Sampler {
        let mut d = self.clone();
        d.rng.set_stream(d.rng.get_stream().wrapping_add(1));
        d
    }

    /// Probabilities over the vocabulary after penalties, temperature, top-k, top-p and
    /// min-p; None when greedy.
    pub fn distribution(&self, logits: &[f32]) -> Option<Vec<f32>> {
        if self.is_greedy() {
            return None;
        }
        let cand = filtered(&self.penalized(logits), &self.params);
        let total: f32 = cand.iter().map(|c| c.1).sum();
        let mut p = vec![0.0f32; logits.len()];
        for (t, w) in cand {
            p[t as usize] = w / total;
        }
        Some(p)
    }

    /// A token drawn from `p` (a distribution over the vocabulary).
    fn draw(&mut self, p: &[f32]) -> u32 {
        let u = self.rng.random::<f32>();
        draw_at(p, u)
    }

    /// Verifies a draft against the target model's `logits` (speculative decoding) and
    /// records the token that stands. Greedy: accept iff the draft is the target's argmax.
    /// Sampling (the standard rejection rule, so outputs follow the target distribution):
    /// accept with probability min(1, p(d) / q(d)); otherwise draw from max(0, p - q).
    pub fn verify(&mut self, logits: &[f32], draft: u32, q: Option<&[f32]>) -> Verdict {
        let verdict = match (self.distribution(logits), q) {
            (None, _) | (_, None) => {
                let y = argmax(&self.penalized(logits));
                if y == draft { Verdict::Accept } else { Verdict::Replace(y) }
            }
            (Some(p), Some(q)) => {
                let u = self.rng.random::<f32>();
                if accept_draft(&p, q, draft, u) {
                    Verdict::Accept
                } else {
                    Verdict::Replace(self.draw(&residual(&p, q)))
                }
            }
        };
        self.record(match verdict {
            Verdict::Accept => draft,
            Verdict::Replace(t) => t,
        });
        verdict
    }

    fn penalized(&self, logits: &[f32]) -> Vec<f32> {
        let mut l = logits.to_vec();
        let p = &self.params;
        if p.repetition_penalty != 1.0 {
            let seen = self.prompt.keys().chain(self.generated.keys());
            for &t in seen {
                if let Some(v) = l.get_mut(t as usize) {
                    *v = if *v > 0.0 { *v / p.repetition_penalty } else { *v * p.repetition_penalty };
                }
            }
        }
        if p.presence_penalty != 0.0 || p.frequency_penalty != 0.0 {
            for (&t, &n) in &self.generated {
                if let Some(v) = l.get_mut(t as usize) {
                    *v -= p.presence_penalty + p.frequency_penalty * n as f32;
                }
            }
        }
        l
    }
}

/// The token at `u` in [0, 1) of `p`'s mass, walking the vocabulary in index order (what
/// drawing does with a uniform variate; the device's sampling kernel walks the same way).
pub fn draw_at(p: &[f32], u: f32) -> u32 {
    let mut u = u * p.iter().sum::<f32>();
    let mut last = 0;
    for (i, &w) in p.iter().enumerate() {
        if w <= 0.0 {
            continue;
        }
        last = i;
        if u < w {
            return i as u32;
        }
        u -= w;
    }
    last as u32
}

/// The rejection rule's acceptance: u < p(d) / q(d), with u uniform in [0, 1).
pub fn accept_draft(p: &[f32], q: &[f32], draft: u32, u: f32) -> bool {
    let (pd, qd) = (p[draft as usize], q[draft as usize]);
    qd <= 0.0 || u * qd < pd
}

/// max(0, p - q), normalized; p itself where q covers p everywhere.
pub fn residual(p: &[f32], q: &[f32]) -> Vec<f32> {
    let r: Vec<f32> = p.iter().zip(q).map(|(a, b)| (a - b).max(0.0)).collect();
    let total: f32 = r.iter().sum();
    if total > 0.0 { r.into_iter().map(|x| x / total).collect() } else { p.to_vec() }
}

/// (token, unnormalized probability) of the tokens that survive temperature, top-k, top-p
/// and min-p, most likely first.
fn filtered(l: &[f32], p: &SamplingParams) -> Vec<(u32, f32)> {
    let max = l.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    let mut cand: Vec<(u32, f32)> =
        l.iter().enumerate().map(|(i, &v)| (i as u32, ((v - max) / p.temperature).exp())).collect();
    cand.sort_by(|a, b| rank_order((a.1, a.0), (b.1, b.0)));
    if p.top_k > 0 {
        cand.truncate(p.top_k);
    }
    if p.top_p < 1.0 {
        let total: f32 = cand.iter().map(|c| c.1).sum();
        let mut acc = 0.0;
        let mut keep = cand.len();
        for (i, c) in cand.iter().enumerate() {
            acc += c.1;
            if acc >= p.top_p * total {
                keep = i + 1;
                break;
            }
        }
        cand.truncate(keep);
    }
    if p.min_p > 0.0 {
        let floor = p.min_p * cand[0].1;
        cand.retain(|c| c.1 >= floor);
    }
    cand
}

/// The first logit under the ranking rule (highest; lowest index among equals; NaN last).
pub fn argmax(logits: &[f32]) -> u32 {
    crate::backend::cpu::arg_first(logits)
}

/// A chosen token's log-probability under the model (before sampling adjustments) and the
/// `top` most likely alternatives.
#[derive(Debug, Clone, PartialEq)]
pub struct TokenLogprob {
    pub token: u32,
    pub logprob: f32,
    pub top: Vec<(u32, f32)>,
}

pub fn logprobs(logits: &[f32], token: u32, top: usize) -> TokenLogprob {
    let max = logits.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    let lse = max + logits.iter().map(|v| (v - max).exp()).sum::<f32>().ln();
    let mut best: Vec<(u32, f32)> = Vec::new();
    if top > 0 {
        let idx = crate::backend::cpu::top_k(logits, top);
        best = idx.into_iter().map(|i| (i, logits[i as usize] - lse)).collect();
        best.sort_by(|a, b| rank_order((a.1, a.0), (b.1, b.0)));
    }
    TokenLogprob { token, logprob: logits[token as usize] - lse, top: best }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(params: SamplingParams, logits: &[f32], n: usize) -> Vec<u32> {
        let mut s = Sampler::new(params, &[]);
        (0..n).map(|_| s.sample(logits)).collect()
    }

    #[test]
    fn greedy_takes_the_first_maximum() {
        assert_eq!(run(SamplingParams::greedy(), &[0.0, 3.0, 3.0, 1.0], 1), vec![1]);
    }

    #[test]
    fn seeded_sampling_repeats() {
        let p = SamplingParams { seed: Some(7), ..Default::default() };
        let logits = [0.5, 0.1, 0.9, 0.3];
        let a = run(p.clone(), &logits, 30);
        assert_eq!(a, run(p, &logits, 30));
        assert!(a.iter().collect::<std::collections::BTreeSet<_>>().len() > 1);
    }

    #[test]
    fn filters_cut_the_tail() {
        let logits = [3.0, 2.0, 1.0, 0.0];
        let top_k = SamplingParams { top_k: 1, seed: Some(1), ..Default::default() };
        assert!(run(top_k, &logits, 40).iter().all(|&t| t == 0));
        let top_p = SamplingParams { top_p: 0.5, seed: Some(1), ..Default::default() };
        assert!(run(top_p, &logits, 40).iter().all(|&t| t == 0));
        // p(1)/p(0) = e^-1 = 0.37: min_p 0.3 keeps tokens 0 and 1 only.
        let min_p = SamplingParams { min_p: 0.3, seed: Some(1), ..Default::default() };
        let got = run(min_p, &logits, 200);
        assert!(got.iter().all(|&t| t < 2) && got.contains(&1));
    }

    #[test]
    fn penalties_discourage_repeats() {
        // Greedy with a frequency penalty of 2: after token 0 is picked (logit 1.5 -> -0.5)
        // token 1 (1.0) wins; then 1 drops to -1.0 and token 0 wins again.
        let p = SamplingParams { frequency_penalty: 2.0, ..SamplingParams::greedy() };
        assert_eq!(run(p, &[1.5, 1.0, -3.0], 3), vec![0, 1, 0]);
        let p = SamplingParams { presence_penalty: 1.0, ..SamplingParams::greedy() };
        assert_eq!(run(p, &[1.5, 1.0, 0.2], 3), vec![0, 1, 0]);
        // Repetition penalty covers the prompt: token 0 (in the prompt) 1.5 / 2 < 1.0.
        let mut s = Sampler::new(SamplingParams { repetition_penalty: 2.0, ..SamplingParams::greedy() }, &[0]);
        assert_eq!(s.sample(&[1.5, 1.0]), 1);
    }

    #[test]
    fn speculative_sampling_follows_the_target_distribution() {
        // Tiny vocabulary: drafts from q, verified against p, must come out distributed as p.
        let p = [0.05f32, 0.40, 0.25, 0.20, 0.10];
        let q = [0.30f32, 0.10, 0.30, 0.05, 0.25];
        let mut rng = ChaCha8Rng::seed_from_u64(11);
        let n = 200_000;
        let mut counts = [0u32; 5];
        for _ in 0..n {
            let mut u = rng.random::<f32>();
            let mut d = 0;
            while d < 4 && u >= q[d] {
                u -= q[d];
                d += 1;
            }
            let out = if accept_draft(&p, &q, d as u32, rng.random::<f32>()) {
                d
            } else {
                let r = residual(&p, &q);
                let mut u = rng.random::<f32>();
                let mut t = 0;
                while t < 4 && u >= r[t] {
                    u -= r[t];
                    t += 1;
                }
                t
            };
            counts[out] += 1;
        }
        // Pearson chi-square with 4 degrees of freedom: 18.47 is the 0.1% critical value.
        let chi2: f64 = counts
            .iter()
            .zip(&p)
            .map(|(&c, &pi)| {
                let e = n as f64 * pi as f64;
                (c as f64 - e).powi(2) / e
            })
            .sum();
        assert!(chi2 < 18.47, "chi-square {chi2:.2}: {counts:?}");
        // And drafting from q alone would fail the same test by a wide margin.
        let chi2_q: f64 = q.iter().zip(&p).map(|(&qi, &pi)| n as f64 * (qi - pi).powi(2) as f64 / pi as f64).sum();
        assert!(chi2_q > 1000.0);
    }

    #[test]
    fn greedy_verification_accepts_only_the_argmax() {
        let mut s = Sampler::new(SamplingParams::greedy(), &[]);
        assert_eq!(s.verify(&[0.0, 2.0, 1.0], 1, None), Verdict::Accept);
        assert_eq!(s.verify(&[0.0, 2.0, 1.0], 2, None), Verdict::Replace(1));
    }

    #[test]
    fn only_penalty_free_greedy_is_plain() {
        assert!(Sampler::new(SamplingParams::greedy(), &[]).is_plain_greedy());
        assert!(!Sampler::new(SamplingParams::default(), &[]).is_plain_greedy());
        let penalized = [
            SamplingParams { repetition_penalty: 1.1, ..SamplingParams::greedy() },
            SamplingParams { presence_penalty: 0.5, ..SamplingParams::greedy() },
            SamplingParams { frequency_penalty: 0.5, ..SamplingParams::greedy() },
        ];
        for p in penalized {
            assert!(!Sampler::new(p, &[]).is_plain_greedy());
        }
    }

    #[test]
    fn argmax_picked_elsewhere_matches_the_logits_path() {
        // The same history either way: a later penalty-free pick must not differ.
        let logits = [0.0, 2.0, 1.0];
        let (mut a, mut b) = (Sampler::new(SamplingParams::greedy(), &[]), Sampler::new(SamplingParams::greedy(), &[]));
        assert_eq!(a.sample(&logits), b.take_argmax(1));
        assert_eq!(a.verify(&logits, 2, None), b.verify_argmax(1, 2));
        assert_eq!(a.verify(&logits, 1, None), b.verify_argmax(1, 1));
        assert_eq!(a.generated, b.generated);
    }

    #[test]
    fn logprobs_are_log_softmax() {
        let lp = logprobs(&[0.0, 0.0f32.ln_1p(), 2.0f32.ln()], 2, 2);
        // softmax of ln(1), ln(1), ln(2) = 1/4, 1/4, 1/2
        assert!((lp.logprob - 0.5f32.ln()).abs() < 1e-6);
        assert_eq!(lp.top[0].0, 2);
        assert_eq!(lp.top.len(), 2);
    }
}
