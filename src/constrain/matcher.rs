//! One request's llguidance matcher as the engine's [`Constraint`].

use llguidance::Matcher;

use crate::engine::{Constraint, TokenMask};

pub struct GrammarConstraint {
    matcher: Matcher,
    /// Every stop token: llguidance knows one EOS, the model may have several.
    eos: Vec<u32>,
    /// [ceil(V / 32)] words in a mask.
    words: usize,
}

impl GrammarConstraint {
    pub fn new(matcher: Matcher, eos: Vec<u32>, vocab: usize) -> GrammarConstraint {
        GrammarConstraint { matcher, eos, words: vocab.div_ceil(32) }
    }

    fn error(&self, what: &str, e: impl std::fmt::Display) -> String {
        format!("output constraint: {what}: {e}")
    }
}

impl Constraint for GrammarConstraint {
    fn allowed(&mut self) -> Result<TokenMask, String> {
        let vob = self.matcher.compute_mask().map_err(|e| self.error("mask", e))?;
        let mut mask: TokenMask = vob.as_slice().to_vec();
        mask.resize(self.words, 0);
        let first = self.eos[0] as usize;
        if mask[first / 32] >> (first % 32) & 1 == 1 {
            for &t in &self.eos {
                mask[t as usize / 32] |= 1 << (t % 32);
            }
        }
        Ok(mask)
    }

    fn commit(&mut self, token: u32) -> Result<(), String> {
        self.matcher.consume_token(token).map_err(|e| self.error("token not allowed", e))
    }

    fn rollback(&mut self, n: usize) -> Result<(), String> {
        self.matcher.rollback(n).map_err(|e| self.error("rollback", e))
    }

    fn forced(&mut self) -> Result<Vec<u32>, String> {
        let tokens = self.matcher.consume_ff_tokens();
        match self.matcher.get_error() {
            Some(e) => Err(self.error("forced tokens", e)),
            None => Ok(tokens),
        }
    }

    fn is_complete(&self) -> bool {
        self.matcher.is_stopped() && !self.matcher.is_error()
    }
}
