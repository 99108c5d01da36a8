//! The `kiln` command line. Parsing and dispatch only; the work lives in the library.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

use kiln::baked;
use kiln::plan::{self, Target};
use kiln::plan_init::{InitOptions, init_from_hf};
use kiln::report::PlanReport;
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
        None => {
            print_baked(false);
            eprintln!("\n(kiln serve is not built yet: this binary plans and checks; see README.md)");
            Ok(ExitCode::SUCCESS)
        }
        Some(Command::Plan { action: None, json }) => {
            print_baked(json);
            Ok(ExitCode::SUCCESS)
        }
        Some(Command::Plan { action: Some(PlanAction::Check { file }), json }) => check_file(&file, json),
        Some(Command::Plan { action: Some(PlanAction::Init { from_hf, target, arch, tp, dp, out }), .. }) => {
            let opts = InitOptions { target: target.into(), arch, tp, dp };
            init(&from_hf, &opts, out.as_deref())
        }
    }
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
