//! The deployment plan: one TOML file that fixes everything about one deployment.
//!
//! build.rs includes this module through `#[path]` and runs the very same parsing and
//! validation the binary runs, so a plan that builds is a plan that serves. It therefore
//! stays pure: serde, toml and serde_path_to_error only, no I/O, and no `crate::` paths but
//! `crate::weights::glm`, the tensor table, which build.rs includes the same way.

mod appliance;
mod inventory;
mod kernels;
mod memory;
mod model;
mod pin;
mod quant;
mod registry;
mod serving;
mod validate;
pub use validate::validate;

use serde::{Deserialize, Serialize};

pub use appliance::{Appliance, Device, Target};
pub use inventory::{StoredFormat, WeightGroup, weight_inventory};
pub use kernels::{
    KernelEntry, KernelMap, OpShape, RequiredOp, buckets_up_to, default_entries, linear_family, required_ops,
};
pub use memory::{ClassBytes, FP8_SCALE_GROUP, KvLayout, MemoryReport, kv_layout, memory_report};
pub use model::{IndexerType, LayerKind, MlpKind, ModelShape};
pub use pin::{PinnedFile, WeightsPin, is_digest};
pub use quant::{ActivationQuant, ModuleClass, MtpQuantRules, QuantRules, WeightFormat, Weights};
pub use registry::{KernelVariant, REGISTRY, all_sources, all_symbols, source_symbols, variant};
pub use serving::{Auth, KvCache, KvDtype, Parallel, Server, SpecMethod, Speculative, transport_defaults};

/// One deployment, exactly as written in plan/NAME.toml.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Plan {
    pub appliance: Appliance,
    pub device: Device,
    pub model: ModelShape,
    pub weights: Weights,
    pub parallel: Parallel,
    pub speculative: Speculative,
    pub kv_cache: KvCache,
    pub server: Server,
    #[serde(default)]
    pub kernels: KernelMap,
}

/// One thing wrong: what is at fault and a sentence naming the rule. Plans, checkpoints and
/// weight pins all report these, and `render_problems` writes every list the same way.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    /// What is at fault: a dotted plan key path (`parallel.tp`), a tensor
    /// (`model.layers.3.mlp.gate.weight`), or a file of the model directory.
    pub key: String,
    /// Full sentence, e.g. `parallel.tp = 3 does not divide model.num_attention_heads = 64`.
    pub message: String,
}

impl std::fmt::Display for Problem {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.message)
    }
}

impl Problem {
    pub fn new(key: impl Into<String>, message: impl Into<String>) -> Self {
        Problem { key: key.into(), message: message.into() }
    }
}

/// Parses plan text without checking its rules. A syntax or type error is one problem
/// naming the key path where it happened.
pub fn parse(text: &str) -> Result<Plan, Vec<Problem>> {
    let de = toml::Deserializer::parse(text)
        .map_err(|e| vec![Problem::new("", format!("plan is not valid TOML: {}", describe(text, &e)))])?;
    serde_path_to_error::deserialize(de).map_err(|e| {
        let key = e.path().to_string();
        let inner = describe(text, e.inner());
        let message = if key.is_empty() || key == "." { format!("plan: {inner}") } else { format!("{key}: {inner}") };
        vec![Problem::new(key, message)]
    })
}

/// toml's message with its line and column, on one line.
fn describe(text: &str, e: &toml::de::Error) -> String {
    let message = e.message().trim();
    match e.span() {
        Some(span) => {
            let before = &text[..span.start.min(text.len())];
            let line = before.matches('\n').count() + 1;
            let column = before.len() - before.rfind('\n').map_or(0, |i| i + 1) + 1;
            format!("{message} (line {line}, column {column})")
        }
        None => message.to_string(),
    }
}

/// Parses and validates: the plan, or every problem found.
pub fn check(text: &str) -> Result<Plan, Vec<Problem>> {
    let plan = parse(text)?;
    let problems = validate::validate(&plan);
    if problems.is_empty() { Ok(plan) } else { Err(problems) }
}

/// All problems as one block of text, one per line, for build errors and the CLI.
/// Where problems were found, for the first line of their list.
pub const IN_PLAN: &str = "the plan";
pub const IN_WEIGHTS: &str = "the weights";
pub const IN_PIN: &str = "the weights (against the plan's weights.pin)";

/// `N problem(s) in PLACE:` and one line per problem.
pub fn render_problems(place: &str, problems: &[Problem]) -> String {
    let mut out = format!("{} problem(s) in {place}:\n", problems.len());
    for p in problems {
        out.push_str("  - ");
        out.push_str(&p.message);
        out.push('\n');
    }
    out
}

/// Bytes in decimal units (GB = 10^9 bytes, as HBM is sold), three significant figures or
/// more.
pub fn gb(bytes: f64) -> String {
    let (value, unit) = match bytes.abs() {
        b if b >= 1e9 => (bytes / 1e9, "GB"),
        b if b >= 1e6 => (bytes / 1e6, "MB"),
        b if b >= 1e3 => (bytes / 1e3, "kB"),
        _ => (bytes, "B"),
    };
    if unit == "B" { format!("{value:.0} B") } else { format!("{value:.2} {unit}") }
}
