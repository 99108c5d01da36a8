#!/usr/bin/env python
"""A small servable fixture: a random GLM-MoE-DSA model with a trained byte-level BPE tokenizer
and a GLM-style chat template, plus HF renders of that template for kiln's template tests.

Writes tests/fixtures/chat_tiny/:
  tokenizer.json, tokenizer_config.json (chat_template, eos/pad tokens), generation_config.json,
  config.json, model.safetensors (Quark MXFP4 experts, the rest bf16, with an MTP layer),
  chat_renders.json: [{messages, add_generation_prompt, text, ids}] from HF's
  apply_chat_template, and encodings.json: [{text, ids, decoded}] from HF's tokenizer.

The tokenizer is trained on the Python standard library's own sources, which exist offline on
every machine with Python. The weights are random: this fixture tests serving, not quality.

Usage: python tools/make_chat_fixture.py [OUT_DIR]   (pip install -r tools/requirements.txt)
"""

import glob
import json
import os
import sys

import torch
from safetensors.torch import save_file
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
from transformers import GlmMoeDsaConfig, GlmMoeDsaForCausalLM, PreTrainedTokenizerFast
from transformers.models.glm_moe_dsa.modeling_glm_moe_dsa import GlmMoeDsaDecoderLayer

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import make_fixtures as mf  # noqa: E402

SPECIALS = [
    "<|endoftext|>",
    "[MASK]",
    "[gMASK]",
    "[sMASK]",
    "<sop>",
    "<eop>",
    "<|system|>",
    "<|user|>",
    "<|assistant|>",
    "<|observation|>",
]
VOCAB = 512

# GLM-style (tools/glm_chat_template.py): [gMASK]<sop>, then <|role|>\ncontent per message.
from glm_chat_template import CHAT_TEMPLATE  # noqa: E402

CONVERSATIONS = [
    ([{"role": "user", "content": "Hello!"}], True),
    ([{"role": "system", "content": "You are terse."}, {"role": "user", "content": "Sum 2 and 3."}], True),
    (
        [
            {"role": "user", "content": "def f(x):\n    return x"},
            {"role": "assistant", "content": "  That returns its argument.  \n"},
            {"role": "user", "content": "And `f(f(1))`?"},
        ],
        True,
    ),
    ([{"role": "user", "content": "No generation prompt."}], False),
    ([{"role": "user", "content": "Unicode: café, 日本語, emoji 🚀"}], True),
]

ENCODE_SAMPLES = [
    "import os\nprint(os.getcwd())",
    "  leading spaces and\ttabs",
    "Unicode: café, 日本語, emoji 🚀",
    "<|user|>special tokens inline<|assistant|>",
]


def train_tokenizer():
    files = sorted(glob.glob(os.path.join(os.path.dirname(os.__file__), "*.py")))
    text = []
    for f in files[:120]:
        with open(f, encoding="utf-8", errors="replace") as fh:
            text.append(fh.read())
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    tok.post_processor = processors.ByteLevel(trim_offsets=False)
    trainer = trainers.BpeTrainer(
        vocab_size=VOCAB,
        special_tokens=SPECIALS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(text, trainer=trainer)
    return tok


def main():
    out = sys.argv[1] if len(sys.argv) > 1 else os.path.join(os.path.dirname(__file__), "..", "tests", "fixtures", "chat_tiny")
    os.makedirs(out, exist_ok=True)
    tok = train_tokenizer()
    tok.save(os.path.join(out, "tokenizer.json"))
    ids = {s: tok.token_to_id(s) for s in SPECIALS}
    eos = [ids["<|endoftext|>"], ids["<|user|>"], ids["<|observation|>"]]
    with open(os.path.join(out, "tokenizer_config.json"), "w") as f:
        json.dump(
            dict(
                tokenizer_class="PreTrainedTokenizerFast",
                chat_template=CHAT_TEMPLATE,
                eos_token="<|endoftext|>",
                pad_token="<|endoftext|>",
                clean_up_tokenization_spaces=False,
                model_max_length=128,
            ),
            f,
            indent=2,
        )
    with open(os.path.join(out, "generation_config.json"), "w") as f:
        json.dump(dict(eos_token_id=eos, pad_token_id=ids["<|endoftext|>"]), f, indent=2)

    hf = PreTrainedTokenizerFast.from_pretrained(out)
    renders = []
    for messages, gen in CONVERSATIONS:
        text = hf.apply_chat_template(messages, tokenize=False, add_generation_prompt=gen)
        enc = hf.apply_chat_template(messages, tokenize=True, add_generation_prompt=gen, return_dict=True)
        renders.append(dict(messages=messages, add_generation_prompt=gen, text=text, ids=list(enc["input_ids"])))
    with open(os.path.join(out, "chat_renders.json"), "w") as f:
        json.dump(renders, f, indent=2, ensure_ascii=False)
    encodings = []
    for text in ENCODE_SAMPLES:
        e = hf(text)["input_ids"]
        encodings.append(dict(text=text, ids=e, decoded=hf.decode(e, skip_special_tokens=True)))
    with open(os.path.join(out, "encodings.json"), "w") as f:
        json.dump(encodings, f, indent=2, ensure_ascii=False)

    # A random model over this vocabulary: GLM-DSA shapes as in make_fixtures, 2 layers + MTP.
    kw = dict(mf.BASE)
    kw.update(
        vocab_size=tok.get_vocab_size(),
        num_hidden_layers=2,
        first_k_dense_replace=1,
        index_topk_freq=1,
        index_skip_topk_offset=1,
        eos_token_id=eos,
        pad_token_id=ids["<|endoftext|>"],
        bos_token_id=None,
    )
    cfg = GlmMoeDsaConfig(**kw)
    gen = torch.Generator().manual_seed(0)
    torch.manual_seed(0)
    model = GlmMoeDsaForCausalLM(cfg).eval()
    mf.randomize_(model, gen)
    mx = {}
    mf.to_stored_(model, True, True, mx)
    L, D = cfg.num_hidden_layers, cfg.hidden_size
    layer = GlmMoeDsaDecoderLayer(mf.mtp_config(cfg), L).eval()
    mf.randomize_(layer, gen)
    mtp_mx = {}
    mf.to_stored_(layer, True, False, mtp_mx)
    tensors = mf.checkpoint_tensors(model.state_dict(), "", mx)
    lp = f"model.layers.{L}."
    tensors.update(mf.checkpoint_tensors(layer.state_dict(), lp, mtp_mx))
    for n in ("enorm", "hnorm", "shared_head.norm"):
        tensors[f"{lp}{n}.weight"] = (1 + 0.1 * torch.randn(D, generator=gen)).bfloat16()
    tensors[lp + "eh_proj.weight"] = (0.08 * torch.randn(D, 2 * D, generator=gen)).bfloat16()
    save_file(tensors, os.path.join(out, "model.safetensors"), metadata={"format": "pt"})

    conf = cfg.to_dict()
    for key in ("attn_implementation", "experts_implementation", "_attn_implementation", "_experts_implementation"):
        conf.pop(key, None)
    conf["architectures"] = ["GlmMoeDsaForCausalLM"]
    conf["dtype"] = "bfloat16"
    spec = dict(dtype="fp4", qscheme="per_group", group_size=32, ch_axis=-1, scale_format="e8m0", is_dynamic=False)
    conf["quantization_config"] = dict(
        quant_method="quark", global_quant_config=dict(weight=spec, input_tensors=None), exclude=["lm_head"]
    )
    with open(os.path.join(out, "config.json"), "w") as f:
        json.dump(conf, f, indent=2, sort_keys=True)
    print(f"chat_tiny: vocab {tok.get_vocab_size()}, eos {eos}, {len(tensors)} tensors -> {out}")


if __name__ == "__main__":
    main()
