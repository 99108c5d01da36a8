//! Choosing the next token from logits.

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

/// Greedy when temperature is 0; otherwise softmax(logits / temperature) restricted to the
/// smallest set of tokens whose probability reaches top_p, sampled with a seeded ChaCha8
/// stream (same seed, same logits -> same tokens, on every machine).
pub struct Sampler {
    temperature: f32,
    top_p: f32,
    rng: ChaCha8Rng,
}

impl Sampler {
    pub fn new(temperature: f32, top_p: f32, seed: u64) -> Sampler {
        Sampler { temperature, top_p, rng: ChaCha8Rng::seed_from_u64(seed) }
    }

    pub fn greedy() -> Sampler {
        Sampler::new(0.0, 1.0, 0)
    }

    pub fn sample(&mut self, logits: &[f32]) -> u32 {
        if self.temperature <= 0.0 {
            return argmax(logits);
        }
        let max = logits.iter().copied().fold(f32::NEG_INFINITY, f32::max);
        let mut probs: Vec<(u32, f32)> =
            logits.iter().enumerate().map(|(i, &l)| (i as u32, ((l - max) / self.temperature).exp())).collect();
        probs.sort_by(|a, b| b.1.total_cmp(&a.1).then(a.0.cmp(&b.0)));
        let total: f32 = probs.iter().map(|p| p.1).sum();
        let mut kept = 0.0;
        let mut n = 0;
        for p in &probs {
            kept += p.1;
            n += 1;
            if kept >= self.top_p * total {
                break;
            }
        }
        let mut u = self.rng.random::<f32>() * kept;
        for p in &probs[..n] {
            if u < p.1 {
                return p.0;
            }
            u -= p.1;
        }
        probs[n - 1].0
    }
}

/// The highest logit's index; the lowest index among equals.
pub fn argmax(logits: &[f32]) -> u32 {
    let mut best = 0;
    for (i, v) in logits.iter().enumerate() {
        if *v > logits[best] {
            best = i;
        }
    }
    best as u32
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn greedy_takes_the_first_maximum() {
        assert_eq!(Sampler::greedy().sample(&[0.0, 3.0, 3.0, 1.0]), 1);
    }

    #[test]
    fn seeded_sampling_repeats() {
        let logits = [0.5, 0.1, 0.9, 0.3];
        let a: Vec<u32> = (0..20).scan(Sampler::new(1.0, 1.0, 7), |s, _| Some(s.sample(&logits))).collect();
        let b: Vec<u32> = (0..20).scan(Sampler::new(1.0, 1.0, 7), |s, _| Some(s.sample(&logits))).collect();
        assert_eq!(a, b);
        assert!(a.iter().collect::<std::collections::BTreeSet<_>>().len() > 1);
    }

    #[test]
    fn top_p_cuts_the_tail() {
        // One token holds nearly all the mass: top_p 0.5 keeps only it.
        let mut s = Sampler::new(1.0, 0.5, 3);
        assert!((0..50).all(|_| s.sample(&[10.0, 0.0, 0.0]) == 0));
    }
}
