//! The API coding agents use, on the shipped demo model (`kiln serve` of the default binary),
//! driven by the official openai client (tests/openai_agents.py): tool calls in GLM's format,
//! forced by tool_choice, streamed and not, a tool round trip, and json_schema outputs that
//! always validate.

mod common;

use std::process::Command;

#[test]
fn openai_client_tools_and_structured_output_on_the_demo_model() {
    let python = common::serve::python_with_openai();
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_kiln"));
    cmd.args(["serve", "--bind", "127.0.0.1:0"]);
    let s = common::serve::Serving::spawn(cmd);
    let out = Command::new(python).arg(common::repo_path("tests/openai_agents.py")).arg(&s.base).output().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success() && stdout.contains("openai agents: ok"),
        "{stdout}\n{}\n--- server log (last lines):\n{}",
        String::from_utf8_lossy(&out.stderr),
        s.log.lock().unwrap().iter().rev().take(20).cloned().collect::<Vec<_>>().join("\n")
    );
}
