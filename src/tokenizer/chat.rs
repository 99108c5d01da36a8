//! The model's own Jinja chat template, rendered with minijinja the way HF's
//! `apply_chat_template` renders it (jinja2 with trim_blocks and lstrip_blocks,
//! `raise_exception`, HF's `tojson`, Python string and dict methods). Tools, earlier tool calls
//! and results, and the request's `chat_template_kwargs` reach the template as they reach HF's.

use minijinja::value::Value as JinjaValue;
use minijinja::{Environment, Error as JinjaError, ErrorKind, context};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

/// One message after the server has normalized its content to text.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ChatMessage {
    pub role: String,
    pub content: String,
}

pub struct ChatTemplate {
    env: Environment<'static>,
    bos: Option<String>,
    eos: Option<String>,
}

fn raise_exception(message: String) -> Result<String, JinjaError> {
    Err(JinjaError::new(ErrorKind::InvalidOperation, message))
}

impl ChatTemplate {
    pub fn new(source: String, bos: Option<String>, eos: Option<String>) -> Result<ChatTemplate, String> {
        let mut env = Environment::new();
        env.set_trim_blocks(true);
        env.set_lstrip_blocks(true);
        env.set_unknown_method_callback(minijinja_contrib::pycompat::unknown_method_callback);
        env.add_function("raise_exception", raise_exception);
        env.add_filter("tojson", super::tojson::tojson);
        env.add_template_owned("chat", source).map_err(|e| e.to_string())?;
        Ok(ChatTemplate { env, bos, eos })
    }

    /// The prompt text for `messages`; with `add_generation_prompt` it ends where the
    /// assistant's reply begins. A template error (e.g. `raise_exception` on a bad role) is
    /// returned as its message.
    pub fn render(&self, messages: &[ChatMessage], add_generation_prompt: bool) -> Result<String, String> {
        let messages: Vec<Value> =
            messages.iter().map(|m| serde_json::json!({"role": m.role, "content": m.content})).collect();
        self.render_with(&messages, None, &Map::new(), add_generation_prompt)
    }

    /// As [`render`](Self::render), for messages in OpenAI's shape (tool calls, tool
    /// results, reasoning), with `tools` (OpenAI's list) and `kwargs` as extra template
    /// variables (e.g. `enable_thinking`). The fixed variables win over kwargs of the same name.
    pub fn render_with(
        &self,
        messages: &[Value],
        tools: Option<&Value>,
        kwargs: &Map<String, Value>,
        add_generation_prompt: bool,
    ) -> Result<String, String> {
        let tmpl = self.env.get_template("chat").map_err(|e| e.to_string())?;
        let fixed = context! {
            messages => messages,
            tools => tools,
            add_generation_prompt => add_generation_prompt,
            bos_token => self.bos.clone().unwrap_or_default(),
            eos_token => self.eos.clone().unwrap_or_default(),
        };
        tmpl.render(context! { ..fixed, ..JinjaValue::from_serialize(kwargs) }).map_err(|e| match e.kind() {
            ErrorKind::InvalidOperation => e.detail().unwrap_or("template error").to_string(),
            _ => e.to_string(),
        })
    }
}
