#!/usr/bin/env python3
"""What constrained decoding costs, against a running `kiln serve` (standard library only, so
it runs on the GPU machine too).

Throughput: N concurrent streams of free text (ignore_eos) against N streams constrained by
a JSON schema that cannot finish within max_tokens (an array of at least 1,000 objects, each
with a bounded string, an integer and an enum), alternated over rounds; aggregate generated
tokens per second, median over the rounds, and the constrained/free ratio.

Time to first token with a schema the server has never seen (a new property name each
request, so nothing is cached) against the same request without a schema, sequentially.

    python3 scripts/structured_bench.py --port 8080 --streams 1,8 --rounds 3
"""

import argparse
import http.client
import json
import statistics
import threading
import time


def schema(tag):
    item = {
        "type": "object",
        "properties": {
            f"name_{tag}": {"type": "string", "maxLength": 16},
            "count": {"type": "integer", "minimum": 0, "maximum": 1000},
            "kind": {"enum": ["alpha", "beta", "gamma"]},
        },
        "required": [f"name_{tag}", "count", "kind"],
        "additionalProperties": False,
    }
    return {
        "type": "object",
        "properties": {"items": {"type": "array", "items": item, "minItems": 1000}},
        "required": ["items"],
        "additionalProperties": False,
    }


def post(port, body, stream=False):
    c = http.client.HTTPConnection("127.0.0.1", port, timeout=600)
    c.request("POST", "/v1/chat/completions", json.dumps(body), {"content-type": "application/json"})
    r = c.getresponse()
    if r.status != 200:
        raise SystemExit(f"{r.status}: {r.read()[:300]!r}")
    if not stream:
        v = json.loads(r.read())
        c.close()
        return v
    return c, r


def body(i, constrained, max_tokens, tag="bench"):
    b = {
        "messages": [{"role": "user", "content": f"List many items, as JSON. ({i})"}],
        "max_tokens": max_tokens,
        "temperature": 0.7,
        "seed": i,
    }
    if constrained:
        b["response_format"] = {"type": "json_schema", "json_schema": {"name": "items", "schema": schema(tag)}}
    else:
        b["ignore_eos"] = True
    return b


def metrics(port):
    c = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
    c.request("GET", "/metrics")
    out = {}
    for line in c.getresponse().read().decode().splitlines():
        if line.startswith("kiln_engine_") and not line.startswith("#"):
            k, v = line.rsplit(" ", 1)
            out[k] = float(v)
    c.close()
    return out


def throughput(port, n, constrained, max_tokens, per_step):
    m0 = metrics(port)
    out = [0] * n
    finish = [None] * n

    def one(i):
        v = post(port, body(i, constrained, max_tokens))
        out[i] = v["usage"]["completion_tokens"]
        finish[i] = v["choices"][0]["finish_reason"]

    t = time.perf_counter()
    ts = [threading.Thread(target=one, args=(i,)) for i in range(n)]
    for x in ts:
        x.start()
    for x in ts:
        x.join()
    dt = time.perf_counter() - t
    if constrained and any(f != "length" for f in finish):
        raise SystemExit(f"a constrained stream ended early: {finish}")
    m1 = metrics(port)
    steps = max(1.0, m1["kiln_engine_steps_total"] - m0["kiln_engine_steps_total"])
    for k in ("model", "host", "mask", "mask_longest", "mask_last_start", "launch", "mask_wait",
              "sampling_launch", "finish", "stream", "prepare", "accept", "host_cpu",
              "launch_cpu"):
        name = f"kiln_engine_{k}_seconds_total"
        per_step.setdefault(k, []).append(1000 * (m1.get(name, 0) - m0.get(name, 0)) / steps)
    # Sequences that sat a step out (their mask late), per step (a count, not milliseconds).
    name = "kiln_engine_mask_sit_outs_total"
    per_step.setdefault("sit_outs", []).append((m1.get(name, 0) - m0.get(name, 0)) / steps)
    return sum(out) / dt


def ttft(port, constrained, k):
    b = body(k, constrained, 8, tag=f"t{k}_{time.time_ns()}")
    b["stream"] = True
    t = time.perf_counter()
    c, r = post(port, b, stream=True)
    first = None
    for line in r:
        line = line.decode().strip()
        if not line.startswith("data: ") or line == "data: [DONE]":
            continue
        d = json.loads(line[6:])
        ch = d.get("choices") or [{}]
        if ch[0].get("delta", {}).get("content"):
            first = time.perf_counter() - t
            break
    c.close()
    return first


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--port", type=int, default=8080)
    ap.add_argument("--streams", default="1,8")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--max-tokens", type=int, default=192)
    ap.add_argument("--ttft", type=int, default=20, help="requests per kind for time to first token")
    a = ap.parse_args()
    post(a.port, body(0, True, 4))  # warm up: the grammar compiler and the model
    report = {"throughput": [], "ttft": {}}
    for n in [int(x) for x in a.streams.split(",")]:
        free, cons = [], []
        fs, cs = {}, {}
        for _ in range(a.rounds):
            free.append(throughput(a.port, n, False, a.max_tokens, fs))
            cons.append(throughput(a.port, n, True, a.max_tokens, cs))
        f, c = statistics.median(free), statistics.median(cons)
        ms = lambda d: {k: round(statistics.median(v), 3) for k, v in d.items()}  # noqa: E731
        row = {"streams": n, "free_tok_s": round(f, 1), "constrained_tok_s": round(c, 1),
               "ratio": round(c / f, 3), "free_rounds": [round(x, 1) for x in free],
               "constrained_rounds": [round(x, 1) for x in cons],
               "free_ms_per_step": ms(fs), "constrained_ms_per_step": ms(cs)}
        print(json.dumps(row), flush=True)
        report["throughput"].append(row)
    if a.ttft:
        free = [ttft(a.port, False, k) for k in range(a.ttft)]
        cons = [ttft(a.port, True, k) for k in range(a.ttft)]
        report["ttft"] = {"free_ms": round(1000 * statistics.median(free), 1),
                          "new_schema_ms": round(1000 * statistics.median(cons), 1),
                          "new_schema_max_ms": round(1000 * max(cons), 1)}
        print(json.dumps(report["ttft"]), flush=True)


if __name__ == "__main__":
    main()
