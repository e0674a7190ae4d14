#!/usr/bin/env python3
"""N concurrent greedy completions against a running `kiln serve`; prints the md5 of their
texts (in request order) and their token counts, so that two servers (two builds, or one
with `--dev cuda-graphs=0`) can be compared: equal digests, equal answers.

    python3 scripts/gpu/greedy_batch.py --port 8181 --n 11 --max-tokens 64
"""

import argparse
import hashlib
import http.client
import json
import threading

TOPICS = ["the sea", "a clock", "bread", "winter", "a library", "rivers", "the moon",
          "bicycles", "tea", "mountains", "a garden", "trains", "snow", "music", "salt", "maps"]


def one(port, i, max_tokens, out):
    c = http.client.HTTPConnection("127.0.0.1", port, timeout=300)
    body = {"prompt": f"Write two sentences about {TOPICS[i % len(TOPICS)]} ({i}).",
            "max_tokens": max_tokens, "temperature": 0, "ignore_eos": True}
    c.request("POST", "/v1/completions", json.dumps(body), {"content-type": "application/json"})
    r = c.getresponse()
    v = json.loads(r.read())
    c.close()
    out[i] = (v["choices"][0]["text"], v["usage"]["completion_tokens"])


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--port", type=int, default=8181)
    ap.add_argument("--n", type=int, default=11)
    ap.add_argument("--max-tokens", type=int, default=64)
    a = ap.parse_args()
    out = [None] * a.n
    ts = [threading.Thread(target=one, args=(a.port, i, a.max_tokens, out)) for i in range(a.n)]
    for t in ts:
        t.start()
    for t in ts:
        t.join()
    digest = hashlib.md5("\x00".join(t for t, _ in out).encode()).hexdigest()[:12]
    print(f"{a.n} greedy answers: md5 {digest}, tokens {[n for _, n in out]}")


if __name__ == "__main__":
    main()
