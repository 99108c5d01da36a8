//! Helpers shared by the integration tests.

#![allow(dead_code)]

pub mod emulated;
pub mod engine;
pub mod fixture;
pub mod plan_build;
pub mod serve;

use std::path::PathBuf;

use kiln::plan::{self, Problem};

pub fn repo_path(rel: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join(rel)
}

pub fn read_plan_text(rel: &str) -> String {
    std::fs::read_to_string(repo_path(rel)).expect("plan file in the repo")
}

pub const GLM_TP4DP2: &str = "plan/glm-5.2-mxfp4-mi355x-tp4dp2.toml";
pub const GLM_TP8: &str = "plan/glm-5.2-mxfp4-mi355x-tp8.toml";
pub const TINY: &str = "plan/tiny.toml";

/// A plan file with keys set (`Some`) or removed (`None`), as TOML text.
pub fn edited(rel: &str, edits: &[(&str, Option<toml::Value>)]) -> String {
    let mut doc: toml::Table = toml::from_str(&read_plan_text(rel)).expect("repo plans parse");
    for (path, value) in edits {
        let mut keys: Vec<&str> = path.split('.').collect();
        let last = keys.pop().expect("non-empty key path");
        let mut table = &mut doc;
        for k in keys {
            table = table
                .entry(k)
                .or_insert_with(|| toml::Value::Table(toml::Table::new()))
                .as_table_mut()
                .expect("path goes through tables");
        }
        match value {
            Some(v) => {
                table.insert(last.to_string(), v.clone());
            }
            None => {
                table.remove(last);
            }
        }
    }
    toml::to_string(&doc).expect("serializable")
}

/// Problems of a plan with edits applied (empty when it validates).
pub fn problems(rel: &str, edits: &[(&str, Option<toml::Value>)]) -> Vec<Problem> {
    match plan::check(&edited(rel, edits)) {
        Ok(_) => Vec::new(),
        Err(p) => p,
    }
}

pub fn int(v: i64) -> Option<toml::Value> {
    Some(toml::Value::Integer(v))
}

pub fn float(v: f64) -> Option<toml::Value> {
    Some(toml::Value::Float(v))
}

pub fn string(v: &str) -> Option<toml::Value> {
    Some(toml::Value::String(v.to_string()))
}

/// Asserts some problem has this key and a message containing `needle`.
#[track_caller]
pub fn assert_problem(problems: &[Problem], key: &str, needle: &str) {
    assert!(
        problems.iter().any(|p| p.key == key && p.message.contains(needle)),
        "expected a problem at {key} containing {needle:?}; got:\n{}",
        plan::render_problems(plan::IN_PLAN, problems)
    );
}
