//! The `kiln` command line. Parsing and dispatch only; the work lives in the library.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

use kiln::app::{self};
use kiln::backend::{Backend, Selected, select};
use kiln::baked;
use kiln::bench::{self, BenchConfig};
use kiln::deploy::{self, EXIT_NO_DEVICE, EXIT_WEIGHTS};
use kiln::generate::generate;
use kiln::log::{self, LogFormat};
use kiln::model::Model;
use kiln::plan::{self, Target};
use kiln::plan_init::{InitOptions, init_from_hf};
use kiln::report::PlanReport;
use kiln::sample::{Sampler, SamplingParams};
use kiln::weights::WeightsSource;
use kiln::{Error, Result};

#[derive(Parser)]
#[command(name = "kiln", version, about = "A GLM-5.x inference appliance baked from a deployment plan")]
struct Cli {
    #[command(subcommand)]
    command: Option<Command>,
    /// How events are written to stderr: one line each, as text or as JSON.
    #[arg(long, value_enum, global = true, default_value = "text")]
    log_format: LogFormat,
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
    /// The GPU ops on the device this binary drives (`--features hip` or `emulated-hip`).
    Ops {
        #[command(subcommand)]
        what: OpsWhat,
    },
    /// Load generators.
    Bench {
        #[command(subcommand)]
        what: BenchWhat,
    },
    /// Check a model directory against the baked plan: every tensor, dtype, shape, format.
    Verify {
        /// Model directory (default: the plan's weights.path).
        #[arg(long)]
        weights: Option<PathBuf>,
        /// Also hash every byte and compare with the plan's weights.pin (progress on stderr).
        #[arg(long)]
        full: bool,
    },
    /// Print the logits of every position as JSON: {"logits": [[f32; vocab], ...]}.
    Logits {
        /// Token ids, comma-separated.
        #[arg(long, value_delimiter = ',', required = true)]
        tokens: Vec<u32>,
        /// Model directory (default: the plan's weights.path).
        #[arg(long)]
        weights: Option<PathBuf>,
    },
    /// Run a checkpoint on this binary's GPU backend and on the CPU backend and compare: max
    /// |dlogit| at every position (and against HF's with a golden.safetensors beside it) and
    /// greedy continuations. Exit 0 when within the golden tolerance and equal, 1 otherwise.
    Compare {
        /// Model directory; the plan is derived from it as `kiln plan init` would.
        #[arg(long)]
        weights: PathBuf,
        /// Token ids, comma-separated (default: golden.safetensors' input_ids, else a fixed pattern).
        #[arg(long, value_delimiter = ',')]
        tokens: Option<Vec<u32>>,
        /// Greedy tokens to continue on each backend.
        #[arg(long, default_value_t = 16)]
        greedy: usize,
    },
    /// Continue a prompt of token ids (greedy unless --temperature is given).
    Generate {
        #[arg(long, value_delimiter = ',', required = true)]
        tokens: Vec<u32>,
        #[arg(long)]
        max_tokens: usize,
        /// Model directory (default: the plan's weights.path).
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
    /// Write the digests of a model directory into a plan's [weights.pin] (in place).
    Pin {
        /// The model directory to pin.
        #[arg(long)]
        weights: PathBuf,
        /// The plan file to write the pin into.
        file: PathBuf,
    },
    /// Rewrite a GPU plan's [[kernels.entries]] with the default map for every op it runs (in
    /// place; tuning then replaces rows with measured choices).
    Kernels { file: PathBuf },
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

#[derive(Subcommand)]
enum OpsWhat {
    /// Every declared op's kernels against the CPU backend at the declared check shapes; exit 1
    /// if any case fails.
    Check {
        /// Only these op families (e.g. `mla.decode.fp8_e4m3`), comma-separated.
        #[arg(long, value_delimiter = ',')]
        only: Vec<String>,
    },
    /// The baked plan's kernel map (or --plan's) timed at its shapes: GB/s, and that over the
    /// device's copy bandwidth measured in the same run and its reported peak.
    Bench {
        /// Time this plan file's kernel map instead of the baked plan's (e.g. GLM-5.2's per-rank
        /// shapes on a validation device).
        #[arg(long)]
        plan: Option<PathBuf>,
        /// Token buckets to time (default: each row's smallest and largest).
        #[arg(long, value_delimiter = ',')]
        buckets: Vec<u64>,
        /// Timed launches per row.
        #[arg(long, default_value_t = 20)]
        reps: usize,
    },
}

#[derive(Subcommand)]
enum BenchWhat {
    /// Drive a running kiln with Poisson arrivals at each rate; print the serving table.
    Serve {
        /// host:port of the server.
        #[arg(long, default_value = "127.0.0.1:8000")]
        addr: String,
        /// Request rates per second, comma-separated.
        #[arg(long, value_delimiter = ',', default_value = "1,2,4")]
        rates: Vec<f64>,
        /// Requests per rate.
        #[arg(long, default_value_t = 32)]
        requests: usize,
        #[arg(long, default_value_t = 256)]
        input_len: usize,
        #[arg(long, default_value_t = 64)]
        output_len: usize,
        /// Share of every prompt that is the same across requests (served by the prefix cache).
        #[arg(long, default_value_t = 0.6)]
        prefix_ratio: f64,
        /// Requests of the single-stream reference.
        #[arg(long, default_value_t = 4)]
        single: usize,
        #[arg(long, default_value_t = 0)]
        seed: u64,
    },
    /// Many mixed requests with disconnects against a running kiln, printing its resident
    /// memory every `--every` requests (memory that grows with requests served shows).
    Soak {
        #[arg(long, default_value = "127.0.0.1:8000")]
        addr: String,
        #[arg(long, default_value_t = 20_000)]
        requests: usize,
        #[arg(long, default_value_t = 8)]
        threads: usize,
        #[arg(long, default_value_t = 2_000)]
        every: usize,
        #[arg(long, default_value_t = 0)]
        seed: u64,
    },
    /// CPU decode in-process: per forward width (1 = plain decode, 1 + depth = a verification
    /// step), tok/s, bytes read, GB/s and the share of the read bandwidth measured in the same run.
    Decode {
        /// Model directory (config.json + safetensors; the plan comes from it), else the baked
        /// plan's model.
        #[arg(long)]
        weights: Option<PathBuf>,
        /// Prompt tokens cached before decoding starts.
        #[arg(long, default_value_t = 128)]
        context: usize,
        /// Timed forwards per width.
        #[arg(long, default_value_t = 32)]
        steps: usize,
        /// Tokens per forward, comma-separated.
        #[arg(long, value_delimiter = ',', default_value = "1,2,4,8")]
        widths: Vec<usize>,
    },
    /// CPU prefill in-process: one prompt through one forward, best of `--reps`.
    Prefill {
        /// Model directory (config.json + safetensors; the plan comes from it), else the baked
        /// plan's model.
        #[arg(long)]
        weights: Option<PathBuf>,
        #[arg(long, default_value_t = 512)]
        prompt: usize,
        #[arg(long, default_value_t = 3)]
        reps: usize,
    },
    /// What constrained decoding costs: the same greedy requests free and under a JSON
    /// schema, at each batch size, in-process on the baked plan's model with its engine
    /// settings (MTP speculation included).
    Constrain {
        /// Requests at once, comma-separated.
        #[arg(long, value_delimiter = ',', default_value = "1,8")]
        batches: Vec<usize>,
        /// New tokens per request.
        #[arg(long, default_value_t = 128)]
        tokens: usize,
        /// The baked plan's model directory, where it is not at the plan's weights.path: checked
        /// against the plan (pins included) like `kiln serve --weights`. For any other model,
        /// `kiln bench decode` and `prefill` take a directory with its own config.json.
        #[arg(long)]
        weights: Option<PathBuf>,
    },
    /// Single-stream decode speed and MTP acceptance at each draft depth, in-process on the
    /// baked plan's model (greedy; every depth writes the same text).
    Spec {
        #[arg(long, value_delimiter = ',', default_value = "0,1,2,3,4")]
        depths: Vec<usize>,
        /// Requests decoding together, comma-separated: 1 runs each prompt alone; N runs N
        /// requests at once (drafting at any batch size, whatever the plan's max_batch).
        #[arg(long, value_delimiter = ',', default_value = "1")]
        batches: Vec<usize>,
        /// New tokens per prompt.
        #[arg(long, default_value_t = 128)]
        tokens: usize,
        /// The baked plan's model directory, where it is not at the plan's weights.path: checked
        /// against the plan (pins included) like `kiln serve --weights`. For any other model,
        /// `kiln bench decode` and `prefill` take a directory with its own config.json.
        #[arg(long)]
        weights: Option<PathBuf>,
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
    log::set_format(cli.log_format);
    let json_log = cli.log_format == LogFormat::Json;
    match run(cli) {
        Ok(code) => code,
        Err(e) => {
            if json_log {
                log::error("fatal", e.to_string()).emit();
            } else {
                eprintln!("kiln: {e}");
            }
            match e {
                Error::Pin(_) | Error::Checkpoint { .. } => ExitCode::from(EXIT_WEIGHTS),
                Error::NoDevice(_) => ExitCode::from(EXIT_NO_DEVICE),
                _ => ExitCode::FAILURE,
            }
        }
    }
}

fn run(cli: Cli) -> Result<ExitCode> {
    match cli.command {
        None => deploy::serve(baked::plan(), None, source(None)),
        Some(Command::Serve { bind, weights }) => deploy::serve(baked::plan(), bind, source(weights)),
        Some(Command::Plan { action: None, json }) => {
            print_baked(json);
            Ok(ExitCode::SUCCESS)
        }
        Some(Command::Plan { action: Some(PlanAction::Check { file }), json }) => check_file(&file, json),
        Some(Command::Plan { action: Some(PlanAction::Init { from_hf, target, arch, tp, dp, out }), .. }) => {
            let opts = InitOptions { target: target.into(), arch, tp, dp };
            init(&from_hf, &opts, out.as_deref())
        }
        Some(Command::Plan { action: Some(PlanAction::Pin { weights, file }), .. }) => {
            deploy::pin_plan(&weights, &file)
        }
        Some(Command::Plan { action: Some(PlanAction::Kernels { file }), .. }) => deploy::default_kernel_map(&file),
        Some(Command::Verify { weights, full }) => deploy::verify(baked::plan(), &source(weights), full),
        Some(Command::Ops { what: OpsWhat::Check { only } }) => ops_check(&only),
        Some(Command::Ops { what: OpsWhat::Bench { plan, buckets, reps } }) => {
            ops_bench(plan.as_deref(), &buckets, reps)
        }
        Some(Command::Bench { what: BenchWhat::Decode { weights, context, steps, widths } }) => {
            bench_forward(weights, bench::forward::Measure::Decode { context, steps, widths })
        }
        Some(Command::Bench { what: BenchWhat::Prefill { weights, prompt, reps } }) => {
            bench_forward(weights, bench::forward::Measure::Prefill { prompt, reps })
        }
        Some(Command::Bench { what: BenchWhat::Spec { depths, batches, tokens, weights } }) => {
            bench_spec(&depths, &batches, tokens, weights)
        }
        Some(Command::Bench { what: BenchWhat::Constrain { batches, tokens, weights } }) => {
            bench_constrain(&batches, tokens, weights)
        }
        Some(Command::Bench { what: BenchWhat::Soak { addr, requests, threads, every, seed } }) => {
            bench_soak(kiln::bench::soak::SoakConfig { addr, requests, threads, every, seed })
        }
        Some(Command::Bench {
            what: BenchWhat::Serve { addr, rates, requests, input_len, output_len, prefix_ratio, single, seed },
        }) => bench_serve(
            BenchConfig { addr, rates, requests, input_len, output_len, prefix_ratio, vocab: 0, seed },
            single,
        ),
        Some(Command::Logits { tokens, weights }) => {
            let (plan, src) = (baked::plan(), source(weights));
            match select(plan)? {
                Selected::Cpu(b) => print_logits(&app::model_on(b, plan, &src)?, &tokens),
                Selected::Gpu(b) => print_logits(&app::model_on(b, plan, &src)?, &tokens),
            }
        }
        Some(Command::Compare { weights, tokens, greedy }) => {
            let c = kiln::compare::compare(&weights, tokens, greedy)?;
            print!("{}", c.report(&weights));
            Ok(if c.passed() { ExitCode::SUCCESS } else { ExitCode::FAILURE })
        }
        Some(Command::Generate { tokens, max_tokens, weights, json, temperature, top_p, seed }) => {
            if !(temperature >= 0.0 && temperature.is_finite() && top_p > 0.0 && top_p <= 1.0) {
                return Err(Error::Usage("--temperature must be >= 0 and --top-p in (0, 1]".into()));
            }
            let (plan, src) = (baked::plan(), source(weights));
            let params = SamplingParams { temperature, top_p, seed: Some(seed), ..SamplingParams::default() };
            let mut sampler = Sampler::new(params, &tokens);
            let out = match select(plan)? {
                Selected::Cpu(b) => generate(&app::model_on(b, plan, &src)?, &tokens, max_tokens, &mut sampler)?,
                Selected::Gpu(b) => generate(&app::model_on(b, plan, &src)?, &tokens, max_tokens, &mut sampler)?,
            };
            if json {
                println!("{}", serde_json::json!({ "tokens": out }));
            } else {
                println!("{}", out.iter().map(u32::to_string).collect::<Vec<_>>().join(" "));
            }
            Ok(ExitCode::SUCCESS)
        }
    }
}

/// Every position's logits as JSON.
fn print_logits<B: Backend>(model: &Model<B>, tokens: &[u32]) -> Result<ExitCode> {
    let hidden = model.forward(tokens, &mut model.new_cache(), None)?;
    let logits = model.lm_head(&hidden)?;
    let rows: Vec<&[f32]> = logits.chunks(model.vocab_size()).collect();
    println!("{}", serde_json::json!({ "logits": rows }));
    Ok(ExitCode::SUCCESS)
}

/// The device this binary drives, with every registry kernel it carries resolved.
fn ops_gpu() -> Result<kiln::device::Gpu> {
    let device = kiln::device::built_in().map_err(|e| Error::NoDevice(e.to_string()))?;
    let symbols: Vec<&'static str> = plan::all_symbols().into_iter().filter(|s| device.kernel(s).is_ok()).collect();
    kiln::device::Gpu::new(device, &symbols)
}

fn ops_check(only: &[String]) -> Result<ExitCode> {
    let gpu = ops_gpu()?;
    let decls: Vec<&'static kiln::ops::OpDecl> = match only {
        [] => kiln::ops::all(),
        names => names
            .iter()
            .map(|n| kiln::ops::decl(n).ok_or_else(|| Error::Usage(format!("--only: no op family {n:?}"))))
            .collect::<Result<_>>()?,
    };
    eprintln!("kiln ops check on {}", gpu.describe());
    let rows = kiln::ops::check::check(&gpu, Some(&decls));
    print!("{}", kiln::ops::check::table(&rows));
    Ok(if rows.iter().all(|r| r.passed()) && !rows.is_empty() { ExitCode::SUCCESS } else { ExitCode::FAILURE })
}

fn ops_bench(file: Option<&std::path::Path>, buckets: &[u64], reps: usize) -> Result<ExitCode> {
    let from_file = match file {
        Some(f) => {
            let text = std::fs::read_to_string(f).map_err(|e| Error::io(f, e))?;
            let p = plan::check(&text).map_err(|problems| {
                Error::Usage(format!("{}: {}", f.display(), plan::render_problems(plan::IN_PLAN, &problems)))
            })?;
            Some(p)
        }
        None => None,
    };
    let gpu = ops_gpu()?;
    let plan = from_file.as_ref().unwrap_or_else(|| baked::plan());
    eprintln!("kiln ops bench: {} on {}", plan.appliance.name, gpu.describe());
    let copy = kiln::ops::bench::copy_bandwidth(&gpu, 64 << 20)?;
    let buckets = (!buckets.is_empty()).then_some(buckets);
    let rows = kiln::ops::bench::bench(&gpu, plan, buckets, reps)?;
    let peak = gpu.device.peak_bandwidth().map(|b| b / 1e9);
    print!("{}", kiln::ops::bench::table(&rows, copy, peak));
    Ok(ExitCode::SUCCESS)
}

mod bench_cmd;

use bench_cmd::{bench_constrain, bench_forward, bench_serve, bench_soak, bench_spec};

fn source(weights: Option<PathBuf>) -> WeightsSource {
    deploy::source(baked::plan(), weights)
}

fn print_baked(json: bool) {
    let plan = baked::plan();
    let report = PlanReport::new(plan, baked::PLAN_HASH, baked::PLAN_SOURCE)
        .with_code_objects(baked::CODE_OBJECTS)
        .with_this_binary();
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
            eprint!("{}: {}", file.display(), plan::render_problems(plan::IN_PLAN, &problems));
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
            eprint!("the written plan does not validate yet: {}", plan::render_problems(plan::IN_PLAN, &problems));
            Ok(ExitCode::FAILURE)
        }
    }
}
