#!/usr/bin/env python
"""HF transformers' view of the shipped demo model, for kiln's tests.

Loads models/tiny with HF's GlmMoeDsaForCausalLM in fp32 (the Quark MXFP4 experts dequantized
here, since transformers needs the amd-quark package to read them itself) and writes
models/tiny/golden.safetensors:
  input_ids [128]        a held-out window of the standard library (long enough that the
                         indexer's top-64 selection is sparse for the last rows)
  logits [8, V]          HF's logits at the last 8 positions
  greedy_prompt [32], greedy_tokens [16]   HF's greedy continuation with its KV cache
  mtp_argmax [127]       the MTP layer's greedy draft of token i+2 at each position i, from
                         tools/glm_dsa_torch.py (HF has no MTP layer)

Usage: python tools/demo_golden.py [MODEL_DIR]   (pip install -r tools/requirements.txt)
"""

import json
import os
import sys

import torch
from safetensors.torch import load_file, save_file
from tokenizers import Tokenizer
from transformers import GenerationConfig, GlmMoeDsaConfig, GlmMoeDsaForCausalLM

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import mxfp4  # noqa: E402
import glm_dsa_torch  # noqa: E402
from train_demo import CONFIG, HOLDOUT_EVERY, hf_name, load_hf_, read, source_files  # noqa: E402


def main():
    d = sys.argv[1] if len(sys.argv) > 1 else os.path.join(os.path.dirname(__file__), "..", "models", "tiny")
    with open(os.path.join(d, "config.json")) as f:
        conf = json.load(f)
    conf.pop("quantization_config", None)
    cfg = GlmMoeDsaConfig(**conf, attn_implementation="eager", experts_implementation="eager")
    tensors = load_file(os.path.join(d, "model.safetensors"))
    dense = {}
    for name, t in tensors.items():
        if name.endswith("weight_scale"):
            continue
        if name + "_scale" in tensors:
            dense[name] = mxfp4.dequantize(t, tensors[name + "_scale"])
        else:
            dense[name] = t.float()
    model = GlmMoeDsaForCausalLM(cfg).eval()
    load_hf_(model, dense, cfg.n_routed_experts)

    tok = Tokenizer.from_file(os.path.join(d, "tokenizer.json"))
    held = source_files()[::HOLDOUT_EVERY]
    ids = torch.tensor(tok.encode(read(held[0])).ids[:128])
    with torch.no_grad():
        logits = model(ids[None]).logits[0]
        prompt = ids[:32]
        gen = GenerationConfig(max_new_tokens=16, min_new_tokens=16, do_sample=False, eos_token_id=None, pad_token_id=0)
        greedy = model.generate(prompt[None], generation_config=gen)[0][32:]
    ours = glm_dsa_torch.GlmDsa(CONFIG).eval()
    with torch.no_grad():
        for name, t in list(ours.named_parameters()) + list(ours.named_buffers()):
            t.copy_(dense[hf_name(name)])
        main_logits, mtp_logits, _ = ours(ids[None])
    assert (main_logits[0, -8:] - logits[-8:]).abs().max() < 1e-3, "HF and the training model disagree"
    mtp_argmax = mtp_logits[0].argmax(-1)
    acc = (mtp_argmax[:-1] == ids[2:]).float().mean().item()
    save_file(
        {
            "mtp_argmax": mtp_argmax.to(torch.int64).contiguous(),
            "input_ids": ids.to(torch.int64).contiguous(),
            "logits": logits[-8:].contiguous(),
            "greedy_prompt": prompt.to(torch.int64).clone(),
            "greedy_tokens": greedy.to(torch.int64).contiguous(),
        },
        os.path.join(d, "golden.safetensors"),
    )
    print(f"golden: {os.path.basename(held[0])}, greedy {tok.decode(greedy.tolist())!r}, MTP next-next acc {acc:.3f}")


if __name__ == "__main__":
    main()
