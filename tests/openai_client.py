"""Drives a running `kiln serve` with the official openai client. Usage: python openai_client.py BASE_URL"""

import sys

import openai

base = sys.argv[1]
client = openai.OpenAI(base_url=base + "/v1", api_key="unused", max_retries=0)

models = client.models.list().data
model = models[0].id
assert model == "chat_tiny", models

messages = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Name a prime."}]
a = client.chat.completions.create(model=model, messages=messages, max_tokens=10, seed=42, temperature=0.9)
b = client.chat.completions.create(model=model, messages=messages, max_tokens=10, seed=42, temperature=0.9)
assert a.choices[0].message.content == b.choices[0].message.content, (a, b)
assert a.choices[0].message.role == "assistant"
assert a.choices[0].finish_reason in ("stop", "length")
assert 1 <= a.usage.completion_tokens <= 10 and a.usage.prompt_tokens > 0
assert a.usage.total_tokens == a.usage.prompt_tokens + a.usage.completion_tokens

stream = client.chat.completions.create(
    model=model, messages=messages, max_tokens=10, seed=42, temperature=0.9,
    stream=True, stream_options={"include_usage": True},
)
text, usage, reasons = "", None, []
for chunk in stream:
    if chunk.usage is not None:
        usage = chunk.usage
    for c in chunk.choices:
        text += c.delta.content or ""
        if c.finish_reason:
            reasons.append(c.finish_reason)
assert text == a.choices[0].message.content, (text, a.choices[0].message.content)
assert usage is not None and usage.completion_tokens == a.usage.completion_tokens, usage
assert reasons == [a.choices[0].finish_reason], reasons

c = client.completions.create(model=model, prompt="import sys\n", max_tokens=8, temperature=0, extra_body={"ignore_eos": True})
assert c.choices[0].finish_reason == "length" and c.usage.completion_tokens == 8, c
streamed = "".join(
    ch.choices[0].text for ch in client.completions.create(
        model=model, prompt="import sys\n", max_tokens=8, temperature=0, stream=True, extra_body={"ignore_eos": True}
    ) if ch.choices
)
assert streamed == c.choices[0].text, (streamed, c.choices[0].text)

lp = client.chat.completions.create(model=model, messages=messages, max_tokens=3, logprobs=True, top_logprobs=2, temperature=0)
content = lp.choices[0].logprobs.content
assert content and len(content[0].top_logprobs) == 2 and content[0].logprob <= 0

try:
    client.completions.create(model=model, prompt="x", n=2)
    raise AssertionError("n=2 accepted")
except openai.BadRequestError as e:
    assert e.body["param"] == "n", e.body
try:
    client.chat.completions.create(model="not-" + model, messages=messages)
    raise AssertionError("unknown model accepted")
except openai.NotFoundError as e:
    assert e.body["param"] == "model", e.body
try:
    client.chat.completions.create(model=model, messages=messages, temperature=9)
    raise AssertionError("temperature 9 accepted")
except openai.BadRequestError as e:
    assert e.body["param"] == "temperature", e.body

print("openai client: ok")
