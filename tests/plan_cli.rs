//! The `kiln plan` command line: the baked report, `plan check`, and `plan init --from-hf`
//! on synthetic Quark MXFP4 checkpoints.

mod common;

use std::path::Path;
use std::process::{Command, Output};

use common::*;
use kiln::plan::{self, ModelShape, WeightFormat};
use kiln::weights::Dtype;
use kiln::weights::glm::{TensorTable, scale_name, weight_name};
use safetensors::tensor::TensorView;

fn kiln(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_kiln")).args(args).output().expect("kiln runs")
}

fn json(out: &Output) -> serde_json::Value {
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    serde_json::from_slice(&out.stdout).expect("JSON on stdout")
}

#[test]
fn baked_plan_report() {
    let v = json(&kiln(&["plan", "--json"]));
    assert_eq!(v["name"], "kiln-tiny");
    assert_eq!(v["plan_hash"].as_str().unwrap().len(), 64);
    for key in ["weights_bytes_per_device", "kv_bytes_per_token", "kv_tokens_per_device", "decode_roofline_tok_s"] {
        assert!(v[key].as_f64().unwrap() > 0.0, "{key}");
    }
    let text = kiln(&["plan"]);
    let text = String::from_utf8_lossy(&text.stdout);
    assert!(text.contains("kiln-tiny") && text.contains("KV tokens per device"), "{text}");
}

#[test]
fn check_reports_glm52_figures() {
    let file = repo_path(GLM_TP4DP2);
    let v = json(&kiln(&["plan", "check", file.to_str().unwrap(), "--json"]));
    assert_eq!(v["weights_bytes_per_device"], 108_462_565_376u64);
    assert_eq!(v["kv_bytes_per_token"], 54728);
    assert_eq!(v["kv_tokens_per_device"], 2_754_301);
    assert!((v["decode_roofline_tok_s"].as_f64().unwrap() - 608.2).abs() < 0.1);
}

#[test]
fn check_rejects_a_bad_plan_listing_problems() {
    let dir = tempfile::tempdir().unwrap();
    let bad = dir.path().join("bad.toml");
    std::fs::write(&bad, edited(GLM_TP4DP2, &[("parallel.tp", int(3)), ("server.bind", string("x"))])).unwrap();
    let out = kiln(&["plan", "check", bad.to_str().unwrap(), "--json"]);
    assert!(!out.status.success());
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["valid"], false);
    let keys: Vec<&str> = v["problems"].as_array().unwrap().iter().map(|p| p["key"].as_str().unwrap()).collect();
    assert!(keys.contains(&"parallel.tp") && keys.contains(&"server.bind"), "{keys:?}");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("parallel.tp = 3 does not divide model.num_attention_heads = 64"), "{stderr}");
}

#[test]
fn check_names_a_missing_file() {
    let out = kiln(&["plan", "check", "/nonexistent/plan.toml"]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("/nonexistent/plan.toml"));
}

/// The tiny plan's model, written as an HF config.json.
fn tiny_model() -> ModelShape {
    plan::check(&read_plan_text(TINY)).unwrap().model
}

fn write_config(dir: &Path, m: &ModelShape, quark: bool) {
    let mut cfg = serde_json::json!({
        "architectures": ["GlmMoeDsaForCausalLM"],
        "model_type": "glm_moe_dsa",
        "vocab_size": m.vocab_size, "hidden_size": m.hidden_size,
        "num_hidden_layers": m.num_hidden_layers, "first_k_dense_replace": m.first_k_dense_replace,
        "intermediate_size": m.intermediate_size, "moe_intermediate_size": m.moe_intermediate_size,
        "num_attention_heads": m.num_attention_heads, "num_key_value_heads": m.num_attention_heads,
        "q_lora_rank": m.q_lora_rank, "kv_lora_rank": m.kv_lora_rank,
        "qk_nope_head_dim": m.qk_nope_head_dim, "qk_rope_head_dim": m.qk_rope_head_dim,
        "v_head_dim": m.v_head_dim, "head_dim": m.qk_rope_head_dim,
        "index_n_heads": m.index_n_heads, "index_head_dim": m.index_head_dim, "index_topk": m.index_topk,
        "index_topk_freq": m.index_topk_freq, "index_skip_topk_offset": m.index_skip_topk_offset,
        "indexer_types": m.layers().iter().map(|l| format!("{:?}", l.indexer).to_lowercase()).collect::<Vec<_>>(),
        "n_routed_experts": m.n_routed_experts, "num_experts_per_tok": m.num_experts_per_tok,
        "n_shared_experts": m.n_shared_experts, "n_group": m.n_group, "topk_group": m.topk_group,
        "norm_topk_prob": m.norm_topk_prob, "routed_scaling_factor": m.routed_scaling_factor,
        "num_nextn_predict_layers": m.num_nextn_predict_layers,
        "rope_parameters": {"rope_theta": m.rope_theta, "rope_type": "default"},
        "rms_norm_eps": m.rms_norm_eps, "max_position_embeddings": m.max_position_embeddings,
        "tie_word_embeddings": false,
    });
    if quark {
        let spec = serde_json::json!({"dtype": "fp4", "qscheme": "per_group", "group_size": 32,
            "scale_format": "e8m0", "is_dynamic": false});
        let mut input = spec.clone();
        input["is_dynamic"] = true.into();
        cfg["quantization_config"] = serde_json::json!({"quant_method": "quark",
            "global_quant_config": {"weight": spec, "input_tensors": input}});
    }
    std::fs::write(dir.join("config.json"), serde_json::to_string_pretty(&cfg).unwrap()).unwrap();
}

/// Zero-filled tensors with the names and shapes of `m`; linears for which `mxfp4` says so
/// are stored as Quark MXFP4. Tensors are split over `shards` files with an index when > 1.
fn write_checkpoint(dir: &Path, m: &ModelShape, mxfp4: impl Fn(&str) -> bool, skip_mtp: bool, shards: usize) {
    let table = TensorTable::new(m);
    let mtp_prefix = format!("model.layers.{}.", m.num_hidden_layers);
    let mut tensors: Vec<(String, Dtype, Vec<usize>)> = Vec::new();
    for l in &table.linears() {
        let (r, c) = (l.rows as usize, l.cols as usize);
        if mxfp4(&l.module) {
            tensors.push((weight_name(&l.module), Dtype::U8, vec![r, c / 2]));
            tensors.push((scale_name(&l.module), Dtype::U8, vec![r, c / 32]));
        } else {
            tensors.push((weight_name(&l.module), Dtype::BF16, vec![r, c]));
        }
    }
    for v in &table.vectors() {
        tensors.push((v.name.clone(), if v.f32_only { Dtype::F32 } else { Dtype::BF16 }, vec![v.len as usize]));
    }
    tensors.retain(|(n, _, _)| !(skip_mtp && n.starts_with(&mtp_prefix)));

    let per_shard = tensors.len().div_ceil(shards);
    let mut weight_map = serde_json::Map::new();
    for (i, chunk) in tensors.chunks(per_shard).enumerate() {
        let file = if shards == 1 {
            "model.safetensors".to_string()
        } else {
            format!("model-{:05}-of-{shards:05}.safetensors", i + 1)
        };
        let buffers: Vec<Vec<u8>> =
            chunk.iter().map(|(_, d, s)| vec![0u8; s.iter().product::<usize>() * d.bitsize() / 8]).collect();
        let views: Vec<(String, TensorView)> = chunk
            .iter()
            .zip(&buffers)
            .map(|((n, d, s), b)| (n.clone(), TensorView::new(*d, s.clone(), b).unwrap()))
            .collect();
        std::fs::write(dir.join(&file), safetensors::serialize(views, None).unwrap()).unwrap();
        for (n, _, _) in chunk {
            weight_map.insert(n.clone(), file.clone().into());
        }
    }
    if shards > 1 {
        let index = serde_json::json!({"metadata": {}, "weight_map": weight_map});
        std::fs::write(dir.join("model.safetensors.index.json"), index.to_string()).unwrap();
    }
}

fn init(dir: &Path, extra: &[&str]) -> (plan::Plan, String) {
    let mut args = vec!["plan", "init", "--from-hf", dir.to_str().unwrap()];
    args.extend_from_slice(extra);
    let out = kiln(&args);
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(out.status.success(), "{stderr}");
    let text = String::from_utf8(out.stdout).unwrap();
    (plan::check(&text).unwrap_or_else(|p| panic!("{}", plan::render_problems(plan::IN_PLAN, &p))), stderr)
}

/// Experts MXFP4 except the MTP layer's shared expert, as in amd/GLM-5.2-MXFP4.
fn quark_rule(m: &ModelShape) -> impl Fn(&str) -> bool {
    let mtp_shared = format!("model.layers.{}.mlp.shared_experts.", m.num_hidden_layers);
    move |module: &str| {
        module.contains(".mlp.experts.")
            || (module.contains(".mlp.shared_experts.") && !module.starts_with(&mtp_shared))
    }
}

#[test]
fn init_reads_shapes_and_quant_from_the_checkpoint() {
    let m = tiny_model();
    for shards in [1, 3] {
        let dir = tempfile::tempdir().unwrap();
        write_config(dir.path(), &m, true);
        write_checkpoint(dir.path(), &m, quark_rule(&m), false, shards);
        let (p, _) = init(dir.path(), &[]);
        assert_eq!(p.model, m, "shards = {shards}");
        let q = &p.weights.quant;
        assert_eq!(q.activations, plan::ActivationQuant::Mxfp4);
        assert_eq!(
            (q.routed_experts, q.shared_experts, q.attention),
            (WeightFormat::Mxfp4, WeightFormat::Mxfp4, WeightFormat::Bf16)
        );
        let mtp = q.mtp.as_ref().unwrap();
        assert_eq!((mtp.routed_experts, mtp.shared_experts), (WeightFormat::Mxfp4, WeightFormat::Bf16));
        assert_eq!(p.speculative.method, plan::SpecMethod::Mtp);
    }
}

#[test]
fn init_for_a_gpu_node() {
    let m = tiny_model();
    let dir = tempfile::tempdir().unwrap();
    write_config(dir.path(), &m, true);
    write_checkpoint(dir.path(), &m, quark_rule(&m), false, 1);
    let (p, _) = init(dir.path(), &["--target", "hip", "--arch", "gfx950", "--tp", "4", "--dp", "2"]);
    assert_eq!((p.parallel.tp, p.parallel.dp), (4, 2));
    assert_eq!(p.device.count, 8);
    assert_eq!(p.kv_cache.dtype, plan::KvDtype::Fp8E4m3);
}

#[test]
fn init_without_mtp_tensors_drops_speculation() {
    let m = tiny_model();
    let dir = tempfile::tempdir().unwrap();
    write_config(dir.path(), &m, false);
    write_checkpoint(dir.path(), &m, |_| false, true, 1);
    let (p, stderr) = init(dir.path(), &[]);
    assert_eq!(p.model.num_nextn_predict_layers, 0);
    assert_eq!(p.speculative.method, plan::SpecMethod::None);
    assert!(p.weights.quant.mtp.is_none());
    assert_eq!(p.weights.quant.routed_experts, WeightFormat::Bf16);
    assert!(stderr.contains("no MTP tensors"), "{stderr}");
}

#[test]
fn init_refuses_mixed_formats_in_one_class() {
    let m = tiny_model();
    let dir = tempfile::tempdir().unwrap();
    write_config(dir.path(), &m, true);
    write_checkpoint(dir.path(), &m, |module: &str| module.contains(".mlp.experts.0."), false, 1);
    let out = kiln(&["plan", "init", "--from-hf", dir.path().to_str().unwrap()]);
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("weights.quant.routed_experts, weights.quant.mtp.routed_experts mix storage formats"),
        "{stderr}"
    );
}

#[test]
fn init_names_a_truncated_shard() {
    let m = tiny_model();
    let dir = tempfile::tempdir().unwrap();
    write_config(dir.path(), &m, false);
    write_checkpoint(dir.path(), &m, |_| false, false, 1);
    let file = dir.path().join("model.safetensors");
    let len = std::fs::metadata(&file).unwrap().len();
    std::fs::OpenOptions::new().write(true).open(&file).unwrap().set_len(len - 100).unwrap();
    let out = kiln(&["plan", "init", "--from-hf", dir.path().to_str().unwrap()]);
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("model.safetensors") && stderr.contains("bad safetensors header"), "{stderr}");
}

#[test]
fn init_refuses_other_quant_methods() {
    let m = tiny_model();
    let dir = tempfile::tempdir().unwrap();
    write_config(dir.path(), &m, false);
    let path = dir.path().join("config.json");
    let mut cfg: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
    cfg["quantization_config"] = serde_json::json!({"quant_method": "fp8", "fmt": "e4m3"});
    std::fs::write(&path, cfg.to_string()).unwrap();
    write_checkpoint(dir.path(), &m, |_| false, false, 1);
    let out = kiln(&["plan", "init", "--from-hf", dir.path().to_str().unwrap()]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success() && stderr.contains("quant_method = \"fp8\" is not supported"), "{stderr}");
}
