//! The `kiln` command line. Parsing and dispatch only; the work lives in the library.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

use kiln::baked;
use kiln::generate::generate;
use kiln::model::Model;
use kiln::plan::{self, Target};
use kiln::plan_init::{InitOptions, init_from_hf};
use kiln::report::PlanReport;
use kiln::sample::{Sampler, SamplingParams};
use kiln::weights::{WeightsSource, render_weight_problems};
use kiln::{Error, Result};

#[derive(Parser)]
#[command(name = "kiln", version, about = "A GLM-5.x inference appliance baked from a deployment plan")]
struct Cli {
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Subcommand)]
enum Command {
    /// Show the baked plan: layout, memory per device, KV capacity, decode roofline.
    Plan {
        #[command(subcommand)]
        action: Option<PlanAction>,
        /// Print JSON instead of text.
        #[arg(long, global = true)]
        json: bool,
    },
    /// Serve the OpenAI-compatible HTTP API (the default command).
    Serve {
        /// Listen address (default: the plan's server.bind).
        #[arg(long)]
        bind: Option<String>,
        /// Model directory (default: the plan's weights.path).
        #[arg(long)]
        weights: Option<PathBuf>,
    },
    /// Check a model directory against the baked plan: every tensor, dtype, shape, format.
    Verify {
        /// Model directory (default: the plan's weights.path).
        #[arg(long)]
        weights: Option<PathBuf>,
    },
    /// Print the logits of every position as JSON: {"logits": [[f32; vocab], ...]}.
    Logits {
        /// Token ids, comma-separated.
        #[arg(long, value_delimiter = ',', required = true)]
        tokens: Vec<u32>,
        #[arg(long)]
        weights: Option<PathBuf>,
    },
    /// Continue a prompt of token ids (greedy unless --temperature is given).
    Generate {
        #[arg(long, value_delimiter = ',', required = true)]
        tokens: Vec<u32>,
        #[arg(long)]
        max_tokens: usize,
        #[arg(long)]
        weights: Option<PathBuf>,
        /// Print {"tokens": [...]}.
        #[arg(long)]
        json: bool,
        #[arg(long, default_value_t = 0.0)]
        temperature: f32,
        #[arg(long, default_value_t = 1.0)]
        top_p: f32,
        #[arg(long, default_value_t = 0)]
        seed: u64,
    },
}

#[derive(Subcommand)]
enum PlanAction {
    /// Validate a plan file without baking it and print its report.
    Check { file: PathBuf },
    /// Write a plan for an HF model directory (config.json + safetensors).
    Init {
        #[arg(long = "from-hf", value_name = "DIR")]
        from_hf: PathBuf,
        #[arg(long, value_enum, default_value = "cpu")]
        target: TargetArg,
        /// GPU ISA, e.g. gfx950 (required for hip and cuda).
        #[arg(long)]
        arch: Option<String>,
        #[arg(long)]
        tp: Option<u32>,
        #[arg(long)]
        dp: Option<u32>,
        /// Write the plan here instead of standard output.
        #[arg(long, short)]
        out: Option<PathBuf>,
    },
}

#[derive(Clone, Copy, clap::ValueEnum)]
enum TargetArg {
    Cpu,
    Hip,
    Cuda,
}

impl From<TargetArg> for Target {
    fn from(t: TargetArg) -> Target {
        match t {
            TargetArg::Cpu => Target::Cpu,
            TargetArg::Hip => Target::Hip,
            TargetArg::Cuda => Target::Cuda,
        }
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match run(cli) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("kiln: {e}");
            ExitCode::FAILURE
        }
    }
}

fn run(cli: Cli) -> Result<ExitCode> {
    match cli.command {
        None => serve(None, None),
        Some(Command::Serve { bind, weights }) => serve(bind, weights),
        Some(Command::Plan { action: None, json }) => {
            print_baked(json);
            Ok(ExitCode::SUCCESS)
        }
        Some(Command::Plan { action: Some(PlanAction::Check { file }), json }) => check_file(&file, json),
        Some(Command::Plan { action: Some(PlanAction::Init { from_hf, target, arch, tp, dp, out }), .. }) => {
            let opts = InitOptions { target: target.into(), arch, tp, dp };
            init(&from_hf, &opts, out.as_deref())
        }
        Some(Command::Verify { weights }) => verify(weights),
        Some(Command::Logits { tokens, weights }) => {
            let model = open_model(weights)?;
            let hidden = model.forward(&tokens, &mut model.new_cache(), None)?;
            let logits = model.logits(&hidden);
            let rows: Vec<&[f32]> = logits.chunks(model.vocab_size()).collect();
            println!("{}", serde_json::json!({ "logits": rows }));
            Ok(ExitCode::SUCCESS)
        }
        Some(Command::Generate { tokens, max_tokens, weights, json, temperature, top_p, seed }) => {
            if !(temperature >= 0.0 && temperature.is_finite() && top_p > 0.0 && top_p <= 1.0) {
                return Err(Error::Usage("--temperature must be >= 0 and --top-p in (0, 1]".into()));
            }
            let model = open_model(weights)?;
            let params = SamplingParams { temperature, top_p, seed: Some(seed), ..SamplingParams::default() };
            let mut sampler = Sampler::new(params, &tokens);
            let out = generate(&model, &tokens, max_tokens, &mut sampler)?;
            if json {
                println!("{}", serde_json::json!({ "tokens": out }));
            } else {
                println!("{}", out.iter().map(u32::to_string).collect::<Vec<_>>().join(" "));
            }
            Ok(ExitCode::SUCCESS)
        }
    }
}

/// --weights DIR, else the model built into the binary, else the plan's weights.path.
fn source(weights: Option<PathBuf>) -> WeightsSource {
    WeightsSource::choose(weights, &baked::plan().weights.path, baked::embedded_files())
}

fn open_model(weights: Option<PathBuf>) -> Result<Model> {
    Model::load(baked::plan(), &source(weights).checkpoint()?)
}

fn verify(weights: Option<PathBuf>) -> Result<ExitCode> {
    let src = source(weights);
    let ckpt = src.checkpoint()?;
    let problems = kiln::weights::verify(baked::plan(), &ckpt);
    if problems.is_empty() {
        println!("{}: {} tensors match plan {}", src.describe(), ckpt.len(), baked::plan().appliance.name);
        Ok(ExitCode::SUCCESS)
    } else {
        eprint!("{}: {}", src.describe(), render_weight_problems(&problems));
        Ok(ExitCode::FAILURE)
    }
}

fn serve(bind: Option<String>, weights: Option<PathBuf>) -> Result<ExitCode> {
    let plan = baked::plan();
    let bind = bind.unwrap_or_else(|| plan.server.bind.clone());
    let src = source(weights);
    let (running, _engine) = kiln::server::launch(plan, baked::PLAN_TEXT, &src, &bind)?;
    eprintln!("kiln: serving {} from {} on http://{}", plan.appliance.name, src.describe(), running.addr);
    running.wait();
    Ok(ExitCode::SUCCESS)
}

fn print_baked(json: bool) {
    let plan = baked::plan();
    let report = PlanReport::new(plan, baked::PLAN_HASH, baked::PLAN_SOURCE);
    if json {
        println!("{}", report.to_json());
    } else {
        print!("{}", report.to_text(plan));
    }
}

fn check_file(file: &std::path::Path, json: bool) -> Result<ExitCode> {
    let text = std::fs::read_to_string(file).map_err(|e| Error::io(file, e))?;
    match plan::check(&text) {
        Ok(p) => {
            let report = PlanReport::new(&p, &baked::hash_text(&text), &file.display().to_string());
            if json {
                println!("{}", report.to_json());
            } else {
                print!("{}", report.to_text(&p));
            }
            Ok(ExitCode::SUCCESS)
        }
        Err(problems) => {
            if json {
                let list: Vec<_> =
                    problems.iter().map(|p| serde_json::json!({"key": p.key, "message": p.message})).collect();
                println!("{}", serde_json::json!({ "valid": false, "problems": list }));
            }
            eprint!("{}: {}", file.display(), plan::render_problems(&problems));
            Ok(ExitCode::FAILURE)
        }
    }
}

fn init(dir: &std::path::Path, opts: &InitOptions, out: Option<&std::path::Path>) -> Result<ExitCode> {
    let result = init_from_hf(dir, opts)?;
    let body =
        toml::to_string(&result.plan).map_err(|e| Error::Usage(format!("cannot write the plan as TOML: {e}")))?;
    let text = format!(
        "# Written by `kiln plan init --from-hf {}`.\n# Review device, parallel and server limits before baking it.\n\n{body}",
        dir.display()
    );
    match out {
        Some(path) => std::fs::write(path, &text).map_err(|e| Error::io(path, e))?,
        None => print!("{text}"),
    }
    for note in &result.notes {
        eprintln!("note: {note}");
    }
    match plan::check(&text) {
        Ok(_) => Ok(ExitCode::SUCCESS),
        Err(problems) => {
            eprint!("the written plan does not validate yet: {}", plan::render_problems(&problems));
            Ok(ExitCode::FAILURE)
        }
    }
}
