//! The `tojson` filter as HF's `apply_chat_template` defines it: Python's `json.dumps` with
//! `ensure_ascii=False` by default, keys in their given order, `", "` and `": "` between items
//! (or newlines with `indent`). minijinja's own `tojson` writes compact, HTML-escaped JSON, so
//! tool lists in GLM's templates would render differently from HF.

use minijinja::value::{Kwargs, Value as JinjaValue};
use minijinja::{Error, ErrorKind};
use serde_json::Value;

pub fn tojson(value: JinjaValue, kwargs: Kwargs) -> Result<JinjaValue, Error> {
    let ensure_ascii: Option<bool> = kwargs.get("ensure_ascii")?;
    let indent: Option<usize> = kwargs.get("indent")?;
    let sort_keys: Option<bool> = kwargs.get("sort_keys")?;
    kwargs.assert_all_used()?;
    let json =
        serde_json::to_value(&value).map_err(|e| Error::new(ErrorKind::InvalidOperation, format!("tojson: {e}")))?;
    let mut out = String::new();
    write(
        &mut out,
        &json,
        &Style { indent, ensure_ascii: ensure_ascii.unwrap_or(false), sort_keys: sort_keys.unwrap_or(false) },
        0,
    );
    Ok(JinjaValue::from_safe_string(out))
}

struct Style {
    indent: Option<usize>,
    ensure_ascii: bool,
    sort_keys: bool,
}

#[cfg(test)]
fn python_dumps(v: &Value) -> String {
    let mut out = String::new();
    write(&mut out, v, &Style { indent: None, ensure_ascii: false, sort_keys: false }, 0);
    out
}

fn write(out: &mut String, v: &Value, style: &Style, depth: usize) {
    let newline = |out: &mut String, depth: usize| {
        if let Some(n) = style.indent {
            out.push('\n');
            out.push_str(&" ".repeat(n * depth));
        }
    };
    let item_sep = if style.indent.is_some() { "," } else { ", " };
    match v {
        Value::Array(items) if !items.is_empty() => {
            out.push('[');
            for (i, x) in items.iter().enumerate() {
                if i > 0 {
                    out.push_str(item_sep);
                }
                newline(out, depth + 1);
                write(out, x, style, depth + 1);
            }
            newline(out, depth);
            out.push(']');
        }
        Value::Object(map) if !map.is_empty() => {
            let mut entries: Vec<(&String, &Value)> = map.iter().collect();
            if style.sort_keys {
                entries.sort_by(|a, b| a.0.cmp(b.0));
            }
            out.push('{');
            for (i, (k, x)) in entries.into_iter().enumerate() {
                if i > 0 {
                    out.push_str(item_sep);
                }
                newline(out, depth + 1);
                string(out, k, style.ensure_ascii);
                out.push_str(": ");
                write(out, x, style, depth + 1);
            }
            newline(out, depth);
            out.push('}');
        }
        Value::String(s) => string(out, s, style.ensure_ascii),
        Value::Bool(b) => out.push_str(if *b { "true" } else { "false" }),
        Value::Null => out.push_str("null"),
        other => out.push_str(&other.to_string()),
    }
}

fn string(out: &mut String, s: &str, ensure_ascii: bool) {
    let quoted = Value::String(s.to_string()).to_string();
    if !ensure_ascii {
        out.push_str(&quoted);
        return;
    }
    for c in quoted.chars() {
        if c.is_ascii() {
            out.push(c);
        } else {
            let mut units = [0u16; 2];
            for u in c.encode_utf16(&mut units) {
                out.push_str(&format!("\\u{u:04x}"));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn writes_what_python_json_dumps_writes() {
        let v = json!({"name": "f", "b": [1, 2.5, true, null], "e": {}, "s": "é\"\n"});
        assert_eq!(python_dumps(&v), r#"{"name": "f", "b": [1, 2.5, true, null], "e": {}, "s": "é\"\n"}"#);
        let mut out = String::new();
        write(
            &mut out,
            &json!({"a": [1], "é": "日"}),
            &Style { indent: Some(2), ensure_ascii: true, sort_keys: false },
            0,
        );
        assert_eq!(out, "{\n  \"a\": [\n    1\n  ],\n  \"\\u00e9\": \"\\u65e5\"\n}");
    }
}
