//! HF `config.json` of a GLM-DSA model, read into the plan's model shape.
//!
//! Keys absent from the file take HF transformers 5.24's `GlmMoeDsaConfig` defaults, as HF
//! itself would (the GLM-DSA spec, section 1.1). `head_dim` is never read: GLM-5.2's
//! file says 192 and HF overwrites it; kiln uses the nope/rope/v dims.

use std::path::{Path, PathBuf};

use serde_json::Value;

use crate::error::{Error, Result};
use crate::plan::{ActivationQuant, IndexerType, ModelShape};

/// What a model directory's config.json says.
#[derive(Debug, Clone, PartialEq)]
pub struct HfConfig {
    pub model: ModelShape,
    /// From `quantization_config`: whether activations are quantized dynamically.
    pub activations: ActivationQuant,
    /// `quantization_config.quant_method`, if any.
    pub quant_method: Option<String>,
}

pub fn read_hf_config(dir: &Path) -> Result<HfConfig> {
    let path = dir.join("config.json");
    let text = std::fs::read_to_string(&path).map_err(|e| Error::io(&path, e))?;
    parse_hf_config(&text, &path)
}

/// config.json's text; `path` names it in errors.
pub fn parse_hf_config(text: &str, path: &Path) -> Result<HfConfig> {
    let value: Value = serde_json::from_str(text)
        .map_err(|e| Error::Config { path: path.to_path_buf(), message: format!("not JSON: {e}") })?;
    Reader { path: path.to_path_buf(), v: &value }.config()
}

struct Reader<'a> {
    path: PathBuf,
    v: &'a Value,
}

impl Reader<'_> {
    fn err(&self, message: String) -> Error {
        Error::Config { path: self.path.clone(), message }
    }

    fn uint(&self, key: &str, default: u64) -> Result<u64> {
        match self.v.get(key) {
            None | Some(Value::Null) => Ok(default),
            Some(x) => x.as_u64().ok_or_else(|| self.err(format!("{key} = {x} is not a non-negative integer"))),
        }
    }

    fn float(&self, key: &str, default: f64) -> Result<f64> {
        match self.v.get(key) {
            None | Some(Value::Null) => Ok(default),
            Some(x) => x.as_f64().ok_or_else(|| self.err(format!("{key} = {x} is not a number"))),
        }
    }

    fn boolean(&self, key: &str, default: bool) -> Result<bool> {
        match self.v.get(key) {
            None | Some(Value::Null) => Ok(default),
            Some(x) => x.as_bool().ok_or_else(|| self.err(format!("{key} = {x} is not true or false"))),
        }
    }

    fn config(&self) -> Result<HfConfig> {
        // A config written from a freshly built model has no architectures; model_type
        // then names the family.
        let architecture = match self.v.get("architectures").and_then(|a| a.get(0)).and_then(Value::as_str) {
            Some(a) => a.to_string(),
            None => match self.v.get("model_type").and_then(Value::as_str) {
                Some("glm_moe_dsa") => "GlmMoeDsaForCausalLM".to_string(),
                _ => return Err(self.err("architectures[0] is missing".into())),
            },
        };
        let num_hidden_layers = self.uint("num_hidden_layers", 78)?;
        let model = ModelShape {
            architecture,
            vocab_size: self.uint("vocab_size", 154880)?,
            hidden_size: self.uint("hidden_size", 6144)?,
            num_hidden_layers,
            first_k_dense_replace: self.first_k_dense(num_hidden_layers)?,
            intermediate_size: self.uint("intermediate_size", 12288)?,
            moe_intermediate_size: self.uint("moe_intermediate_size", 2048)?,
            num_attention_heads: self.uint("num_attention_heads", 64)?,
            q_lora_rank: self.uint("q_lora_rank", 2048)?,
            kv_lora_rank: self.uint("kv_lora_rank", 512)?,
            qk_nope_head_dim: self.uint("qk_nope_head_dim", 192)?,
            qk_rope_head_dim: self.uint("qk_rope_head_dim", 64)?,
            v_head_dim: self.uint("v_head_dim", 256)?,
            index_n_heads: self.uint("index_n_heads", 32)?,
            index_head_dim: self.uint("index_head_dim", 128)?,
            index_topk: self.uint("index_topk", 2048)?,
            index_topk_freq: self.uint("index_topk_freq", 1)?,
            index_skip_topk_offset: self.uint("index_skip_topk_offset", 2)?,
            indexer_types: None,
            n_routed_experts: match self.v.get("n_routed_experts") {
                Some(_) => self.uint("n_routed_experts", 256)?,
                None => self.uint("num_experts", 256)?,
            },
            num_experts_per_tok: self.uint("num_experts_per_tok", 8)?,
            n_shared_experts: self.uint("n_shared_experts", 1)?,
            n_group: self.uint("n_group", 1)?,
            topk_group: self.uint("topk_group", 1)?,
            norm_topk_prob: self.boolean("norm_topk_prob", true)?,
            routed_scaling_factor: self.float("routed_scaling_factor", 2.5)?,
            num_nextn_predict_layers: self.uint("num_nextn_predict_layers", 0)?,
            rope_theta: self.rope_theta()?,
            rms_norm_eps: self.float("rms_norm_eps", 1e-5)?,
            max_position_embeddings: self.uint("max_position_embeddings", 202752)?,
            tie_word_embeddings: self.boolean("tie_word_embeddings", false)?,
        };
        let mut model = model;
        model.indexer_types = self.explicit_indexer_types(&model)?;
        let (activations, quant_method) = self.quantization()?;
        Ok(HfConfig { model, activations, quant_method })
    }

    /// `mlp_layer_types` wins over `first_k_dense_replace`, as in HF; kiln needs the dense
    /// layers to come first.
    fn first_k_dense(&self, layers: u64) -> Result<u64> {
        let Some(list) = self.v.get("mlp_layer_types").and_then(Value::as_array) else {
            return self.uint("first_k_dense_replace", 3);
        };
        let kinds: Vec<&str> = list.iter().map(|x| x.as_str().unwrap_or("?")).collect();
        let dense = kinds.iter().take_while(|k| **k == "dense").count();
        if kinds.len() as u64 != layers || kinds[dense..].iter().any(|k| *k != "sparse") {
            return Err(self.err(format!(
                "mlp_layer_types must be {layers} entries of \"dense\" followed by \"sparse\", got {kinds:?}"
            )));
        }
        Ok(dense as u64)
    }

    fn rope_theta(&self) -> Result<f64> {
        if let Some(params) = self.v.get("rope_parameters").filter(|p| p.is_object()) {
            let kind = params.get("rope_type").and_then(Value::as_str).unwrap_or("default");
            if kind != "default" {
                return Err(
                    self.err(format!("rope_parameters.rope_type = {kind:?} is not supported (only \"default\")"))
                );
            }
            if let Some(theta) = params.get("rope_theta").and_then(Value::as_f64) {
                return Ok(theta);
            }
        }
        if let Some(scaling) = self.v.get("rope_scaling").filter(|s| !s.is_null()) {
            return Err(self.err(format!("rope_scaling = {scaling} is not supported (GLM-5.x uses plain RoPE)")));
        }
        self.float("rope_theta", 10000.0)
    }

    /// An explicit schedule (`indexer_types`, or an `index_topk_pattern` string) is kept in
    /// the plan only where it differs from what freq/offset give.
    fn explicit_indexer_types(&self, m: &ModelShape) -> Result<Option<Vec<IndexerType>>> {
        let list: Vec<IndexerType> = if let Some(list) = self.v.get("indexer_types").and_then(Value::as_array) {
            list.iter()
                .map(|x| match x.as_str() {
                    Some("full") => Ok(IndexerType::Full),
                    Some("shared") => Ok(IndexerType::Shared),
                    _ => Err(self.err(format!("indexer_types entry {x} is neither \"full\" nor \"shared\""))),
                })
                .collect::<Result<_>>()?
        } else if let Some(pattern) = self.v.get("index_topk_pattern").and_then(Value::as_str) {
            pattern
                .chars()
                .map(|c| match c {
                    'F' => Ok(IndexerType::Full),
                    'S' => Ok(IndexerType::Shared),
                    _ => Err(self.err(format!("index_topk_pattern {pattern:?} has {c:?}; only F and S are allowed"))),
                })
                .collect::<Result<_>>()?
        } else {
            return Ok(None);
        };
        let formula: Vec<IndexerType> = m.layers().iter().map(|l| l.indexer).collect();
        Ok(if list == formula { None } else { Some(list) })
    }

    /// Quark MXFP4 is the one quantized format kiln reads; anything else is a clear error.
    fn quantization(&self) -> Result<(ActivationQuant, Option<String>)> {
        let Some(q) = self.v.get("quantization_config").filter(|q| !q.is_null()) else {
            return Ok((ActivationQuant::None, None));
        };
        let method = q.get("quant_method").and_then(Value::as_str).unwrap_or("?").to_string();
        if method != "quark" {
            return Err(self.err(format!(
                "quantization_config.quant_method = {method:?} is not supported (kiln reads AMD Quark MXFP4 or unquantized checkpoints)"
            )));
        }
        let global = q.get("global_quant_config");
        let weight = global.and_then(|g| g.get("weight"));
        let field = |spec: Option<&Value>, key: &str| spec.and_then(|s| s.get(key)).cloned().unwrap_or(Value::Null);
        if field(weight, "dtype") != "fp4"
            || field(weight, "group_size") != 32
            || field(weight, "scale_format") != "e8m0"
        {
            return Err(self.err(
                "quantization_config.global_quant_config.weight must be fp4 with group_size 32 and e8m0 scales (MXFP4)"
                    .into(),
            ));
        }
        let input = global.and_then(|g| g.get("input_tensors")).filter(|i| !i.is_null());
        let activations = match input {
            None => ActivationQuant::None,
            Some(spec) if field(Some(spec), "dtype") == "fp4" && field(Some(spec), "is_dynamic") == true => {
                ActivationQuant::Mxfp4
            }
            Some(spec) => {
                return Err(self.err(format!(
                    "quantization_config.global_quant_config.input_tensors = {spec} is not dynamic MXFP4"
                )));
            }
        };
        Ok((activations, Some(method)))
    }
}
