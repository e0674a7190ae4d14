"""Prefix-heavy sessions through a router in front of kiln replicas (the `openai` client,
streaming): usage: python3 router_bench.py ROUTER_URL [--sessions 32] [--turns 4]
[--prefix-words 550] [--concurrency 8]

Each session has its own long system prompt (about 1,000 tokens for 550 words) and asks
`--turns` questions one after another, sending `X-Session-ID` and `user`; sessions run
`--concurrency` at a time. Each answer's `x-kiln-instance` header names the replica that served
it, and its usage the prompt tokens and those the replica's prefix cache served. Prints one JSON line: the share of turns that reached their
session's most used replica, the prompt tokens computed (prompt minus cached), and the time to
first token (p50, p90). Only loopback is contacted."""
import argparse
import asyncio
import collections
import json
import random
import statistics
import time

from openai import AsyncOpenAI

WORDS = ("river stone lamp orchard copper window harbor meadow lantern quarry saddle thimble "
         "falcon pepper marble cinder willow anchor basket candle ember glacier hollow ivory "
         "juniper kettle ledger mosaic nectar oyster pebble quiver ribbon sable tundra umber "
         "velvet walnut yarrow zephyr").split()


def prefix(session, words):
    rng = random.Random(session)
    lines = [f"Briefing for session {session}."]
    for i in range(0, words, 15):
        lines.append(f"Record {i // 15}: " + " ".join(rng.choice(WORDS) for _ in range(15)) + ".")
    return "\n".join(lines)


async def turn(client, model, sid, system, t):
    t0 = time.perf_counter()
    first = None
    usage = None
    async with client.chat.completions.with_streaming_response.create(
            model=model, max_tokens=8, temperature=0, stream=True,
            stream_options={"include_usage": True}, user=sid, extra_headers={"X-Session-ID": sid},
            messages=[{"role": "system", "content": system},
                      {"role": "user", "content": f"Question {t}: what does record {t} say?"}]) as r:
        replica = r.headers.get("x-kiln-instance", "?")
        async for line in r.iter_lines():
            if not line.startswith("data:") or line.endswith("[DONE]"):
                continue
            c = json.loads(line[5:])
            if first is None and c.get("choices") and c["choices"][0]["delta"].get("content"):
                first = time.perf_counter() - t0
            if c.get("usage"):
                usage = c["usage"]
    cached = (usage.get("prompt_tokens_details") or {}).get("cached_tokens", 0)
    return replica, first, usage["prompt_tokens"], cached


async def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("router")
    ap.add_argument("--sessions", type=int, default=32)
    ap.add_argument("--turns", type=int, default=4)
    ap.add_argument("--prefix-words", type=int, default=550)
    ap.add_argument("--concurrency", type=int, default=8)
    a = ap.parse_args()
    client = AsyncOpenAI(base_url=a.router + "/v1", api_key="none", max_retries=0, timeout=900)
    model = (await client.models.list()).data[0].id
    gate = asyncio.Semaphore(a.concurrency)
    results = {}

    async def session(s):
        async with gate:
            sid = f"session-{s}"
            system = prefix(s, a.prefix_words)
            results[sid] = [await turn(client, model, sid, system, t) for t in range(a.turns)]

    t0 = time.perf_counter()
    await asyncio.gather(*[session(s) for s in range(a.sessions)])
    wall = time.perf_counter() - t0
    await client.close()
    turns = [r for rs in results.values() for r in rs]
    on_main = sum(collections.Counter(r[0] for r in rs).most_common(1)[0][1] for rs in results.values())
    ttft = sorted(r[1] for r in turns if r[1] is not None)
    print(json.dumps({
        "sessions": a.sessions, "turns": len(turns),
        "turns_on_session_replica": round(on_main / len(turns), 3),
        "replicas": dict(collections.Counter(r[0] for r in turns)),
        "prompt_tokens": sum(r[2] for r in turns),
        "computed_prompt_tokens": sum(r[2] - r[3] for r in turns),
        "ttft_p50_s": round(statistics.median(ttft), 3),
        "ttft_p90_s": round(ttft[int(0.9 * (len(ttft) - 1))], 3),
        "wall_s": round(wall, 1),
    }), flush=True)


asyncio.run(main())
