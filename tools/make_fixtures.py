#!/usr/bin/env python
"""Golden fixtures for kiln's CPU model: small random GLM-MoE-DSA models run by HF transformers.

For each variant this writes tests/fixtures/<name>/:
  config.json          HF config (+ quantization_config for the MXFP4 variants)
  model.safetensors    per-expert tensor names as on the Hub; MXFP4 linears in AMD Quark format
                       (U8 .weight [out, in/2] + U8 .weight_scale [out, in/32]), the rest bf16,
                       router correction bias f32; includes the MTP layer (model.layers.L.*)
  golden.safetensors   input_ids [S], logits [S, V] (HF fp32), topk.layer{i} [S, k] sorted,
                       experts.layer{i} [S, top_k] sorted, greedy_prompt / greedy_tokens,
                       mtp_logits [S-1, V] (the MTP layer's draft logits, see mtp_forward)
  golden.json          versions and settings

Every weight is rounded to what the checkpoint stores (bf16, or MXFP4 dequantized) before HF
runs in fp32, so both sides compute with identical weights. Seeds are drawn until no discrete
choice (indexer top-k, expert top-k, group choice, argmax) is within a small margin of a tie,
so the fixtures test arithmetic, not tie-breaking.

Usage: python tools/make_fixtures.py [OUT_DIR]   (pip install -r tools/requirements.txt)
"""

import copy
import json
import os
import sys

import torch
import torch.nn.functional as F
import transformers
from safetensors.torch import save_file
from transformers import GenerationConfig, GlmMoeDsaConfig, GlmMoeDsaForCausalLM
from transformers.models.glm_moe_dsa.modeling_glm_moe_dsa import GlmMoeDsaDecoderLayer

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import mxfp4  # noqa: E402

BASE = dict(
    vocab_size=256,
    hidden_size=64,
    intermediate_size=96,
    moe_intermediate_size=32,
    num_hidden_layers=4,
    num_attention_heads=4,
    num_key_value_heads=4,
    q_lora_rank=32,
    kv_lora_rank=16,
    qk_nope_head_dim=16,
    qk_rope_head_dim=8,
    v_head_dim=16,
    n_routed_experts=8,
    num_experts_per_tok=2,
    n_shared_experts=1,
    n_group=1,
    topk_group=1,
    norm_topk_prob=True,
    routed_scaling_factor=2.5,
    first_k_dense_replace=1,
    index_topk=8,
    index_head_dim=16,
    index_n_heads=16,
    index_topk_freq=2,
    index_skip_topk_offset=2,
    rms_norm_eps=1e-5,
    max_position_embeddings=128,
    rope_parameters={"rope_theta": 8_000_000.0, "rope_type": "default"},
    tie_word_embeddings=False,
    num_nextn_predict_layers=1,
    attn_implementation="eager",
    experts_implementation="eager",
)

# name -> (config overrides, sequence length, MXFP4 rule or None)
# The MXFP4 rule follows amd/GLM-5.2-MXFP4: routed and shared experts MXFP4, and in the MTP
# layer the routed experts MXFP4 and the shared expert bf16.
VARIANTS = {
    # IndexShare on (F F S F), index_topk 8 < 32 tokens, MXFP4 experts.
    "share_mxfp4": (dict(), 32, "quark"),
    # IndexShare off, index_topk 64 > 24 tokens (dense), group-limited routing, 3 heads, bf16.
    "full_bf16_groups": (
        dict(
            num_attention_heads=3,
            num_key_value_heads=3,
            index_topk=64,
            index_topk_freq=1,
            index_skip_topk_offset=1,
            n_routed_experts=16,
            num_experts_per_tok=4,
            n_group=4,
            topk_group=2,
            first_k_dense_replace=2,
            num_hidden_layers=3,
        ),
        24,
        None,
    ),
    # 5 heads, IndexShare freq 3 (F S S F S), topk 12 < 32, 2 groups keep 1, MXFP4.
    "share_mxfp4_odd": (
        dict(
            num_attention_heads=5,
            num_key_value_heads=5,
            num_hidden_layers=5,
            index_topk=12,
            index_topk_freq=3,
            index_skip_topk_offset=1,
            n_routed_experts=8,
            num_experts_per_tok=2,
            n_group=2,
            topk_group=1,
            q_lora_rank=48,
            rope_parameters={"rope_theta": 10_000.0, "rope_type": "default"},
        ),
        32,
        "quark",
    ),
}

GREEDY_PROMPT = 8
GREEDY_NEW = 24


def randomize_(module, gen):
    """Every parameter random, norms near 1, biases near 0, so every term matters."""
    with torch.no_grad():
        for name, p in module.named_parameters():
            if p.ndim == 1:
                base = 1.0 if name.endswith("weight") else 0.0
                p.copy_(base + 0.1 * torch.randn(p.shape, generator=gen))
            else:
                p.copy_(0.08 * torch.randn(p.shape, generator=gen))
        for name, b in module.named_buffers():
            if name.endswith("e_score_correction_bias"):
                b.copy_(0.05 * torch.randn(b.shape, generator=gen))


def to_stored_(module, quantize_experts, quantize_shared, mx_out):
    """Rounds weights to what the checkpoint stores; records MXFP4 tensors in mx_out by module name."""
    with torch.no_grad():
        for name, sub in module.named_modules():
            if hasattr(sub, "gate_up_proj") and hasattr(sub, "down_proj") and sub.gate_up_proj.ndim == 3:
                inter = sub.intermediate_dim
                for e in range(sub.num_experts):
                    for proj, w in (
                        ("gate_proj", sub.gate_up_proj[e, :inter]),
                        ("up_proj", sub.gate_up_proj[e, inter:]),
                        ("down_proj", sub.down_proj[e]),
                    ):
                        if quantize_experts:
                            packed, scales, deq = mxfp4.quantize(w)
                            mx_out[f"{name}.{e}.{proj}"] = (packed, scales)
                            w.copy_(deq)
                        else:
                            w.copy_(w.bfloat16().float())
        for name, p in module.named_parameters():
            if p.ndim == 3:
                continue
            is_shared = ".shared_experts." in f".{name}"
            if is_shared and quantize_shared and p.ndim == 2:
                mod = name[: -len(".weight")]
                packed, scales, deq = mxfp4.quantize(p)
                mx_out[mod] = (packed, scales)
                p.copy_(deq)
            else:
                p.copy_(p.bfloat16().float())


def checkpoint_tensors(state, prefix, mx):
    """HF state dict -> checkpoint tensors: per-expert names, bf16, MXFP4 as Quark pairs."""
    out = {}
    for name, t in state.items():
        full = prefix + name
        if name.endswith("experts.gate_up_proj") or name.endswith("experts.down_proj"):
            base = full[: full.rindex(".")]
            for e in range(t.shape[0]):
                if name.endswith("gate_up_proj"):
                    inter = t.shape[1] // 2
                    parts = (("gate_proj", t[e, :inter]), ("up_proj", t[e, inter:]))
                else:
                    parts = (("down_proj", t[e]),)
                for proj, w in parts:
                    mod = f"{base}.{e}.{proj}"
                    key = mod[len(prefix) :]
                    if key in mx:
                        out[mod + ".weight"], out[mod + ".weight_scale"] = mx[key]
                    else:
                        out[mod + ".weight"] = w.bfloat16().contiguous()
            continue
        mod = full[: -len(".weight")] if full.endswith(".weight") else None
        key = name[: -len(".weight")] if name.endswith(".weight") else None
        if key is not None and key in mx:
            out[mod + ".weight"], out[mod + ".weight_scale"] = mx[key]
        elif name.endswith("e_score_correction_bias"):
            out[full] = t.float().contiguous()
        else:
            out[full] = t.bfloat16().contiguous()
    return out


def causal_mask(s):
    m = torch.full((s, s), torch.finfo(torch.float32).min).triu(1)
    return m[None, None]


def index_scores(ix, hidden, q_resid, cos, sin, cfg):
    """The indexer's score matrix [S, T] for a full sequence, written from the spec (section 3.5)."""
    s = hidden.shape[0]
    dr, hi, di = cfg.qk_rope_head_dim, cfg.index_n_heads, cfg.index_head_dim

    def rope(x):  # interleaved pairs on the first dr dims
        c, sn = cos[:, : dr // 2], sin[:, : dr // 2]
        if x.ndim == 3:
            c, sn = c[:, None], sn[:, None]
        r, rest = x[..., :dr], x[..., dr:]
        a, b = r[..., 0::2], r[..., 1::2]
        out = torch.stack([a * c - b * sn, b * c + a * sn], -1).flatten(-2)
        return torch.cat([out, rest], -1)

    q = rope((q_resid @ ix.wq_b.weight.T).view(s, hi, di))
    k = rope(F.layer_norm(hidden @ ix.wk.weight.T, (di,), ix.k_norm.weight, ix.k_norm.bias, 1e-6))
    w = (hidden @ ix.weights_proj.weight.T) * hi**-0.5
    logits = F.relu(torch.einsum("shd,td->sht", q, k) * di**-0.5)
    score = torch.einsum("sh,sht->st", w, logits)
    return score.masked_fill(torch.ones(s, s, dtype=torch.bool).triu(1), float("-inf"))


def margin_ok(values, k, rel=1e-4):
    """Row-wise: the k-th and (k+1)-th largest finite values are apart."""
    for row in values:
        row = row[torch.isfinite(row)]
        if row.numel() <= k:
            continue
        top = row.topk(k + 1).values
        if (top[k - 1] - top[k]).abs() <= rel * max(1.0, top[k - 1].abs().item()):
            return False
    return True


class Recorder:
    """Hooks that keep each indexer's and router's inputs, to check margins and save choices."""

    def __init__(self, layers, cfg):
        self.cfg, self.ix_in, self.router_in, self.handles = cfg, {}, {}, []
        for i, layer in enumerate(layers):
            if layer.self_attn.indexer is not None:
                self.handles.append(
                    layer.self_attn.indexer.register_forward_hook(
                        lambda m, a, out, i=i: self.ix_in.__setitem__(i, (a[0][0], a[1][0], a[2][0][0], a[2][1][0]))
                    )
                )
            if hasattr(layer.mlp, "gate"):
                self.handles.append(
                    layer.mlp.gate.register_forward_hook(
                        lambda m, a, out, i=i: self.router_in.__setitem__(i, (a[0].reshape(-1, a[0].shape[-1]), out[2]))
                    )
                )

    def remove(self):
        for h in self.handles:
            h.remove()


def choices_ok(layers, rec, cfg):
    for i, (hidden, q_resid, cos, sin) in rec.ix_in.items():
        score = index_scores(layers[i].self_attn.indexer, hidden, q_resid, cos, sin, cfg)
        if not margin_ok(score, cfg.index_topk):
            return False
    for i, (x, _) in rec.router_in.items():
        gate = layers[i].mlp.gate
        choice = torch.sigmoid(x.float() @ gate.weight.float().T) + gate.e_score_correction_bias
        if cfg.n_group > 1:
            groups = choice.view(x.shape[0], cfg.n_group, -1).topk(2, -1).values.sum(-1)
            if not margin_ok(groups, cfg.topk_group, 1e-5):
                return False
            keep = torch.zeros_like(groups).scatter(1, groups.topk(cfg.topk_group, -1).indices, 1.0)
            choice = choice.masked_fill(~keep.bool().repeat_interleave(cfg.n_routed_experts // cfg.n_group, 1), float("-inf"))
        if not margin_ok(choice, cfg.num_experts_per_tok, 1e-5):
            return False
    return True


def argmax_ok(logits):
    top = logits.topk(2, -1).values
    return bool(((top[:, 0] - top[:, 1]) > 1e-3).all())


def mtp_config(cfg):
    """The config of one extra decoder layer at index L: a full-indexer MoE layer."""
    c = copy.deepcopy(cfg)
    c.num_hidden_layers = cfg.num_hidden_layers + 1
    c.indexer_types = list(cfg.indexer_types) + ["full"]
    c.mlp_layer_types = list(cfg.mlp_layer_types) + ["sparse"]
    if getattr(cfg, "layer_types", None):
        c.layer_types = list(cfg.layer_types) + [cfg.layer_types[-1]]
    return c


def mtp_forward(model, mtp, ids):
    """Draft logits of the MTP layer for positions 0..S-2 (spec section 3.11, sglang's form):
    z_i = eh_proj(concat[enorm(embed(t_{i+1})), hnorm(h_i)]) with h_i the main model's final-normed
    hidden state, through decoder layer L causally at positions i, then shared_head.norm and lm_head."""
    cfg = model.config
    eps = cfg.rms_norm_eps
    h = model.model(ids[None]).last_hidden_state[0]
    s = ids.shape[0] - 1

    def rms(x, w):
        return w * (x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + eps))

    e = model.model.embed_tokens(ids[1:])
    z = torch.cat([rms(e, mtp["enorm"]), rms(h[:s], mtp["hnorm"])], -1) @ mtp["eh_proj"].T
    pos = torch.arange(s)[None]
    pe = model.model.rotary_emb(z[None], pos)
    rec = Recorder([mtp["layer"]], cfg)
    out, _ = mtp["layer"](z[None], attention_mask=causal_mask(s), position_embeddings=pe, position_ids=pos)
    rec.remove()
    # Recorder indexes by position in the list it was given; layer L is entry 0.
    ok = choices_ok([mtp["layer"]], rec, cfg)
    return model.lm_head(rms(out[0], mtp["head_norm"])), ok


def build(name, overrides, seq, rule, seed):
    kw = dict(BASE)
    kw.update(overrides)
    cfg = GlmMoeDsaConfig(**kw)
    torch.manual_seed(seed)
    gen = torch.Generator().manual_seed(seed)
    model = GlmMoeDsaForCausalLM(cfg).eval()
    randomize_(model, gen)
    quant = rule == "quark"
    mx = {}
    to_stored_(model, quant, quant, mx)

    # The MTP layer: decoder layer L plus enorm, hnorm, eh_proj, shared_head.norm.
    L, D = cfg.num_hidden_layers, cfg.hidden_size
    layer = GlmMoeDsaDecoderLayer(mtp_config(cfg), L).eval()
    randomize_(layer, gen)
    mtp_mx = {}
    to_stored_(layer, quant, False, mtp_mx)  # MTP shared expert stays bf16
    mtp = {
        "layer": layer,
        "enorm": (1 + 0.1 * torch.randn(D, generator=gen)).bfloat16().float(),
        "hnorm": (1 + 0.1 * torch.randn(D, generator=gen)).bfloat16().float(),
        "head_norm": (1 + 0.1 * torch.randn(D, generator=gen)).bfloat16().float(),
        "eh_proj": (0.08 * torch.randn(D, 2 * D, generator=gen)).bfloat16().float(),
    }

    ids = torch.randint(0, cfg.vocab_size, (seq,), generator=gen)
    with torch.no_grad():
        rec = Recorder(model.model.layers, cfg)
        logits = model(ids[None]).logits[0]
        rec.remove()
        ok = choices_ok(model.model.layers, rec, cfg) and argmax_ok(logits)
        topk = {i: index_scores(model.model.layers[i].self_attn.indexer, *rec.ix_in[i], cfg) for i in rec.ix_in}
        experts = {i: rec.router_in[i][1] for i in rec.router_in}

        prompt = ids[:GREEDY_PROMPT]
        gen_cfg = GenerationConfig(
            max_new_tokens=GREEDY_NEW, min_new_tokens=GREEDY_NEW, do_sample=False, eos_token_id=None, pad_token_id=0
        )
        greedy = model.generate(prompt[None], generation_config=gen_cfg)[0]
        # The same continuation without a cache, one full forward per token.
        plain = prompt.clone()
        for _ in range(GREEDY_NEW):
            plain = torch.cat([plain, model(plain[None]).logits[0, -1].argmax()[None]])
        assert torch.equal(plain, greedy), "cached and uncached greedy differ"
        rec = Recorder(model.model.layers, cfg)
        g_logits = model(greedy[None]).logits[0]
        rec.remove()
        ok = ok and choices_ok(model.model.layers, rec, cfg) and argmax_ok(g_logits[GREEDY_PROMPT - 1 :])

        mtp_logits, mtp_ok = mtp_forward(model, mtp, ids)
        ok = ok and mtp_ok

    if not ok:
        return None

    tensors = checkpoint_tensors(model.state_dict(), "", mx)
    lp = f"model.layers.{L}."
    tensors.update(checkpoint_tensors(layer.state_dict(), lp, mtp_mx))
    tensors[lp + "enorm.weight"] = mtp["enorm"].bfloat16()
    tensors[lp + "hnorm.weight"] = mtp["hnorm"].bfloat16()
    tensors[lp + "shared_head.norm.weight"] = mtp["head_norm"].bfloat16()
    tensors[lp + "eh_proj.weight"] = mtp["eh_proj"].bfloat16()

    k = min(cfg.index_topk, seq)
    golden = {
        "input_ids": ids.to(torch.int64),
        "logits": logits.contiguous(),
        "greedy_prompt": prompt.to(torch.int64).clone(),
        "greedy_tokens": greedy[GREEDY_PROMPT:].to(torch.int64).contiguous(),
        "mtp_logits": mtp_logits.contiguous(),
    }
    for i, score in topk.items():
        golden[f"topk.layer{i}"] = score.topk(k, -1).indices.sort(-1).values.to(torch.int64).contiguous()
    for i, idx in experts.items():
        golden[f"experts.layer{i}"] = idx.sort(-1).values.to(torch.int64).contiguous()

    conf = cfg.to_dict()
    conf["architectures"] = ["GlmMoeDsaForCausalLM"]
    conf["dtype"] = "bfloat16"
    for key in ("attn_implementation", "experts_implementation", "_attn_implementation", "_experts_implementation"):
        conf.pop(key, None)
    if quant:
        spec = dict(dtype="fp4", qscheme="per_group", group_size=32, ch_axis=-1, scale_format="e8m0",
                    scale_type="float", is_dynamic=False, round_method="half_even")
        conf["quantization_config"] = dict(
            quant_method="quark",
            quant_mode="eager_mode",
            global_quant_config=dict(weight=spec, input_tensors=None, output_tensors=None, bias=None),
            exclude=["lm_head"],
            export=dict(weight_format="real_quantized", pack_method="reorder"),
        )
    return conf, tensors, golden


def main():
    out_root = sys.argv[1] if len(sys.argv) > 1 else os.path.join(os.path.dirname(__file__), "..", "tests", "fixtures")
    for name, (overrides, seq, rule) in VARIANTS.items():
        for seed in range(100):
            built = build(name, overrides, seq, rule, seed)
            if built is not None:
                break
        else:
            raise SystemExit(f"{name}: no seed without near-ties")
        conf, tensors, golden = built
        d = os.path.join(out_root, name)
        os.makedirs(d, exist_ok=True)
        with open(os.path.join(d, "config.json"), "w") as f:
            json.dump(conf, f, indent=2, sort_keys=True)
        save_file(tensors, os.path.join(d, "model.safetensors"), metadata={"format": "pt"})
        save_file(golden, os.path.join(d, "golden.safetensors"))
        with open(os.path.join(d, "golden.json"), "w") as f:
            json.dump(dict(transformers=transformers.__version__, torch=torch.__version__, seed=seed, seq=seq,
                           quant=rule or "bf16", dtype="float32", attention="eager", experts="eager",
                           greedy_prompt=GREEDY_PROMPT, greedy_new=GREEDY_NEW), f, indent=2)
        print(f"{name}: seed {seed}, {len(tensors)} tensors -> {d}")


if __name__ == "__main__":
    main()
