#!/usr/bin/env python
"""Puts tools/glm_chat_template.py's template into the demo model and the chat fixture, and
records how HF renders tool conversations with it, for kiln's template tests.

HF's apply_chat_template renders with jinja2 (trim_blocks, lstrip_blocks, loopcontrols), its own
`tojson` (json.dumps, ensure_ascii=False by default) and `raise_exception`; this script builds
the same environment, so it needs jinja2 only (no torch).

Writes: the chat_template of models/tiny/tokenizer_config.json and
tests/fixtures/chat_tiny/tokenizer_config.json (other keys kept), and
tests/fixtures/chat_tiny/tool_renders.json: [{messages, tools, kwargs, add_generation_prompt, text}].
After it, `kiln plan pin --weights models/tiny` re-pins plan/tiny.toml.

Usage: python tools/make_tool_renders.py
"""

import json
import os
import sys

import jinja2

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from glm_chat_template import CHAT_TEMPLATE  # noqa: E402

ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..")

WEATHER = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "Current weather for a city. Ünïcode: 日本",
        "parameters": {
            "type": "object",
            "properties": {"city": {"type": "string"}, "days": {"type": "integer"}, "units": {"type": "string", "enum": ["c", "f"]}},
            "required": ["city"],
        },
    },
}
CLOCK = {"type": "function", "function": {"name": "now", "description": "The time.", "parameters": {"type": "object", "properties": {}}}}

CASES = [
    dict(messages=[{"role": "user", "content": "Weather in Paris?"}], tools=[WEATHER, CLOCK], kwargs={}, add_generation_prompt=True),
    dict(
        messages=[
            {"role": "system", "content": "Be brief."},
            {"role": "user", "content": "Weather in Paris and the time?"},
            {
                "role": "assistant",
                "content": None,
                "reasoning_content": " Two calls. ",
                "tool_calls": [
                    {"id": "call_0", "type": "function", "function": {"name": "get_weather", "arguments": {"city": "Paris", "days": 2, "extra": {"a": [1, "é"]}}}},
                    {"id": "call_1", "type": "function", "function": {"name": "now", "arguments": {}}},
                ],
            },
            {"role": "tool", "tool_call_id": "call_0", "content": "sunny, 21 C"},
            {"role": "tool", "tool_call_id": "call_1", "content": "12:00"},
            {"role": "assistant", "content": "Sunny; it is noon. "},
            {"role": "user", "content": "Thanks"},
        ],
        tools=[WEATHER, CLOCK],
        kwargs={"enable_thinking": False},
        add_generation_prompt=True,
    ),
    dict(messages=[{"role": "user", "content": "No tools, thinking on."}], tools=None, kwargs={"enable_thinking": True}, add_generation_prompt=True),
]


def environment():
    env = jinja2.Environment(trim_blocks=True, lstrip_blocks=True, extensions=["jinja2.ext.loopcontrols"])

    def tojson(x, ensure_ascii=False, indent=None, separators=None, sort_keys=False):
        return json.dumps(x, ensure_ascii=ensure_ascii, indent=indent, separators=separators, sort_keys=sort_keys)

    def raise_exception(message):
        raise jinja2.exceptions.TemplateError(message)

    env.filters["tojson"] = tojson
    env.globals["raise_exception"] = raise_exception
    return env


def main():
    for d in ("models/tiny", "tests/fixtures/chat_tiny"):
        path = os.path.join(ROOT, d, "tokenizer_config.json")
        with open(path) as f:
            cfg = json.load(f)
        cfg["chat_template"] = CHAT_TEMPLATE
        with open(path, "w") as f:
            json.dump(cfg, f, indent=2)
    template = environment().from_string(CHAT_TEMPLATE)
    renders = []
    for case in CASES:
        text = template.render(messages=case["messages"], tools=case["tools"], add_generation_prompt=case["add_generation_prompt"], **case["kwargs"])
        renders.append(dict(case, text=text))
    with open(os.path.join(ROOT, "tests", "fixtures", "chat_tiny", "tool_renders.json"), "w") as f:
        json.dump(renders, f, indent=2, ensure_ascii=False)


if __name__ == "__main__":
    main()
