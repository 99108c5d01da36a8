//! Constrained decoding in the engine, on the demo model: a constrained request's output
//! always satisfies its grammar; free requests batched with constrained ones get the same
//! tokens as alone; constrained greedy output is the same with MTP speculation as without,
//! and seeded constrained sampling repeats, alone or batched. `kiln bench constrain` prints
//! its table.

mod common;

use std::sync::Arc;
use std::sync::mpsc;
use std::time::Duration;

use common::engine::JoinedEngine;
use kiln::constrain::{self, Grammars, ToolSpec};
use kiln::engine::{EngineConfig, Event, FinishReason, GenerationRequest};
use kiln::kv::KvFormat;
use kiln::metrics::Metrics;
use kiln::model::Model;
use kiln::sample::SamplingParams;
use kiln::tokenizer::Tokenizer;
use serde_json::{Value, json};

fn config(depth: usize) -> EngineConfig {
    EngineConfig {
        max_running: 8,
        max_queued: 64,
        request_timeout: Duration::from_secs(120),
        prefill_chunk_tokens: 64,
        kv_format: KvFormat::Bf16,
        page_size: 8,
        kv_pages: 1024,
        prefix_cache: true,
        spec_depth: depth,
        spec_max_batch: usize::MAX,
    }
}

struct Demo {
    model: Arc<Model>,
    tok: Tokenizer,
    grammars: Grammars,
}

fn demo() -> Demo {
    let plan = kiln::plan::check(&common::read_plan_text(common::TINY)).unwrap();
    let src = kiln::weights::WeightsSource::Dir(common::repo_path("models/tiny"));
    let model = Arc::new(Model::load(&plan, &src.checkpoint().unwrap()).unwrap());
    let tok = Tokenizer::from_dir(&common::repo_path("models/tiny")).unwrap();
    let grammars = Grammars::new(&tok, model.vocab_size()).unwrap();
    Demo { model, tok, grammars }
}

/// What a request is constrained to.
#[derive(Clone)]
enum Shape {
    Free,
    Schema(Value),
    Tool(ToolSpec),
}

struct Job {
    prompt: Vec<u32>,
    params: SamplingParams,
    shape: Shape,
}

fn run(d: &Demo, depth: usize, jobs: &[Job]) -> Vec<(Vec<u32>, FinishReason)> {
    run_counting(d, depth, jobs, &Arc::new(Metrics::default()))
}

fn run_counting(d: &Demo, depth: usize, jobs: &[Job], metrics: &Arc<Metrics>) -> Vec<(Vec<u32>, FinishReason)> {
    let e = JoinedEngine::spawn(d.model.clone(), config(depth), metrics.clone());
    let pending: Vec<mpsc::Receiver<Event>> = jobs
        .iter()
        .map(|j| {
            let (mut req, rx) = GenerationRequest::new(j.prompt.clone(), j.params.clone(), 120);
            req.stop_token_ids = d.tok.eos_ids().clone();
            req.constraint = match &j.shape {
                Shape::Free => None,
                Shape::Schema(s) => Some(d.grammars.constraint(constrain::json_schema(s)).unwrap()),
                Shape::Tool(t) => {
                    Some(d.grammars.constraint(constrain::tool_calls(std::slice::from_ref(t), true).unwrap()).unwrap())
                }
            };
            e.submit(req).expect("admitted");
            rx
        })
        .collect();
    pending
        .into_iter()
        .map(|rx| {
            let mut out = Vec::new();
            loop {
                match rx.recv_timeout(Duration::from_secs(120)).expect("the engine answers") {
                    Event::Token { id, .. } => out.push(id),
                    Event::Done { reason, .. } => return (out, reason),
                    Event::Failed(e) => panic!("{e}"),
                }
            }
        })
        .collect()
}

fn person() -> Value {
    json!({"type": "object", "properties": {
        "name": {"type": "string", "maxLength": 12},
        "age": {"type": "integer", "minimum": 0, "maximum": 99},
        "ok": {"type": "boolean"}
    }, "required": ["name", "age", "ok"], "additionalProperties": false})
}

fn weather() -> ToolSpec {
    ToolSpec {
        name: "get_weather".into(),
        parameters: json!({"type": "object", "properties": {
            "city": {"type": "string", "maxLength": 10}, "days": {"type": "integer", "minimum": 1, "maximum": 7}
        }, "required": ["city", "days"]}),
    }
}

fn jobs(d: &Demo) -> Vec<Job> {
    let prompt = |text: &str| d.tok.encode(text, false).unwrap();
    let sampled = |seed| SamplingParams { temperature: 0.9, seed: Some(seed), ..Default::default() };
    vec![
        Job { prompt: prompt("def add(a, b):\n"), params: SamplingParams::greedy(), shape: Shape::Free },
        Job { prompt: prompt("A person as JSON: "), params: SamplingParams::greedy(), shape: Shape::Schema(person()) },
        Job { prompt: prompt("import os\n"), params: sampled(5), shape: Shape::Free },
        Job { prompt: prompt("Call the tool: "), params: sampled(11), shape: Shape::Tool(weather()) },
        Job { prompt: prompt("Another person: "), params: sampled(3), shape: Shape::Schema(person()) },
        Job { prompt: prompt("class Stack:\n"), params: SamplingParams::greedy(), shape: Shape::Tool(weather()) },
    ]
}

/// The text of a constrained output satisfies its shape.
fn check(d: &Demo, job: &Job, out: &[u32], reason: FinishReason) {
    let text = d.tok.decode(out);
    match &job.shape {
        Shape::Free => {}
        Shape::Schema(_) => {
            assert_eq!(reason, FinishReason::Stop, "{text:?}");
            let v: Value = serde_json::from_str(&text).unwrap_or_else(|e| panic!("{e}: {text:?}"));
            let o = v.as_object().unwrap();
            assert!(o["name"].as_str().unwrap().chars().count() <= 12, "{text}");
            assert!((0..=99).contains(&o["age"].as_i64().unwrap()), "{text}");
            assert!(o["ok"].is_boolean() && o.len() == 3, "{text}");
        }
        Shape::Tool(_) => {
            assert_eq!(reason, FinishReason::Stop, "{text:?}");
            assert!(text.starts_with("<tool_call>get_weather<arg_key>city</arg_key><arg_value>"), "{text:?}");
            let days = text.split("<arg_key>days</arg_key><arg_value>").nth(1).unwrap();
            let days: i64 = days.trim_end_matches("</arg_value></tool_call>").parse().unwrap();
            assert!((1..=7).contains(&days), "{text}");
            assert!(text.ends_with("</arg_value></tool_call>"), "{text:?}");
        }
    }
}

#[test]
fn constrained_and_free_requests_batch_without_changing_each_other() {
    let d = demo();
    let jobs = jobs(&d);
    let alone: Vec<_> = jobs.iter().map(|j| run(&d, 0, std::slice::from_ref(j)).remove(0)).collect();
    for (j, (out, reason)) in jobs.iter().zip(&alone) {
        check(&d, j, out, *reason);
    }
    let batched = run(&d, 0, &jobs);
    assert_eq!(batched, alone, "batched with constrained requests");
}

#[test]
fn constrained_output_is_the_same_with_speculation() {
    let d = demo();
    let jobs = jobs(&d);
    let greedy: Vec<&Job> = jobs.iter().filter(|j| j.params.temperature == 0.0).collect();
    let plain: Vec<_> = greedy.iter().map(|j| run(&d, 0, std::slice::from_ref(*j)).remove(0)).collect();
    let depth = 2;
    for (j, want) in greedy.iter().zip(&plain) {
        assert_eq!(&run(&d, depth, std::slice::from_ref(*j)).remove(0), want, "greedy, alone, depth {depth}");
    }
    // Sampled speculation follows the target distribution, not the same draws: it must
    // still satisfy the grammar, and repeat by seed, alone or batched.
    let spec = run(&d, depth, &jobs);
    for (j, (out, reason)) in jobs.iter().zip(&spec) {
        check(&d, j, out, *reason);
    }
    assert_eq!(run(&d, depth, &jobs), spec, "seeded speculation repeats");
}

#[test]
fn forced_text_takes_one_forward_not_one_step_per_token() {
    let d = demo();
    let job = Job {
        prompt: d.tok.encode("Call the tool: ", false).unwrap(),
        params: SamplingParams::greedy(),
        shape: Shape::Tool(weather()),
    };
    let metrics = Arc::new(Metrics::default());
    let (out, reason) = run_counting(&d, 0, std::slice::from_ref(&job), &metrics).remove(0);
    check(&d, &job, &out, reason);
    // The tags and key names are forced: without jumping over them every token would cost a
    // step (plus one for the prompt).
    let steps = metrics.steps() as usize;
    eprintln!("{} tokens in {steps} steps: {:?}", out.len(), d.tok.decode(&out));
    assert!(steps * 2 <= out.len(), "{} tokens took {steps} steps", out.len());
}

#[test]
fn the_constrain_bench_prints_its_table() {
    let kiln = env!("CARGO_BIN_EXE_kiln");
    let out = std::process::Command::new(kiln)
        .args(["bench", "constrain", "--batches", "1,2", "--tokens", "6"])
        .output()
        .unwrap();
    let table = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{table}\n{}", String::from_utf8_lossy(&out.stderr));
    let rows: Vec<Vec<f64>> = table
        .lines()
        .filter(|l| l.starts_with("| ") && !l.contains("requests"))
        .map(|l| l.split('|').filter_map(|c| c.trim().parse().ok()).collect())
        .collect();
    assert_eq!(rows.iter().map(|r| r[0]).collect::<Vec<_>>(), vec![1.0, 2.0], "{table}");
    for r in &rows {
        assert!(r[1] > 0.0 && r[2] > 0.0 && r[4] > 0.0, "{table}");
    }
    let out = std::process::Command::new(kiln).args(["bench", "constrain", "--batches", "0"]).output().unwrap();
    assert!(!out.status.success() && String::from_utf8_lossy(&out.stderr).contains("--batches"));
}
