#!/usr/bin/env python3
"""Constrained answers through a running `kiln serve`, checked (standard library only, so it
runs on the GPU machine): N concurrent requests under a JSON schema with bounded strings, an
integer range, an enum and an array; every answer must parse and hold to the schema.

    python3 scripts/gpu/structured_check.py --port 8181 --n 48
"""

import argparse
import http.client
import json
import threading

SCHEMA = {
    "type": "object",
    "properties": {
        "name": {"type": "string", "maxLength": 12},
        "count": {"type": "integer", "minimum": 0, "maximum": 1000},
        "kind": {"enum": ["alpha", "beta", "gamma"]},
        "tags": {"type": "array", "items": {"type": "string", "maxLength": 5}, "maxItems": 3},
    },
    "required": ["name", "count", "kind", "tags"],
    "additionalProperties": False,
}


def valid(v):
    return (
        isinstance(v, dict)
        and set(v) == {"name", "count", "kind", "tags"}
        and isinstance(v["name"], str) and len(v["name"]) <= 12
        and isinstance(v["count"], int) and 0 <= v["count"] <= 1000
        and v["kind"] in ("alpha", "beta", "gamma")
        and isinstance(v["tags"], list) and len(v["tags"]) <= 3
        and all(isinstance(t, str) and len(t) <= 5 for t in v["tags"])
    )


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--port", type=int, default=8181)
    ap.add_argument("--n", type=int, default=48)
    a = ap.parse_args()
    out = [None] * a.n

    def one(i):
        c = http.client.HTTPConnection("127.0.0.1", a.port, timeout=300)
        body = {
            "messages": [{"role": "user", "content": f"Describe item {i} as JSON."}],
            "max_tokens": 200,
            "temperature": 0.9,
            "seed": i,
            "response_format": {"type": "json_schema",
                                "json_schema": {"name": "item", "schema": SCHEMA, "strict": True}},
        }
        c.request("POST", "/v1/chat/completions", json.dumps(body), {"content-type": "application/json"})
        r = json.loads(c.getresponse().read())
        out[i] = (r["choices"][0]["finish_reason"], r["choices"][0]["message"]["content"])

    ts = [threading.Thread(target=one, args=(i,)) for i in range(a.n)]
    for t in ts:
        t.start()
    for t in ts:
        t.join()
    good = 0
    for reason, text in out:
        try:
            ok = reason == "stop" and valid(json.loads(text))
        except ValueError:
            ok = False
        good += ok
        if not ok:
            print("not valid:", reason, repr(text[:200]))
    print(f"{good} of {a.n} constrained answers parse and validate")


if __name__ == "__main__":
    main()
