//! The grammars kiln constrains output to, in llguidance's terms.
//!
//! JSON is generated compact (no whitespace between tokens) unless the schema's own
//! `x-guidance` options say otherwise: free whitespace lets a model pad forever, and a
//! schema-valid answer must fit in max_tokens.
//!
//! Tool calls follow GLM-4.7/5's format without separators:
//! `<tool_call>NAME<arg_key>K</arg_key><arg_value>V</arg_value>...</tool_call>`. A string
//! argument's value is its raw text (no quotes; it cannot contain `<`); any other value is
//! JSON matching the argument's schema. Arguments come in the order the tool declares them,
//! optional ones may be left out.

use llguidance::api::TopLevelGrammar;
use serde_json::{Value, json};

/// A function the model may call: its name and JSON schema for its arguments.
#[derive(Debug, Clone, PartialEq)]
pub struct ToolSpec {
    pub name: String,
    /// An object schema (`properties`, `required`), or Null for no arguments.
    pub parameters: Value,
}

impl ToolSpec {
    /// The declared schema of argument `key`, if any.
    pub fn argument(&self, key: &str) -> Option<&Value> {
        self.parameters.get("properties")?.get(key)
    }
}

/// Any JSON object (`response_format: {"type": "json_object"}`).
pub fn json_object() -> TopLevelGrammar {
    json_schema(&json!({"type": "object"}))
}

/// JSON matching `schema` (`response_format: {"type": "json_schema", ...}`).
pub fn json_schema(schema: &Value) -> TopLevelGrammar {
    TopLevelGrammar::from_json_schema(compact(schema))
}

fn compact(schema: &Value) -> Value {
    let mut s = schema.clone();
    if let Some(o) = s.as_object_mut()
        && !o.contains_key("x-guidance")
    {
        o.insert("x-guidance".into(), json!({"whitespace_flexible": false}));
    }
    s
}

/// A lark string literal for `text`.
fn literal(text: &str) -> String {
    Value::String(text.to_string()).to_string()
}

/// One tool call of one of `tools` (`one`), or one or more in a row.
pub fn tool_calls(tools: &[ToolSpec], one: bool) -> Result<TopLevelGrammar, String> {
    if tools.is_empty() {
        return Err("no tools to call".into());
    }
    let mut rules = vec![format!("start: call{}", if one { "" } else { "+" })];
    rules.push(format!("call: {}", (0..tools.len()).map(|i| format!("c{i}")).collect::<Vec<_>>().join(" | ")));
    for (i, tool) in tools.iter().enumerate() {
        let props = tool.parameters.get("properties").and_then(Value::as_object);
        let required: Vec<&str> = tool
            .parameters
            .get("required")
            .and_then(Value::as_array)
            .map(|r| r.iter().filter_map(Value::as_str).collect())
            .unwrap_or_default();
        let mut args = Vec::new();
        for (j, (key, schema)) in props.into_iter().flatten().enumerate() {
            let opt = if required.contains(&key.as_str()) { "" } else { "?" };
            args.push(format!("a{i}_{j}{opt}"));
            let head = literal(&format!("<arg_key>{key}</arg_key><arg_value>"));
            rules.push(format!("a{i}_{j}: {head} v{i}_{j} \"</arg_value>\""));
            rules.push(format!("v{i}_{j}: {}", value_rule(schema)?));
        }
        rules.push(format!(
            "c{i}: {} {} \"</tool_call>\"",
            literal(&format!("<tool_call>{}", tool.name)),
            args.join(" ")
        ));
    }
    Ok(TopLevelGrammar::from_lark(rules.join("\n")))
}

/// How one argument's value is written: raw text for strings, JSON otherwise.
fn value_rule(schema: &Value) -> Result<String, String> {
    if schema.get("type").and_then(Value::as_str) != Some("string") {
        let s = serde_json::to_string(&compact(schema)).map_err(|e| e.to_string())?;
        return Ok(format!("%json{s}"));
    }
    if let Some(options) = schema.get("enum").and_then(Value::as_array) {
        let words: Vec<String> =
            options.iter().filter_map(Value::as_str).filter(|w| !w.contains('<')).map(literal).collect();
        if words.is_empty() {
            return Err("a string enum with no value a tool call can carry".into());
        }
        return Ok(words.join(" | "));
    }
    let min = schema.get("minLength").and_then(Value::as_u64).unwrap_or(0);
    Ok(match schema.get("maxLength").and_then(Value::as_u64) {
        Some(max) => format!("/[^<]{{{min},{max}}}/"),
        None => format!("/[^<]{{{min},}}/"),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tool_grammar_lists_each_argument_in_order() {
        let tools = [ToolSpec {
            name: "get_weather".into(),
            parameters: json!({"type": "object", "properties": {
                "city": {"type": "string", "maxLength": 20},
                "days": {"type": "integer"},
                "unit": {"type": "string", "enum": ["c", "f"]}
            }, "required": ["city"]}),
        }];
        let TopLevelGrammar { grammars, .. } = tool_calls(&tools, true).unwrap();
        let lark = grammars[0].lark_grammar.clone().unwrap();
        assert!(lark.contains("start: call\n"), "{lark}");
        assert!(lark.contains(r#"c0: "<tool_call>get_weather" a0_0 a0_1? a0_2? "</tool_call>""#), "{lark}");
        assert!(lark.contains("v0_0: /[^<]{0,20}/"), "{lark}");
        assert!(lark.contains(r#"v0_1: %json{"type":"integer","x-guidance":{"whitespace_flexible":false}}"#), "{lark}");
        assert!(lark.contains(r#"v0_2: "c" | "f""#), "{lark}");
        assert!(tool_calls(&[], true).is_err());
    }
}
