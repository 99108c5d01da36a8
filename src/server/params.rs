//! OpenAI request bodies, checked field by field into what the engine runs. Every refusal
//! names the field at fault.

use std::collections::BTreeSet;

use llguidance::api::TopLevelGrammar;
use serde_json::{Map, Value};

use super::api_error::ApiError;
use super::http::clip;
use super::tools::{ToolChoice, messages as chat_messages, parse_tools, response_format};
use crate::constrain::ToolSpec;
use crate::sample::SamplingParams;
use crate::tokenizer::Tokenizer;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Endpoint {
    Completions,
    Chat,
}

/// What the server enforces, from the plan and the model.
#[derive(Debug, Clone)]
pub struct Limits {
    pub model_name: String,
    pub max_prompt_tokens: usize,
    pub max_output_tokens: usize,
    pub context: usize,
    pub vocab: usize,
}

/// A validated request.
#[derive(Debug, Clone)]
pub struct Prepared {
    pub endpoint: Endpoint,
    pub prompt: Vec<u32>,
    pub params: SamplingParams,
    pub max_tokens: usize,
    pub stream: bool,
    pub include_usage: bool,
    pub stop: Vec<String>,
    pub stop_token_ids: BTreeSet<u32>,
    pub ignore_eos: bool,
    /// Alternatives per token to report; None = no logprobs.
    pub logprobs: Option<usize>,
    /// Chat: the tools whose calls are parsed out of the output (None: calls are not parsed).
    pub tools: Option<Vec<ToolSpec>>,
    /// Chat: the rendered prompt ends inside a think block, so the output starts as reasoning.
    pub in_reasoning: bool,
    /// The grammar the output must follow, and the request field it comes from.
    pub grammar: Option<(TopLevelGrammar, String)>,
}

/// Fields accepted and deliberately ignored: they do not change what is generated.
const IGNORED: &[&str] = &["user", "metadata", "store", "service_tier"];
const COMMON: &[&str] = &[
    "model",
    "stream",
    "stream_options",
    "temperature",
    "top_p",
    "top_k",
    "min_p",
    "presence_penalty",
    "frequency_penalty",
    "repetition_penalty",
    "seed",
    "stop",
    "stop_token_ids",
    "max_tokens",
    "n",
    "ignore_eos",
    "logit_bias",
    "logprobs",
];
const COMPLETIONS: &[&str] = &["prompt", "echo", "best_of", "suffix"];
const CHAT: &[&str] = &[
    "messages",
    "max_completion_tokens",
    "top_logprobs",
    "tools",
    "tool_choice",
    "parallel_tool_calls",
    "response_format",
    "chat_template_kwargs",
];
const MAX_TOP_LOGPROBS: u64 = 20;
const MIN_REPETITION_PENALTY: f64 = 0.01;
const MAX_STOP_STRINGS: usize = 16;

struct Fields<'a>(&'a Map<String, Value>);

impl Fields<'_> {
    fn get(&self, k: &str) -> Option<&Value> {
        self.0.get(k).filter(|v| !v.is_null())
    }

    fn bool(&self, k: &str) -> Result<Option<bool>, ApiError> {
        self.get(k)
            .map(|v| v.as_bool().ok_or_else(|| ApiError::field(k, format!("{k} must be true or false"))))
            .transpose()
    }

    fn number(&self, k: &str, lo: f64, hi: f64) -> Result<Option<f32>, ApiError> {
        let Some(v) = self.get(k) else { return Ok(None) };
        let x = v.as_f64().ok_or_else(|| ApiError::field(k, format!("{k} must be a number")))?;
        if !(lo..=hi).contains(&x) {
            return Err(ApiError::field(k, format!("{k} = {x} is outside [{lo}, {hi}]")));
        }
        Ok(Some(x as f32))
    }

    fn int(&self, k: &str, lo: i64, hi: i64) -> Result<Option<i64>, ApiError> {
        let Some(v) = self.get(k) else { return Ok(None) };
        let x = v.as_i64().ok_or_else(|| ApiError::field(k, format!("{k} must be an integer")))?;
        if !(lo..=hi).contains(&x) {
            return Err(ApiError::field(k, format!("{k} = {x} is outside [{lo}, {hi}]")));
        }
        Ok(Some(x))
    }
}

pub fn prepare(endpoint: Endpoint, body: &[u8], tok: &Tokenizer, limits: &Limits) -> Result<Prepared, ApiError> {
    let value: Value =
        serde_json::from_slice(body).map_err(|e| ApiError::bad_request(format!("the body is not valid JSON: {e}")))?;
    let obj = value.as_object().ok_or_else(|| ApiError::bad_request("the body must be a JSON object"))?;
    let own = match endpoint {
        Endpoint::Completions => COMPLETIONS,
        Endpoint::Chat => CHAT,
    };
    if let Some(k) = obj.keys().find(|k| ![COMMON, own, IGNORED].iter().any(|l| l.contains(&k.as_str()))) {
        let k = clip(k);
        return Err(ApiError::field(&k, format!("unknown field `{k}`")));
    }
    let f = Fields(obj);

    if let Some(m) = f.get("model") {
        let m = m.as_str().ok_or_else(|| ApiError::field("model", "model must be a string"))?;
        if m != limits.model_name {
            let mut e = ApiError::new(
                404,
                "invalid_request_error",
                "model_not_found",
                format!("model `{}` does not exist; this server serves `{}`", clip(m), limits.model_name),
            );
            e.param = Some("model".into());
            return Err(e);
        }
    }
    if let Some(n) = f.int("n", i64::MIN, i64::MAX)?
        && n != 1
    {
        return Err(ApiError::field("n", format!("n = {n} is not supported: kiln returns one choice per request")));
    }
    if f.get("logit_bias").is_some_and(|v| v.as_object().is_none_or(|m| !m.is_empty())) {
        return Err(ApiError::field("logit_bias", "logit_bias is not supported"));
    }
    let unsupported = |k: &str, ok: &dyn Fn(&Value) -> bool, why: &str| match f.get(k) {
        Some(v) if !ok(v) => Err(ApiError::field(k, format!("{k}: {why}"))),
        _ => Ok(()),
    };
    unsupported("echo", &|v| v == &Value::Bool(false), "echo is not supported")?;
    unsupported("best_of", &|v| v.as_i64() == Some(1), "best_of must be 1")?;
    unsupported("suffix", &|_| false, "suffix is not supported")?;

    let stream = f.bool("stream")?.unwrap_or(false);
    let include_usage = match f.get("stream_options") {
        None => false,
        Some(o) => {
            let o =
                o.as_object().ok_or_else(|| ApiError::field("stream_options", "stream_options must be an object"))?;
            if !stream {
                return Err(ApiError::field("stream_options", "stream_options is only allowed with stream = true"));
            }
            Fields(o)
                .bool("include_usage")
                .map_err(|_| {
                    ApiError::field(
                        "stream_options.include_usage",
                        "stream_options.include_usage must be true or false",
                    )
                })?
                .unwrap_or(false)
        }
    };

    let top_k = f.int("top_k", -1, i64::from(u32::MAX))?.unwrap_or(0);
    let params = SamplingParams {
        temperature: f.number("temperature", 0.0, 2.0)?.unwrap_or(1.0),
        top_p: match f.number("top_p", 0.0, 1.0)? {
            Some(p) if p <= 0.0 => return Err(ApiError::field("top_p", "top_p must be greater than 0")),
            p => p.unwrap_or(1.0),
        },
        top_k: top_k.max(0) as usize,
        min_p: f.number("min_p", 0.0, 1.0)?.unwrap_or(0.0),
        presence_penalty: f.number("presence_penalty", -2.0, 2.0)?.unwrap_or(0.0),
        frequency_penalty: f.number("frequency_penalty", -2.0, 2.0)?.unwrap_or(0.0),
        // Dividing logits by a vanishing penalty sends them to infinity: keep it sane.
        repetition_penalty: f.number("repetition_penalty", MIN_REPETITION_PENALTY, 10.0)?.unwrap_or(1.0),
        seed: f.int("seed", i64::MIN, i64::MAX)?.map(|s| s as u64),
    };

    let stop = match f.get("stop") {
        None => Vec::new(),
        Some(Value::String(s)) => vec![s.clone()],
        Some(Value::Array(a)) => a
            .iter()
            .map(|s| {
                s.as_str()
                    .map(str::to_string)
                    .ok_or_else(|| ApiError::field("stop", "stop must be a string or an array of strings"))
            })
            .collect::<Result<_, _>>()?,
        Some(_) => return Err(ApiError::field("stop", "stop must be a string or an array of strings")),
    };
    if stop.iter().any(String::is_empty) || stop.len() > MAX_STOP_STRINGS {
        return Err(ApiError::field("stop", format!("stop takes 1 to {MAX_STOP_STRINGS} non-empty strings")));
    }
    let stop_token_ids = match f.get("stop_token_ids") {
        None => BTreeSet::new(),
        Some(v) => v
            .as_array()
            .ok_or_else(|| ApiError::field("stop_token_ids", "stop_token_ids must be an array of token ids"))?
            .iter()
            .map(|x| match x.as_u64() {
                Some(t) if (t as usize) < limits.vocab => Ok(t as u32),
                _ => Err(ApiError::field(
                    "stop_token_ids",
                    format!("stop_token_ids entry {} is not a token id below {}", clip(&x.to_string()), limits.vocab),
                )),
            })
            .collect::<Result<_, _>>()?,
    };

    let logprobs = match endpoint {
        Endpoint::Completions => match f.get("logprobs") {
            None => None,
            Some(_) => Some(f.int("logprobs", 0, MAX_TOP_LOGPROBS as i64)?.unwrap_or(0) as usize),
        },
        Endpoint::Chat => {
            let on = f.bool("logprobs")?.unwrap_or(false);
            let top = f.int("top_logprobs", 0, MAX_TOP_LOGPROBS as i64)?;
            if top.is_some() && !on {
                return Err(ApiError::field("top_logprobs", "top_logprobs needs logprobs = true"));
            }
            on.then(|| top.unwrap_or(0) as usize)
        }
    };

    let mut chat = Chat::default();
    let (prompt, prompt_field) = match endpoint {
        Endpoint::Completions => (completion_prompt(&f, tok, limits)?, "prompt"),
        Endpoint::Chat => {
            chat = chat_request(&f)?;
            (chat_prompt(&f, tok, &mut chat)?, "messages")
        }
    };
    if prompt.is_empty() {
        return Err(ApiError::field(prompt_field, format!("{prompt_field} is empty")));
    }
    if prompt.len() > limits.max_prompt_tokens {
        return Err(ApiError::field(
            prompt_field,
            format!(
                "{prompt_field} has {} tokens; this server accepts at most {} (server.max_prompt_tokens)",
                prompt.len(),
                limits.max_prompt_tokens
            ),
        ));
    }

    let room = limits.context.saturating_sub(prompt.len());
    let (max_key, requested) = match (endpoint, f.get("max_completion_tokens")) {
        (Endpoint::Chat, Some(_)) => ("max_completion_tokens", f.int("max_completion_tokens", 1, i64::MAX)?),
        _ => ("max_tokens", f.int("max_tokens", 1, i64::MAX)?),
    };
    let max_tokens = match requested {
        None => limits.max_output_tokens.min(room),
        Some(n) if n as usize > limits.max_output_tokens => {
            return Err(ApiError::field(
                max_key,
                format!(
                    "{max_key} = {n} exceeds this server's limit of {} (server.max_output_tokens)",
                    limits.max_output_tokens
                ),
            ));
        }
        Some(n) if n as usize > room => {
            return Err(ApiError::field(
                max_key,
                format!(
                    "{max_key} = {n} plus {} prompt tokens exceeds the context of {} tokens",
                    prompt.len(),
                    limits.context
                ),
            ));
        }
        Some(n) => n as usize,
    };
    if max_tokens == 0 {
        return Err(ApiError::field(prompt_field, "the prompt fills the whole context"));
    }

    Ok(Prepared {
        endpoint,
        prompt,
        params,
        max_tokens,
        stream,
        include_usage,
        stop,
        stop_token_ids,
        ignore_eos: f.bool("ignore_eos")?.unwrap_or(false),
        logprobs,
        tools: chat.parsed_tools,
        in_reasoning: chat.in_reasoning,
        grammar: chat.grammar,
    })
}

/// What a chat request adds to the prompt and the output: tools, forced calls or a response
/// format, and the template's extra variables.
#[derive(Default)]
struct Chat {
    /// OpenAI's `tools`, as the template gets them.
    tools: Option<Value>,
    parsed_tools: Option<Vec<ToolSpec>>,
    kwargs: Map<String, Value>,
    grammar: Option<(TopLevelGrammar, String)>,
    in_reasoning: bool,
}

fn chat_request(f: &Fields) -> Result<Chat, ApiError> {
    let (tools, specs) = match f.get("tools") {
        None => (None, Vec::new()),
        Some(v) => (Some(v.clone()), parse_tools(v)?),
    };
    let parallel = f.bool("parallel_tool_calls")?.unwrap_or(true);
    let choice = ToolChoice::parse(f.get("tool_choice"), &specs)?;
    let kwargs = match f.get("chat_template_kwargs") {
        None => Map::new(),
        Some(Value::Object(m)) => m.clone(),
        Some(_) => return Err(ApiError::field("chat_template_kwargs", "chat_template_kwargs must be an object")),
    };
    let format = f.get("response_format").map(response_format).transpose()?.flatten();
    let forced = choice.grammar(&specs, parallel).map_err(|e| ApiError::field("tools", format!("tools: {e}")))?;
    let grammar = match (format, forced) {
        (Some(_), Some(_)) => {
            return Err(ApiError::field(
                "tool_choice",
                "tool_choice forces a tool call, which response_format cannot also constrain",
            ));
        }
        (Some(g), None) => Some(g),
        (None, Some(g)) => Some((g, "tool_choice".to_string())),
        (None, None) => None,
    };
    let parsed_tools = (!specs.is_empty() && choice != ToolChoice::None).then_some(specs);
    Ok(Chat { tools, parsed_tools, kwargs, grammar, in_reasoning: false })
}

/// `prompt`: a string, or token ids, or a one-element array of either.
fn completion_prompt(f: &Fields, tok: &Tokenizer, limits: &Limits) -> Result<Vec<u32>, ApiError> {
    let bad = || {
        ApiError::field("prompt", "prompt must be a string, an array of token ids, or a one-element array of either")
    };
    let v = f.get("prompt").ok_or_else(|| ApiError::field("prompt", "prompt is required"))?;
    let one = match v {
        Value::Array(a) if a.len() == 1 && (a[0].is_string() || a[0].is_array()) => &a[0],
        Value::Array(a) if a.len() > 1 && a.iter().all(|x| x.is_string() || x.is_array()) => {
            return Err(ApiError::field("prompt", "one prompt per request (batched prompts are not supported)"));
        }
        other => other,
    };
    match one {
        Value::String(s) => tok.encode(s, true).map_err(|e| ApiError::field("prompt", e.to_string())),
        Value::Array(ids) => ids
            .iter()
            .map(|x| match x.as_u64() {
                Some(t) if (t as usize) < limits.vocab => Ok(t as u32),
                Some(t) => Err(ApiError::field(
                    "prompt",
                    format!("token id {t} is outside the vocabulary of {}", limits.vocab),
                )),
                None => Err(bad()),
            })
            .collect(),
        _ => Err(bad()),
    }
}

/// `messages`, normalized and rendered with the model's chat template (with the request's
/// tools and template variables).
fn chat_prompt(f: &Fields, tok: &Tokenizer, chat: &mut Chat) -> Result<Vec<u32>, ApiError> {
    let messages = chat_messages(f.get("messages"))?;
    let template = tok.chat_template().ok_or_else(|| {
        ApiError::new(
            400,
            "invalid_request_error",
            "no_chat_template",
            "this model has no chat template; use /v1/completions",
        )
    })?;
    let text = template
        .render_with(&messages, chat.tools.as_ref(), &chat.kwargs, true)
        .map_err(|e| ApiError::field("messages", format!("messages: {}", clip(&e.to_string()))))?;
    chat.in_reasoning = text.trim_end().ends_with("<think>");
    tok.encode(&text, false).map_err(|e| ApiError::field("messages", e.to_string()))
}
