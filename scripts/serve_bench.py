"""Serving benchmark: N concurrent streaming clients (the `openai` package) against a running
`kiln serve`, like vLLM's serving benchmark. Reports aggregate generated tok/s, time to first
token and inter-token latency (p50/p99) per concurrency and temperature, one JSON line each.

usage: python3 serve_bench.py --port 8080 [--streams 1,8,64,256] [--temperatures 0.7,0]
                              [--max-tokens 128] [--procs 8]

Clients are spread over --procs processes (each an asyncio loop with its own AsyncOpenAI
client) so that Python does not bound what is measured. Only loopback is contacted.
"""
import argparse
import asyncio
import json
import multiprocessing as mp
import statistics
import time


def pct(xs, q):
    if not xs:
        return float("nan")
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(q * (len(xs) - 1) + 0.5))]


async def one(client, model, i, temp, max_tokens, start_at):
    # All streams of a round start together.
    await asyncio.sleep(max(0.0, start_at - time.time()))
    t0 = time.perf_counter()
    stamps = []
    tokens = 0
    stream = await client.completions.create(
        model=model,
        prompt=f"Item {i}: once upon a time",
        max_tokens=max_tokens,
        temperature=temp,
        seed=i,
        stream=True,
        stream_options={"include_usage": True},
        extra_body={"ignore_eos": True},
    )
    async for chunk in stream:
        if chunk.choices and chunk.choices[0].text:
            stamps.append(time.perf_counter())
        if chunk.usage is not None:
            tokens = chunk.usage.completion_tokens
    ttft = stamps[0] - t0 if stamps else float("nan")
    itl = [b - a for a, b in zip(stamps, stamps[1:])]
    return tokens, ttft, itl, t0, stamps[-1] if stamps else t0


def worker(args):
    port, model, ids, temp, max_tokens, start_at = args
    from openai import AsyncOpenAI

    async def run():
        client = AsyncOpenAI(base_url=f"http://127.0.0.1:{port}/v1", api_key="none",
                             max_retries=0, timeout=600)
        try:
            return await asyncio.gather(*[one(client, model, i, temp, max_tokens, start_at)
                                          for i in ids])
        finally:
            await client.close()

    return asyncio.run(run())


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--port", type=int, default=8080)
    ap.add_argument("--streams", default="1,8,64,256")
    ap.add_argument("--temperatures", default="0.7,0")
    ap.add_argument("--max-tokens", type=int, default=128)
    ap.add_argument("--procs", type=int, default=8)
    a = ap.parse_args()
    from openai import OpenAI
    model = OpenAI(base_url=f"http://127.0.0.1:{a.port}/v1", api_key="none").models.list().data[0].id
    with mp.Pool(a.procs) as pool:
        # Warm-up: connections, kernels, and the decode steps of each concurrency (a server in
        # steady state has recorded them), 16 tokens each, outside the figures.
        for n in [int(s) for s in a.streams.split(",")]:
            procs = min(a.procs, n)
            pool.map(worker, [(a.port, model, list(range(p, n, procs)), 0.7, 16, time.time())
                              for p in range(procs)])
        for temp in [float(t) for t in a.temperatures.split(",")]:
            for n in [int(s) for s in a.streams.split(",")]:
                procs = min(a.procs, n)
                groups = [list(range(p, n, procs)) for p in range(procs)]
                start_at = time.time() + 0.5
                res = [r for g in pool.map(worker, [(a.port, model, g, temp, a.max_tokens,
                                                     start_at) for g in groups]) for r in g]
                tokens = sum(r[0] for r in res)
                t_begin = min(r[3] for r in res)
                t_end = max(r[4] for r in res)
                ttft = [r[1] for r in res]
                itl = [x for r in res for x in r[2]]
                print(json.dumps({
                    "streams": n, "temperature": temp, "max_tokens": a.max_tokens,
                    "tokens": tokens,
                    "aggregate_tok_s": round(tokens / max(t_end - t_begin, 1e-9), 1),
                    "ttft_p50_ms": round(1e3 * pct(ttft, 0.5), 2),
                    "ttft_p99_ms": round(1e3 * pct(ttft, 0.99), 2),
                    "itl_p50_ms": round(1e3 * pct(itl, 0.5), 3),
                    "itl_p99_ms": round(1e3 * pct(itl, 0.99), 3),
                    "itl_mean_ms": round(1e3 * statistics.fmean(itl), 3) if itl else None,
                }), flush=True)


if __name__ == "__main__":
    main()
