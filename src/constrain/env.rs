//! llguidance's tokenizer interface over kiln's own `tokenizers` instance.
//!
//! Why not `toktrie_hf_tokenizers`: it is built on `tokenizers` 0.21 while kiln is on 0.22,
//! so it would compile and load a second copy of the tokenizer. Token bytes come from
//! llguidance's own tokenizer.json reader; this adds only the re-tokenizing of forced text.

use llguidance::toktrie::{TokTrie, TokenId, TokenizerEnv};

pub struct KilnTokEnv {
    trie: TokTrie,
    hf: tokenizers::Tokenizer,
}

impl KilnTokEnv {
    pub fn new(trie: TokTrie, hf: tokenizers::Tokenizer) -> KilnTokEnv {
        KilnTokEnv { trie, hf }
    }
}

impl TokenizerEnv for KilnTokEnv {
    fn tok_trie(&self) -> &TokTrie {
        &self.trie
    }

    fn tokenize_bytes(&self, s: &[u8]) -> Vec<TokenId> {
        // llguidance re-tokenizes whole lexemes only, so lossy UTF-8 never splits a character
        // that the grammar produced; the trie's greedy split is the fallback.
        match std::str::from_utf8(s) {
            Ok(text) => match self.hf.encode(text, false) {
                Ok(e) => e.get_ids().to_vec(),
                Err(_) => self.trie.greedy_tokenize(s),
            },
            Err(_) => self.trie.greedy_tokenize(s),
        }
    }
}
