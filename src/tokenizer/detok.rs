//! Incremental detokenization for streaming: text is released only once it is whole.
//!
//! Byte-level BPE splits multi-byte characters across tokens, so decoding a token alone can
//! end in half a character (U+FFFD). Each step decodes a small window twice, the text before
//! the new tokens and the text with them, and emits the difference only when it does not end
//! in a replacement character.

use super::Tokenizer;

#[derive(Debug, Clone, Default)]
pub struct Detokenizer {
    ids: Vec<u32>,
    /// Start of the decoding window (a few tokens back, so merges across it decode right).
    prefix: usize,
    /// Tokens up to here have been emitted.
    read: usize,
}

impl Detokenizer {
    pub fn new() -> Detokenizer {
        Detokenizer::default()
    }

    /// Adds a token; returns the newly complete text (possibly empty).
    pub fn push(&mut self, tok: &Tokenizer, id: u32) -> String {
        self.ids.push(id);
        let before = tok.decode(&self.ids[self.prefix..self.read]);
        let after = tok.decode(&self.ids[self.prefix..]);
        if after.len() > before.len() && !after.ends_with('\u{FFFD}') && after.starts_with(&before) {
            let delta = after[before.len()..].to_string();
            self.prefix = self.read;
            self.read = self.ids.len();
            delta
        } else {
            String::new()
        }
    }

    /// Whatever is still held back (an incomplete character at the very end).
    pub fn finish(&mut self, tok: &Tokenizer) -> String {
        let before = tok.decode(&self.ids[self.prefix..self.read]);
        let after = tok.decode(&self.ids[self.prefix..]);
        self.prefix = self.ids.len();
        self.read = self.ids.len();
        after.get(before.len()..).unwrap_or_default().to_string()
    }

    pub fn ids(&self) -> &[u32] {
        &self.ids
    }
}
