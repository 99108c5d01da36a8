//! Constrained decoding with llguidance: a request's grammar (a JSON schema from
//! `response_format`, or GLM's tool-call format under `tool_choice`) becomes an
//! [`engine::Constraint`](crate::engine::Constraint) that masks the tokens the grammar forbids.
//!
//! One [`Grammars`] per server holds llguidance's view of the vocabulary (every token's bytes,
//! built once from tokenizer.json); each request gets its own parser from it.

mod env;
pub mod grammar;
mod matcher;

use std::sync::Arc;

use llguidance::api::TopLevelGrammar;
use llguidance::toktrie::{TokEnv, TokRxInfo, TokTrie};
use llguidance::{Matcher, ParserFactory};

use crate::engine::Constraint;
use crate::tokenizer::Tokenizer;

pub use grammar::{ToolSpec, json_object, json_schema, tool_calls};

pub struct Grammars {
    factory: ParserFactory,
    /// Token ids that end generation; allowed together when the grammar is complete.
    eos: Vec<u32>,
    /// Logit rows per token (the model's vocabulary, which may exceed the tokenizer's).
    vocab: usize,
}

impl Grammars {
    /// llguidance's view of `tok`'s vocabulary, padded to the model's `vocab` logits.
    pub fn new(tok: &Tokenizer, vocab: usize) -> Result<Grammars, String> {
        let json: serde_json::Value =
            serde_json::from_slice(tok.json()).map_err(|e| format!("tokenizer.json: not JSON: {e}"))?;
        let mut words =
            llguidance::token_bytes_from_tokenizer_json(&json).map_err(|e| format!("tokenizer.json: {e}"))?;
        if words.len() > vocab {
            return Err(format!("the tokenizer has {} tokens but the model only {vocab} logits", words.len()));
        }
        words.resize(vocab, Vec::new());
        let eos: Vec<u32> = tok.eos_ids().iter().copied().filter(|&t| (t as usize) < vocab).collect();
        let first_eos = *eos.first().ok_or("the tokenizer names no end-of-sequence token")?;
        let trie = TokTrie::from(&TokRxInfo::new(vocab as u32, first_eos), &words);
        let env: TokEnv = Arc::new(env::KilnTokEnv::new(trie, tok.hf().clone()));
        let mut factory = ParserFactory::new_simple(&env).map_err(|e| e.to_string())?;
        factory.quiet();
        Ok(Grammars { factory, eos, vocab })
    }

    /// A fresh constraint for `grammar`; an error (the grammar's fault) when it does not
    /// compile.
    pub fn constraint(&self, grammar: TopLevelGrammar) -> Result<Box<dyn Constraint>, String> {
        let parser = self.factory.create_parser(grammar).map_err(|e| e.to_string())?;
        let matcher = Matcher::new(Ok(parser));
        if let Some(e) = matcher.get_error() {
            return Err(e);
        }
        Ok(Box::new(matcher::GrammarConstraint::new(matcher, self.eos.clone(), self.vocab)))
    }
}
