"""Drives `kiln serve` (the demo model) the way coding agents do, with the official openai
client: forced tool calls and a tool round trip, streamed and not; schema-constrained JSON over
many seeds, validated with jsonschema; json_object; and the 400s of bad tool and schema fields.

Usage: python openai_agents.py BASE_URL
"""

import json
import sys
from concurrent.futures import ThreadPoolExecutor

import jsonschema
import openai

base = sys.argv[1]
client = openai.OpenAI(base_url=base + "/v1", api_key="unused", max_retries=0, timeout=120)
model = client.models.list().data[0].id

WEATHER = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "The weather in a city over the next days.",
        "parameters": {
            "type": "object",
            "properties": {
                "city": {"type": "string", "maxLength": 12},
                "days": {"type": "integer", "minimum": 1, "maximum": 7},
                "units": {"type": "string", "enum": ["celsius", "fahrenheit"]},
            },
            "required": ["city", "days"],
        },
    },
}
CLOCK = {"type": "function", "function": {"name": "now", "description": "The time.", "parameters": {"type": "object", "properties": {}}}}
TOOLS = [WEATHER, CLOCK]
NAMED = {"type": "function", "function": {"name": "get_weather"}}
question = [{"role": "user", "content": "What is the weather in Paris for the next two days?"}]


def check_weather_call(call):
    assert call.type == "function" and call.function.name == "get_weather", call
    args = json.loads(call.function.arguments)
    jsonschema.validate(args, WEATHER["function"]["parameters"])
    return args


# 1. A named tool_choice forces a valid call of that tool, whatever the demo model would say.
r = client.chat.completions.create(model=model, messages=question, tools=TOOLS, tool_choice=NAMED, max_tokens=200, seed=7, temperature=0.8)
choice = r.choices[0]
assert choice.finish_reason == "tool_calls", choice
calls = choice.message.tool_calls
assert len(calls) == 1 and calls[0].id, calls
args = check_weather_call(calls[0])

# The same request streamed: deltas assemble into the same call, no tag leaks into content.
stream = client.chat.completions.create(
    model=model, messages=question, tools=TOOLS, tool_choice=NAMED, max_tokens=200, seed=7, temperature=0.8, stream=True
)
content, name, arguments, reasons, ids = "", "", "", [], set()
for chunk in stream:
    for c in chunk.choices:
        content += c.delta.content or ""
        for tc in c.delta.tool_calls or []:
            assert tc.index == 0, tc
            if tc.id:
                ids.add(tc.id)
            if tc.function and tc.function.name:
                name += tc.function.name
            if tc.function and tc.function.arguments:
                arguments += tc.function.arguments
        if c.finish_reason:
            reasons.append(c.finish_reason)
assert "<" not in content, content
assert (name, json.loads(arguments), reasons, len(ids)) == ("get_weather", args, ["tool_calls"], 1), (name, arguments, reasons, ids)

# 2. The round trip: the call and its result go back; the model answers in text.
followup = question + [
    {"role": "assistant", "content": None, "tool_calls": [calls[0].model_dump(exclude_none=True)]},
    {"role": "tool", "tool_call_id": calls[0].id, "content": json.dumps({"forecast": "sunny", "high_c": 21})},
]
answer = client.chat.completions.create(model=model, messages=followup, tools=TOOLS, tool_choice="none", max_tokens=30, temperature=0)
assert answer.choices[0].message.tool_calls is None, answer
assert answer.choices[0].finish_reason in ("stop", "length") and answer.usage.prompt_tokens > r.usage.prompt_tokens, answer

# 3. tool_choice "required" with parallel calls off: exactly one call of some tool.
req = client.chat.completions.create(
    model=model, messages=question, tools=TOOLS, tool_choice="required", parallel_tool_calls=False, max_tokens=200, seed=3, temperature=0.9
)
calls = req.choices[0].message.tool_calls
assert req.choices[0].finish_reason == "tool_calls" and len(calls) == 1, req
if calls[0].function.name == "get_weather":
    check_weather_call(calls[0])
else:
    assert calls[0].function.name == "now" and json.loads(calls[0].function.arguments) == {}, calls

# "auto" leaves the model free; whatever it says comes back as a valid response.
auto = client.chat.completions.create(model=model, messages=question, tools=TOOLS, max_tokens=20, temperature=0)
assert auto.choices[0].finish_reason in ("stop", "length", "tool_calls"), auto

# 4. json_schema (strict): every output parses and validates, over many seeds, concurrently
#    (so constrained requests share batches).
PERSON = {
    "type": "object",
    "properties": {
        "name": {"type": "string", "maxLength": 16},
        "age": {"type": "integer", "minimum": 0, "maximum": 120},
        "languages": {"type": "array", "items": {"type": "string", "enum": ["python", "rust", "c"]}, "maxItems": 3},
        "active": {"type": "boolean"},
    },
    "required": ["name", "age", "languages", "active"],
    "additionalProperties": False,
}
fmt = {"type": "json_schema", "json_schema": {"name": "person", "strict": True, "schema": PERSON}}


def person(seed):
    stream = seed % 4 == 0
    kw = dict(model=model, messages=[{"role": "user", "content": "Describe a programmer."}], response_format=fmt, max_tokens=200, seed=seed, temperature=1.0)
    if stream:
        text, reasons = "", []
        for chunk in client.chat.completions.create(stream=True, **kw):
            for c in chunk.choices:
                text += c.delta.content or ""
                if c.finish_reason:
                    reasons.append(c.finish_reason)
        reason = reasons[0]
    else:
        out = client.chat.completions.create(**kw)
        text, reason = out.choices[0].message.content, out.choices[0].finish_reason
    assert reason == "stop", (seed, reason, text)
    value = json.loads(text)
    jsonschema.validate(value, PERSON)
    return value


with ThreadPoolExecutor(8) as pool:
    people = list(pool.map(person, range(200)))
assert len(people) == 200 and len({json.dumps(p, sort_keys=True) for p in people}) > 20, people[:5]

obj = client.chat.completions.create(model=model, messages=question, response_format={"type": "json_object"}, max_tokens=300, seed=1, temperature=0.7)
if obj.choices[0].finish_reason == "stop":
    assert isinstance(json.loads(obj.choices[0].message.content), dict), obj

# 5. Bad requests name their field.
for kw, param in [
    (dict(response_format={"type": "json_schema", "json_schema": {"name": "x", "schema": {"type": "object", "properties": {"a": {"type": "nonsense"}}}}}), "response_format.json_schema.schema"),
    (dict(response_format={"type": "yaml"}), "response_format.type"),
    (dict(tools=TOOLS, tool_choice={"type": "function", "function": {"name": "missing"}}), "tool_choice"),
    (dict(tools=[{"type": "function", "function": {"name": "bad name!"}}]), "tools[0].function.name"),
    (dict(tools=TOOLS, tool_choice=NAMED, response_format={"type": "json_object"}), "tool_choice"),
]:
    try:
        client.chat.completions.create(model=model, messages=question, max_tokens=5, **kw)
        raise AssertionError(f"accepted: {kw}")
    except openai.BadRequestError as e:
        assert e.body["param"] == param, (e.body, param)

print("openai agents: ok")
