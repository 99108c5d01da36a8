#!/usr/bin/env python
"""A random mid-size GLM-MoE-DSA checkpoint for `kiln bench decode` / `kiln bench prefill`.

Shapes (769 M parameters in the main model, 144 M active per token, plus one MTP layer):
hidden 1024, 8 layers (1 dense, intermediate 2048), 16 heads (q_lora 384, kv_lora 256,
qk_nope 64, qk_rope 32, v 64), 64 routed experts top-8 + 1 shared (moe_intermediate 512),
indexer 32 heads x 64, top-256, vocab 8192. Routed experts are MXFP4 in AMD Quark's format
(U8 .weight [out, in/2] + U8 .weight_scale [out, in/32], E8M0); everything else bf16, the
router's correction bias f32. Weights are random (small normal values, norms 1), so the
model's text is noise: it measures speed, not quality.

The checkpoint is written to OUT_DIR (about 0.5 GB) and never committed. Needs numpy only.

With --w4a4 the config also declares dynamic MXFP4 activations for the routed experts
(W4A4, as amd/GLM-5.2-MXFP4 is quantized): the same weights, quantized inputs.

Usage: python tools/make_bench_model.py OUT_DIR [--seed N] [--layers N] [--experts N] [--w4a4]
"""

import argparse
import json
import os
import struct

import numpy as np

# Quark's declaration of activations quantized at run time to MXFP4 per group of 32.
W4A4_INPUTS = {"dtype": "fp4", "group_size": 32, "qscheme": "per_group", "scale_format": "e8m0", "is_dynamic": True}

SHAPE = dict(
    vocab_size=8192,
    hidden_size=1024,
    intermediate_size=2048,
    moe_intermediate_size=512,
    num_hidden_layers=8,
    first_k_dense_replace=1,
    num_attention_heads=16,
    num_key_value_heads=16,
    q_lora_rank=384,
    kv_lora_rank=256,
    qk_nope_head_dim=64,
    qk_rope_head_dim=32,
    v_head_dim=64,
    n_routed_experts=64,
    num_experts_per_tok=8,
    n_shared_experts=1,
    n_group=1,
    topk_group=1,
    norm_topk_prob=True,
    routed_scaling_factor=2.5,
    index_n_heads=32,
    index_head_dim=64,
    index_topk=256,
    index_topk_freq=1,
    index_skip_topk_offset=2,
    num_nextn_predict_layers=1,
    rms_norm_eps=1e-5,
    max_position_embeddings=4096,
    tie_word_embeddings=False,
)


def bf16(a):
    """float32 array -> bf16 bytes (round to nearest even)."""
    u = np.ascontiguousarray(a, dtype=np.float32).view(np.uint32)
    u = (u + 0x7FFF + ((u >> 16) & 1)) >> 16
    return u.astype(np.uint16).tobytes()


class Writer:
    def __init__(self, rng):
        self.rng = rng
        self.tensors = []  # (name, dtype, shape, bytes)

    def dense(self, name, shape, std):
        w = self.rng.standard_normal(shape, dtype=np.float32) * std
        self.tensors.append((name, "BF16", list(shape), bf16(w)))

    def ones(self, name, n):
        self.tensors.append((name, "BF16", [n], bf16(np.ones(n, dtype=np.float32))))

    def zeros(self, name, n, dtype="BF16"):
        raw = bf16(np.zeros(n, dtype=np.float32)) if dtype == "BF16" else np.zeros(n, dtype=np.float32).tobytes()
        self.tensors.append((name, dtype, [n], raw))

    def mxfp4(self, module, rows, cols):
        # Random E2M1 codes; scales around 2^-6 so |w| is mostly below 0.1.
        codes = self.rng.integers(0, 256, size=(rows, cols // 2), dtype=np.uint8)
        scales = self.rng.integers(119, 123, size=(rows, cols // 32), dtype=np.uint8)
        self.tensors.append((module + ".weight", "U8", [rows, cols // 2], codes.tobytes()))
        self.tensors.append((module + ".weight_scale", "U8", [rows, cols // 32], scales.tobytes()))

    def save(self, path):
        header, offset = {"__metadata__": {"format": "pt"}}, 0
        for name, dtype, shape, raw in self.tensors:
            header[name] = {"dtype": dtype, "shape": shape, "data_offsets": [offset, offset + len(raw)]}
            offset += len(raw)
        text = json.dumps(header, separators=(",", ":")).encode()
        text += b" " * (-len(text) % 8)
        with open(path, "wb") as f:
            f.write(struct.pack("<Q", len(text)))
            f.write(text)
            for _, _, _, raw in self.tensors:
                f.write(raw)


def attention(w, p, c):
    d, h = c["hidden_size"], c["num_attention_heads"]
    ql, kl = c["q_lora_rank"], c["kv_lora_rank"]
    dn, dr, dv = c["qk_nope_head_dim"], c["qk_rope_head_dim"], c["v_head_dim"]
    hi, di = c["index_n_heads"], c["index_head_dim"]
    w.dense(p + "self_attn.q_a_proj.weight", (ql, d), d**-0.5)
    w.ones(p + "self_attn.q_a_layernorm.weight", ql)
    w.dense(p + "self_attn.q_b_proj.weight", (h * (dn + dr), ql), ql**-0.5)
    w.dense(p + "self_attn.kv_a_proj_with_mqa.weight", (kl + dr, d), d**-0.5)
    w.ones(p + "self_attn.kv_a_layernorm.weight", kl)
    w.dense(p + "self_attn.kv_b_proj.weight", (h * (dn + dv), kl), kl**-0.5)
    w.dense(p + "self_attn.o_proj.weight", (d, h * dv), (h * dv) ** -0.5)
    w.dense(p + "self_attn.indexer.wq_b.weight", (hi * di, ql), ql**-0.5)
    w.dense(p + "self_attn.indexer.wk.weight", (di, d), d**-0.5)
    w.ones(p + "self_attn.indexer.k_norm.weight", di)
    w.zeros(p + "self_attn.indexer.k_norm.bias", di)
    w.dense(p + "self_attn.indexer.weights_proj.weight", (hi, d), d**-0.5)
    w.ones(p + "input_layernorm.weight", d)
    w.ones(p + "post_attention_layernorm.weight", d)


def mlp_dense(w, module, d, inter):
    w.dense(module + ".gate_proj.weight", (inter, d), d**-0.5)
    w.dense(module + ".up_proj.weight", (inter, d), d**-0.5)
    w.dense(module + ".down_proj.weight", (d, inter), inter**-0.5)


def moe(w, p, c):
    d, inter, e = c["hidden_size"], c["moe_intermediate_size"], c["n_routed_experts"]
    w.dense(p + "mlp.gate.weight", (e, d), d**-0.5)
    w.zeros(p + "mlp.gate.e_score_correction_bias", e, "F32")
    for x in range(e):
        for proj, rows, cols in (("gate_proj", inter, d), ("up_proj", inter, d), ("down_proj", d, inter)):
            w.mxfp4(f"{p}mlp.experts.{x}.{proj}", rows, cols)
    mlp_dense(w, p + "mlp.shared_experts", d, inter * c["n_shared_experts"])


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("out")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--layers", type=int, default=SHAPE["num_hidden_layers"])
    ap.add_argument("--experts", type=int, default=SHAPE["n_routed_experts"])
    ap.add_argument("--w4a4", action="store_true", help="declare dynamic MXFP4 activations (W4A4)")
    args = ap.parse_args()
    c = dict(SHAPE, num_hidden_layers=args.layers, n_routed_experts=args.experts)
    rng = np.random.default_rng(args.seed)
    w = Writer(rng)
    d, layers = c["hidden_size"], c["num_hidden_layers"]
    w.dense("model.embed_tokens.weight", (c["vocab_size"], d), 1.0)
    w.dense("lm_head.weight", (c["vocab_size"], d), d**-0.5)
    w.ones("model.norm.weight", d)
    for i in range(layers + c["num_nextn_predict_layers"]):
        p = f"model.layers.{i}."
        attention(w, p, c)
        if i < c["first_k_dense_replace"]:
            mlp_dense(w, p + "mlp", d, c["intermediate_size"])
        else:
            moe(w, p, c)
        if i >= layers:  # the MTP layer
            w.dense(p + "eh_proj.weight", (d, 2 * d), (2 * d) ** -0.5)
            w.ones(p + "enorm.weight", d)
            w.ones(p + "hnorm.weight", d)
            w.ones(p + "shared_head.norm.weight", d)
    os.makedirs(args.out, exist_ok=True)
    w.save(os.path.join(args.out, "model.safetensors"))
    config = dict(
        c,
        architectures=["GlmMoeDsaForCausalLM"],
        model_type="glm_moe_dsa",
        rope_parameters={"rope_theta": 10000.0, "rope_type": "default"},
        hidden_act="silu",
        dtype="bfloat16",
        quantization_config={
            "quant_method": "quark",
            "exclude": ["lm_head", "re:.*self_attn.*", "re:.*shared_experts.*", "re:.*mlp.gate$", "re:.*eh_proj$"],
            "global_quant_config": {
                "weight": {"dtype": "fp4", "group_size": 32, "qscheme": "per_group", "scale_format": "e8m0"},
                "input_tensors": W4A4_INPUTS if args.w4a4 else None,
            },
        },
    )
    with open(os.path.join(args.out, "config.json"), "w") as f:
        json.dump(config, f, indent=2)
    total = sum(len(t[3]) for t in w.tensors)
    print(f"{args.out}: {len(w.tensors)} tensors, {total / 1e6:.0f} MB")


if __name__ == "__main__":
    main()
