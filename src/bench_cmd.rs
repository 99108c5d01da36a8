//! The `kiln bench` commands' handlers: the in-process benches (spec, decode, prefill) on the
//! baked plan's model or a checkpoint directory, and the load generators against a running
//! kiln (serve, soak).

use std::path::PathBuf;
use std::process::ExitCode;

use kiln::app::{self, App};
use kiln::baked;
use kiln::bench::{self, BenchConfig};
use kiln::model::Model;
use kiln::plan::{self, Target};
use kiln::plan_init::{InitOptions, init_from_hf};
use kiln::{Error, Result};

use super::source;

/// Prompts for `kiln bench spec`: the starts of code the demo model was trained on.
const SPEC_PROMPTS: &[&str] = &[
    "import os\n\n\ndef list_files(directory):\n",
    "class Config:\n    def __init__(self, path):\n",
    "[gMASK]<sop><|user|>\nReturn the absolute value of a number.<|assistant|>\n",
    "def _read(self, n):\n    \"\"\"Read up to n bytes",
    "for line in open(path):\n",
    "[gMASK]<sop><|user|>\nSplit a string on commas.<|assistant|>\n",
];

/// `--batches`: request counts from 1 to 256.
fn check_batches(batches: &[usize]) -> Result<()> {
    if batches.is_empty() || batches.contains(&0) || batches.iter().any(|&b| b > 256) {
        return Err(Error::Usage("--batches takes request counts from 1 to 256".into()));
    }
    Ok(())
}

/// The prompts of the in-process batch benches (spec, constrain), and an engine that admits
/// their largest batch at once, each request with room for its prompt and `tokens` more.
fn batch_bench(app: &App, batches: &[usize], tokens: usize) -> Result<(Vec<Vec<u32>>, kiln::engine::EngineConfig)> {
    let prompts: Vec<Vec<u32>> = SPEC_PROMPTS.iter().map(|p| app.tokenizer.encode(p, false)).collect::<Result<_>>()?;
    let most = batches.iter().copied().max().unwrap_or(1);
    let longest = prompts.iter().map(Vec::len).max().unwrap_or(0) + tokens + 64;
    let cfg = kiln::engine::EngineConfig {
        max_running: most,
        max_queued: most,
        request_timeout: std::time::Duration::from_secs(3600),
        kv_pages: longest.div_ceil(app.engine.page_size) * (most + 1) * 2,
        prefix_cache: false,
        ..app.engine.clone()
    };
    Ok((prompts, cfg))
}

pub fn bench_spec(depths: &[usize], batches: &[usize], tokens: usize, weights: Option<PathBuf>) -> Result<ExitCode> {
    check_batches(batches)?;
    let plan = baked::plan();
    let src = source(weights);
    let app = App::open(plan, baked::PLAN_TEXT, &src)?;
    if app.model.weights.mtp.is_empty() {
        return Err(Error::Usage("the model has no MTP layer to draft with".into()));
    }
    let (prompts, base) = batch_bench(&app, batches, tokens)?;
    let model = std::sync::Arc::new(app.model);
    eprintln!(
        "kiln bench spec: {} prompts x {tokens} tokens, greedy, batches of {batches:?} requests, {}",
        prompts.len(),
        src.describe()
    );
    let rows = bench::spec_table(&model, &base, &prompts, tokens, batches, depths);
    println!("{}", bench::spec_markdown(&rows));
    Ok(ExitCode::SUCCESS)
}

pub fn bench_constrain(batches: &[usize], tokens: usize, weights: Option<PathBuf>) -> Result<ExitCode> {
    check_batches(batches)?;
    if tokens == 0 {
        return Err(Error::Usage("--tokens must be at least 1".into()));
    }
    let plan = baked::plan();
    let src = source(weights);
    let app = App::open(plan, baked::PLAN_TEXT, &src)?;
    let grammars = kiln::constrain::Grammars::new(&app.tokenizer, app.model.vocab_size()).map_err(Error::Usage)?;
    let (prompts, cfg) = batch_bench(&app, batches, tokens)?;
    eprintln!(
        "kiln bench constrain: {tokens} tokens per request, greedy, MTP depth {}, {}",
        cfg.spec_depth,
        src.describe()
    );
    let model = std::sync::Arc::new(app.model);
    let rows = bench::constrain_table(&model, &cfg, &grammars, &prompts, batches, tokens);
    println!("{}", bench::constrain_markdown(&rows));
    Ok(ExitCode::SUCCESS)
}

/// `kiln bench decode` / `prefill` on the CPU backend: the model of `--weights` (its plan
/// written from its config.json) or the baked plan's.
pub fn bench_forward(weights: Option<PathBuf>, what: bench::forward::Measure) -> Result<ExitCode> {
    let (model, format, name) = match weights {
        Some(dir) => {
            let opts = InitOptions { target: Target::Cpu, arch: None, tp: None, dp: None };
            let plan = init_from_hf(&dir, &opts)?.plan;
            let ckpt = kiln::weights::Checkpoint::open(&dir)?;
            (Model::load(&plan, &ckpt)?, kiln::kv::KvFormat::from(plan.kv_cache.dtype), dir.display().to_string())
        }
        None => {
            let plan = baked::plan();
            let model = app::model_on(kiln::backend::cpu::Cpu, plan, &source(None))?;
            (model, kiln::kv::KvFormat::from(plan.kv_cache.dtype), plan.appliance.name.clone())
        }
    };
    print!("{}", bench::forward::run(&model, format, &name, &what)?);
    Ok(ExitCode::SUCCESS)
}

pub fn bench_soak(cfg: kiln::bench::soak::SoakConfig) -> Result<ExitCode> {
    use kiln::bench::soak;
    if soak::server_rss(&cfg.addr).is_none() {
        return Err(Error::Usage(format!("{}: no process_resident_memory_bytes in its /metrics", cfg.addr)));
    }
    eprintln!("kiln bench soak: {} mixed requests from {} threads against {}", cfg.requests, cfg.threads, cfg.addr);
    let report = soak::soak(&cfg);
    print!("{}", soak::table(&report));
    if let (Some(warm), Some(end)) = (report.samples.get(1), report.samples.last()) {
        println!(
            "server RSS after {} requests: {:.1} MB; after {}: {:.1} MB ({:+.1}%)",
            warm.requests,
            warm.rss_bytes as f64 / 1e6,
            end.requests,
            end.rss_bytes as f64 / 1e6,
            100.0 * (end.rss_bytes as f64 / warm.rss_bytes.max(1) as f64 - 1.0)
        );
    }
    println!("requests answered unexpectedly: {}", report.unexpected);
    if let Some(e) = &report.first_unexpected {
        println!("first: {e}");
    }
    Ok(ExitCode::SUCCESS)
}

/// The served model's vocabulary, from its /v1/plan.
fn served_vocab(addr: &str) -> Result<u32> {
    let err = |m: String| Error::Usage(format!("{addr}/v1/plan: {m}"));
    let mut conn = std::net::TcpStream::connect(addr).map_err(|e| err(e.to_string()))?;
    use std::io::{Read, Write};
    write!(conn, "GET /v1/plan HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n")
        .map_err(|e| err(e.to_string()))?;
    let mut text = String::new();
    conn.read_to_string(&mut text).map_err(|e| err(e.to_string()))?;
    let body = text.split_once("\r\n\r\n").map(|x| x.1).unwrap_or("");
    let v: serde_json::Value = serde_json::from_str(body).map_err(|e| err(e.to_string()))?;
    let plan =
        plan::parse(v["plan"].as_str().unwrap_or("")).map_err(|p| err(plan::render_problems(plan::IN_PLAN, &p)))?;
    Ok(plan.model.vocab_size as u32)
}

pub fn bench_serve(mut cfg: BenchConfig, single: usize) -> Result<ExitCode> {
    cfg.vocab = served_vocab(&cfg.addr)?;
    eprintln!(
        "kiln bench serve: {} input tokens ({:.0}% shared prefix), {} output tokens, {} requests per rate",
        cfg.input_len,
        100.0 * cfg.prefix_ratio,
        cfg.output_len,
        cfg.requests
    );
    let mut rows = vec![bench::single_stream(&cfg, single)];
    eprint!("{}", bench::table(&rows));
    for &rate in &cfg.rates {
        rows.push(bench::at_rate(&cfg, rate));
        eprintln!("{}", bench::table(&rows[rows.len() - 1..]).lines().last().unwrap_or(""));
    }
    println!("{}", bench::table(&rows));
    let single_tok_s = rows[0].output_tok_s;
    if let Some(best) =
        rows[1..].iter().filter(|r| r.succeeded == r.requests).max_by(|a, b| a.output_tok_s.total_cmp(&b.output_tok_s))
    {
        println!(
            "highest sustained rate {} req/s: {:.1} output tok/s = {:.2}x the single stream ({:.1} tok/s)",
            best.rate.unwrap_or(0.0),
            best.output_tok_s,
            best.output_tok_s / single_tok_s,
            single_tok_s
        );
    }
    Ok(ExitCode::SUCCESS)
}
