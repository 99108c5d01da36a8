//! The tokenizer and chat template against HF renders (tools/make_chat_fixture.py; tool
//! conversations from tools/make_tool_renders.py), and the streaming detokenizer.

mod common;

use kiln::tokenizer::{ChatMessage, Detokenizer, Tokenizer};
use serde_json::Value;

fn fixture() -> (Tokenizer, std::path::PathBuf) {
    let dir = common::repo_path("tests/fixtures/chat_tiny");
    (Tokenizer::from_dir(&dir).unwrap(), dir)
}

fn json(dir: &std::path::Path, name: &str) -> Value {
    serde_json::from_str(&std::fs::read_to_string(dir.join(name)).unwrap()).unwrap()
}

fn ids(v: &Value) -> Vec<u32> {
    v.as_array().unwrap().iter().map(|x| x.as_u64().unwrap() as u32).collect()
}

#[test]
fn encodes_and_decodes_like_hf() {
    let (tok, dir) = fixture();
    for case in json(&dir, "encodings.json").as_array().unwrap() {
        let text = case["text"].as_str().unwrap();
        assert_eq!(tok.encode(text, true).unwrap(), ids(&case["ids"]), "{text:?}");
        assert_eq!(tok.decode(&ids(&case["ids"])), case["decoded"].as_str().unwrap(), "{text:?}");
    }
}

#[test]
fn chat_template_renders_like_hf() {
    let (tok, dir) = fixture();
    let chat = tok.chat_template().expect("the fixture has a chat template");
    for case in json(&dir, "chat_renders.json").as_array().unwrap() {
        let messages: Vec<ChatMessage> = serde_json::from_value(case["messages"].clone()).unwrap();
        let generation_prompt = case["add_generation_prompt"].as_bool().unwrap();
        let text = chat.render(&messages, generation_prompt).unwrap();
        assert_eq!(text, case["text"].as_str().unwrap());
        assert_eq!(tok.encode(&text, false).unwrap(), ids(&case["ids"]), "{text:?}");
    }
}

#[test]
fn tool_conversations_render_like_hf() {
    let (tok, dir) = fixture();
    let chat = tok.chat_template().unwrap();
    for case in json(&dir, "tool_renders.json").as_array().unwrap() {
        let messages = case["messages"].as_array().unwrap();
        let tools = case.get("tools").filter(|t| !t.is_null());
        let kwargs = case["kwargs"].as_object().unwrap();
        let text = chat.render_with(messages, tools, kwargs, case["add_generation_prompt"].as_bool().unwrap()).unwrap();
        assert_eq!(text, case["text"].as_str().unwrap());
    }
}

#[test]
fn template_kwargs_cannot_replace_the_fixed_variables() {
    let (tok, dir) = fixture();
    let chat = tok.chat_template().unwrap();
    let case = &json(&dir, "tool_renders.json")[0];
    let messages = case["messages"].as_array().unwrap();
    let tools = case.get("tools");
    let want = chat.render_with(messages, tools, &serde_json::Map::new(), true).unwrap();
    let kwargs = serde_json::json!({"messages": [], "tools": null, "add_generation_prompt": false, "bos_token": "X"});
    assert_eq!(chat.render_with(messages, tools, kwargs.as_object().unwrap(), true).unwrap(), want);
}

#[test]
fn template_exceptions_are_reported() {
    let (tok, _) = fixture();
    let err = tok
        .chat_template()
        .unwrap()
        .render(&[ChatMessage { role: "wizard".into(), content: "hi".into() }], true)
        .unwrap_err();
    assert!(err.contains("unknown role: wizard"), "{err}");
}

#[test]
fn eos_ids_come_from_every_config() {
    let (tok, _) = fixture();
    assert_eq!(tok.eos_ids().iter().copied().collect::<Vec<_>>(), vec![0, 7, 9]);
}

#[test]
fn streaming_never_splits_a_character() {
    let (tok, _) = fixture();
    for text in ["Unicode: café, 日本語, emoji 🚀", "plain ascii\nwith lines", "🚀🚀 é"] {
        let ids = tok.encode(text, false).unwrap();
        let mut d = Detokenizer::new();
        let mut out = String::new();
        for &id in &ids {
            let piece = d.push(&tok, id);
            assert!(!piece.contains('\u{FFFD}'), "{text:?}: half a character in {piece:?}");
            out.push_str(&piece);
        }
        out.push_str(&d.finish(&tok));
        assert_eq!(out, tok.decode(&ids));
        assert_eq!(out, text);
    }
}
