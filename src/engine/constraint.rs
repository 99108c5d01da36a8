//! A grammar that a request's output must follow (structured output, forced tool calls).
//!
//! The engine knows only this interface: before each of the request's tokens is chosen it
//! asks which tokens are allowed and masks the rest out of the logits; each chosen token is
//! then committed. Drafts of speculative decoding are committed while they are drawn and rolled
//! back before verification, which commits what it accepts. Text the grammar forces (no other
//! token could follow) is appended at once, so one forward computes it instead of one step per
//! token.

/// The allowed next tokens: bit `t % 32` of word `t / 32` is set when token `t` may follow.
/// Shape: [ceil(V / 32)] u32 words.
pub type TokenMask = Vec<u32>;

pub trait Constraint: Send {
    /// The tokens that may come next in the current state. Stop tokens are allowed exactly
    /// when the output so far is complete.
    fn allowed(&mut self) -> Result<TokenMask, String>;
    /// Advances past `token` (never a stop token: those end the request).
    fn commit(&mut self, token: u32) -> Result<(), String>;
    /// Undoes the last `n` commits.
    fn rollback(&mut self, n: usize) -> Result<(), String>;
    /// The tokens the grammar allows no alternative to from here (the tags of a forced tool
    /// call), already committed; empty when the next token is a choice.
    fn forced(&mut self) -> Result<Vec<u32>, String> {
        Ok(Vec::new())
    }
    /// Nothing can follow what was committed: the request ends here.
    fn is_complete(&self) -> bool;
}

/// `logits` [V] with every token `mask` does not allow set to -inf; an error when the mask
/// allows nothing.
pub fn masked(logits: &[f32], mask: &[u32]) -> Result<Vec<f32>, String> {
    let mut out = logits.to_vec();
    let mut any = false;
    for (t, v) in out.iter_mut().enumerate() {
        let allowed = mask.get(t / 32).is_some_and(|w| w >> (t % 32) & 1 == 1);
        if allowed {
            any = true;
        } else {
            *v = f32::NEG_INFINITY;
        }
    }
    if any { Ok(out) } else { Err("the output constraint allows no token here".into()) }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn masking_keeps_allowed_tokens_only() {
        let logits = [1.0, 2.0, 3.0, 4.0, 5.0];
        let m = masked(&logits, &[0b01010]).unwrap();
        assert_eq!(m[1], 2.0);
        assert_eq!(m[3], 4.0);
        assert!(m[0] == f32::NEG_INFINITY && m[2] == f32::NEG_INFINITY && m[4] == f32::NEG_INFINITY);
        // Tokens past the mask's words are not allowed.
        let m = masked(&[0.0; 40], &[1]).unwrap();
        assert!(m[33] == f32::NEG_INFINITY && m[0] == 0.0);
        assert!(masked(&logits, &[0]).is_err());
    }
}
