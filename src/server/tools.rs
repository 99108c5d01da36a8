//! The chat request fields of agents: `tools`, `tool_choice`, `response_format`, and messages
//! that carry tool calls, tool results and reasoning. Each refusal names the field at fault.

use llguidance::api::TopLevelGrammar;
use serde_json::{Map, Value};

use super::api_error::ApiError;
use super::http::clip;
use crate::constrain::{self, ToolSpec};

/// Tools per request at most (each is rendered into the prompt and, when forced, the grammar).
const MAX_TOOLS: usize = 128;
const MAX_NAME: usize = 64;

/// OpenAI's `tools`: functions with a name and a JSON schema for their arguments.
pub fn parse_tools(v: &Value) -> Result<Vec<ToolSpec>, ApiError> {
    let list = v.as_array().ok_or_else(|| ApiError::field("tools", "tools must be an array of tools"))?;
    if list.len() > MAX_TOOLS {
        return Err(ApiError::field("tools", format!("tools has {} entries; at most {MAX_TOOLS}", list.len())));
    }
    let mut specs: Vec<ToolSpec> = Vec::with_capacity(list.len());
    for (i, t) in list.iter().enumerate() {
        let at = |k: &str| format!("tools[{i}].{k}");
        if t.get("type").and_then(Value::as_str) != Some("function") {
            return Err(ApiError::field(&at("type"), format!("{} must be \"function\"", at("type"))));
        }
        let f = t
            .get("function")
            .and_then(Value::as_object)
            .ok_or_else(|| ApiError::field(&at("function"), format!("{} must be an object", at("function"))))?;
        let name = f.get("name").and_then(Value::as_str).unwrap_or_default();
        let valid = |c: char| c.is_ascii_alphanumeric() || c == '_' || c == '-' || c == '.';
        if name.is_empty() || name.len() > MAX_NAME || !name.chars().all(valid) {
            return Err(ApiError::field(
                &at("function.name"),
                format!("{} must be 1 to {MAX_NAME} of a-z, A-Z, 0-9, _, - and .", at("function.name")),
            ));
        }
        if specs.iter().any(|s| s.name == name) {
            return Err(ApiError::field(&at("function.name"), format!("two tools are named {name}")));
        }
        let parameters = match f.get("parameters") {
            None | Some(Value::Null) => Value::Null,
            Some(p @ Value::Object(_)) => {
                if p.get("properties").is_some_and(|x| !x.is_object()) {
                    return Err(ApiError::field(
                        &at("function.parameters"),
                        format!("{}.properties must be an object", at("function.parameters")),
                    ));
                }
                p.clone()
            }
            Some(_) => {
                return Err(ApiError::field(
                    &at("function.parameters"),
                    format!("{} must be a JSON schema object", at("function.parameters")),
                ));
            }
        };
        specs.push(ToolSpec { name: name.to_string(), parameters });
    }
    Ok(specs)
}

#[derive(Debug, Clone, PartialEq)]
pub enum ToolChoice {
    /// The model decides (the default with tools).
    Auto,
    /// No tool calls: the output is text.
    None,
    /// At least one call, of any tool.
    Required,
    /// One call of this tool.
    Named(String),
}

impl ToolChoice {
    pub fn parse(v: Option<&Value>, tools: &[ToolSpec]) -> Result<ToolChoice, ApiError> {
        let bad = || {
            ApiError::field(
                "tool_choice",
                "tool_choice must be \"auto\", \"none\", \"required\" or {\"type\": \"function\", \"function\": {\"name\": ...}}",
            )
        };
        let choice = match v {
            None => return Ok(if tools.is_empty() { ToolChoice::None } else { ToolChoice::Auto }),
            Some(Value::String(s)) => match s.as_str() {
                "auto" => ToolChoice::Auto,
                "none" => ToolChoice::None,
                "required" => ToolChoice::Required,
                _ => return Err(bad()),
            },
            Some(Value::Object(o)) => {
                if o.get("type").and_then(Value::as_str) != Some("function") {
                    return Err(bad());
                }
                let name = o.get("function").and_then(|f| f.get("name")).and_then(Value::as_str).ok_or_else(bad)?;
                if !tools.iter().any(|t| t.name == name) {
                    return Err(ApiError::field(
                        "tool_choice",
                        format!("tool_choice names {}, which is not in tools", clip(name)),
                    ));
                }
                ToolChoice::Named(name.to_string())
            }
            Some(_) => return Err(bad()),
        };
        if tools.is_empty() && matches!(choice, ToolChoice::Required | ToolChoice::Named(_)) {
            return Err(ApiError::field("tool_choice", "tool_choice asks for a tool call but tools is empty"));
        }
        Ok(choice)
    }

    /// The grammar a forced call is generated under; None when the model is free.
    pub fn grammar(&self, tools: &[ToolSpec], parallel: bool) -> Result<Option<TopLevelGrammar>, String> {
        match self {
            ToolChoice::Auto | ToolChoice::None => Ok(None),
            ToolChoice::Required => constrain::tool_calls(tools, !parallel).map(Some),
            ToolChoice::Named(name) => {
                let tool: Vec<ToolSpec> = tools.iter().filter(|t| &t.name == name).cloned().collect();
                constrain::tool_calls(&tool, true).map(Some)
            }
        }
    }
}

/// `response_format`: None for text, else the grammar and the field it comes from.
pub fn response_format(v: &Value) -> Result<Option<(TopLevelGrammar, String)>, ApiError> {
    let kind = v.get("type").and_then(Value::as_str);
    match kind {
        Some("text") => Ok(None),
        Some("json_object") => Ok(Some((constrain::json_object(), "response_format".into()))),
        Some("json_schema") => {
            let field = "response_format.json_schema.schema";
            let schema = v.get("json_schema").and_then(|j| j.get("schema")).ok_or_else(|| {
                ApiError::field(field, "response_format.json_schema.schema is required with type json_schema")
            })?;
            if !schema.is_object() {
                return Err(ApiError::field(field, format!("{field} must be a JSON schema object")));
            }
            Ok(Some((constrain::json_schema(schema), field.into())))
        }
        _ => Err(ApiError::field(
            "response_format.type",
            "response_format.type must be \"text\", \"json_object\" or \"json_schema\"",
        )),
    }
}

/// `messages` as the template gets them: content as text, and an assistant's
/// `tool_calls` with their JSON-string arguments parsed into objects, as GLM's templates
/// iterate them.
pub fn messages(v: Option<&Value>) -> Result<Vec<Value>, ApiError> {
    let list = v
        .and_then(Value::as_array)
        .ok_or_else(|| ApiError::field("messages", "messages must be an array of messages"))?;
    if list.is_empty() {
        return Err(ApiError::field("messages", "messages is empty"));
    }
    let mut out = Vec::with_capacity(list.len());
    for (i, m) in list.iter().enumerate() {
        let at = |k: &str| format!("messages[{i}].{k}");
        let role = m
            .get("role")
            .and_then(Value::as_str)
            .ok_or_else(|| ApiError::field(&at("role"), format!("{} must be a string", at("role"))))?;
        let mut msg = Map::new();
        msg.insert("role".into(), Value::String(role.to_string()));
        let content = match m.get("content") {
            Some(Value::String(s)) => Value::String(s.clone()),
            Some(Value::Array(parts)) => Value::String(text_parts(i, parts)?),
            // Null (an assistant turn of tool calls only) renders as no text, as in vLLM.
            Some(Value::Null) | None => Value::String(String::new()),
            Some(_) => {
                return Err(ApiError::field(
                    &at("content"),
                    format!("{} must be a string or an array of text parts", at("content")),
                ));
            }
        };
        msg.insert("content".into(), content);
        for key in ["reasoning_content", "tool_call_id", "name"] {
            match m.get(key) {
                None | Some(Value::Null) => {}
                Some(Value::String(s)) => {
                    msg.insert(key.into(), Value::String(s.clone()));
                }
                Some(_) => return Err(ApiError::field(&at(key), format!("{} must be a string", at(key)))),
            }
        }
        if let Some(calls) = m.get("tool_calls").filter(|c| !c.is_null()) {
            msg.insert("tool_calls".into(), tool_calls(i, calls)?);
        }
        out.push(Value::Object(msg));
    }
    Ok(out)
}

fn text_parts(i: usize, parts: &[Value]) -> Result<String, ApiError> {
    let mut text = String::new();
    for (j, p) in parts.iter().enumerate() {
        match (p.get("type").and_then(Value::as_str), p.get("text").and_then(Value::as_str)) {
            (Some("text"), Some(t)) => text.push_str(t),
            (kind, _) => {
                let k = format!("messages[{i}].content[{j}]");
                return Err(ApiError::field(
                    &k,
                    format!("{k}: only text parts are supported, got {}", clip(kind.unwrap_or("no type"))),
                ));
            }
        }
    }
    Ok(text)
}

fn tool_calls(i: usize, calls: &Value) -> Result<Value, ApiError> {
    let at = format!("messages[{i}].tool_calls");
    let list = calls.as_array().ok_or_else(|| ApiError::field(&at, format!("{at} must be an array")))?;
    let mut out = Vec::with_capacity(list.len());
    for (j, c) in list.iter().enumerate() {
        let here = format!("{at}[{j}].function");
        let f = c.get("function").ok_or_else(|| ApiError::field(&here, format!("{here} is required")))?;
        let name = f
            .get("name")
            .and_then(Value::as_str)
            .ok_or_else(|| ApiError::field(&format!("{here}.name"), format!("{here}.name must be a string")))?;
        let args_field = format!("{here}.arguments");
        let arguments = match f.get("arguments") {
            None | Some(Value::Null) => Value::Object(Map::new()),
            Some(Value::String(s)) if s.trim().is_empty() => Value::Object(Map::new()),
            Some(Value::String(s)) => match serde_json::from_str::<Value>(s) {
                Ok(v @ Value::Object(_)) => v,
                _ => {
                    return Err(ApiError::field(
                        &args_field,
                        format!("{args_field} must be a JSON object (as a string)"),
                    ));
                }
            },
            Some(v @ Value::Object(_)) => v.clone(),
            Some(_) => return Err(ApiError::field(&args_field, format!("{args_field} must be a JSON object"))),
        };
        let mut call = Map::new();
        if let Some(id) = c.get("id").and_then(Value::as_str) {
            call.insert("id".into(), Value::String(id.to_string()));
        }
        call.insert("type".into(), Value::String("function".into()));
        call.insert("function".into(), serde_json::json!({"name": name, "arguments": arguments}));
        out.push(Value::Object(call));
    }
    Ok(Value::Array(out))
}
