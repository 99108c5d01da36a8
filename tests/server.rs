//! `kiln serve` on a loopback port, driven with curl and with the official `openai` Python
//! client: chat and completions, streaming and not, seeded sampling, stop strings, usage,
//! and every bad request. tests/server_engine.rs covers disconnects, overload and a hung engine.

mod common;

use std::process::Command;

use common::serve::*;
use serde_json::{Value, json};

fn chat(messages: Value, extra: Value) -> Value {
    let mut body = json!({"model": "chat_tiny", "messages": messages});
    body.as_object_mut().unwrap().extend(extra.as_object().unwrap().clone());
    body
}

fn user(text: &str) -> Value {
    json!([{"role": "user", "content": text}])
}

#[test]
fn models_health_plan() {
    let s = Server::start();
    let (status, _, body) = curl(&[&format!("{}/v1/models", s.base)]);
    assert_eq!(status, 200);
    let v: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(v["data"][0]["id"], "chat_tiny");
    let (status, _, body) = curl(&[&format!("{}/health", s.base)]);
    assert_eq!((status, body.trim()), (200, "ok"));
    let (status, _, body) = curl(&[&format!("{}/v1/plan", s.base)]);
    assert_eq!(status, 200);
    let v: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(v["plan_hash"].as_str().unwrap().len(), 64);
    assert_eq!(v["weights"]["id"].as_str().unwrap().len(), 64);
    assert!(v["plan"].as_str().unwrap().contains("[server]"));
    let (status, _, _) = curl(&[&format!("{}/v1/nothing", s.base)]);
    assert_eq!(status, 404);
}

#[test]
fn chat_and_completions_whole_and_streamed_agree() {
    let s = Server::start();
    let tok = kiln::tokenizer::Tokenizer::from_dir(&common::repo_path(CHAT_FIXTURE)).unwrap();
    for (path, body) in [
        ("/v1/chat/completions", chat(user("Hello there"), json!({"max_tokens": 12, "seed": 5, "temperature": 0.8}))),
        (
            "/v1/completions",
            json!({"prompt": "import os\n", "max_tokens": 12, "seed": 5, "temperature": 0.8, "ignore_eos": true}),
        ),
    ] {
        let (status, whole) = post_json(&s.base, path, &body);
        assert_eq!(status, 200, "{whole}");
        let choice = &whole["choices"][0];
        let text = choice["text"].as_str().or(choice["message"]["content"].as_str()).unwrap().to_string();
        let usage = &whole["usage"];
        let completion = usage["completion_tokens"].as_u64().unwrap();
        assert!((1..=12).contains(&completion), "{usage}");
        assert_eq!(usage["total_tokens"].as_u64().unwrap(), usage["prompt_tokens"].as_u64().unwrap() + completion);
        if path == "/v1/completions" {
            assert_eq!(usage["prompt_tokens"], tok.encode("import os\n", true).unwrap().len());
            assert_eq!((completion, choice["finish_reason"].as_str().unwrap()), (12, "length"));
        }

        let mut sbody = body.clone();
        sbody["stream"] = json!(true);
        sbody["stream_options"] = json!({"include_usage": true});
        let (status, head, raw) = post(&s.base, path, &sbody.to_string());
        assert_eq!(status, 200);
        assert!(head.to_lowercase().contains("text/event-stream"), "{head}");
        let events = sse_events(&raw);
        assert_eq!(events.last().unwrap(), "[DONE]");
        let chunks: Vec<Value> = events[..events.len() - 1].iter().map(|e| serde_json::from_str(e).unwrap()).collect();
        let streamed: String = chunks
            .iter()
            .filter_map(|c| c["choices"].get(0))
            .filter_map(|c| c["text"].as_str().or(c["delta"]["content"].as_str()))
            .collect();
        assert_eq!(streamed, text, "{path}: streamed text differs from the whole response");
        let last = chunks.last().unwrap();
        assert_eq!(last["choices"], json!([]));
        assert_eq!(last["usage"], *usage);
        let finish: Vec<&Value> = chunks
            .iter()
            .filter_map(|c| c["choices"].get(0))
            .map(|c| &c["finish_reason"])
            .filter(|f| !f.is_null())
            .collect();
        assert_eq!(finish, vec![&choice["finish_reason"]]);
    }
}

#[test]
fn seeded_sampling_is_reproducible() {
    let s = Server::start();
    let body =
        |seed: u64| json!({"prompt": "def f(", "max_tokens": 16, "seed": seed, "temperature": 1.0, "ignore_eos": true});
    let text =
        |seed| post_json(&s.base, "/v1/completions", &body(seed)).1["choices"][0]["text"].as_str().unwrap().to_string();
    let a = text(11);
    assert_eq!(a, text(11));
    let others: Vec<String> = (12..16).map(text).collect();
    assert!(others.iter().any(|o| *o != a), "different seeds never differ: {a:?}");
}

#[test]
fn stop_strings_end_the_text() {
    let s = Server::start();
    let base = json!({"prompt": "class A:", "max_tokens": 24, "temperature": 0.0, "ignore_eos": true});
    let (_, full) = post_json(&s.base, "/v1/completions", &base);
    let full = full["choices"][0]["text"].as_str().unwrap().to_string();
    let chars: Vec<char> = full.chars().collect();
    assert!(chars.len() >= 8, "{full:?}");
    // A two-character stop string from the middle whose first occurrence is there.
    let (at, stop) = (4..chars.len() - 2)
        .map(|i| (i, chars[i..i + 2].iter().collect::<String>()))
        .find(|(i, st)| full.find(st.as_str()) == Some(chars[..*i].iter().map(|c| c.len_utf8()).sum()))
        .expect("a stop string candidate");
    let want: String = chars[..at].iter().collect();
    for stream in [false, true] {
        let mut body = base.clone();
        body["stop"] = json!([stop, "\u{2603}never"]);
        body["stream"] = json!(stream);
        let (status, _, raw) = post(&s.base, "/v1/completions", &body.to_string());
        assert_eq!(status, 200);
        let (text, reason) = if stream {
            let chunks: Vec<Value> =
                sse_events(&raw).iter().filter(|e| *e != "[DONE]").map(|e| serde_json::from_str(e).unwrap()).collect();
            let text: String = chunks.iter().map(|c| c["choices"][0]["text"].as_str().unwrap_or("")).collect();
            (text, chunks.last().unwrap()["choices"][0]["finish_reason"].clone())
        } else {
            let v: Value = serde_json::from_str(&raw).unwrap();
            (v["choices"][0]["text"].as_str().unwrap().to_string(), v["choices"][0]["finish_reason"].clone())
        };
        assert_eq!(text, want, "stream = {stream}, stop {stop:?} in {full:?}");
        assert_eq!(reason, "stop");
    }
}

#[test]
fn stop_token_ids_and_logprobs() {
    let s = Server::start();
    let (_, v) = post_json(
        &s.base,
        "/v1/completions",
        &json!({"prompt": "x = ", "max_tokens": 6, "temperature": 0.0, "ignore_eos": true, "logprobs": 3}),
    );
    let lp = &v["choices"][0]["logprobs"];
    assert_eq!(lp["tokens"].as_array().unwrap().len(), 6);
    assert!(lp["token_logprobs"].as_array().unwrap().iter().all(|x| x.as_f64().unwrap() <= 0.0));
    assert_eq!(lp["top_logprobs"][0].as_object().unwrap().len(), 3);
    // Greedy: the chosen token is the most likely one.
    let first = lp["token_logprobs"][0].as_f64().unwrap();
    assert!(lp["top_logprobs"][0].as_object().unwrap().values().all(|x| x.as_f64().unwrap() <= first + 1e-6));

    let (_, v) = post_json(
        &s.base,
        "/v1/chat/completions",
        &chat(user("hi"), json!({"max_tokens": 4, "logprobs": true, "top_logprobs": 2, "temperature": 0.0})),
    );
    let content = &v["choices"][0]["logprobs"]["content"];
    assert!(content.as_array().unwrap().len() <= 4 && content[0]["top_logprobs"].as_array().unwrap().len() == 2);

    // Stopping on the third greedy token ends with two tokens of text (the stop token counts
    // as generated but is not shown).
    let dir = common::repo_path(CHAT_FIXTURE);
    let plan = kiln::plan_init::init_from_hf(
        &dir,
        &kiln::plan_init::InitOptions { target: kiln::plan::Target::Cpu, arch: None, tp: None, dp: None },
    )
    .unwrap()
    .plan;
    let model = kiln::model::Model::load(&plan, &kiln::weights::Checkpoint::open(&dir).unwrap()).unwrap();
    let mut greedy = kiln::sample::Sampler::new(kiln::sample::SamplingParams::greedy(), &[]);
    let ids = kiln::generate::generate(&model, &[5, 6, 7], 3, &mut greedy).unwrap();
    let tok = kiln::tokenizer::Tokenizer::from_dir(&dir).unwrap();
    let (_, v) = post_json(
        &s.base,
        "/v1/completions",
        &json!({"prompt": [5, 6, 7], "max_tokens": 3, "temperature": 0.0, "ignore_eos": true, "stop_token_ids": [ids[2]]}),
    );
    assert_eq!(v["choices"][0]["finish_reason"], "stop", "{v}");
    assert_eq!(v["usage"]["completion_tokens"], 3);
    if !ids[..2].contains(&ids[2]) {
        assert_eq!(v["choices"][0]["text"].as_str().unwrap(), tok.decode(&ids[..2]));
    }
}

#[test]
fn bad_requests_get_their_status_and_field() {
    let s = Server::start();
    let cases: Vec<(&str, String, u16, Option<&str>, &str)> = vec![
        ("/v1/completions", "{not json".into(), 400, None, "not valid JSON"),
        ("/v1/completions", "[1, 2]".into(), 400, None, "must be a JSON object"),
        (
            "/v1/completions",
            json!({"prompt": "x", "temperature": "hot"}).to_string(),
            400,
            Some("temperature"),
            "temperature must be a number",
        ),
        (
            "/v1/completions",
            json!({"prompt": "x", "temperature": 3.5}).to_string(),
            400,
            Some("temperature"),
            "outside [0, 2]",
        ),
        ("/v1/completions", json!({"prompt": "x", "top_p": 0}).to_string(), 400, Some("top_p"), "greater than 0"),
        ("/v1/completions", json!({"prompt": "x", "max_tokens": 0}).to_string(), 400, Some("max_tokens"), "outside"),
        (
            "/v1/completions",
            json!({"prompt": "x", "max_tokens": 100000}).to_string(),
            400,
            Some("max_tokens"),
            "server.max_output_tokens",
        ),
        ("/v1/completions", json!({"prompt": "x", "n": 2}).to_string(), 400, Some("n"), "n = 2 is not supported"),
        (
            "/v1/completions",
            json!({"prompt": "x", "temprature": 1}).to_string(),
            400,
            Some("temprature"),
            "unknown field",
        ),
        ("/v1/completions", json!({"prompt": "x", "echo": true}).to_string(), 400, Some("echo"), "not supported"),
        ("/v1/completions", json!({"prompt": "x", "stop": [1]}).to_string(), 400, Some("stop"), "strings"),
        (
            "/v1/completions",
            json!({"prompt": "x", "stop_token_ids": [99999]}).to_string(),
            400,
            Some("stop_token_ids"),
            "not a token id",
        ),
        ("/v1/completions", json!({"prompt": [1, 99999]}).to_string(), 400, Some("prompt"), "outside the vocabulary"),
        ("/v1/completions", json!({"max_tokens": 3}).to_string(), 400, Some("prompt"), "prompt is required"),
        (
            "/v1/completions",
            json!({"prompt": "word ".repeat(400)}).to_string(),
            400,
            Some("prompt"),
            "server.max_prompt_tokens",
        ),
        (
            "/v1/completions",
            json!({"prompt": "x", "stream_options": {"include_usage": true}}).to_string(),
            400,
            Some("stream_options"),
            "stream = true",
        ),
        ("/v1/completions", json!({"prompt": "x", "model": "gpt-4"}).to_string(), 404, Some("model"), "does not exist"),
        ("/v1/chat/completions", json!({"messages": "hi"}).to_string(), 400, Some("messages"), "array of messages"),
        ("/v1/chat/completions", json!({"messages": []}).to_string(), 400, Some("messages"), "empty"),
        (
            "/v1/chat/completions",
            json!({"messages": [{"role": "user"}], "tools": [{"type": "function"}]}).to_string(),
            400,
            Some("tools[0].function"),
            "must be an object",
        ),
        (
            "/v1/chat/completions",
            json!({"messages": [{"role": "user", "content": "x"}], "tool_choice": "required"}).to_string(),
            400,
            Some("tool_choice"),
            "tools is empty",
        ),
        (
            "/v1/chat/completions",
            json!({"messages": [{"role": "assistant", "tool_calls": [{"function": {"name": "f", "arguments": "{oops"}}]}]})
                .to_string(),
            400,
            Some("messages[0].tool_calls[0].function.arguments"),
            "JSON object",
        ),
        (
            "/v1/chat/completions",
            json!({"messages": [{"role": "user", "content": "x"}], "chat_template_kwargs": [1]}).to_string(),
            400,
            Some("chat_template_kwargs"),
            "must be an object",
        ),
        (
            "/v1/chat/completions",
            json!({"messages": [{"role": 1, "content": "x"}]}).to_string(),
            400,
            Some("messages[0].role"),
            "must be a string",
        ),
        (
            "/v1/chat/completions",
            json!({"messages": [{"role": "user", "content": [{"type": "image_url"}]}]}).to_string(),
            400,
            Some("messages[0].content[0]"),
            "only text parts",
        ),
        (
            "/v1/chat/completions",
            json!({"messages": [{"role": "wizard", "content": "x"}]}).to_string(),
            400,
            Some("messages"),
            "unknown role: wizard",
        ),
        (
            "/v1/chat/completions",
            json!({"messages": [{"role": "user", "content": "x"}], "top_logprobs": 2}).to_string(),
            400,
            Some("top_logprobs"),
            "logprobs = true",
        ),
    ];
    for (path, body, status, param, needle) in cases {
        let (got, _, text) = post(&s.base, path, &body);
        let v: Value = serde_json::from_str(&text).unwrap_or_else(|e| panic!("{e}: {text}"));
        assert_eq!(got, status, "{body}: {text}");
        let e = &v["error"];
        assert!(e["message"].as_str().unwrap().contains(needle), "{body}: {text}");
        assert_eq!(e["param"].as_str(), param, "{body}: {text}");
        assert!(e["type"].is_string(), "{text}");
    }
    // A body over the size limit: 413.
    let big = format!("{{\"prompt\": \"{}\"}}", "a".repeat(2 << 20));
    let file = std::env::temp_dir().join(format!("kiln-big-{}.json", std::process::id()));
    std::fs::write(&file, big).unwrap();
    let (status, _, text) = curl(&[
        "-H",
        "Content-Type: application/json",
        "--data-binary",
        &format!("@{}", file.display()),
        &format!("{}/v1/completions", s.base),
    ]);
    let _ = std::fs::remove_file(&file);
    assert_eq!(status, 413, "{text}");
    // Wrong method.
    let (status, _, _) = curl(&["-X", "GET", &format!("{}/v1/completions", s.base)]);
    assert_eq!(status, 405);
    // The server still serves after all of that.
    let (status, _) = post_json(&s.base, "/v1/completions", &json!({"prompt": "x", "max_tokens": 2}));
    assert_eq!(status, 200);
}

#[test]
fn official_openai_client() {
    let python = common::serve::python_with_openai();
    let s = Server::start();
    let out = Command::new(python).arg(common::repo_path("tests/openai_client.py")).arg(&s.base).output().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success() && stdout.contains("openai client: ok"),
        "{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
}
