//! The event log: one line per event on stderr, as text for people or JSON for collectors.
//!
//! Each line is written with a single `write_all` under stderr's lock, so lines from
//! different threads never interleave. Text lines end with the message so that
//! `kiln: serving ... on http://ADDR` stays easy to read and to grep.

use std::io::Write;
use std::sync::atomic::{AtomicU8, Ordering};
use std::time::SystemTime;

use serde_json::{Map, Value};

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum LogFormat {
    /// `2026-11-28T07:01:02.123Z info  kiln: message`
    Text,
    /// `{"ts": ..., "level": ..., "event": ..., "msg": ..., <fields>}`
    Json,
}

static FORMAT: AtomicU8 = AtomicU8::new(0);

pub fn set_format(f: LogFormat) {
    FORMAT.store(f as u8, Ordering::Relaxed);
}

pub fn format() -> LogFormat {
    if FORMAT.load(Ordering::Relaxed) == LogFormat::Json as u8 { LogFormat::Json } else { LogFormat::Text }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Level {
    Info,
    Warn,
    Error,
}

impl Level {
    fn as_str(self) -> &'static str {
        match self {
            Level::Info => "info",
            Level::Warn => "warn",
            Level::Error => "error",
        }
    }
}

/// One event: a stable name for machines, a sentence for people, and fields.
pub struct Event {
    level: Level,
    name: &'static str,
    message: String,
    fields: Map<String, Value>,
}

impl Event {
    pub fn field(mut self, key: &str, value: impl Into<Value>) -> Event {
        self.fields.insert(key.to_string(), value.into());
        self
    }

    pub fn emit(self) {
        let line = self.render(format(), SystemTime::now());
        let mut err = std::io::stderr().lock();
        // Logging must never take the server down; a closed stderr loses the line.
        let _ = err.write_all(line.as_bytes());
    }

    fn render(&self, format: LogFormat, at: SystemTime) -> String {
        let ts = humantime::format_rfc3339_millis(at).to_string();
        match format {
            LogFormat::Text => {
                // Fields already in the sentence are not repeated in text.
                format!("{ts} {:<5} kiln: {}\n", self.level.as_str(), self.message.replace('\n', " "))
            }
            LogFormat::Json => {
                let mut obj = Map::new();
                obj.insert("ts".into(), ts.into());
                obj.insert("level".into(), self.level.as_str().into());
                obj.insert("event".into(), self.name.into());
                obj.insert("msg".into(), self.message.clone().into());
                for (k, v) in &self.fields {
                    obj.entry(k.clone()).or_insert_with(|| v.clone());
                }
                format!("{}\n", Value::Object(obj))
            }
        }
    }
}

fn event(level: Level, name: &'static str, message: impl Into<String>) -> Event {
    Event { level, name, message: message.into(), fields: Map::new() }
}

pub fn info(name: &'static str, message: impl Into<String>) -> Event {
    event(Level::Info, name, message)
}

pub fn warn(name: &'static str, message: impl Into<String>) -> Event {
    event(Level::Warn, name, message)
}

pub fn error(name: &'static str, message: impl Into<String>) -> Event {
    event(Level::Error, name, message)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::{Duration, UNIX_EPOCH};

    #[test]
    fn text_is_one_line_with_time_level_and_message() {
        let at = UNIX_EPOCH + Duration::from_millis(1_795_849_262_123);
        let line = error("x", "two\nlines").field("shard", "a.safetensors").render(LogFormat::Text, at);
        assert_eq!(line, "2026-11-28T07:01:02.123Z error kiln: two lines\n");
    }

    #[test]
    fn json_carries_fields_and_cannot_be_spoofed_by_them() {
        let at = UNIX_EPOCH + Duration::from_millis(1_795_849_262_123);
        let line = info("serving", "serving on http://127.0.0.1:1\n")
            .field("addr", "127.0.0.1:1")
            .field("level", "fake")
            .render(LogFormat::Json, at);
        assert_eq!(line.matches('\n').count(), 1);
        let v: Value = serde_json::from_str(&line).unwrap();
        assert_eq!(v["event"], "serving");
        assert_eq!(v["level"], "info");
        assert_eq!(v["addr"], "127.0.0.1:1");
        assert_eq!(v["ts"], "2026-11-28T07:01:02.123Z");
    }
}
