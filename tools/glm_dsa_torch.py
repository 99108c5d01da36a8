"""A compact, trainable GLM-MoE-DSA in PyTorch, written from the GLM-DSA spec.

Same math and parameter names as HF transformers' GlmMoeDsaForCausalLM (interleaved RoPE,
MLA with eps-1e-6 latent norms, the DSA lightning indexer with IndexShare, a sigmoid router
with a selection-only correction bias, routed + shared experts), plus the MTP layer HF does not
build. Used by tools/train_demo.py; tools/train_demo.py checks the trained weights against HF.

Training extras, none of which change inference math:
  * the indexer, which HF runs without gradients, is trained toward the dense attention
    distribution with a KL loss (DeepSeek-V3.2's indexer warm-up objective);
  * the router's correction bias is nudged toward balanced expert load (aux-loss-free
    balancing, DeepSeek-V3);
  * experts can run fake-quantized to MXFP4 (straight-through), so export loses little.
"""

import torch
import torch.nn as nn
import torch.nn.functional as F

import mxfp4


class RMSNorm(nn.Module):
    def __init__(self, dim, eps):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(dim))
        self.eps = eps

    def forward(self, x):
        return self.weight * (x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + self.eps))


def rope_tables(dim, theta, positions):
    inv = 1.0 / (theta ** (torch.arange(0, dim, 2, dtype=torch.float32) / dim))
    ang = positions.float()[:, None] * inv[None, :]
    return ang.cos(), ang.sin()  # [S, dim/2]


def rope(x, cos, sin):
    """Interleaved pairs (x[2i], x[2i+1]) on the last dim; cos/sin [S, d/2] broadcast over
    leading dims with S second to last."""
    a, b = x[..., 0::2], x[..., 1::2]
    return torch.stack([a * cos - b * sin, b * cos + a * sin], -1).flatten(-2)


class FakeQuant(torch.autograd.Function):
    """MXFP4 quantize-dequantize forward, identity backward."""

    @staticmethod
    def forward(ctx, w):
        return mxfp4.quantize(w)[2].to(w.dtype)

    @staticmethod
    def backward(ctx, g):
        return g


class Linear(nn.Linear):
    """nn.Linear without bias, optionally fake-quantized to MXFP4."""

    def __init__(self, i, o, quantizable=False):
        super().__init__(i, o, bias=False)
        self.quantizable = quantizable
        self.fake_quant = False

    def forward(self, x):
        w = FakeQuant.apply(self.weight) if (self.quantizable and self.fake_quant) else self.weight
        return F.linear(x, w)


class MLP(nn.Module):
    def __init__(self, d, w, quantizable):
        super().__init__()
        self.gate_proj = Linear(d, w, quantizable)
        self.up_proj = Linear(d, w, quantizable)
        self.down_proj = Linear(w, d, quantizable)

    def forward(self, x):
        return self.down_proj(F.silu(self.gate_proj(x)) * self.up_proj(x))


class Indexer(nn.Module):
    def __init__(self, c):
        super().__init__()
        self.c = c
        self.wq_b = Linear(c["q_lora_rank"], c["index_n_heads"] * c["index_head_dim"])
        self.wk = Linear(c["hidden_size"], c["index_head_dim"])
        self.k_norm = nn.LayerNorm(c["index_head_dim"], eps=1e-6)
        self.weights_proj = Linear(c["hidden_size"], c["index_n_heads"])

    def forward(self, x, q_lat, cos, sin):
        """Scores I [B, S, S] (future masked to -inf)."""
        c = self.c
        b, s, _ = x.shape
        hi, di, dr = c["index_n_heads"], c["index_head_dim"], c["qk_rope_head_dim"]
        q = self.wq_b(q_lat).view(b, s, hi, di)
        q = torch.cat([rope(q[..., :dr].transpose(1, 2), cos, sin).transpose(1, 2), q[..., dr:]], -1)
        k = self.k_norm(self.wk(x))
        k = torch.cat([rope(k[..., :dr], cos, sin), k[..., dr:]], -1)
        w = self.weights_proj(x) * hi**-0.5
        logits = F.relu(torch.einsum("bshd,btd->bsht", q, k) * di**-0.5)
        score = torch.einsum("bsh,bsht->bst", w, logits)
        causal = torch.ones(s, s, dtype=torch.bool, device=x.device).tril()
        return score.masked_fill(~causal, float("-inf"))


class Attention(nn.Module):
    def __init__(self, c, full_indexer):
        super().__init__()
        self.c = c
        d, h = c["hidden_size"], c["num_attention_heads"]
        dn, dr, dv = c["qk_nope_head_dim"], c["qk_rope_head_dim"], c["v_head_dim"]
        self.q_a_proj = Linear(d, c["q_lora_rank"])
        self.q_a_layernorm = RMSNorm(c["q_lora_rank"], 1e-6)
        self.q_b_proj = Linear(c["q_lora_rank"], h * (dn + dr))
        self.kv_a_proj_with_mqa = Linear(d, c["kv_lora_rank"] + dr)
        self.kv_a_layernorm = RMSNorm(c["kv_lora_rank"], 1e-6)
        self.kv_b_proj = Linear(c["kv_lora_rank"], h * (dn + dv))
        self.o_proj = Linear(h * dv, d)
        self.indexer = Indexer(c) if full_indexer else None

    def forward(self, x, cos, sin, prev_allowed):
        """Returns (output, allowed mask [B, S, S] it used, indexer KL loss or 0)."""
        c = self.c
        b, s, _ = x.shape
        h, dn, dr, dv, r = (c["num_attention_heads"], c["qk_nope_head_dim"], c["qk_rope_head_dim"],
                            c["v_head_dim"], c["kv_lora_rank"])
        q_lat = self.q_a_layernorm(self.q_a_proj(x))
        q = self.q_b_proj(q_lat).view(b, s, h, dn + dr).transpose(1, 2)  # [B, H, S, dn+dr]
        q = torch.cat([q[..., :dn], rope(q[..., dn:], cos, sin)], -1)
        ckv = self.kv_a_proj_with_mqa(x)
        lat = self.kv_a_layernorm(ckv[..., :r])
        k_pe = rope(ckv[..., r:], cos, sin)  # [B, S, dr]
        kv = self.kv_b_proj(lat).view(b, s, h, dn + dv).transpose(1, 2)
        k = torch.cat([kv[..., :dn], k_pe[:, None].expand(b, h, s, dr)], -1)
        v = kv[..., dn:]
        scores = (q @ k.transpose(-1, -2)) * (dn + dr) ** -0.5  # [B, H, S, S]
        causal = torch.ones(s, s, dtype=torch.bool, device=x.device).tril()

        kl = x.new_zeros(())
        if self.indexer is not None:
            idx_scores = self.indexer(x, q_lat, cos, sin)
            k_top = c["index_topk"]
            if s > k_top:
                top = idx_scores.topk(k_top, -1).indices
                allowed = torch.zeros(b, s, s, dtype=torch.bool, device=x.device).scatter(-1, top, True) & causal
            else:
                allowed = causal.expand(b, s, s)
            # Train the indexer toward where dense attention looks (summed over heads).
            with torch.no_grad():
                target = torch.softmax(scores.masked_fill(~causal, float("-inf")), -1).mean(1)
            logq = torch.log_softmax(idx_scores, -1).masked_fill(~causal, 0.0)
            kl = (target * (torch.log(target.clamp_min(1e-12)) - logq)).sum(-1).mean()
        else:
            allowed = prev_allowed
        p = torch.softmax(scores.masked_fill(~allowed[:, None], float("-inf")), -1)
        out = (p @ v).transpose(1, 2).reshape(b, s, h * dv)
        return self.o_proj(out), allowed, kl


class MoE(nn.Module):
    def __init__(self, c, shared_quantizable=True):
        super().__init__()
        self.c = c
        d, e, w = c["hidden_size"], c["n_routed_experts"], c["moe_intermediate_size"]
        self.gate = nn.Module()
        self.gate.weight = nn.Parameter(torch.empty(e, d))
        self.gate.register_buffer("e_score_correction_bias", torch.zeros(e))
        self.experts = nn.ModuleList([MLP(d, w, True) for _ in range(e)])
        self.shared_experts = MLP(d, w * c["n_shared_experts"], shared_quantizable)
        self.last_load = None

    def route(self, x):
        c = self.c
        e = c["n_routed_experts"]
        s = torch.sigmoid(x.float() @ self.gate.weight.float().T)
        choice = s + self.gate.e_score_correction_bias
        if c["n_group"] > 1:
            g = choice.view(-1, c["n_group"], e // c["n_group"]).topk(2, -1).values.sum(-1)
            keep = torch.zeros_like(g).scatter(1, g.topk(c["topk_group"], -1).indices, 1.0)
            choice = choice.masked_fill(~keep.bool().repeat_interleave(e // c["n_group"], 1), float("-inf"))
        idx = choice.topk(c["num_experts_per_tok"], -1).indices
        wts = s.gather(1, idx)
        if c["norm_topk_prob"]:
            wts = wts / (wts.sum(-1, keepdim=True) + 1e-20)
        return idx, wts * c["routed_scaling_factor"]

    def forward(self, x):
        shape = x.shape
        x = x.reshape(-1, shape[-1])
        idx, wts = self.route(x)
        y = torch.zeros_like(x)
        load = torch.zeros(len(self.experts))
        for e, expert in enumerate(self.experts):
            tok, slot = torch.where(idx == e)
            load[e] = tok.numel()
            if tok.numel() == 0:
                continue
            y = y.index_add(0, tok, expert(x[tok]) * wts[tok, slot, None])
        self.last_load = load / max(1, idx.numel())
        return (y + self.shared_experts(x)).view(shape)

    @torch.no_grad()
    def balance(self, rate):
        """Raise the bias of under-used experts, lower over-used ones."""
        if self.last_load is not None:
            self.gate.e_score_correction_bias += rate * torch.sign(self.last_load.mean() - self.last_load)


class Layer(nn.Module):
    def __init__(self, c, dense, full_indexer, shared_quantizable=True):
        super().__init__()
        d = c["hidden_size"]
        self.input_layernorm = RMSNorm(d, c["rms_norm_eps"])
        self.self_attn = Attention(c, full_indexer)
        self.post_attention_layernorm = RMSNorm(d, c["rms_norm_eps"])
        self.mlp = MLP(d, c["intermediate_size"], False) if dense else MoE(c, shared_quantizable)

    def forward(self, h, cos, sin, prev_allowed):
        a, allowed, kl = self.self_attn(self.input_layernorm(h), cos, sin, prev_allowed)
        h = h + a
        return h + self.mlp(self.post_attention_layernorm(h)), allowed, kl


def indexer_types(c):
    if c.get("indexer_types"):
        return c["indexer_types"]
    freq, off = max(c["index_topk_freq"], 1), c["index_skip_topk_offset"]
    return ["full" if max(i - off + 1, 0) % freq == 0 else "shared" for i in range(c["num_hidden_layers"])]


class MTP(nn.Module):
    """model.layers.L: enorm, hnorm, eh_proj (embedding half first), a full MoE decoder layer,
    shared_head.norm; reuses the main embedding and lm_head."""

    def __init__(self, c):
        super().__init__()
        d = c["hidden_size"]
        self.enorm = RMSNorm(d, c["rms_norm_eps"])
        self.hnorm = RMSNorm(d, c["rms_norm_eps"])
        self.eh_proj = Linear(2 * d, d)
        # The MTP shared expert stays bf16 in the export, as in amd/GLM-5.2-MXFP4.
        self.layer = Layer(c, dense=False, full_indexer=True, shared_quantizable=False)
        self.shared_head = nn.Module()
        self.shared_head.norm = RMSNorm(d, c["rms_norm_eps"])


class GlmDsa(nn.Module):
    def __init__(self, c):
        super().__init__()
        self.c = c
        d = c["hidden_size"]
        self.embed_tokens = nn.Embedding(c["vocab_size"], d)
        types = indexer_types(c)
        self.layers = nn.ModuleList(
            [Layer(c, i < c["first_k_dense_replace"], types[i] == "full") for i in range(c["num_hidden_layers"])]
        )
        self.norm = RMSNorm(d, c["rms_norm_eps"])
        self.lm_head = Linear(d, c["vocab_size"])
        self.mtp = MTP(c)

    def set_fake_quant(self, on):
        for m in self.modules():
            if isinstance(m, Linear):
                m.fake_quant = on

    def moe_blocks(self):
        return [m for m in self.modules() if isinstance(m, MoE)]

    def forward(self, ids):
        """ids [B, S] -> (main logits [B, S, V], MTP logits [B, S-1, V] for t+2, indexer KL)."""
        b, s = ids.shape
        cos, sin = rope_tables(self.c["qk_rope_head_dim"], self.c["rope_theta"], torch.arange(s))
        h = self.embed_tokens(ids)
        allowed, kl = None, h.new_zeros(())
        for layer in self.layers:
            h, allowed, k = layer(h, cos, sin, allowed)
            kl = kl + k
        h = self.norm(h)
        logits = self.lm_head(h)
        # MTP at positions 0..S-2: (h_i, token i+1) -> token i+2.
        m = self.mtp
        z = m.eh_proj(torch.cat([m.enorm(self.embed_tokens(ids[:, 1:])), m.hnorm(h[:, :-1])], -1))
        cos2, sin2 = cos[: s - 1], sin[: s - 1]
        out, _, k = m.layer(z, cos2, sin2, None)
        mtp_logits = self.lm_head(m.shared_head.norm(out))
        return logits, mtp_logits, kl + k
