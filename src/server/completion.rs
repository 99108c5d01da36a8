//! One completion or chat request, from validated parameters to the response: submit to the
//! engine, turn tokens into text (stop strings, whole characters), answer in one JSON body or
//! as server-sent events.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{self, RecvTimeoutError};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use hyper::Request;
use hyper::body::Incoming;
use serde_json::{Value, json};
use tokio::sync::{mpsc as async_mpsc, oneshot};

use super::ServerContext;
use super::api_error::ApiError;
use super::glm_output::{Delta, OutputParser};
use super::http::{Reply, clip, error, event, event_stream, hold, json as json_reply, read_body, unavailable};
use super::params::{Endpoint, Prepared, prepare};
use crate::engine::{CancelFlag, Event, FinishReason, GenerationRequest, Rejected, Usage};
use crate::log;
use crate::sample::TokenLogprob;
use crate::tokenizer::{Detokenizer, Tokenizer};

/// Text released to the client so far, with stop strings applied.
struct TextOut<'a> {
    tok: &'a Tokenizer,
    detok: Detokenizer,
    text: String,
    /// Bytes of `text` already released.
    sent: usize,
    stop: &'a [String],
    /// A stop string matched; `text` was cut before it.
    stopped: bool,
}

impl<'a> TextOut<'a> {
    fn new(tok: &'a Tokenizer, stop: &'a [String]) -> TextOut<'a> {
        TextOut { tok, detok: Detokenizer::new(), text: String::new(), sent: 0, stop, stopped: false }
    }

    /// Adds a token; returns the text that may be released now.
    fn push(&mut self, id: u32) -> String {
        let piece = self.detok.push(self.tok, id);
        self.text.push_str(&piece);
        self.release(false)
    }

    /// End of generation: everything left (up to a stop string).
    fn finish(&mut self) -> String {
        if !self.stopped {
            let rest = self.detok.finish(self.tok);
            self.text.push_str(&rest);
        }
        self.release(true)
    }

    fn release(&mut self, last: bool) -> String {
        if self.stopped {
            return String::new();
        }
        let longest = self.stop.iter().map(String::len).max().unwrap_or(0);
        let from = floor_char(&self.text, self.sent.saturating_sub(longest));
        if let Some(at) = self.stop.iter().filter_map(|s| self.text[from..].find(s.as_str()).map(|i| from + i)).min() {
            self.text.truncate(at);
            self.stopped = true;
        }
        // Hold back a tail that could still grow into a stop string.
        let mut safe = self.text.len();
        if !self.stopped && !last {
            for s in self.stop {
                for k in (1..s.len()).rev() {
                    if s.is_char_boundary(k) && self.text.ends_with(&s[..k]) {
                        safe = safe.min(self.text.len() - k);
                        break;
                    }
                }
            }
        }
        let safe = floor_char(&self.text, safe.max(self.sent));
        let out = self.text[self.sent..safe].to_string();
        self.sent = safe;
        out
    }
}

fn floor_char(s: &str, mut i: usize) -> usize {
    while !s.is_char_boundary(i) {
        i -= 1;
    }
    i
}

fn now_secs() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0)
}

fn usage_json(u: &Usage) -> Value {
    json!({
        "prompt_tokens": u.prompt_tokens,
        "completion_tokens": u.completion_tokens,
        "total_tokens": u.prompt_tokens + u.completion_tokens,
        "prompt_tokens_details": {"cached_tokens": u.cached_tokens},
    })
}

/// Logprobs of some tokens, in the endpoint's shape.
fn logprobs_json(endpoint: Endpoint, tok: &Tokenizer, lps: &[TokenLogprob], offset: usize) -> Value {
    let piece = |id: u32| tok.token_piece(id);
    match endpoint {
        Endpoint::Chat => json!({"content": lps.iter().map(|lp| json!({
            "token": piece(lp.token),
            "logprob": lp.logprob,
            "bytes": piece(lp.token).into_bytes(),
            "top_logprobs": lp.top.iter().map(|(t, l)| json!({"token": piece(*t), "logprob": l, "bytes": piece(*t).into_bytes()})).collect::<Vec<_>>(),
        })).collect::<Vec<_>>()}),
        Endpoint::Completions => {
            let mut at = offset;
            let mut offsets = Vec::new();
            for lp in lps {
                offsets.push(at);
                at += piece(lp.token).len();
            }
            json!({
                "tokens": lps.iter().map(|lp| piece(lp.token)).collect::<Vec<_>>(),
                "token_logprobs": lps.iter().map(|lp| lp.logprob).collect::<Vec<_>>(),
                "top_logprobs": lps.iter().map(|lp| lp.top.iter().map(|(t, l)| (piece(*t), json!(l))).collect::<serde_json::Map<_, _>>()).collect::<Vec<_>>(),
                "text_offset": offsets,
            })
        }
    }
}

/// How a finished request is reported ("stop" becomes "tool_calls" when calls were made).
fn finish_reason(reason: FinishReason, stopped_by_string: bool) -> Result<&'static str, ApiError> {
    match (reason, stopped_by_string) {
        (_, true) | (FinishReason::Stop, _) => Ok("stop"),
        (FinishReason::Length, _) => Ok("length"),
        (FinishReason::Timeout, _) => {
            Err(ApiError::new(504, "timeout", "request_timeout", "the request exceeded server.request_timeout_s"))
        }
        (FinishReason::Abort, _) => {
            Err(ApiError::new(500, "server_error", "aborted", "the engine aborted the request"))
        }
    }
}

/// Events a stream holds while its client reads slowly; beyond, the generating thread waits
/// (at most server.write_timeout_s).
const STREAM_BUFFER: usize = 32;

/// A generation request from HTTP to its reply. The body is read here (bounded and timed);
/// validation, tokenization and waiting on the engine run on a blocking thread. A client that
/// goes before its reply is ready has its request cancelled; one that leaves a stream is
/// noticed when the next event cannot be delivered.
pub async fn generate(ctx: Arc<ServerContext>, req: Request<Incoming>, endpoint: Endpoint) -> Reply {
    let Some(slot) = ctx.handler_slot() else {
        ctx.refuse("overloaded", "every request handler is busy (server.max_connections bounds them)");
        return unavailable(&ApiError::new(503, "server_error", "overloaded", "too many requests in progress"));
    };
    let body = match read_body(req, ctx.body_limit, ctx.transport.body_timeout).await {
        Ok(b) => b,
        Err(e) => return hold(error(&e), Box::new(slot)),
    };
    let cancel = CancelFlag::default();
    let gone = Arc::new(AtomicBool::new(false));
    let watch = ClientWatch { cancel: cancel.clone(), gone: gone.clone(), armed: true };
    let (reply_to, reply) = oneshot::channel();
    let task_ctx = ctx.clone();
    tokio::task::spawn_blocking(move || {
        let handled = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            run(&task_ctx, &body, endpoint, Client { cancel, gone, reply_to: Some(reply_to) })
        }));
        if handled.is_err() {
            crate::log::error("handler_panic", "a request handler panicked").emit();
        }
    });
    let reply = reply
        .await
        .unwrap_or_else(|_| error(&ApiError::new(500, "server_error", "handler_failed", "the request handler failed")));
    watch.disarm();
    hold(reply, Box::new(slot))
}

/// Cancels the request if the client's connection goes before the reply is ready (the
/// future awaiting it is dropped).
struct ClientWatch {
    cancel: CancelFlag,
    gone: Arc<AtomicBool>,
    armed: bool,
}

impl ClientWatch {
    fn disarm(mut self) {
        self.armed = false;
    }
}

impl Drop for ClientWatch {
    fn drop(&mut self) {
        if self.armed {
            self.gone.store(true, Ordering::Release);
            self.cancel.cancel();
        }
    }
}

/// The blocking side's view of the client.
struct Client {
    cancel: CancelFlag,
    gone: Arc<AtomicBool>,
    /// Where the reply (or, for a stream, its head) goes, once.
    reply_to: Option<oneshot::Sender<Reply>>,
}

impl Client {
    /// Hands the reply to the connection; false if the client is gone.
    fn reply(&mut self, r: Reply) -> bool {
        self.reply_to.take().is_some_and(|tx| tx.send(r).is_ok())
    }

    fn is_gone(&self) -> bool {
        self.gone.load(Ordering::Acquire)
    }

    fn left(&self) -> Outcome {
        self.gone.store(true, Ordering::Release);
        self.cancel.cancel();
        ended("client_gone", None)
    }
}

fn run(ctx: &ServerContext, body: &[u8], endpoint: Endpoint, mut client: Client) {
    let prep = match prepare(endpoint, body, &ctx.tokenizer, &ctx.limits) {
        Ok(p) => p,
        Err(e) => {
            client.reply(error(&e));
            return;
        }
    };
    let (mut request, rx) = GenerationRequest::new(prep.prompt.clone(), prep.params.clone(), prep.max_tokens);
    request.stop_token_ids = prep.stop_token_ids.clone();
    if !prep.ignore_eos {
        request.stop_token_ids.extend(ctx.tokenizer.eos_ids());
    }
    request.logprobs = prep.logprobs;
    request.cancel = client.cancel.clone();
    if let Some((grammar, field)) = &prep.grammar {
        let compiled = match &ctx.grammars {
            Ok(g) => {
                g.constraint(grammar.clone()).map_err(|e| ApiError::field(field, format!("{field}: {}", clip(&e))))
            }
            Err(why) => {
                Err(ApiError::field(field, format!("{field}: constrained decoding is off for this model: {why}")))
            }
        };
        match compiled {
            Ok(c) => request.constraint = Some(c),
            Err(e) => {
                client.reply(error(&e));
                return;
            }
        }
    }
    let arrival = request.arrival;
    match ctx.engine.submit(request) {
        Ok(()) => {}
        Err(Rejected::QueueFull) => {
            ctx.refuse(
                "queue_full",
                "server.max_running_requests are running and server.max_queued_requests waiting; answered 429",
            );
            let e = ApiError::new(
                429,
                "rate_limit_error",
                "queue_full",
                "the server is at its running and queued limits; retry shortly",
            );
            client.reply(error(&e));
            return;
        }
        Err(Rejected::EngineDown) => {
            ctx.refuse("engine_down", "the engine is not running; answered 503");
            let e = ApiError::new(503, "server_error", "engine_down", "the engine is not running");
            client.reply(error(&e));
            return;
        }
    }
    let id = match prep.endpoint {
        Endpoint::Completions => format!("cmpl-{}", ctx.next_id()),
        Endpoint::Chat => format!("chatcmpl-{}", ctx.next_id()),
    };
    // The engine ends every request by the timeout; this is a backstop for a dead engine.
    let deadline = ctx.request_timeout + Duration::from_secs(30);
    let recv = |rx: &mpsc::Receiver<Event>| match rx.recv_timeout(deadline) {
        Ok(e) => e,
        Err(RecvTimeoutError::Timeout) => Event::Failed("no answer from the engine".into()),
        Err(RecvTimeoutError::Disconnected) => Event::Failed("the engine stopped".into()),
    };
    let head = Head { id, created: now_secs(), model: ctx.limits.model_name.clone(), endpoint: prep.endpoint };
    let outcome = if prep.stream {
        stream(ctx, &prep, &head, &rx, client, recv)
    } else {
        whole(ctx, &prep, &head, &rx, client, recv)
    };
    access_log(&head, &prep, &outcome, arrival.elapsed());
}

/// How a request ended, for the access log.
struct Outcome {
    /// finish_reason, or the error code / `client_gone`.
    end: &'static str,
    usage: Option<Usage>,
}

fn ended(end: &'static str, usage: Option<Usage>) -> Outcome {
    Outcome { end, usage }
}

/// One line per request.
fn access_log(head: &Head, prep: &Prepared, o: &Outcome, took: Duration) {
    let u = o.usage.unwrap_or_default();
    let level = if matches!(o.end, "stop" | "length") { log::info } else { log::warn };
    level(
        "request",
        format!(
            "request {} {} prompt={} cached={} output={} end={} in {:.3} s",
            head.id,
            if prep.stream { "stream" } else { "whole" },
            u.prompt_tokens,
            u.cached_tokens,
            u.completion_tokens,
            o.end,
            took.as_secs_f64()
        ),
    )
    .field("id", head.id.clone())
    .field("stream", prep.stream)
    .field("prompt_tokens", u.prompt_tokens)
    .field("cached_tokens", u.cached_tokens)
    .field("completion_tokens", u.completion_tokens)
    .field("end", o.end)
    .field("seconds", took.as_secs_f64())
    .emit();
}

struct Head {
    id: String,
    created: u64,
    model: String,
    endpoint: Endpoint,
}

impl Head {
    fn chunk(&self, choice: Value) -> Value {
        let object = match self.endpoint {
            Endpoint::Completions => "text_completion",
            Endpoint::Chat => "chat.completion.chunk",
        };
        json!({"id": self.id, "object": object, "created": self.created, "model": self.model, "choices": [choice]})
    }
}

/// The parser of a chat reply's text (reasoning, tool calls) for `prep`.
fn output_parser(prep: &Prepared) -> OutputParser {
    OutputParser::new(prep.tools.clone(), prep.in_reasoning)
}

/// A whole chat reply's message, and whether it has tool calls.
fn chat_message(prep: &Prepared, text: &str) -> (Value, bool) {
    let (content, reasoning, calls) = super::glm_output::whole(output_parser(prep), text);
    let mut m = json!({"role": "assistant", "content": content});
    if !reasoning.is_empty() {
        m["reasoning_content"] = json!(reasoning);
    }
    let any = !calls.is_empty();
    if any {
        if content.is_empty() {
            m["content"] = Value::Null;
        }
        m["tool_calls"] = Value::Array(calls);
    }
    (m, any)
}

/// A chat stream's deltas for `deltas`, in order (consecutive ones of a kind stay apart).
fn delta_json(d: Delta) -> Value {
    match d {
        Delta::Content(c) => json!({"content": c}),
        Delta::Reasoning(r) => json!({"reasoning_content": r}),
        Delta::CallStart { index, id, name } => json!({"tool_calls": [{
            "index": index, "id": id, "type": "function", "function": {"name": name, "arguments": ""}
        }]}),
        Delta::CallArgs { index, fragment } => {
            json!({"tool_calls": [{"index": index, "function": {"arguments": fragment}}]})
        }
    }
}

fn whole(
    ctx: &ServerContext,
    prep: &Prepared,
    head: &Head,
    rx: &mpsc::Receiver<Event>,
    mut client: Client,
    recv: impl Fn(&mpsc::Receiver<Event>) -> Event,
) -> Outcome {
    let mut out = TextOut::new(&ctx.tokenizer, &prep.stop);
    let mut lps = Vec::new();
    let (reply, outcome) = loop {
        match recv(rx) {
            Event::Token { id, logprob } => {
                if !out.stopped {
                    out.push(id);
                    lps.extend(logprob);
                    if out.stopped {
                        client.cancel.cancel();
                    }
                }
            }
            Event::Failed(msg) => {
                break (error(&ApiError::new(500, "server_error", "engine_error", msg)), ended("engine_error", None));
            }
            Event::Done { reason, usage } => {
                out.finish();
                let reason = match finish_reason(reason, out.stopped) {
                    Ok(r) => r,
                    Err(e) => break (error(&e), ended(e.code.unwrap_or("error"), Some(usage))),
                };
                let logprobs = prep.logprobs.map(|_| logprobs_json(prep.endpoint, &ctx.tokenizer, &lps, 0));
                let (object, choice) = match prep.endpoint {
                    Endpoint::Completions => (
                        "text_completion",
                        json!({"index": 0, "text": out.text, "logprobs": logprobs, "finish_reason": reason}),
                    ),
                    Endpoint::Chat => {
                        let (message, calls) = chat_message(prep, &out.text);
                        let reason = if calls && reason == "stop" { "tool_calls" } else { reason };
                        (
                            "chat.completion",
                            json!({"index": 0, "message": message, "logprobs": logprobs, "finish_reason": reason}),
                        )
                    }
                };
                let body = json!({
                    "id": head.id, "object": object, "created": head.created, "model": head.model,
                    "choices": [choice], "usage": usage_json(&usage),
                });
                break (json_reply(200, &body), ended(reason, Some(usage)));
            }
        }
    };
    if client.is_gone() || !client.reply(reply) {
        return ended("client_gone", outcome.usage);
    }
    outcome
}

fn stream(
    ctx: &ServerContext,
    prep: &Prepared,
    head: &Head,
    rx: &mpsc::Receiver<Event>,
    mut client: Client,
    recv: impl Fn(&mpsc::Receiver<Event>) -> Event,
) -> Outcome {
    let (events, body) = async_mpsc::channel::<Bytes>(STREAM_BUFFER);
    if !client.reply(event_stream(body)) {
        return client.left();
    }
    let runtime = tokio::runtime::Handle::current();
    let write_timeout = ctx.transport.write_timeout;
    // One event to the client; false when it is gone or has stopped reading.
    let send = |payload: &str| -> bool {
        runtime
            .block_on(async { tokio::time::timeout(write_timeout, events.send(event(payload))).await })
            .is_ok_and(|sent| sent.is_ok())
    };
    let with_usage = |mut v: Value| {
        if prep.include_usage {
            v["usage"] = Value::Null;
        }
        v
    };
    let text_choice = |text: &str, logprobs: Value, reason: Value| match prep.endpoint {
        Endpoint::Completions => json!({"index": 0, "text": text, "logprobs": logprobs, "finish_reason": reason}),
        Endpoint::Chat => {
            let delta = if text.is_empty() && !reason.is_null() { json!({}) } else { json!({"content": text}) };
            json!({"index": 0, "delta": delta, "logprobs": logprobs, "finish_reason": reason})
        }
    };
    if prep.endpoint == Endpoint::Chat {
        let first =
            json!({"index": 0, "delta": {"role": "assistant", "content": ""}, "logprobs": null, "finish_reason": null});
        if !send(&with_usage(head.chunk(first)).to_string()) {
            return client.left();
        }
    }
    // Chat text goes through GLM's output parser: reasoning and tool-call deltas.
    let mut parser = (prep.endpoint == Endpoint::Chat).then(|| output_parser(prep));
    let delta_choice = |delta: Value, logprobs: Value| json!({"index": 0, "delta": delta, "logprobs": logprobs, "finish_reason": null});
    // The chunks for some released text; the first carries the token's logprobs.
    let chunks = |parser: &mut Option<OutputParser>, text: &str, lp: Value| -> Vec<Value> {
        let Some(p) = parser.as_mut() else {
            return if text.is_empty() && lp.is_null() { vec![] } else { vec![text_choice(text, lp, Value::Null)] };
        };
        let mut lp = Some(lp).filter(|l| !l.is_null());
        let mut out: Vec<Value> =
            p.push(text).into_iter().map(|d| delta_choice(delta_json(d), lp.take().unwrap_or(Value::Null))).collect();
        if let Some(lp) = lp {
            out.push(delta_choice(json!({"content": ""}), lp));
        }
        out
    };
    let mut out = TextOut::new(&ctx.tokenizer, &prep.stop);
    loop {
        match recv(rx) {
            Event::Token { id, logprob } => {
                if out.stopped {
                    continue;
                }
                let offset = out.sent;
                let text = out.push(id);
                if out.stopped {
                    client.cancel.cancel();
                }
                let lp = match (&logprob, prep.logprobs) {
                    (Some(lp), Some(_)) => {
                        logprobs_json(prep.endpoint, &ctx.tokenizer, std::slice::from_ref(lp), offset)
                    }
                    _ => Value::Null,
                };
                for choice in chunks(&mut parser, &text, lp) {
                    if !send(&with_usage(head.chunk(choice)).to_string()) {
                        // The client is gone: free the request now.
                        return client.left();
                    }
                }
            }
            Event::Failed(msg) => {
                let _ =
                    send(&ApiError::new(500, "server_error", "engine_error", msg).body().to_string()) && send("[DONE]");
                return ended("engine_error", None);
            }
            Event::Done { reason, usage } => {
                if client.is_gone() {
                    return ended("client_gone", Some(usage));
                }
                let rest = out.finish();
                let reason = match finish_reason(reason, out.stopped) {
                    Ok(r) => r,
                    Err(e) => {
                        let _ = send(&e.body().to_string()) && send("[DONE]");
                        return ended(e.code.unwrap_or("error"), Some(usage));
                    }
                };
                let last = match parser.as_mut() {
                    None => text_choice(&rest, Value::Null, json!(reason)),
                    Some(p) => {
                        let mut deltas = p.push(&rest);
                        deltas.extend(p.finish());
                        for d in deltas {
                            if !send(&with_usage(head.chunk(delta_choice(delta_json(d), Value::Null))).to_string()) {
                                return ended("client_gone", Some(usage));
                            }
                        }
                        let reason = if p.calls() > 0 && reason == "stop" { "tool_calls" } else { reason };
                        json!({"index": 0, "delta": {}, "logprobs": null, "finish_reason": reason})
                    }
                };
                if !send(&with_usage(head.chunk(last)).to_string()) {
                    return ended("client_gone", Some(usage));
                }
                if prep.include_usage {
                    let mut u = head.chunk(Value::Null);
                    u["choices"] = json!([]);
                    u["usage"] = usage_json(&usage);
                    if !send(&u.to_string()) {
                        return ended("client_gone", Some(usage));
                    }
                }
                if !send("[DONE]") {
                    return ended("client_gone", Some(usage));
                }
                // Dropping the sender ends the body; the connection closes after it.
                return ended(reason, Some(usage));
            }
        }
    }
}
