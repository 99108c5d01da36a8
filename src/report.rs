//! What `kiln plan` shows: the plan's identity, layout and the memory/roofline figures,
//! as text for people and JSON for machines.

use serde::Serialize;

use crate::baked::CodeObject;
use crate::plan::{
    Device, KvCache, MemoryReport, Parallel, Plan, Server, Speculative, Target, gb, memory_report, variant,
};

#[derive(Debug, Clone, Serialize)]
pub struct PlanReport {
    pub name: String,
    pub target: String,
    pub arch: Option<String>,
    /// blake3 of the plan text.
    pub plan_hash: String,
    /// Where the plan came from (the baked plan's source file on the build host).
    pub source: String,
    pub device: Device,
    pub parallel: Parallel,
    pub replicas: u32,
    pub speculative: Speculative,
    pub kv_cache: KvCache,
    /// Server limits, the transport's included (no secret: auth names where its token is).
    pub server: Server,
    /// IndexShare schedule, one letter per main layer (F = runs the indexer, S = shares).
    pub indexer_pattern: String,
    #[serde(flatten)]
    pub memory: MemoryReport,
    /// Which kernel serves each op of the plan (GPU targets).
    pub kernels: Vec<KernelRow>,
    /// The code objects built into this binary (the baked plan only).
    pub code_objects: Vec<CodeObjectRow>,
    /// How a binary for this plan's target is linked, for the operator.
    pub linking: String,
    /// How this very binary is linked (the baked plan only).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub this_binary: Option<String>,
    /// `[weights.pin]`: files and bytes pinned, or none.
    pub pin: String,
}

#[derive(Debug, Clone, Serialize)]
pub struct KernelRow {
    pub op: String,
    pub shape: String,
    pub buckets: Vec<u64>,
    pub kernel: String,
    pub source: String,
    pub symbols: Vec<String>,
}

#[derive(Debug, Clone, Serialize)]
pub struct CodeObjectRow {
    pub source: String,
    pub arch: String,
    pub bytes: usize,
    pub symbols: Vec<String>,
}

impl PlanReport {
    pub fn new(plan: &Plan, plan_hash: &str, source: &str) -> PlanReport {
        PlanReport {
            name: plan.appliance.name.clone(),
            target: plan.appliance.target.as_str().into(),
            arch: plan.appliance.arch.clone(),
            plan_hash: plan_hash.into(),
            source: source.into(),
            device: plan.device.clone(),
            parallel: plan.parallel.clone(),
            replicas: plan.parallel.dp,
            speculative: plan.speculative.clone(),
            kv_cache: plan.kv_cache.clone(),
            server: plan.server.clone(),
            indexer_pattern: plan.model.indexer_pattern(),
            memory: memory_report(plan),
            kernels: plan
                .kernels
                .entries
                .iter()
                .map(|e| {
                    let v = variant(&e.kernel);
                    KernelRow {
                        op: e.op.clone(),
                        shape: e.shape.clone(),
                        buckets: e.buckets.clone(),
                        kernel: e.kernel.clone(),
                        source: v.map(|v| v.source.to_string()).unwrap_or_default(),
                        symbols: v.map(|v| v.symbols.iter().map(|s| s.to_string()).collect()).unwrap_or_default(),
                    }
                })
                .collect(),
            code_objects: Vec::new(),
            linking: match plan.appliance.target {
                Target::Cpu => "cpu: the release build (README) is one fully static binary (glibc, crt-static); nothing is loaded at run time".into(),
                Target::Hip => "hip: only the ROCm runtime (libamdhip64, cargo feature `hip`) is a shared library, and with it glibc and its loader, since a static executable cannot load one; every Rust crate and the kernels' code objects are inside the binary".into(),
                Target::Cuda => "cuda: the CUDA runtime would be the one shared library; kernels are embedded cubins".into(),
            },
            this_binary: None,
            pin: match &plan.weights.pin {
                Some(p) => format!(
                    "{} file(s), {}, tensor headers blake3 {}",
                    p.files.len(),
                    gb(p.total_bytes() as f64),
                    &p.headers[..16.min(p.headers.len())]
                ),
                None => "none (`kiln plan pin --weights DIR PLAN.toml` writes one)".into(),
            },
        }
    }

    /// Says how this binary itself is linked.
    pub fn with_this_binary(mut self) -> PlanReport {
        let hip = cfg!(feature = "hip");
        self.this_binary = Some(
            match (cfg!(target_feature = "crt-static"), hip) {
                (true, _) => "statically linked (crt-static): runs on any x86_64 Linux with no libraries",
                (false, true) => "dynamically linked: libamdhip64 and glibc",
                (false, false) => {
                    "dynamically linked against glibc; the README's release command makes it fully static"
                }
            }
            .into(),
        );
        self
    }

    /// The code objects this binary carries.
    pub fn with_code_objects(mut self, objects: &[CodeObject]) -> PlanReport {
        self.code_objects = objects
            .iter()
            .map(|c| CodeObjectRow {
                source: c.source.into(),
                arch: c.arch.into(),
                bytes: c.bytes.len(),
                symbols: c.symbols.iter().map(|s| s.to_string()).collect(),
            })
            .collect();
        self
    }

    pub fn to_json(&self) -> String {
        serde_json::to_string_pretty(self).unwrap_or_else(|e| format!("{{\"error\": \"{e}\"}}"))
    }

    pub fn to_text(&self, plan: &Plan) -> String {
        let r = &self.memory;
        let m = &plan.model;
        let d = &self.device;
        let mut s = String::new();
        let mut line = |k: &str, v: String| s.push_str(&format!("{k:<13}{v}\n"));
        line(
            "plan",
            format!(
                "{}  (blake3 {}, from {})",
                self.name,
                &self.plan_hash[..16.min(self.plan_hash.len())],
                self.source
            ),
        );
        let arch = self.arch.as_deref().map(|a| format!(" {a}")).unwrap_or_default();
        line(
            "target",
            format!(
                "{}{arch} on {} x {} ({} GB, {} GB/s each)",
                self.target, d.count, d.name, d.memory_gb, d.bandwidth_gb_s
            ),
        );
        let p = &self.parallel;
        line("layout", format!("tp {} x dp {} (ep {}): {} replica(s) of {} device(s)", p.tp, p.dp, p.ep, p.dp, p.tp));
        line(
            "model",
            format!(
                "{}: {} layers ({} dense, {} MoE) + {} MTP, hidden {}, {} heads, {} experts top-{} + {} shared",
                m.architecture,
                m.num_hidden_layers,
                m.num_dense_layers(),
                m.num_moe_layers(),
                m.num_nextn_predict_layers,
                m.hidden_size,
                m.num_attention_heads,
                m.n_routed_experts,
                m.num_experts_per_tok,
                m.n_shared_experts
            ),
        );
        line(
            "indexer",
            format!(
                "{} of {} layers run it (top-{}): {}",
                m.num_full_indexer_layers(),
                m.num_hidden_layers,
                m.index_topk,
                self.indexer_pattern
            ),
        );
        let q = &plan.weights.quant;
        line(
            "weights",
            format!(
                "{}; routed experts {}, shared experts {}, attention {}, activations {}",
                plan.weights.path,
                q.routed_experts.as_str(),
                q.shared_experts.as_str(),
                q.attention.as_str(),
                q.activations.as_str()
            ),
        );
        line("weights pin", self.pin.clone());
        let limit = self
            .speculative
            .max_batch
            .map_or(String::new(), |n| format!(", no drafts in steps decoding more than {n} requests"));
        line(
            "speculative",
            format!("{:?} depth {}{limit}", self.speculative.method, self.speculative.depth).to_lowercase(),
        );
        let kv = &self.kv_cache;
        line(
            "kv cache",
            format!(
                "{}, page {} tokens, prefix cache {}",
                kv.dtype.as_str(),
                kv.page_size,
                if kv.prefix_cache { "on" } else { "off" }
            ),
        );
        let sv = &plan.server;
        line(
            "server",
            format!(
                "{} ; {} running, {} queued, prompt <= {}, output <= {}, prefill chunk {}, step <= {} tokens, drain {} s",
                sv.bind,
                sv.max_running_requests,
                sv.max_queued_requests,
                sv.max_prompt_tokens,
                sv.max_output_tokens,
                sv.prefill_chunk_tokens,
                r.max_step_tokens,
                sv.drain_timeout_s
            ),
        );
        line(
            "connections",
            format!(
                "<= {} (then /health and /metrics only), headers <= {} B in <= {} lines, header {} s, body {} s, idle {} s, write {} s",
                sv.max_connections,
                sv.max_header_bytes,
                sv.max_headers,
                sv.header_timeout_s,
                sv.body_timeout_s,
                sv.idle_timeout_s,
                sv.write_timeout_s
            ),
        );
        let auth = match sv.auth.as_ref().map(|a| (&a.token_env, &a.token_file)) {
            None => "none: every client may call every route".to_string(),
            Some((Some(var), _)) => format!("bearer token from ${var}, every route but /health"),
            Some((None, Some(path))) => format!("bearer token from {path}, every route but /health"),
            Some((None, None)) => "misconfigured".to_string(),
        };
        line("auth", auth);

        s.push_str("\nmemory per device\n");
        row(&mut s, "weights".into(), gb(r.weights_bytes_per_device as f64));
        for c in &r.weights_by_class {
            let label = if c.mtp { format!("  mtp.{}", c.class) } else { format!("  {}", c.class) };
            row(&mut s, label, gb(c.bytes_per_device as f64));
        }
        row(&mut s, format!("usable ({} GB x {})", d.memory_gb, kv.memory_fraction), gb(r.usable_bytes_per_device));
        row(&mut s, "KV budget (usable - weights)".into(), gb(r.kv_budget_bytes_per_device));
        row(&mut s, "KV bytes per token".into(), format!("{} B", r.kv_bytes_per_token));
        s.push_str(&format!(
            "    = {} layers x {} B (latent + rope key) + {} indexer layers x {} B\n",
            r.kv_layers, r.kv_layout.mla_bytes, r.kv_indexer_layers, r.kv_layout.indexer_bytes
        ));
        row(&mut s, "KV tokens per device".into(), r.kv_tokens_per_device.to_string());
        row(
            &mut s,
            format!("one max-length request ({} tok)", r.max_request_tokens),
            gb(r.max_request_kv_bytes as f64),
        );

        s.push_str("\ndecode roofline (single stream, no speculation, uniform routing)\n");
        row(&mut s, "weights read per token".into(), gb(r.decode_weight_bytes_per_token));
        row(&mut s, "  upper bound".into(), format!("{:.1} tok/s", r.decode_roofline_tok_s));
        row(&mut s, format!("+ KV reads at {} tokens", r.max_request_tokens), gb(r.decode_kv_bytes_at_max_context));
        row(&mut s, "  upper bound".into(), format!("{:.1} tok/s", r.decode_roofline_at_max_context_tok_s));

        if !self.kernels.is_empty() {
            s.push_str("\nkernel map (op, shape, token buckets -> kernel)\n");
            let op_w = self.kernels.iter().map(|k| k.op.len()).max().unwrap_or(0);
            let shape_w = self.kernels.iter().map(|k| k.shape.len()).max().unwrap_or(0);
            for k in &self.kernels {
                let b = match (k.buckets.first(), k.buckets.last()) {
                    (Some(a), Some(z)) if a != z => format!("{a}..{z}"),
                    (Some(a), _) => a.to_string(),
                    _ => "-".into(),
                };
                s.push_str(&format!(
                    "  {:<op_w$} {:<shape_w$} {:>10}  {} ({})\n",
                    k.op, k.shape, b, k.kernel, k.source
                ));
            }
        }
        if !self.code_objects.is_empty() {
            s.push_str("\ncode objects in this binary\n");
            for c in &self.code_objects {
                s.push_str(&format!("  {:<16} {:<8} {:>8} B  {}\n", c.source, c.arch, c.bytes, c.symbols.join(", ")));
            }
        }
        s.push_str(&format!("\nlinking      {}\n", self.linking));
        if let Some(b) = &self.this_binary {
            s.push_str(&format!("this binary  {b}\n"));
        }
        s
    }
}

fn row(s: &mut String, key: String, value: String) {
    s.push_str(&format!("  {key:<34}{value:>16}\n"));
}
