//! `kiln plan init --from-hf DIR`: a plan for an HF model directory, with the quant rules
//! read off the checkpoint itself (U8 `.weight` + `.weight_scale` beside it = MXFP4).

use std::collections::BTreeMap;
use std::path::Path;

use crate::error::{Error, Result};
use crate::plan::{
    ActivationQuant, Appliance, Device, KernelMap, KvCache, KvDtype, ModuleClass, MtpQuantRules, Parallel, Plan,
    QuantRules, Server, SpecMethod, Speculative, Target, WeightFormat, Weights, default_entries, gb, memory_report,
    transport_defaults,
};
use crate::weights::glm::TensorTable;
use crate::weights::{Checkpoint, StoredAs, read_hf_config};

/// What the operator chose on the command line.
#[derive(Debug, Clone)]
pub struct InitOptions {
    pub target: Target,
    pub arch: Option<String>,
    pub tp: Option<u32>,
    pub dp: Option<u32>,
}

/// A plan and the notes an operator should read before baking it.
pub struct InitResult {
    pub plan: Plan,
    pub notes: Vec<String>,
}

pub fn init_from_hf(dir: &Path, opts: &InitOptions) -> Result<InitResult> {
    let cfg = read_hf_config(dir)?;
    let ckpt = Checkpoint::open(dir)?;
    let mut notes = Vec::new();
    let mut model = cfg.model;

    let formats = observed_formats(&model, &ckpt)?;
    let has_mtp_tensors = formats.keys().any(|(mtp, _)| *mtp);
    if model.num_nextn_predict_layers > 0 && !has_mtp_tensors {
        notes.push(format!(
            "config.json says num_nextn_predict_layers = {} but the checkpoint has no MTP tensors \
             (model.layers.{}.*): the plan has no MTP layer and no speculative decoding",
            model.num_nextn_predict_layers, model.num_hidden_layers
        ));
        model.num_nextn_predict_layers = 0;
    }
    let mixed: Vec<String> =
        formats.iter().filter(|(_, f)| f.len() > 1).map(|((mtp, class), _)| class.plan_key(*mtp)).collect();
    if !mixed.is_empty() {
        return Err(Error::Checkpoint {
            path: dir.to_path_buf(),
            message: format!("{} mix storage formats; a plan gives one format per module class", mixed.join(", ")),
        });
    }
    let pick = |class: ModuleClass, mtp: bool| -> WeightFormat {
        formats.get(&(mtp, class)).and_then(|f| f.first().copied()).unwrap_or(WeightFormat::Bf16)
    };
    let mtp = if model.num_nextn_predict_layers > 0 {
        Some(MtpQuantRules {
            eh_proj: pick(ModuleClass::EhProj, true),
            attention: pick(ModuleClass::Attention, true),
            indexer: pick(ModuleClass::Indexer, true),
            router: pick(ModuleClass::Router, true),
            routed_experts: pick(ModuleClass::RoutedExperts, true),
            shared_experts: pick(ModuleClass::SharedExperts, true),
        })
    } else {
        None
    };
    let quant = QuantRules {
        activations: cfg.activations,
        embed_tokens: pick(ModuleClass::EmbedTokens, false),
        lm_head: pick(ModuleClass::LmHead, false),
        attention: pick(ModuleClass::Attention, false),
        indexer: pick(ModuleClass::Indexer, false),
        router: pick(ModuleClass::Router, false),
        dense_mlp: pick(ModuleClass::DenseMlp, false),
        routed_experts: pick(ModuleClass::RoutedExperts, false),
        shared_experts: pick(ModuleClass::SharedExperts, false),
        mtp,
    };
    if cfg.activations == ActivationQuant::Mxfp4 {
        notes.push("quantization_config declares dynamic MXFP4 activations (W4A4)".into());
    }

    let gpu = opts.target != Target::Cpu;
    let device = match opts.target {
        Target::Cpu => host_device(),
        _ => Device::known(opts.target, opts.arch.as_deref()).ok_or_else(|| {
            Error::Usage(format!(
                "no device defaults for --target {} --arch {}; known: hip gfx950 / gfx942 / gfx90a, cuda sm_90",
                opts.target.as_str(),
                opts.arch.as_deref().unwrap_or("(none)")
            ))
        })?,
    };
    let tp = opts.tp.unwrap_or_else(|| device.count / opts.dp.unwrap_or(1).max(1));
    let dp = opts.dp.unwrap_or_else(|| device.count / tp.max(1));

    let ctx = model.max_position_embeddings;
    let max_output_tokens = (ctx / 4).clamp(1, 32768);
    let max_prompt_tokens = (ctx - max_output_tokens.min(ctx)).clamp(1, 262144);
    let page_size = if gpu { 64 } else { 16 };
    let speculative = if model.num_nextn_predict_layers > 0 {
        Speculative { method: SpecMethod::Mtp, depth: if gpu { 4 } else { 2 }, max_batch: None }
    } else {
        Speculative { method: SpecMethod::None, depth: 0, max_batch: None }
    };

    let mut plan = Plan {
        appliance: Appliance { name: appliance_name(dir), target: opts.target, arch: opts.arch.clone() },
        device,
        model,
        weights: Weights { path: dir.display().to_string(), embed: false, quant, pin: None },
        parallel: Parallel { tp, dp, ep: 1 },
        speculative,
        kv_cache: KvCache {
            dtype: if gpu { KvDtype::Fp8E4m3 } else { KvDtype::Bf16 },
            page_size,
            memory_fraction: if gpu { 0.9 } else { 0.25 },
            prefix_cache: true,
        },
        server: Server {
            bind: if gpu { "0.0.0.0:8000" } else { "127.0.0.1:8000" }.into(),
            max_running_requests: if gpu { 64 } else { 16 },
            max_queued_requests: if gpu { 256 } else { 64 },
            max_prompt_tokens,
            max_output_tokens,
            prefill_chunk_tokens: if gpu { 8192 } else { 256 },
            request_timeout_s: 600,
            drain_timeout_s: 60,
            max_connections: transport_defaults::MAX_CONNECTIONS,
            max_header_bytes: transport_defaults::MAX_HEADER_BYTES,
            max_headers: transport_defaults::MAX_HEADERS,
            header_timeout_s: transport_defaults::HEADER_TIMEOUT_S,
            body_timeout_s: transport_defaults::BODY_TIMEOUT_S,
            idle_timeout_s: transport_defaults::IDLE_TIMEOUT_S,
            write_timeout_s: transport_defaults::WRITE_TIMEOUT_S,
            auth: None,
        },
        kernels: KernelMap::default(),
    };
    if opts.tp.is_none()
        && let Some(tp) = default_tp(&plan, opts.dp)
        && tp != plan.parallel.tp
    {
        notes.push(format!(
            "parallel.tp = {tp}: the largest degree up to {} that splits this model's heads and widths as its formats need",
            plan.parallel.tp
        ));
        plan.parallel.tp = tp;
        plan.parallel.dp = opts.dp.unwrap_or(plan.device.count / tp);
    }
    if !gpu {
        plan.kv_cache.memory_fraction = host_fraction(&plan);
        let r = memory_report(&plan);
        notes.push(format!(
            "kiln commits its KV cache at start-up: {} here ({} tokens), room for every running request at full length twice over; raise kv_cache.memory_fraction for a larger prefix cache",
            gb(r.kv_budget_bytes_per_device),
            r.kv_tokens_per_device
        ));
    }
    if gpu {
        plan.kernels.entries = default_entries(&plan);
        notes.push(format!(
            "wrote a default kernel map ({} rows): each op gets the registry variant that covers its buckets; tune it before production",
            plan.kernels.entries.len()
        ));
    }
    Ok(InitResult { plan, notes })
}

/// The largest tensor-parallel degree that divides the node (with `dp` given, the devices
/// left per replica) and passes every rule of the plan (heads and widths split evenly, MXFP4
/// rows in whole blocks); the kernel map is written after. None when no degree passes.
fn default_tp(plan: &Plan, dp: Option<u32>) -> Option<u32> {
    let count = plan.device.count;
    let most = count / dp.unwrap_or(1).max(1);
    (1..=most.max(1)).rev().filter(|t| most.is_multiple_of(*t)).find(|&t| {
        let mut p = plan.clone();
        p.parallel.tp = t;
        p.parallel.dp = dp.unwrap_or(count / t);
        crate::plan::validate(&p).iter().all(|problem| problem.key.starts_with("kernels"))
    })
}

/// Formats seen per (mtp, class) among the linears the model needs, sorted and deduplicated.
fn observed_formats(model: &crate::plan::ModelShape, ckpt: &Checkpoint) -> Result<FormatsByClass> {
    let mut out = FormatsByClass::new();
    let mut unsupported = Vec::new();
    for l in TensorTable::new(model).linears() {
        let f = match ckpt.linear_format(&l.module) {
            None => continue,
            Some(StoredAs::Format(f)) => f,
            Some(StoredAs::Unsupported(dtype)) => {
                unsupported.push(format!("{}.weight ({dtype:?})", l.module));
                continue;
            }
        };
        let seen = out.entry((l.mtp, l.class)).or_default();
        if !seen.contains(&f) {
            seen.push(f);
            seen.sort_by_key(|f| f.as_str());
        }
    }
    if !unsupported.is_empty() {
        return Err(Error::Checkpoint {
            path: ckpt.dir.clone(),
            message: format!(
                "{} linear(s) in a dtype kiln cannot serve (bf16, f32 or Quark MXFP4): {}",
                unsupported.len(),
                unsupported.iter().take(5).cloned().collect::<Vec<_>>().join(", ")
            ),
        });
    }
    Ok(out)
}

type FormatsByClass = BTreeMap<(bool, ModuleClass), Vec<WeightFormat>>;

/// On the CPU, the share of the host a plan takes: the weights plus the KV of every running
/// request at full length, twice over (the rest of the cache is the prefix cache), at most a
/// quarter of the host.
fn host_fraction(plan: &Plan) -> f64 {
    let r = memory_report(plan);
    let kv = 2.0
        * f64::from(plan.server.max_running_requests)
        * plan.server.max_request_tokens() as f64
        * r.kv_bytes_per_token as f64;
    let need = r.weights_bytes_per_device as f64 + kv;
    let fraction = (need / plan.device.memory_bytes()).clamp(0.001, 0.25);
    (fraction * 1000.0).ceil() / 1000.0
}

/// The host as one device: its RAM from /proc/meminfo (1 GB if unreadable) and a nominal
/// 10 GB/s for the roofline; the operator should put the measured figure in.
fn host_device() -> Device {
    let mem_kb = std::fs::read_to_string("/proc/meminfo").ok().and_then(|s| {
        s.lines()
            .find_map(|l| l.strip_prefix("MemTotal:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<f64>().ok())
    });
    let memory_gb = mem_kb.map(|kb| (kb * 1024.0 / 1e9 * 10.0).floor() / 10.0).unwrap_or(1.0);
    Device { name: "host CPU".into(), count: 1, memory_gb, bandwidth_gb_s: 10.0 }
}

/// The directory's name, reduced to the characters a plan name allows.
fn appliance_name(dir: &Path) -> String {
    let raw = dir
        .canonicalize()
        .ok()
        .and_then(|p| p.file_name().map(|n| n.to_string_lossy().into_owned()))
        .unwrap_or_else(|| "model".into());
    let name: String =
        raw.chars().map(|c| if c.is_ascii_alphanumeric() || "._-".contains(c) { c } else { '-' }).collect();
    if name.is_empty() { "model".into() } else { name }
}
