//! Every rule a plan must meet. All problems are collected, never just the first, and each
//! names its key path and the rule it breaks.

use std::collections::BTreeSet;

use super::appliance::HIP_ARCHES;
use super::model::IndexerType;
use super::{
    Plan, Problem, Server, SpecMethod, StoredFormat, Target, WeightFormat, gb, is_digest, memory_report,
    weight_inventory,
};

/// The most drafts per step the scheduler is built for.
pub const MAX_SPECULATIVE_DEPTH: u32 = 8;
/// Largest page the KV pool accepts, in tokens.
pub const MAX_PAGE_SIZE: u32 = 4096;
/// Largest checkpoint a plan may build into the binary.
pub const MAX_EMBEDDED_BYTES: u64 = 1 << 30;
/// MXFP4 shares one E8M0 scale per this many inputs.
pub const MXFP4_GROUP: u64 = 32;

pub fn validate(plan: &Plan) -> Vec<Problem> {
    let mut v = Rules(Vec::new());
    v.appliance(plan);
    v.model(plan);
    v.quant(plan);
    v.pin(plan);
    v.parallel(plan);
    v.speculative(plan);
    v.kv_cache_and_server(plan);
    v.kernels(plan);
    v.memory(plan);
    v.0
}

struct Rules(Vec<Problem>);

impl Rules {
    fn push(&mut self, key: &str, message: String) {
        self.0.push(Problem::new(key, message));
    }

    fn positive(&mut self, key: &str, value: u64) -> bool {
        if value == 0 {
            self.push(key, format!("{key} = 0 must be positive"));
        }
        value > 0
    }

    /// `divisor_key = d does not divide key = n`; zero divisors are reported elsewhere.
    fn divides(&mut self, divisor_key: &str, d: u64, key: &str, n: u64) {
        if d > 0 && !n.is_multiple_of(d) {
            self.push(divisor_key, format!("{divisor_key} = {d} does not divide {key} = {n}"));
        }
    }

    fn appliance(&mut self, p: &Plan) {
        let a = &p.appliance;
        let name_ok = |c: char| c.is_ascii_alphanumeric() || "._-".contains(c);
        if a.name.is_empty() || !a.name.chars().all(name_ok) {
            self.push(
                "appliance.name",
                format!(
                    "appliance.name = {:?} must be non-empty and use only letters, digits, '.', '_' and '-'",
                    a.name
                ),
            );
        }
        match (a.target, a.arch.as_deref()) {
            (Target::Cpu, Some(arch)) => self.push(
                "appliance.arch",
                format!(
                    "appliance.arch = {arch:?} is set but appliance.target = cpu compiles no GPU kernels; remove it"
                ),
            ),
            (Target::Hip | Target::Cuda, None) => self.push(
                "appliance.arch",
                format!("appliance.arch is required for appliance.target = {}", a.target.as_str()),
            ),
            (Target::Hip, Some(arch)) if !HIP_ARCHES.contains(&arch) => self.push(
                "appliance.arch",
                format!(
                    "appliance.arch = {arch:?} is not an AMD Instinct ISA kiln builds for ({})",
                    HIP_ARCHES.join(", ")
                ),
            ),
            (Target::Cuda, Some(arch)) if !is_sm_arch(arch) => self.push(
                "appliance.arch",
                format!("appliance.arch = {arch:?} is not a CUDA arch of the form sm_NN (e.g. sm_90a)"),
            ),
            _ => {}
        }
        let d = &p.device;
        if a.target == Target::Cpu && d.count != 1 {
            self.push(
                "device.count",
                format!("device.count = {} must be 1 for appliance.target = cpu (the host is one device)", d.count),
            );
        }
        self.positive("device.count", u64::from(d.count));
        for (key, value) in [("device.memory_gb", d.memory_gb), ("device.bandwidth_gb_s", d.bandwidth_gb_s)] {
            if !(value.is_finite() && value > 0.0) {
                self.push(key, format!("{key} = {value} must be a positive number"));
            }
        }
    }

    fn model(&mut self, p: &Plan) {
        let m = &p.model;
        if m.architecture != "GlmMoeDsaForCausalLM" {
            self.push(
                "model.architecture",
                format!(
                    "model.architecture = {:?} is not supported (kiln serves GlmMoeDsaForCausalLM)",
                    m.architecture
                ),
            );
        }
        let dense_layers = m.num_dense_layers() > 0;
        let moe_layers = m.num_moe_layers() > 0 || m.num_nextn_predict_layers > 0;
        let mut required = vec![
            ("model.vocab_size", m.vocab_size),
            ("model.hidden_size", m.hidden_size),
            ("model.num_hidden_layers", m.num_hidden_layers),
            ("model.num_attention_heads", m.num_attention_heads),
            ("model.q_lora_rank", m.q_lora_rank),
            ("model.kv_lora_rank", m.kv_lora_rank),
            ("model.qk_nope_head_dim", m.qk_nope_head_dim),
            ("model.qk_rope_head_dim", m.qk_rope_head_dim),
            ("model.v_head_dim", m.v_head_dim),
            ("model.index_n_heads", m.index_n_heads),
            ("model.index_head_dim", m.index_head_dim),
            ("model.index_topk", m.index_topk),
            ("model.index_topk_freq", m.index_topk_freq),
            ("model.max_position_embeddings", m.max_position_embeddings),
        ];
        if dense_layers {
            required.push(("model.intermediate_size", m.intermediate_size));
        }
        if moe_layers {
            required.extend([
                ("model.moe_intermediate_size", m.moe_intermediate_size),
                ("model.n_routed_experts", m.n_routed_experts),
                ("model.num_experts_per_tok", m.num_experts_per_tok),
                ("model.n_group", m.n_group),
                ("model.topk_group", m.topk_group),
            ]);
        }
        for (key, value) in required {
            self.positive(key, value);
        }
        if m.first_k_dense_replace > m.num_hidden_layers {
            self.push(
                "model.first_k_dense_replace",
                format!(
                    "model.first_k_dense_replace = {} exceeds model.num_hidden_layers = {}",
                    m.first_k_dense_replace, m.num_hidden_layers
                ),
            );
        }
        if !m.qk_rope_head_dim.is_multiple_of(2) {
            self.push(
                "model.qk_rope_head_dim",
                format!("model.qk_rope_head_dim = {} must be even (RoPE rotates pairs)", m.qk_rope_head_dim),
            );
        }
        if m.index_head_dim < m.qk_rope_head_dim {
            self.push(
                "model.index_head_dim",
                format!(
                    "model.index_head_dim = {} is smaller than model.qk_rope_head_dim = {} (the indexer ropes its first qk_rope_head_dim dims)",
                    m.index_head_dim, m.qk_rope_head_dim
                ),
            );
        }
        if moe_layers {
            self.experts(p);
        }
        self.indexer_schedule(p);
        for (key, value) in
            [("model.rope_theta", m.rope_theta), ("model.routed_scaling_factor", m.routed_scaling_factor)]
        {
            if !(value.is_finite() && value > 0.0) {
                self.push(key, format!("{key} = {value} must be a positive number"));
            }
        }
        if !(m.rms_norm_eps > 0.0 && m.rms_norm_eps < 0.1) {
            self.push("model.rms_norm_eps", format!("model.rms_norm_eps = {} must be in (0, 0.1)", m.rms_norm_eps));
        }
    }

    fn experts(&mut self, p: &Plan) {
        let m = &p.model;
        let (e, k, g, tg) = (m.n_routed_experts, m.num_experts_per_tok, m.n_group, m.topk_group);
        if k > e {
            self.push(
                "model.num_experts_per_tok",
                format!("model.num_experts_per_tok = {k} exceeds model.n_routed_experts = {e}"),
            );
        }
        self.divides("model.n_group", g, "model.n_routed_experts", e);
        if tg > g {
            self.push("model.topk_group", format!("model.topk_group = {tg} exceeds model.n_group = {g}"));
        }
        if g > 0 && e % g == 0 && tg <= g {
            let per_group = e / g;
            if k > tg * per_group {
                self.push(
                    "model.num_experts_per_tok",
                    format!(
                        "model.num_experts_per_tok = {k} exceeds the {} experts of the model.topk_group = {tg} groups routing keeps",
                        tg * per_group
                    ),
                );
            }
            if g > 1 && per_group < 2 {
                self.push(
                    "model.n_group",
                    format!(
                        "model.n_group = {g} leaves {per_group} expert per group; group scores sum each group's top 2"
                    ),
                );
            }
        }
    }

    fn indexer_schedule(&mut self, p: &Plan) {
        let m = &p.model;
        if let Some(list) = &m.indexer_types
            && list.len() as u64 != m.num_hidden_layers
        {
            self.push(
                "model.indexer_types",
                format!(
                    "model.indexer_types has {} entries but model.num_hidden_layers = {}",
                    list.len(),
                    m.num_hidden_layers
                ),
            );
        }
        if m.num_hidden_layers > 0 && m.indexer_type(0) == IndexerType::Shared {
            let key = if m.indexer_types.is_some() { "model.indexer_types" } else { "model.index_skip_topk_offset" };
            self.push(
                key,
                format!("{key}: layer 0 is \"shared\" but a shared layer reuses an earlier full layer's top-k"),
            );
        }
    }

    fn quant(&mut self, p: &Plan) {
        let q = &p.weights.quant;
        if q.embed_tokens == WeightFormat::Mxfp4 {
            self.push(
                "weights.quant.embed_tokens",
                "weights.quant.embed_tokens cannot be mxfp4: the embedding is a lookup, not a linear".into(),
            );
        }
        let mtp_router = q.mtp.as_ref().map(|m| m.router);
        for (key, f) in [("weights.quant.router", Some(q.router)), ("weights.quant.mtp.router", mtp_router)] {
            if f == Some(WeightFormat::Mxfp4) {
                self.push(key, format!("{key} cannot be mxfp4: the router is computed in fp32 and is never quantized"));
            }
        }
        let has_mtp = p.model.num_nextn_predict_layers > 0;
        match (has_mtp, q.mtp.is_some()) {
            (true, false) => self.push(
                "weights.quant.mtp",
                format!(
                    "weights.quant.mtp is missing: model.num_nextn_predict_layers = {} needs the MTP layer's quant rules",
                    p.model.num_nextn_predict_layers
                ),
            ),
            (false, true) => self.push(
                "weights.quant.mtp",
                "weights.quant.mtp is set but model.num_nextn_predict_layers = 0".into(),
            ),
            _ => {}
        }
        // Every MXFP4 shard must hold whole scale groups along its inputs.
        let mut seen = BTreeSet::new();
        for g in weight_inventory(p) {
            if g.format != StoredFormat::Mxfp4 {
                continue;
            }
            let (_, cols) = g.shard_shape();
            let key = g.class.plan_key(g.mtp);
            if cols % MXFP4_GROUP != 0 && seen.insert((key.clone(), g.label)) {
                self.push(
                    &key,
                    format!(
                        "{key} = mxfp4 needs inputs in multiples of {MXFP4_GROUP}, but {} has {cols} inputs per device",
                        g.label
                    ),
                );
            }
        }
    }

    fn pin(&mut self, p: &Plan) {
        let Some(pin) = &p.weights.pin else { return };
        if !is_digest(&pin.headers) {
            self.push(
                "weights.pin.headers",
                "weights.pin.headers must be a blake3 digest: 64 lowercase hex digits".into(),
            );
        }
        if pin.shards().next().is_none() {
            self.push("weights.pin.files", "weights.pin.files names no .safetensors shard".into());
        }
        let mut names = BTreeSet::new();
        for (i, f) in pin.files.iter().enumerate() {
            let key = format!("weights.pin.files[{i}]");
            if f.name.is_empty() || f.name.contains('/') || f.name.contains('\\') || f.name == ".." {
                self.push(&key, format!("{key}.name = {:?} must be a file name inside the model directory", f.name));
            }
            if !names.insert(f.name.as_str()) {
                self.push(&key, format!("{key}.name = {:?} is pinned twice", f.name));
            }
            if !is_digest(&f.blake3) {
                self.push(&key, format!("{key}.blake3 for {} must be 64 lowercase hex digits", f.name));
            }
            match (&f.headers, f.is_shard()) {
                (Some(h), true) if !is_digest(h) => {
                    self.push(&key, format!("{key}.headers for {} must be 64 lowercase hex digits", f.name))
                }
                (None, true) => self.push(&key, format!("{key}.headers is missing for the shard {}", f.name)),
                (Some(_), false) => {
                    self.push(&key, format!("{key}.headers is only for .safetensors shards, not {}", f.name))
                }
                _ => {}
            }
        }
    }

    fn parallel(&mut self, p: &Plan) {
        let (tp, dp, ep) = (u64::from(p.parallel.tp), u64::from(p.parallel.dp), u64::from(p.parallel.ep));
        let ok = [("parallel.tp", tp), ("parallel.dp", dp), ("parallel.ep", ep)]
            .into_iter()
            .fold(true, |ok, (k, v)| self.positive(k, v) && ok);
        if !ok {
            return;
        }
        let count = u64::from(p.device.count);
        if tp * dp != count {
            self.push(
                "parallel.tp",
                format!(
                    "parallel.tp x parallel.dp = {tp} x {dp} = {} must equal device.count = {count} (every device of the node serves)",
                    tp * dp
                ),
            );
        }
        let m = &p.model;
        self.divides("parallel.tp", tp, "model.num_attention_heads", m.num_attention_heads);
        if m.num_dense_layers() > 0 {
            self.divides("parallel.tp", tp, "model.intermediate_size", m.intermediate_size);
        }
        if m.num_moe_layers() > 0 || m.num_nextn_predict_layers > 0 {
            self.divides("parallel.ep", ep, "parallel.tp", tp);
            self.divides("parallel.ep", ep, "model.n_routed_experts", m.n_routed_experts);
            if tp % ep == 0 {
                let per_expert = tp / ep;
                if per_expert > 0 && !m.moe_intermediate_size.is_multiple_of(per_expert) {
                    self.push(
                        "parallel.tp",
                        format!(
                            "parallel.tp / parallel.ep = {per_expert} does not divide model.moe_intermediate_size = {}",
                            m.moe_intermediate_size
                        ),
                    );
                }
            }
            if m.n_shared_experts > 0 {
                let width = m.moe_intermediate_size * m.n_shared_experts;
                if !width.is_multiple_of(tp) {
                    self.push(
                        "parallel.tp",
                        format!(
                            "parallel.tp = {tp} does not divide the shared experts' width model.moe_intermediate_size x model.n_shared_experts = {width}"
                        ),
                    );
                }
            }
        }
    }

    fn speculative(&mut self, p: &Plan) {
        let s = &p.speculative;
        match s.method {
            SpecMethod::Mtp => {
                if p.model.num_nextn_predict_layers == 0 {
                    self.push(
                        "speculative.method",
                        "speculative.method = mtp needs model.num_nextn_predict_layers >= 1, but it is 0".into(),
                    );
                }
                if s.depth == 0 {
                    self.push(
                        "speculative.depth",
                        "speculative.depth = 0 drafts nothing with method = mtp; use method = none".into(),
                    );
                } else if s.depth > MAX_SPECULATIVE_DEPTH {
                    self.push(
                        "speculative.depth",
                        format!(
                            "speculative.depth = {} exceeds the {MAX_SPECULATIVE_DEPTH} drafts per step kiln schedules",
                            s.depth
                        ),
                    );
                }
            }
            SpecMethod::None if s.depth != 0 => self.push(
                "speculative.depth",
                format!("speculative.depth = {} must be 0 with speculative.method = none", s.depth),
            ),
            SpecMethod::None => {}
        }
        match (s.method, s.max_batch) {
            (SpecMethod::Mtp, Some(0)) => {
                self.push("speculative.max_batch", "speculative.max_batch = 0 never drafts; use method = none".into())
            }
            (SpecMethod::None, Some(n)) => self.push(
                "speculative.max_batch",
                format!("speculative.max_batch = {n} limits drafting, but speculative.method = none drafts nothing"),
            ),
            _ => {}
        }
    }

    fn kv_cache_and_server(&mut self, p: &Plan) {
        let kv = &p.kv_cache;
        if !kv.page_size.is_power_of_two() || kv.page_size > MAX_PAGE_SIZE {
            self.push(
                "kv_cache.page_size",
                format!("kv_cache.page_size = {} must be a power of two from 1 to {MAX_PAGE_SIZE}", kv.page_size),
            );
        }
        if !(kv.memory_fraction > 0.0 && kv.memory_fraction <= 1.0) {
            self.push(
                "kv_cache.memory_fraction",
                format!("kv_cache.memory_fraction = {} must be in (0, 1]", kv.memory_fraction),
            );
        }
        let s = &p.server;
        if s.bind.parse::<std::net::SocketAddr>().is_err() {
            self.push(
                "server.bind",
                format!("server.bind = {:?} is not an IP address and port (e.g. \"127.0.0.1:8000\")", s.bind),
            );
        }
        self.positive("server.max_running_requests", u64::from(s.max_running_requests));
        self.positive("server.max_prompt_tokens", s.max_prompt_tokens);
        self.positive("server.max_output_tokens", s.max_output_tokens);
        self.positive("server.request_timeout_s", s.request_timeout_s);
        self.positive("server.drain_timeout_s", s.drain_timeout_s);
        if self.positive("server.prefill_chunk_tokens", s.prefill_chunk_tokens) && kv.page_size > 0 {
            let page = u64::from(kv.page_size);
            if !s.prefill_chunk_tokens.is_multiple_of(page) {
                self.push(
                    "server.prefill_chunk_tokens",
                    format!(
                        "server.prefill_chunk_tokens = {} must be a multiple of kv_cache.page_size = {page} (chunks end on page boundaries so finished pages can be cached)",
                        s.prefill_chunk_tokens
                    ),
                );
            }
        }
        self.transport(s);
        let ctx = p.model.max_position_embeddings;
        if s.max_request_tokens() > ctx {
            self.push(
                "server.max_prompt_tokens",
                format!(
                    "server.max_prompt_tokens + server.max_output_tokens = {} + {} = {} exceeds model.max_position_embeddings = {ctx}",
                    s.max_prompt_tokens,
                    s.max_output_tokens,
                    s.max_request_tokens()
                ),
            );
        }
    }

    /// Connection limits, timeouts and the token's source.
    fn transport(&mut self, s: &Server) {
        self.positive("server.max_connections", u64::from(s.max_connections));
        self.positive("server.header_timeout_s", s.header_timeout_s);
        self.positive("server.body_timeout_s", s.body_timeout_s);
        self.positive("server.idle_timeout_s", s.idle_timeout_s);
        self.positive("server.write_timeout_s", s.write_timeout_s);
        if !(8192..=1 << 20).contains(&s.max_header_bytes) {
            self.push(
                "server.max_header_bytes",
                format!("server.max_header_bytes = {} must be in [8192, 1048576]", s.max_header_bytes),
            );
        }
        if !(8..=1024).contains(&s.max_headers) {
            self.push("server.max_headers", format!("server.max_headers = {} must be in [8, 1024]", s.max_headers));
        }
        let Some(a) = &s.auth else { return };
        match (&a.token_env, &a.token_file) {
            (Some(_), Some(_)) | (None, None) => self.push(
                "server.auth",
                "server.auth needs exactly one of token_env (an environment variable) or token_file (a path)".into(),
            ),
            (Some(var), None) => {
                if var.is_empty() || !var.chars().all(|c| c.is_ascii_alphanumeric() || c == '_') {
                    self.push(
                        "server.auth.token_env",
                        format!("server.auth.token_env = {var:?} is not an environment variable name"),
                    );
                }
            }
            (None, Some(path)) => {
                if !path.starts_with('/') {
                    self.push(
                        "server.auth.token_file",
                        format!("server.auth.token_file = {path:?} must be an absolute path"),
                    );
                }
            }
        }
    }

    fn kernels(&mut self, p: &Plan) {
        self.0.extend(super::kernels::check(p));
    }

    fn memory(&mut self, p: &Plan) {
        let r = memory_report(p);
        if p.weights.embed && r.weights_bytes_total > MAX_EMBEDDED_BYTES {
            self.push(
                "weights.embed",
                format!(
                    "weights.embed = true with {} of weights: embedding is for models up to {}; deploy the directory instead",
                    gb(r.weights_bytes_total as f64),
                    gb(MAX_EMBEDDED_BYTES as f64)
                ),
            );
        }
        let need = r.weights_bytes_per_device as f64 + r.max_request_kv_bytes as f64;
        if need > r.usable_bytes_per_device {
            self.push(
                "device.memory_gb",
                format!(
                    "weights need {} per device and the KV cache of one max-length request ({} tokens x {} B) needs {}, \
                     together {}, but each device offers {} (device.memory_gb = {} x kv_cache.memory_fraction = {})",
                    gb(r.weights_bytes_per_device as f64),
                    r.max_request_tokens,
                    r.kv_bytes_per_token,
                    gb(r.max_request_kv_bytes as f64),
                    gb(need),
                    gb(r.usable_bytes_per_device),
                    p.device.memory_gb,
                    p.kv_cache.memory_fraction
                ),
            );
        }
    }
}

fn is_sm_arch(arch: &str) -> bool {
    let Some(rest) = arch.strip_prefix("sm_") else { return false };
    let digits = rest.strip_suffix('a').unwrap_or(rest);
    !digits.is_empty() && digits.chars().all(|c| c.is_ascii_digit())
}
