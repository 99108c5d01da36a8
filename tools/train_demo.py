#!/usr/bin/env python
"""Trains kiln's embedded demo model: a small GLM-MoE-DSA (plan/tiny.toml) on the Python
standard library's own sources, with its MTP layer trained jointly, and exports it in the
format of the real thing (HF config + tokenizer + AMD Quark MXFP4 safetensors) to models/tiny/.

Data: the .py files of the running Python's standard library (sorted; tests, idlelib and
site-packages left out), which exist offline on every machine with Python. Every 25th file is
held out for evaluation. About a third of the training documents are chat turns made from the
same sources: the first line of a function's docstring as the user message and the function as
the reply, rendered with the model's GLM-style chat template.

Loss: next-token cross-entropy + 0.3 x the MTP layer's next-next-token cross-entropy + 0.1 x
the indexer's KL to dense attention. The last 15% of steps run the experts fake-quantized to
MXFP4, so the exported weights lose little.

Checks at the end: HF transformers builds GlmMoeDsaForCausalLM from the exported config and
weights (experts dequantized from the Quark tensors) and its logits must match this model's on
held-out text; the file training.json records the losses, the MTP accuracy and those checks.

Usage: python tools/train_demo.py [--steps N] [--out DIR]   (pip install -r tools/requirements.txt)
Pinned: Python 3.11.7's standard library, torch 2.15.0, transformers 5.24.0, tokenizers 0.23.3.
"""

import argparse
import ast
import glob
import json
import math
import os
import random
import sys
import time

import torch
import torch.nn.functional as F
import transformers
from safetensors.torch import save_file
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
from transformers import GlmMoeDsaConfig, GlmMoeDsaForCausalLM

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import glm_dsa_torch as G  # noqa: E402
import mxfp4  # noqa: E402
from make_chat_fixture import CHAT_TEMPLATE, SPECIALS  # noqa: E402

ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..")

# Must equal plan/tiny.toml's [model].
CONFIG = dict(
    vocab_size=4096,
    hidden_size=256,
    num_hidden_layers=4,
    first_k_dense_replace=1,
    intermediate_size=768,
    moe_intermediate_size=128,
    num_attention_heads=4,
    q_lora_rank=128,
    kv_lora_rank=64,
    qk_nope_head_dim=32,
    qk_rope_head_dim=16,
    v_head_dim=32,
    index_n_heads=4,
    index_head_dim=32,
    index_topk=64,
    index_topk_freq=2,
    index_skip_topk_offset=2,
    n_routed_experts=16,
    num_experts_per_tok=2,
    n_shared_experts=1,
    n_group=1,
    topk_group=1,
    norm_topk_prob=True,
    routed_scaling_factor=2.5,
    num_nextn_predict_layers=1,
    rope_theta=10000.0,
    rms_norm_eps=1e-5,
    max_position_embeddings=2048,
)
SEQ = 256
BATCH = 16
LR = 3e-3
MIN_LR = 3e-4
WARMUP = 60
MTP_WEIGHT = 0.3
KL_WEIGHT = 0.1
BALANCE_RATE = 1e-3
QAT_FRACTION = 0.15
HOLDOUT_EVERY = 25
EVAL_WINDOWS = 64


def source_files():
    lib = os.path.dirname(os.__file__)
    files = sorted(glob.glob(os.path.join(lib, "*.py"))) + sorted(glob.glob(os.path.join(lib, "*", "*.py")))
    skip = ("/test", "/idlelib/", "/site-packages/", "/lib2to3/tests", "/tkinter/test")
    return [f for f in files if not any(s in f for s in skip)]


def read(f):
    with open(f, encoding="utf-8", errors="replace") as fh:
        return fh.read()


def chat_turns(text):
    """(docstring first line, function source) pairs of one module."""
    try:
        tree = ast.parse(text)
    except SyntaxError:
        return []
    out = []
    for node in ast.walk(tree):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            doc = ast.get_docstring(node)
            src = ast.get_source_segment(text, node)
            if doc and src and 40 <= len(src) <= 1500:
                line = doc.strip().splitlines()[0].strip()
                if len(line) >= 12:
                    out.append((line, src))
    return out


def chat_document(question, answer):
    return f"[gMASK]<sop><|user|>\n{question}<|assistant|>\n{answer}<|endoftext|>"


def train_tokenizer(texts):
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    tok.post_processor = processors.ByteLevel(trim_offsets=False)
    trainer = trainers.BpeTrainer(
        vocab_size=CONFIG["vocab_size"],
        special_tokens=SPECIALS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(texts, trainer=trainer)
    return tok


def stream(tok, docs):
    eos = tok.token_to_id("<|endoftext|>")
    ids = []
    for enc in tok.encode_batch(docs):
        ids.extend(enc.ids)
        ids.append(eos)
    return torch.tensor(ids, dtype=torch.long)


def init_weights(model, gen):
    for name, p in model.named_parameters():
        if p.ndim == 2:
            std = 0.02 / math.sqrt(2 * CONFIG["num_hidden_layers"]) if name.endswith(("o_proj.weight", "down_proj.weight")) else 0.02
            with torch.no_grad():
                p.normal_(0.0, std, generator=gen)


def losses(model, batch):
    x, y, y2 = batch[:, :-1], batch[:, 1:], batch[:, 2:]
    logits, mtp_logits, kl = model(x)
    v = CONFIG["vocab_size"]
    ce = F.cross_entropy(logits.reshape(-1, v), y.reshape(-1))
    mtp = F.cross_entropy(mtp_logits.reshape(-1, v), y2.reshape(-1))
    return ce, mtp, kl, logits, mtp_logits


@torch.no_grad()
def evaluate(model, data):
    model.eval()
    g = torch.Generator().manual_seed(1234)
    starts = torch.randint(0, len(data) - SEQ - 2, (EVAL_WINDOWS,), generator=g)
    ce_sum = mtp_sum = 0.0
    acc = mtp_acc = n = n2 = 0
    for i in range(0, EVAL_WINDOWS, 8):
        batch = torch.stack([data[s : s + SEQ + 1] for s in starts[i : i + 8]])
        ce, mtp, _, logits, mtp_logits = losses(model, batch)
        ce_sum += ce.item() * len(batch)
        mtp_sum += mtp.item() * len(batch)
        acc += (logits.argmax(-1) == batch[:, 1:]).sum().item()
        mtp_acc += (mtp_logits.argmax(-1) == batch[:, 2:]).sum().item()
        n += batch[:, 1:].numel()
        n2 += batch[:, 2:].numel()
    model.train()
    return dict(loss=ce_sum / EVAL_WINDOWS, mtp_loss=mtp_sum / EVAL_WINDOWS, next_token_acc=acc / n, mtp_next_next_acc=mtp_acc / n2)


def hf_config(tok):
    eos = [tok.token_to_id(t) for t in ("<|endoftext|>", "<|user|>", "<|observation|>")]
    kw = {k: v for k, v in CONFIG.items() if k != "rope_theta"}
    kw.update(
        num_key_value_heads=CONFIG["num_attention_heads"],
        rope_parameters={"rope_theta": CONFIG["rope_theta"], "rope_type": "default"},
        tie_word_embeddings=False,
        eos_token_id=eos,
        pad_token_id=eos[0],
        bos_token_id=None,
        attn_implementation="eager",
        experts_implementation="eager",
    )
    return GlmMoeDsaConfig(**kw), eos


def hf_name(name):
    """This module's parameter name -> the checkpoint's tensor name."""
    L = CONFIG["num_hidden_layers"]
    if name.startswith("mtp."):
        return f"model.layers.{L}." + name[len("mtp.") :].replace("layer.", "", 1)
    if name.startswith("lm_head"):
        return name
    return "model." + name


def export(model, tok, out):
    """Writes the model directory; returns the HF-named state dict with the values the
    checkpoint stores (experts dequantized) for the HF check."""
    os.makedirs(out, exist_ok=True)
    tok.save(os.path.join(out, "tokenizer.json"))
    cfg, eos = hf_config(tok)
    with open(os.path.join(out, "tokenizer_config.json"), "w") as f:
        json.dump(dict(tokenizer_class="PreTrainedTokenizerFast", chat_template=CHAT_TEMPLATE, eos_token="<|endoftext|>",
                       pad_token="<|endoftext|>", clean_up_tokenization_spaces=False,
                       model_max_length=CONFIG["max_position_embeddings"]), f, indent=2)
    with open(os.path.join(out, "generation_config.json"), "w") as f:
        json.dump(dict(eos_token_id=eos, pad_token_id=eos[0]), f, indent=2)
    conf = cfg.to_dict()
    for key in ("attn_implementation", "experts_implementation", "_attn_implementation", "_experts_implementation"):
        conf.pop(key, None)
    conf["architectures"] = ["GlmMoeDsaForCausalLM"]
    conf["dtype"] = "bfloat16"
    spec = dict(dtype="fp4", qscheme="per_group", group_size=32, ch_axis=-1, scale_format="e8m0", scale_type="float",
                is_dynamic=False, round_method="half_even")
    conf["quantization_config"] = dict(
        quant_method="quark",
        quant_mode="eager_mode",
        global_quant_config=dict(weight=spec, input_tensors=None, output_tensors=None, bias=None),
        exclude=["*self_attn*", "*mlp.gate", "lm_head", "*mlp.gate_proj", "*mlp.up_proj", "*mlp.down_proj",
                 f"*layers.{CONFIG['num_hidden_layers']}.mlp.shared_experts*", f"*layers.{CONFIG['num_hidden_layers']}.eh_proj"],
        export=dict(weight_format="real_quantized", pack_method="reorder"),
    )
    with open(os.path.join(out, "config.json"), "w") as f:
        json.dump(conf, f, indent=2, sort_keys=True)

    L = CONFIG["num_hidden_layers"]
    tensors, stored = {}, {}
    for name, t in model.state_dict().items():
        t = t.detach().float()
        hf = hf_name(name)
        quant = ".mlp.experts." in hf or (".mlp.shared_experts." in hf and not hf.startswith(f"model.layers.{L}."))
        if quant and t.ndim == 2:
            packed, scales, deq = mxfp4.quantize(t)
            tensors[hf] = packed
            tensors[hf + "_scale"] = scales
            stored[hf] = deq
        elif hf.endswith("e_score_correction_bias"):
            tensors[hf] = t.contiguous()
            stored[hf] = t
        else:
            tensors[hf] = t.bfloat16().contiguous()
            stored[hf] = t.bfloat16().float()
    save_file(tensors, os.path.join(out, "model.safetensors"), metadata={"format": "pt"})
    return stored, cfg


def load_hf_(hf, tensors, n_experts):
    """Loads checkpoint-named dense tensors (one entry per expert) into an HF model, whose
    experts are fused: gate_up_proj [E, 2I, H] and down_proj [E, H, I]."""
    sd = {}
    for name in hf.state_dict():
        if name.endswith("mlp.experts.gate_up_proj"):
            p = name[: -len("gate_up_proj")]
            sd[name] = torch.stack(
                [torch.cat([tensors[f"{p}{e}.gate_proj.weight"], tensors[f"{p}{e}.up_proj.weight"]]) for e in range(n_experts)]
            )
        elif name.endswith("mlp.experts.down_proj"):
            p = name[: -len("down_proj")]
            sd[name] = torch.stack([tensors[f"{p}{e}.down_proj.weight"] for e in range(n_experts)])
        else:
            sd[name] = tensors[name]
    hf.load_state_dict(sd, strict=True)


@torch.no_grad()
def hf_check(stored, cfg, model, window):
    """HF's forward with the stored weights vs this model's forward with the same values."""
    hf = GlmMoeDsaForCausalLM(cfg).eval()
    load_hf_(hf, stored, CONFIG["n_routed_experts"])
    # This model now holds exactly the stored values (bf16-rounded, experts MXFP4).
    for name, t in list(model.named_parameters()) + list(model.named_buffers()):
        t.data.copy_(stored[hf_name(name)])
    model.set_fake_quant(False)
    ours = model(window[None])[0][0]
    theirs = hf(window[None]).logits[0]
    return (ours - theirs).abs().max().item(), theirs.abs().max().item()


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--steps", type=int, default=900)
    ap.add_argument("--out", default=os.path.join(ROOT, "models", "tiny"))
    args = ap.parse_args()
    torch.manual_seed(0)
    random.seed(0)
    torch.use_deterministic_algorithms(True)
    t0 = time.time()

    files = source_files()
    held = files[::HOLDOUT_EVERY]
    train_files = [f for f in files if f not in set(held)]
    train_texts = [read(f) for f in train_files]
    held_texts = [read(f) for f in held]
    chats = [chat_document(q, a) for t in train_texts for q, a in chat_turns(t)]
    held_chats = [chat_document(q, a) for t in held_texts for q, a in chat_turns(t)]
    tok = train_tokenizer(train_texts + chats)
    docs = train_texts + chats
    random.Random(0).shuffle(docs)
    data = stream(tok, docs)
    held_data = stream(tok, held_texts + held_chats)
    print(f"{len(train_files)} train files + {len(chats)} chat turns = {len(data)} tokens; "
          f"{len(held)} held-out files + {len(held_chats)} chats = {len(held_data)} tokens", flush=True)

    gen = torch.Generator().manual_seed(0)
    model = G.GlmDsa(CONFIG)
    init_weights(model, gen)
    decay = [p for n, p in model.named_parameters() if p.ndim == 2]
    no_decay = [p for n, p in model.named_parameters() if p.ndim < 2]
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": 0.1}, {"params": no_decay, "weight_decay": 0.0}],
                            lr=LR, betas=(0.9, 0.95))
    qat_from = int(args.steps * (1 - QAT_FRACTION))
    log = []
    for step in range(args.steps):
        lr = LR * (step + 1) / WARMUP if step < WARMUP else MIN_LR + 0.5 * (LR - MIN_LR) * (
            1 + math.cos(math.pi * (step - WARMUP) / max(1, args.steps - WARMUP)))
        for grp in opt.param_groups:
            grp["lr"] = lr
        if step == qat_from:
            model.set_fake_quant(True)
        starts = torch.randint(0, len(data) - SEQ - 2, (BATCH,), generator=gen)
        batch = torch.stack([data[s : s + SEQ + 1] for s in starts])
        ce, mtp, kl, _, _ = losses(model, batch)
        loss = ce + MTP_WEIGHT * mtp + KL_WEIGHT * kl
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        for moe in model.moe_blocks():
            moe.balance(BALANCE_RATE)
        if step % 25 == 0 or step == args.steps - 1:
            entry = dict(step=step, loss=ce.item(), mtp_loss=mtp.item(), indexer_kl=kl.item(), lr=lr,
                         minutes=(time.time() - t0) / 60)
            log.append(entry)
            print(json.dumps(entry), flush=True)

    # Held-out figures of the model as exported (experts MXFP4, the rest bf16).
    stored, cfg = export(model, tok, args.out)
    window = held_data[:SEQ]
    diff, scale = hf_check(stored, cfg, model, window)
    final = evaluate(model, held_data)
    train_eval = evaluate(model, data)
    report = dict(
        python=sys.version.split()[0], torch=torch.__version__, transformers=transformers.__version__,
        config=CONFIG, seq=SEQ, batch=BATCH, steps=args.steps, tokens_seen=args.steps * BATCH * SEQ,
        train_tokens=len(data), heldout_tokens=len(held_data), train_files=len(train_files), heldout_files=len(held),
        chat_turns=len(chats), minutes=(time.time() - t0) / 60,
        heldout=final, train=train_eval,
        hf_check=dict(max_abs_logit_diff=diff, max_abs_logit=scale, tokens=SEQ),
        log=log,
    )
    with open(os.path.join(args.out, "training.json"), "w") as f:
        json.dump(report, f, indent=2)
    print(json.dumps({k: report[k] for k in ("heldout", "train", "hf_check", "minutes")}, indent=2))
    assert diff <= 2e-3 * max(1.0, scale), f"HF disagrees with the trained model: {diff}"


if __name__ == "__main__":
    main()
