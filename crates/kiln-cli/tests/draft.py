"""Speculative decoding with a draft model (`kiln serve --draft`) through the real `openai`
client: the answers are the plain ones, greedy and sampled with a seed, streamed or not;
proposals show in `usage` and /metrics; bad values are refused by name."""
import os
import urllib.request

import openai

BASE = f"http://127.0.0.1:{os.environ['KILN_PORT']}"
c = openai.OpenAI(base_url=BASE + "/v1", api_key="none")
MODEL = c.models.list().data[0].id


def metric(name):
    with urllib.request.urlopen(BASE + "/metrics") as r:
        for line in r.read().decode().splitlines():
            if line.startswith(name + " "):
                return float(line.split()[1])
    raise AssertionError(f"no metric {name}")


ask = [{"role": "user", "content": "Write a short story about a robot who learns to paint."}]
for sampling in [dict(temperature=0), dict(temperature=0.8, top_p=0.95, seed=5)]:
    args = dict(model=MODEL, messages=ask, max_tokens=48, **sampling)
    plain = c.chat.completions.create(**args, extra_body={"draft_max": 0})
    passes = metric("kiln_engine_draft_passes_total")
    fast = c.chat.completions.create(**args)  # the server's --draft-max
    assert fast.choices[0].message.content == plain.choices[0].message.content, (fast, plain)
    assert "draft" not in (plain.usage.model_extra or {}), plain.usage
    d = fast.usage.model_extra["draft"]
    # The draft is the model itself here: every proposal is what the model chooses.
    assert d["proposed_tokens"] > 10 and d["accepted_tokens"] == d["proposed_tokens"], d
    assert metric("kiln_engine_draft_passes_total") > passes
    streamed = list(c.chat.completions.create(**args, stream=True,
                                              stream_options={"include_usage": True},
                                              extra_body={"draft_max": 4}))
    text = "".join(ch.choices[0].delta.content or "" for ch in streamed if ch.choices)
    assert text == plain.choices[0].message.content, (text, plain)
    assert streamed[-1].usage.model_extra["draft"]["accepted_tokens"] > 0, streamed[-1].usage
# A constrained answer goes without speculation (the server's default does not apply) and
# is still valid JSON; asking for both is refused.
j = c.chat.completions.create(model=MODEL, messages=ask, max_tokens=24, temperature=0,
                              response_format={"type": "json_object"})
assert "draft" not in (j.usage.model_extra or {}), j.usage
for extra in [{"draft_max": 17}, {"draft_max": 4, "prompt_lookup": 4},
              {"draft_max": 4, "response_format": {"type": "json_object"}},
              {"draft_max": -1}]:
    try:
        c.chat.completions.create(model=MODEL, messages=ask, max_tokens=4, extra_body=extra)
        raise AssertionError(f"accepted {extra}")
    except openai.BadRequestError as err:
        assert err.body["param"] == "draft_max", (extra, err.body)
print("ok: draft model")
