//! GLM's output format into OpenAI's message fields, as the text streams in: a leading
//! `<think>...</think>` becomes `reasoning_content`, and tool calls
//! (`<tool_call>NAME<arg_key>K</arg_key><arg_value>V</arg_value>...</tool_call>`, GLM-4.7/5's
//! form, or GLM-4.5's with newlines between the parts) become `tool_calls` whose arguments are
//! a JSON object. A string argument (by the tool's schema) stays the raw text; any other value
//! is parsed as JSON, and kept as a string when it does not parse.
//!
//! Text that could still be the start of a tag is held back, so a tag split across tokens
//! never reaches `content`.

use serde_json::Value;

use crate::constrain::ToolSpec;

const THINK_OPEN: &str = "<think>";
const THINK_CLOSE: &str = "</think>";
const CALL_OPEN: &str = "<tool_call>";
const CALL_CLOSE: &str = "</tool_call>";
const KEY_OPEN: &str = "<arg_key>";
const KEY_CLOSE: &str = "</arg_key>";
const VALUE_OPEN: &str = "<arg_value>";
const VALUE_CLOSE: &str = "</arg_value>";

/// A piece of the message, in order.
#[derive(Debug, Clone, PartialEq)]
pub enum Delta {
    Content(String),
    Reasoning(String),
    /// Tool call `index` begins.
    CallStart {
        index: usize,
        id: String,
        name: String,
    },
    /// More of call `index`'s arguments: a call's fragments concatenate to one JSON object.
    CallArgs {
        index: usize,
        fragment: String,
    },
}

#[derive(Debug, Clone, PartialEq)]
enum Mode {
    Reasoning,
    Content,
    CallName,
    /// Inside call `index` of function `name`; `any`: an argument has been emitted.
    CallArgs {
        index: usize,
        name: String,
        any: bool,
    },
}

pub struct OutputParser {
    mode: Mode,
    /// Text not yet turned into deltas.
    buf: String,
    /// Tool calls are parsed only with tools (and tool_choice other than `none`).
    tools: Option<Vec<ToolSpec>>,
    /// Content other than whitespace has been emitted (a `<think>` after it is plain text).
    content_seen: bool,
    /// Tool calls started so far.
    calls: usize,
    /// Makes call ids unique across requests.
    id_base: u64,
}

/// Where `tag` starts in `text`, if it does.
fn find(text: &str, tag: &str) -> Option<usize> {
    text.find(tag)
}

/// The length of the longest suffix of `text` that begins one of `tags`.
fn partial_tail(text: &str, tags: &[&str]) -> usize {
    let mut keep = 0;
    for tag in tags {
        for k in (1..tag.len()).rev() {
            if k > keep && text.ends_with(&tag[..k]) {
                keep = k;
                break;
            }
        }
    }
    keep
}

impl OutputParser {
    /// `in_reasoning`: the prompt already opened a think block.
    pub fn new(tools: Option<Vec<ToolSpec>>, in_reasoning: bool) -> OutputParser {
        OutputParser {
            mode: if in_reasoning { Mode::Reasoning } else { Mode::Content },
            buf: String::new(),
            tools,
            content_seen: false,
            calls: 0,
            id_base: rand::random(),
        }
    }

    /// Tool calls begun so far.
    pub fn calls(&self) -> usize {
        self.calls
    }

    pub fn push(&mut self, text: &str) -> Vec<Delta> {
        self.buf.push_str(text);
        let mut out = Vec::new();
        while self.step(false, &mut out) {}
        out
    }

    /// The end of the text: everything held back, and an open call closed.
    pub fn finish(&mut self) -> Vec<Delta> {
        let mut out = Vec::new();
        while self.step(true, &mut out) {}
        if let Mode::CallArgs { index, any, .. } = self.mode {
            out.push(close_args(index, any));
            self.mode = Mode::Content;
        }
        out
    }

    fn content(&mut self, text: &str, out: &mut Vec<Delta>) {
        if text.is_empty() {
            return;
        }
        self.content_seen |= !text.trim().is_empty();
        match out.last_mut() {
            Some(Delta::Content(c)) => c.push_str(text),
            _ => out.push(Delta::Content(text.to_string())),
        }
    }

    /// One move of the state machine; false when it needs more text.
    fn step(&mut self, last: bool, out: &mut Vec<Delta>) -> bool {
        match &self.mode {
            Mode::Reasoning => {
                if let Some(at) = find(&self.buf, THINK_CLOSE) {
                    let text: String = self.buf.drain(..at + THINK_CLOSE.len()).collect();
                    push_reasoning(out, &text[..at]);
                    self.mode = Mode::Content;
                    return true;
                }
                let keep = if last { 0 } else { partial_tail(&self.buf, &[THINK_CLOSE]) };
                let text: String = self.buf.drain(..self.buf.len() - keep).collect();
                push_reasoning(out, &text);
                false
            }
            Mode::Content => {
                let tags: &[&str] = if self.tools.is_some() { &[CALL_OPEN] } else { &[] };
                // `<think>` opens reasoning only as the first thing in the output.
                let fresh = !self.content_seen && self.calls == 0;
                let lead = self.buf.len() - self.buf.trim_start().len();
                if fresh && !last && THINK_OPEN.starts_with(&self.buf[lead..]) {
                    return false;
                }
                let think = (fresh && self.buf[lead..].starts_with(THINK_OPEN)).then_some((lead, THINK_OPEN));
                let next = tags.iter().filter_map(|t| find(&self.buf, t).map(|at| (at, *t))).chain(think).min();
                if let Some((at, tag)) = next {
                    let before: String = self.buf.drain(..at + tag.len()).collect();
                    let before = &before[..at];
                    if tag == CALL_OPEN {
                        // Whitespace around calls is layout, not content.
                        let text = before.trim_end();
                        let text = if self.calls > 0 { text.trim_start() } else { text };
                        self.content(text, out);
                        self.mode = Mode::CallName;
                    } else {
                        self.content(before, out);
                        self.mode = Mode::Reasoning;
                    }
                    return true;
                }
                // Hold back what may begin a tag, and (around tool calls) trailing whitespace.
                let mut keep = if last { 0 } else { partial_tail(&self.buf, tags) };
                if !last && self.tools.is_some() {
                    let body = &self.buf[..self.buf.len() - keep];
                    keep += body.len() - body.trim_end().len();
                }
                let mut text: String = self.buf.drain(..self.buf.len() - keep).collect();
                if self.calls > 0 && (last || text.trim().is_empty()) {
                    text = text.trim().to_string();
                }
                self.content(&text, out);
                false
            }
            Mode::CallName => {
                let end = [KEY_OPEN, CALL_CLOSE, "\n"].iter().filter_map(|t| find(&self.buf, t)).min();
                let Some(at) = end.or(last.then_some(self.buf.len())) else { return false };
                let name = self.buf[..at].trim().to_string();
                let newline = self.buf[at..].starts_with('\n');
                self.buf.drain(..at + usize::from(newline));
                let index = self.calls;
                self.calls += 1;
                out.push(Delta::CallStart {
                    index,
                    id: format!("call_{:016x}{index:02}", self.id_base),
                    name: name.clone(),
                });
                self.mode = Mode::CallArgs { index, name, any: false };
                true
            }
            Mode::CallArgs { .. } => self.step_args(last, out),
        }
    }

    fn step_args(&mut self, last: bool, out: &mut Vec<Delta>) -> bool {
        let lead = self.buf.len() - self.buf.trim_start().len();
        self.buf.drain(..lead);
        let Mode::CallArgs { index, name, any } = &mut self.mode else { return false };
        let index = *index;
        if self.buf.starts_with(CALL_CLOSE) {
            self.buf.drain(..CALL_CLOSE.len());
            out.push(close_args(index, *any));
            self.mode = Mode::Content;
            return true;
        }
        if self.buf.starts_with(KEY_OPEN) {
            let Some(pair) = pair(&self.buf) else {
                if last {
                    self.buf.clear();
                }
                return false;
            };
            let (key, raw, used) = pair;
            self.buf.drain(..used);
            let value = self
                .tools
                .as_deref()
                .and_then(|t| t.iter().find(|t| &t.name == name))
                .map_or_else(|| untyped(&raw), |tool| typed(tool.argument(&key), &raw));
            let sep = if *any { "," } else { "{" };
            *any = true;
            let fragment = format!("{sep}{}:{}", Value::String(key), value);
            out.push(Delta::CallArgs { index, fragment });
            return true;
        }
        if self.buf.is_empty() || (!last && (KEY_OPEN.starts_with(&*self.buf) || CALL_CLOSE.starts_with(&*self.buf))) {
            return false;
        }
        // Something that is not an argument: skip it up to the next tag.
        let skip = self.buf[1..].find('<').map_or(self.buf.len(), |i| i + 1);
        self.buf.drain(..skip);
        true
    }
}

/// A whole `<arg_key>K</arg_key><arg_value>V</arg_value>` at the start of `b`:
/// (K, V, bytes used).
fn pair(b: &str) -> Option<(String, String, usize)> {
    let key_end = find(b, KEY_CLOSE)?;
    let key = b[KEY_OPEN.len()..key_end].trim().to_string();
    let rest = &b[key_end + KEY_CLOSE.len()..];
    let gap = rest.len() - rest.trim_start().len();
    let rest = &rest[gap..];
    if !rest.starts_with(VALUE_OPEN) {
        return None;
    }
    let value_end = find(rest, VALUE_CLOSE)?;
    let raw = rest[VALUE_OPEN.len()..value_end].to_string();
    Some((key, raw, key_end + KEY_CLOSE.len() + gap + value_end + VALUE_CLOSE.len()))
}

/// The end of call `index`'s arguments: `}`, or `{}` when it had none.
fn close_args(index: usize, any: bool) -> Delta {
    Delta::CallArgs { index, fragment: if any { "}" } else { "{}" }.into() }
}

fn push_reasoning(out: &mut Vec<Delta>, text: &str) {
    if text.is_empty() {
        return;
    }
    match out.last_mut() {
        Some(Delta::Reasoning(r)) => r.push_str(text),
        _ => out.push(Delta::Reasoning(text.to_string())),
    }
}

/// A value whose argument has `schema`: strings as written, anything else as JSON if it is.
fn typed(schema: Option<&Value>, raw: &str) -> Value {
    match schema.and_then(|s| s.get("type")).and_then(Value::as_str) {
        Some("string") => Value::String(raw.to_string()),
        _ => untyped(raw),
    }
}

fn untyped(raw: &str) -> Value {
    serde_json::from_str(raw.trim()).unwrap_or_else(|_| Value::String(raw.to_string()))
}

/// What a finished text parses to: (content, reasoning_content, tool calls as OpenAI objects).
pub fn whole(mut parser: OutputParser, text: &str) -> (String, String, Vec<Value>) {
    let mut deltas = parser.push(text);
    deltas.extend(parser.finish());
    let (mut content, mut reasoning) = (String::new(), String::new());
    let mut calls: Vec<(String, String, String)> = Vec::new(); // (id, name, arguments)
    for d in deltas {
        match d {
            Delta::Content(c) => content.push_str(&c),
            Delta::Reasoning(r) => reasoning.push_str(&r),
            Delta::CallStart { id, name, .. } => calls.push((id, name, String::new())),
            Delta::CallArgs { index, fragment } => {
                if let Some(call) = calls.get_mut(index) {
                    call.2.push_str(&fragment);
                }
            }
        }
    }
    let calls = calls
        .into_iter()
        .map(|(id, name, arguments)| {
            serde_json::json!({"id": id, "type": "function", "function": {"name": name, "arguments": arguments}})
        })
        .collect();
    (content, reasoning, calls)
}

#[cfg(test)]
mod tests;
