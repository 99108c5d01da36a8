//! Text in and out: the model directory's own `tokenizer.json` (HF `tokenizers`, pure-Rust
//! regex backend), its end-of-sequence ids, and its chat template.

mod chat;
mod detok;
mod tojson;

use std::collections::BTreeSet;
use std::path::Path;

use serde_json::Value;

pub use chat::{ChatMessage, ChatTemplate};
pub use detok::Detokenizer;

use crate::error::{Error, Result};

pub struct Tokenizer {
    inner: tokenizers::Tokenizer,
    /// tokenizer.json as read (constrained decoding reads every token's bytes from it).
    json: Vec<u8>,
    eos: BTreeSet<u32>,
    chat: Option<ChatTemplate>,
}

/// The files besides the weights that the tokenizer and chat template are read from.
pub const TOKENIZER_FILES: &[&str] =
    &["tokenizer.json", "tokenizer_config.json", "generation_config.json", "chat_template.jinja"];

/// The text files of a model directory that describe its tokenizer.
#[derive(Debug, Clone, Default)]
pub struct TokenizerFiles {
    pub tokenizer_json: Vec<u8>,
    pub tokenizer_config: Option<String>,
    pub generation_config: Option<String>,
    pub config: Option<String>,
    pub chat_template_jinja: Option<String>,
}

impl TokenizerFiles {
    /// Reads the files of [`TOKENIZER_FILES`] that `dir` has (tokenizer.json must be there).
    pub fn read_dir(dir: &Path) -> Result<TokenizerFiles> {
        let path = dir.join("tokenizer.json");
        let tokenizer_json = std::fs::read(&path).map_err(|e| Error::io(&path, e))?;
        let opt = |name: &str| std::fs::read_to_string(dir.join(name)).ok();
        Ok(TokenizerFiles {
            tokenizer_json,
            tokenizer_config: opt("tokenizer_config.json"),
            generation_config: opt("generation_config.json"),
            config: opt("config.json"),
            chat_template_jinja: opt("chat_template.jinja"),
        })
    }
}

fn bad(file: &str, message: String) -> Error {
    Error::Config { path: file.into(), message }
}

fn parse_json(file: &str, text: &Option<String>) -> Result<Option<Value>> {
    text.as_deref().map(|t| serde_json::from_str(t).map_err(|e| bad(file, format!("not JSON: {e}")))).transpose()
}

impl Tokenizer {
    pub fn from_dir(dir: &Path) -> Result<Tokenizer> {
        Tokenizer::from_files(&TokenizerFiles::read_dir(dir)?)
    }

    pub fn from_files(files: &TokenizerFiles) -> Result<Tokenizer> {
        let inner = tokenizers::Tokenizer::from_bytes(&files.tokenizer_json)
            .map_err(|e| bad("tokenizer.json", format!("cannot load: {e}")))?;
        let tok_cfg = parse_json("tokenizer_config.json", &files.tokenizer_config)?;
        let gen_cfg = parse_json("generation_config.json", &files.generation_config)?;
        let cfg = parse_json("config.json", &files.config)?;

        // EOS: every id named by config.json, generation_config.json and the tokenizer's
        // eos_token, as HF generation stops on any of them.
        let mut eos = BTreeSet::new();
        for v in [&cfg, &gen_cfg].into_iter().flatten() {
            match v.get("eos_token_id") {
                Some(Value::Number(n)) => eos.extend(n.as_u64().map(|x| x as u32)),
                Some(Value::Array(a)) => eos.extend(a.iter().filter_map(Value::as_u64).map(|x| x as u32)),
                _ => {}
            }
        }
        let token_text = |key: &str| -> Option<String> {
            let v = tok_cfg.as_ref()?.get(key)?;
            v.as_str().map(str::to_string).or_else(|| v.get("content")?.as_str().map(str::to_string))
        };
        let eos_token = token_text("eos_token");
        if let Some(t) = &eos_token {
            eos.extend(inner.token_to_id(t));
        }

        let source = files.chat_template_jinja.clone().or_else(|| {
            let t = tok_cfg.as_ref()?.get("chat_template")?;
            match t {
                Value::String(s) => Some(s.clone()),
                // A list of named templates: the "default" one.
                Value::Array(list) => list
                    .iter()
                    .find(|x| x.get("name").and_then(Value::as_str) == Some("default"))
                    .and_then(|x| x.get("template")?.as_str().map(str::to_string)),
                _ => None,
            }
        });
        let chat = source
            .map(|s| ChatTemplate::new(s, token_text("bos_token"), eos_token))
            .transpose()
            .map_err(|e| bad("tokenizer_config.json", format!("chat_template: {e}")))?;
        Ok(Tokenizer { inner, json: files.tokenizer_json.clone(), eos, chat })
    }

    /// tokenizer.json's bytes.
    pub fn json(&self) -> &[u8] {
        &self.json
    }

    /// The HF tokenizer itself.
    pub fn hf(&self) -> &tokenizers::Tokenizer {
        &self.inner
    }

    pub fn vocab_size(&self) -> usize {
        self.inner.get_vocab_size(true)
    }

    /// One past the largest token id it can produce (ids may be sparse, so this can exceed
    /// `vocab_size`).
    pub fn id_bound(&self) -> usize {
        self.inner.get_vocab(true).values().max().map_or(0, |&m| m as usize + 1)
    }

    /// Token ids of `text`; `special` adds the tokenizer's own specials (BOS and such), as HF
    /// does for plain prompts. Chat prompts already carry theirs in the rendered text.
    pub fn encode(&self, text: &str, special: bool) -> Result<Vec<u32>> {
        self.inner
            .encode(text, special)
            .map(|e| e.get_ids().to_vec())
            .map_err(|e| Error::Usage(format!("cannot tokenize: {e}")))
    }

    /// Text of `ids` without special tokens.
    pub fn decode(&self, ids: &[u32]) -> String {
        self.inner.decode(ids, true).unwrap_or_default()
    }

    pub fn eos_ids(&self) -> &BTreeSet<u32> {
        &self.eos
    }

    pub fn chat_template(&self) -> Option<&ChatTemplate> {
        self.chat.as_ref()
    }

    pub fn token_text(&self, id: u32) -> String {
        self.inner.id_to_token(id).unwrap_or_default()
    }

    /// A token's bytes as it appears in decoded text (logprobs report these).
    pub fn token_piece(&self, id: u32) -> String {
        self.inner.decode(&[id], false).unwrap_or_default()
    }
}
