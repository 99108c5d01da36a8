//! The application wired in one place: from the baked plan and a weights source, the checked
//! checkpoint (the pin's quick check, then every tensor against the plan), the model on its
//! backend, the tokenizer (checked against the model's vocabulary), the engine's
//! configuration and the server's limits. `kiln serve`, the benches and the CLI all start
//! here, so each opens the same things the same way.

use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

use crate::backend::Backend;
use crate::backend::cpu::Cpu;
use crate::engine::{self, EngineConfig};
use crate::error::{Error, Result};
use crate::kv::KvFormat;
use crate::log;
use crate::metrics::Metrics;
use crate::model::Model;
use crate::plan::{IN_WEIGHTS, Plan, Problem, SpecMethod, memory_report, render_problems};
use crate::server::{Limits, ServerConfig, ServerContext, Token, Transport};
use crate::tokenizer::Tokenizer;
use crate::weights::pin::check_quick;
use crate::weights::{Checkpoint, WeightsSource, finite, verify};

pub struct App<B: Backend = Cpu> {
    pub model: Model<B>,
    pub tokenizer: Tokenizer,
    pub engine: EngineConfig,
    pub server: ServerConfig,
}

impl App<Cpu> {
    /// Everything `kiln serve` needs from `source` on the CPU backend.
    pub fn open(plan: &Plan, plan_text: &str, source: &WeightsSource) -> Result<App<Cpu>> {
        App::open_on(Cpu, plan, plan_text, source)
    }

    /// The model alone on the CPU backend.
    pub fn model(plan: &Plan, source: &WeightsSource) -> Result<Model<Cpu>> {
        model_on(Cpu, plan, source)
    }
}

impl<B: Backend> App<B> {
    /// Everything `kiln serve` needs from `source`, checked against `plan` (whose text
    /// `plan_text` is, for /v1/plan) before anything runs, the model on `backend`.
    pub fn open_on(backend: B, plan: &Plan, plan_text: &str, source: &WeightsSource) -> Result<App<B>> {
        let Checked { ckpt, tokenizer } = check(plan, source, Tokenizing::Required)?;
        let tokenizer = tokenizer.expect("a required tokenizer is checked");
        let model = load(backend, plan, &ckpt)?;
        let engine = engine_config(plan);
        let mut server = server_config(plan, plan_text, &ckpt, &model, &engine);
        server.token = api_token(plan)?;
        Ok(App { model, tokenizer, engine, server })
    }

    /// Starts the engine thread; returns the request context the HTTP server runs on.
    pub fn start(self) -> (Arc<ServerContext>, JoinHandle<()>) {
        let metrics = Arc::new(Metrics::default());
        let (engine, join) = engine::spawn(Arc::new(self.model), self.engine, metrics.clone());
        (ServerContext::new(self.tokenizer, engine, metrics, self.server), join)
    }
}

/// The model alone (the CLI's logits and generate) on `backend`, after the same checks.
pub fn model_on<B: Backend>(backend: B, plan: &Plan, source: &WeightsSource) -> Result<Model<B>> {
    load(backend, plan, &check(plan, source, Tokenizing::IfPresent)?.ckpt)
}

/// Binds (and on a device, uploads) the checked weights, saying how long it took.
fn load<B: Backend>(backend: B, plan: &Plan, ckpt: &Checkpoint) -> Result<Model<B>> {
    let started = std::time::Instant::now();
    let on = backend.describe();
    let model = Model::load_on(backend, plan, ckpt)?;
    log::info("weights_loaded", format!("weights bound on {on} in {:.1} s", started.elapsed().as_secs_f64()))
        .field("backend", on)
        .emit();
    Ok(model)
}

/// A weights source that passed every check serving needs.
pub struct Checked {
    pub ckpt: Checkpoint,
    /// None only when the directory has no tokenizer and none was required.
    pub tokenizer: Option<Tokenizer>,
}

/// Whether a directory must hold a tokenizer: serving needs one; the CLI on token ids and
/// `kiln verify` check one only when it is there.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Tokenizing {
    Required,
    IfPresent,
}

/// What `kiln serve` checks before listening and `kiln verify` reports: the plan's pin
/// (sizes, shard headers, small files), every tensor against the plan, config.json present,
/// the tokenizer loads and its ids and EOS ids fit the model's vocabulary, and no non-finite
/// value in the small tensors and the output head (the rest is scanned while serving, or by
/// `kiln verify --full`).
pub fn check(plan: &Plan, source: &WeightsSource, tokenizing: Tokenizing) -> Result<Checked> {
    let ckpt = source.checkpoint()?;
    if let Some(pin) = &plan.weights.pin {
        let problems = check_quick(pin, source, &ckpt);
        if !problems.is_empty() {
            return Err(Error::Pin(problems));
        }
        log::info("pin_quick", format!("weights pin: {} file sizes and shard headers match", pin.files.len())).emit();
    }
    let mut problems = verify(plan, &ckpt);
    if ckpt.config_json.is_none() {
        problems.push(Problem::new(
            "config.json",
            "config.json is missing: the model directory must hold the config its plan describes",
        ));
    }
    let present = source.file_size("tokenizer.json")?.is_some();
    let tokenizer = match (present, tokenizing) {
        (false, Tokenizing::IfPresent) => None,
        _ => match source.tokenizer_files().and_then(|f| Tokenizer::from_files(&f)) {
            Ok(t) => {
                problems.extend(tokenizer_fits(&t, plan.model.vocab_size as usize));
                Some(t)
            }
            Err(e) => {
                problems.push(Problem::new("tokenizer.json", e.to_string()));
                None
            }
        },
    };
    if problems.is_empty() {
        problems = finite::scan(&ckpt, &|n| finite::checked_first(n, &ckpt), true, &|_| {});
    }
    if problems.is_empty() {
        Ok(Checked { ckpt, tokenizer })
    } else {
        Err(Error::Checkpoint { path: source.describe().into(), message: render_problems(IN_WEIGHTS, &problems) })
    }
}

/// The tokenizer's ids, and the ids that end generation, must index the model's vocabulary.
fn tokenizer_fits(t: &Tokenizer, vocab: usize) -> Vec<Problem> {
    let mut out = Vec::new();
    if t.id_bound() > vocab {
        out.push(Problem::new(
            "tokenizer.json",
            format!(
                "tokenizer.json has token ids up to {} but the model's vocabulary is {vocab} (model.vocab_size)",
                t.id_bound() - 1
            ),
        ));
    }
    if let Some(id) = t.eos_ids().iter().find(|&&id| id as usize >= vocab) {
        out.push(Problem::new(
            "eos_token_id",
            format!("the end-of-sequence id {id} is outside the model's vocabulary of {vocab}"),
        ));
    }
    out
}

/// Limits and KV sizing for the engine, from the plan.
pub fn engine_config(plan: &Plan) -> EngineConfig {
    let s = &plan.server;
    let page_size = plan.kv_cache.page_size as usize;
    EngineConfig {
        max_running: s.max_running_requests as usize,
        max_queued: s.max_queued_requests as usize,
        request_timeout: Duration::from_secs(s.request_timeout_s),
        prefill_chunk_tokens: s.prefill_chunk_tokens as usize,
        kv_format: KvFormat::from(plan.kv_cache.dtype),
        page_size,
        kv_pages: memory_report(plan).kv_tokens_per_device as usize / page_size,
        prefix_cache: plan.kv_cache.prefix_cache,
        spec_depth: match plan.speculative.method {
            SpecMethod::Mtp => plan.speculative.depth as usize,
            SpecMethod::None => 0,
        },
        spec_max_batch: plan.speculative.max_batch.map_or(usize::MAX, |n| n as usize),
    }
}

/// The API token, from where `server.auth` says; None without auth.
fn api_token(plan: &Plan) -> Result<Option<Token>> {
    let Some(auth) = &plan.server.auth else { return Ok(None) };
    let (raw, from) = match (&auth.token_env, &auth.token_file) {
        (Some(var), _) => (std::env::var(var).unwrap_or_default(), format!("server.auth.token_env = {var}")),
        (None, Some(path)) => {
            let text = std::fs::read_to_string(path).map_err(|e| Error::io(path, e))?;
            (text, format!("server.auth.token_file = {path}"))
        }
        (None, None) => return Ok(None),
    };
    Token::new(&raw).map(Some).ok_or_else(|| Error::Usage(format!("{from}: no API token there (unset or empty)")))
}

fn transport(s: &crate::plan::Server) -> Transport {
    Transport {
        max_connections: s.max_connections as usize,
        max_header_bytes: s.max_header_bytes as usize,
        max_headers: s.max_headers as usize,
        header_timeout: Duration::from_secs(s.header_timeout_s),
        body_timeout: Duration::from_secs(s.body_timeout_s),
        idle_timeout: Duration::from_secs(s.idle_timeout_s),
        write_timeout: Duration::from_secs(s.write_timeout_s),
    }
}

fn server_config(
    plan: &Plan,
    plan_text: &str,
    ckpt: &Checkpoint,
    model: &Model<impl Backend>,
    engine: &EngineConfig,
) -> ServerConfig {
    let s = &plan.server;
    let kernels = toml::to_string(&plan.kernels).unwrap_or_default();
    // The weights by identity, never by where they sit on the host: the pin's digest of
    // every tensor header when the plan has one, and the same digest taken now.
    let weights = serde_json::json!({
        "pinned": plan.weights.pin.as_ref().map(|p| p.headers.clone()),
        "id": ckpt.header_digest(),
        "tensors": ckpt.len(),
    });
    // What /v1/plan shows: the plan text and what this process is serving.
    let plan_info = serde_json::json!({
        "kiln_version": env!("CARGO_PKG_VERSION"),
        "name": plan.appliance.name,
        "target": plan.appliance.target.as_str(),
        "arch": plan.appliance.arch,
        "plan_hash": blake3::hash(plan_text.as_bytes()).to_hex().to_string(),
        "kernel_map_hash": blake3::hash(kernels.as_bytes()).to_hex().to_string(),
        "weights": weights,
        "plan": plan_text,
    });
    ServerConfig {
        limits: Limits {
            model_name: plan.appliance.name.clone(),
            max_prompt_tokens: s.max_prompt_tokens as usize,
            max_output_tokens: s.max_output_tokens as usize,
            context: model.shape.max_position_embeddings as usize,
            vocab: model.vocab_size(),
        },
        transport: transport(s),
        token: None,
        request_timeout: engine.request_timeout,
        body_limit: (s.max_prompt_tokens as usize * 32).max(1 << 20),
        max_handlers: engine.max_running + engine.max_queued + 64,
        plan_info,
    }
}
