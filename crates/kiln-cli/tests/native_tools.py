"""Tools through a template that renders them (Hermes style, tests/hermes.jinja), and the rest
of the OpenAI surface: batched completions, /tokenize and /detokenize, model aliases and
capabilities, a CORS preflight. Run against `kiln serve --chat-template hermes.jinja --alias
gpt-4o-mini --cors-origin http://app.example` on the default model."""
import json
import os
import urllib.error
import urllib.request

import openai

PORT = os.environ["KILN_PORT"]
BASE = f"http://127.0.0.1:{PORT}"
c = openai.OpenAI(base_url=BASE + "/v1", api_key="none")


def post(path, body):
    req = urllib.request.Request(BASE + path, data=json.dumps(body).encode(),
                                 headers={"content-type": "application/json"})
    with urllib.request.urlopen(req) as r:
        return json.load(r)


# The alias answers and is listed, with what the model can do.
models = c.models.list().data
assert [m.id for m in models][1:] == ["gpt-4o-mini"], models
caps = models[0].model_extra["capabilities"]
assert caps["native_tool_template"] and caps["tools"] and caps["tokenize"], caps

tools = [{"type": "function", "function": {
    "name": "get_weather", "description": "The current weather in a city.",
    "parameters": {"type": "object",
                   "properties": {"city": {"type": "string", "maxLength": 30},
                                  "unit": {"type": "string", "enum": ["celsius", "fahrenheit"]}},
                   "required": ["city", "unit"]}}},
    {"type": "function", "function": {
        "name": "get_time", "description": "The time in a city.",
        "parameters": {"type": "object", "properties": {"city": {"type": "string", "maxLength": 30}},
                       "required": ["city"]}}}]
msgs = [{"role": "user", "content": "What is the weather in Paris?"}]

# A forced call is written in the template's own format and read back as tool_calls.
r = c.chat.completions.create(model="gpt-4o-mini", messages=msgs, tools=tools, tool_choice="required",
                              temperature=0.7, seed=1, max_tokens=120)
ch = r.choices[0]
assert ch.finish_reason == "tool_calls", ch
call = ch.message.tool_calls[0]
args = json.loads(call.function.arguments)
assert call.function.name in ("get_weather", "get_time"), call
assert isinstance(args["city"], str), args

# The same answer as raw text: the <tool_call> block the model wrote.
raw = post("/v1/chat/completions", {"messages": msgs, "tools": tools, "temperature": 0.7, "seed": 1,
                                    "max_tokens": 120, "tool_choice": "required", "stream": False})
assert raw["choices"][0]["message"]["tool_calls"][0]["function"]["name"] == call.function.name

# The call and its result go back through the template; the final answer is text.
msgs2 = msgs + [ch.message.model_dump(exclude_none=True),
                {"role": "tool", "tool_call_id": call.id, "content": "18 degrees, sunny"}]
r = c.chat.completions.create(model="gpt-4o-mini", messages=msgs2, tools=tools, tool_choice="none",
                              temperature=0, max_tokens=30)
assert r.choices[0].message.content and not r.choices[0].message.tool_calls, r

# Rendered with the template: the tools and the earlier call are in the prompt.
tok = post("/tokenize", {"tools": tools, "messages": [{"role": "user", "content": "hi"},
                                      {"role": "assistant", "content": None, "tool_calls": [
                                          {"id": "call_1", "type": "function", "function": {
                                              "name": "get_time", "arguments": "{\"city\": \"Oslo\"}"}}]},
                                      {"role": "tool", "tool_call_id": "call_1", "content": "noon"}]})
text = post("/detokenize", {"tokens": tok["tokens"]})["content"]
assert '<tool_call>\n{"name": "get_time", "arguments": {"city":"Oslo"}}\n</tool_call>' in text, text
tools_part = text[text.index("<tools>"):text.index("</tools>")]
assert '"name":"get_weather"' in tools_part and '"name":"get_time"' in tools_part, text
assert "<tool_response>\nnoon\n</tool_response>" in text, text
assert tok["count"] == len(tok["tokens"]) and tok["max_model_len"] >= 2048, tok

# Streamed named call: deltas accumulated as agent frameworks do.
name, argtext, finish = "", "", None
for chunk in c.chat.completions.create(model="gpt-4o-mini", messages=msgs, tools=tools, stream=True,
                                       tool_choice={"type": "function", "function": {"name": "get_time"}},
                                       temperature=0.7, seed=2, max_tokens=80):
    d = chunk.choices[0].delta if chunk.choices else None
    if d and d.tool_calls:
        for tc in d.tool_calls:
            name += tc.function.name or ""
            argtext += tc.function.arguments or ""
    if chunk.choices and chunk.choices[0].finish_reason:
        finish = chunk.choices[0].finish_reason
assert finish == "tool_calls" and name == "get_time", (finish, name)
assert isinstance(json.loads(argtext)["city"], str), argtext

# /tokenize and /detokenize round trip, with pieces.
t = post("/tokenize", {"content": "Hello world", "with_pieces": True})
assert "".join(p["piece"] for p in t["tokens"]) == "Hello world", t
ids = [p["id"] for p in t["tokens"]]
assert post("/detokenize", {"tokens": ids})["content"] == "Hello world"

# Batched completions: strings and token ids, one choice per prompt, in order.
r = c.completions.create(model="gpt-4o-mini", prompt=["The capital of France is", "1, 2, 3,"],
                         max_tokens=4, temperature=0)
assert [ch.index for ch in r.choices] == [0, 1], r
one = c.completions.create(model="gpt-4o-mini", prompt="1, 2, 3,", max_tokens=4, temperature=0)
assert r.choices[1].text == one.choices[0].text, (r, one)
assert r.usage.prompt_tokens > one.usage.prompt_tokens, r.usage
ids = post("/tokenize", {"prompt": "1, 2, 3,"})["tokens"]
r2 = c.completions.create(model="gpt-4o-mini", prompt=[ids, ids], max_tokens=4, temperature=0, n=2)
assert len(r2.choices) == 4 and all(ch.text == one.choices[0].text for ch in r2.choices), r2
try:
    c.completions.create(model="gpt-4o-mini", prompt=[[1, 2], "x"], max_tokens=2)
    raise AssertionError("a mixed batch was accepted")
except openai.BadRequestError as e:
    assert e.body["param"] == "prompt", e.body

# A CORS preflight allows the headers the browser asks for (the openai JS client's own).
req = urllib.request.Request(BASE + "/v1/chat/completions", method="OPTIONS", headers={
    "origin": "http://app.example", "access-control-request-method": "POST",
    "access-control-request-headers": "content-type,x-stainless-os,x-stainless-lang"})
with urllib.request.urlopen(req) as r:
    allowed = r.headers["access-control-allow-headers"]
    assert r.headers["access-control-allow-origin"] == "http://app.example"
assert "x-stainless-os" in allowed and "authorization" in allowed, allowed
# Embeddings: the client's default (base64) and floats agree; unit length; a text alone and
# in a batch get the same vector; the last token's state is another vector.
texts = ["The cat sat on the mat.", "A cat was sitting on a mat.", "Quarterly revenue grew 4%."]
e = c.embeddings.create(model="gpt-4o-mini", input=texts)
assert [d.index for d in e.data] == [0, 1, 2] and e.usage.prompt_tokens > 10, e.usage
vecs = [d.embedding for d in e.data]
dim = len(vecs[0])
assert dim == 576 and all(abs(sum(x * x for x in v) - 1) < 1e-4 for v in vecs), dim
floats = post("/v1/embeddings", {"input": texts[1], "encoding_format": "float"})["data"][0]["embedding"]
assert max(abs(a - b) for a, b in zip(floats, vecs[1])) < 1e-5
ids = post("/tokenize", {"prompt": texts[2]})["tokens"]
by_ids = post("/v1/embeddings", {"input": [ids], "encoding_format": "float"})["data"][0]["embedding"]
assert max(abs(a - b) for a, b in zip(by_ids, vecs[2])) < 1e-4
last = post("/v1/embeddings", {"input": texts[0], "pooling": "last", "encoding_format": "float"})["data"][0]["embedding"]
assert max(abs(a - b) for a, b in zip(last, vecs[0])) > 1e-2
for bad, param in [({"input": []}, "input"), ({"input": "x", "dimensions": 3}, "dimensions"),
                   ({"input": "x", "pooling": "cls"}, "pooling"), ({"input": [[10 ** 9]]}, "input")]:
    try:
        c.embeddings.create(model="gpt-4o-mini", input=bad.pop("input"), extra_body=bad)
        raise AssertionError(f"accepted {bad}")
    except openai.BadRequestError as err:
        assert err.body["param"] == param, (bad, err.body)
# Prompt lookup (kiln's `prompt_lookup`): the plain answer, proposals counted in /metrics;
# refused with a response format.
def metric(name):
    with urllib.request.urlopen(BASE + "/metrics") as r:
        for line in r.read().decode().splitlines():
            if line.startswith(name + " "):
                return float(line.split()[1])
passage = "The lighthouse keeper retired last year, but he still climbs the stairs every Sunday to look at the sea."
ask = [{"role": "user", "content": "Repeat this exactly: " + passage}]
plain = c.chat.completions.create(model="gpt-4o-mini", messages=ask, temperature=0, max_tokens=40)
drafts = metric("kiln_engine_draft_tokens_total")
fast = c.chat.completions.create(model="gpt-4o-mini", messages=ask, temperature=0, max_tokens=40,
                                 extra_body={"prompt_lookup": 8})
assert fast.choices[0].message.content == plain.choices[0].message.content, (fast, plain)
assert metric("kiln_engine_draft_tokens_total") > drafts
assert metric("kiln_engine_accepted_tokens_total") > 0
pl = fast.usage.model_extra["prompt_lookup"]
assert 0 < pl["accepted_tokens"] <= pl["proposed_tokens"], pl
assert "prompt_lookup" not in (plain.usage.model_extra or {}), plain.usage
streamed = [ch for ch in c.chat.completions.create(
    model="gpt-4o-mini", messages=ask, temperature=0, max_tokens=40, stream=True,
    stream_options={"include_usage": True}, extra_body={"prompt_lookup": 8})]
assert "".join(ch.choices[0].delta.content or "" for ch in streamed if ch.choices) == plain.choices[0].message.content
assert streamed[-1].usage.model_extra["prompt_lookup"] == pl, streamed[-1].usage
# Sampled with a seed: the answer plain sampling gives with that seed.
seeded = dict(model="gpt-4o-mini", messages=ask, temperature=0.8, seed=5, max_tokens=40)
want = c.chat.completions.create(**seeded).choices[0].message.content
got = c.chat.completions.create(**seeded, extra_body={"prompt_lookup": 8}).choices[0].message.content
assert got == want, (got, want)
for extra, param in [({"prompt_lookup": 8, "temperature": 0, "response_format": {"type": "json_object"}}, "prompt_lookup"),
                     # This server has no draft model.
                     ({"draft_max": 4}, "draft_max")]:
    try:
        c.chat.completions.create(model="gpt-4o-mini", messages=ask, max_tokens=4, extra_body=extra)
        raise AssertionError(f"accepted {extra}")
    except openai.BadRequestError as err:
        assert err.body["param"] == param, err.body
# More bad input, each a 400 naming its field.
def refused(path, body):
    try:
        post(path, body)
    except urllib.error.HTTPError as err:
        assert err.code == 400, err.code
        return json.load(err)["error"]["param"]
    raise AssertionError(f"accepted {body}")
assert refused("/tokenize", {"content": "x", "add_special": True, "add_special_tokens": False}) == "add_special"
assert refused("/v1/embeddings", {"input": ["fine", ""]}) == "input"
assert refused("/v1/embeddings", {"input": "x" * 400000}) == "input"
assert refused("/v1/chat/completions", {"messages": ask, "refine": "edge", "temperature": 0,
                                        "prompt_lookup": 4}) == "prompt_lookup"
assert refused("/tokenize", {"messages": []}) == "messages"
print("ok: native tools, batch completions, tokenize, alias, preflight, embeddings, prompt lookup")
