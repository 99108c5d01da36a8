use serde_json::json;

use super::*;

fn weather() -> Vec<ToolSpec> {
    vec![ToolSpec {
        name: "get_weather".into(),
        parameters: json!({"type": "object", "properties": {
            "city": {"type": "string"}, "days": {"type": "integer"}, "code": {"type": "string"}
        }}),
    }]
}

/// Every delta of `text` fed in pieces of `n` characters, merged: content, reasoning, calls.
fn streamed(text: &str, n: usize, tools: Option<Vec<ToolSpec>>) -> (String, String, Vec<(String, String)>) {
    let mut p = OutputParser::new(tools, false);
    let chars: Vec<char> = text.chars().collect();
    let mut deltas = Vec::new();
    for piece in chars.chunks(n) {
        deltas.extend(p.push(&piece.iter().collect::<String>()));
    }
    deltas.extend(p.finish());
    let (mut content, mut reasoning, mut calls) = (String::new(), String::new(), Vec::<(String, String)>::new());
    for d in deltas {
        match d {
            Delta::Content(c) => {
                for tag in [CALL_OPEN, CALL_CLOSE, KEY_OPEN, VALUE_OPEN, THINK_OPEN, THINK_CLOSE] {
                    assert!(!c.contains(tag), "a tag leaked into content: {c:?}");
                }
                content.push_str(&c)
            }
            Delta::Reasoning(r) => reasoning.push_str(&r),
            Delta::CallStart { index, name, .. } => {
                assert_eq!(index, calls.len());
                calls.push((name, String::new()))
            }
            Delta::CallArgs { index, fragment } => calls[index].1.push_str(&fragment),
        }
    }
    (content, reasoning, calls)
}

fn args(calls: &[(String, String)], i: usize) -> Value {
    serde_json::from_str(&calls[i].1).unwrap_or_else(|e| panic!("{e}: {:?}", calls[i].1))
}

const GLM47: &str = "<think>Need the weather.</think>Checking.<tool_call>get_weather<arg_key>city</arg_key><arg_value>Paris</arg_value><arg_key>days</arg_key><arg_value>3</arg_value><arg_key>code</arg_key><arg_value>007</arg_value></tool_call>";
const GLM45: &str = "<think>Need the weather.</think>Checking.\n<tool_call>get_weather\n<arg_key>city</arg_key>\n<arg_value>Paris</arg_value>\n<arg_key>days</arg_key>\n<arg_value>3</arg_value>\n<arg_key>code</arg_key>\n<arg_value>007</arg_value>\n</tool_call>\n";

#[test]
fn both_glm_spacings_parse_the_same_at_any_split() {
    for text in [GLM47, GLM45] {
        for n in [1, 2, 3, 5, 7, 11, 1000] {
            let (content, reasoning, calls) = streamed(text, n, Some(weather()));
            assert_eq!((content.as_str(), reasoning.as_str()), ("Checking.", "Need the weather."), "split {n}");
            assert_eq!(calls.len(), 1, "split {n}");
            assert_eq!(calls[0].0, "get_weather");
            // Strings by schema stay strings, even when they look like numbers.
            assert_eq!(args(&calls, 0), json!({"city": "Paris", "days": 3, "code": "007"}), "split {n}");
        }
    }
}

#[test]
fn several_calls_and_values_without_a_schema() {
    let text = "<tool_call>get_weather<arg_key>city</arg_key><arg_value>Oslo</arg_value></tool_call>\n<tool_call>other<arg_key>n</arg_key><arg_value>[1, 2]</arg_value><arg_key>s</arg_key><arg_value>plain text</arg_value><arg_key>o</arg_key><arg_value>{\"a\": true}</arg_value></tool_call>";
    for n in [1, 4, 1000] {
        let (content, _, calls) = streamed(text, n, Some(weather()));
        assert_eq!(content, "");
        assert_eq!(calls.iter().map(|c| c.0.as_str()).collect::<Vec<_>>(), ["get_weather", "other"]);
        assert_eq!(args(&calls, 0), json!({"city": "Oslo"}));
        assert_eq!(args(&calls, 1), json!({"n": [1, 2], "s": "plain text", "o": {"a": true}}));
    }
}

#[test]
fn calls_without_arguments_and_cut_off_calls_still_give_json() {
    let (_, _, calls) = streamed("<tool_call>now</tool_call>", 1, Some(weather()));
    assert_eq!((calls[0].0.as_str(), args(&calls, 0)), ("now", json!({})));
    // Generation stopped mid-call (max_tokens): the call is closed with what was complete.
    let (_, _, calls) = streamed(
        "<tool_call>get_weather<arg_key>city</arg_key><arg_value>Rome</arg_value><arg_key>da",
        3,
        Some(weather()),
    );
    assert_eq!(args(&calls, 0), json!({"city": "Rome"}));
}

#[test]
fn without_tools_the_tags_are_text_and_late_think_is_text() {
    let (content, _, calls) = streamed("a <tool_call>x</tool_call>", 2, None);
    assert_eq!((content.as_str(), calls.len()), ("a <tool_call>x</tool_call>", 0));
    let mut p = OutputParser::new(None, false);
    let (content, reasoning, _) = whole(p, "Hi <think>no</think>");
    assert_eq!((content.as_str(), reasoning.as_str()), ("Hi <think>no</think>", ""));
    // A prompt that opened the think block: the text starts as reasoning.
    p = OutputParser::new(None, true);
    let (content, reasoning, _) = whole(p, "hmm</think>Answer");
    assert_eq!((content.as_str(), reasoning.as_str()), ("Answer", "hmm"));
}

#[test]
fn text_that_only_looks_like_a_tag_is_released() {
    let mut p = OutputParser::new(Some(weather()), false);
    assert_eq!(p.push("a <tool"), vec![Delta::Content("a".into())]);
    assert_eq!(p.push("box> b"), vec![Delta::Content(" <toolbox> b".into())]);
    assert_eq!(p.finish(), vec![]);
}
