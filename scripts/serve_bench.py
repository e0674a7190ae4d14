"""Serving benchmark: N concurrent streaming clients (the `openai` package) against a running
`kiln serve`, like vLLM's serving benchmark. Reports aggregate generated tok/s, time to first
token and inter-token latency (p50/p99) per concurrency and temperature, one JSON line each,
with the round's window and the engine's own busy time over it (from /metrics).

usage: python3 serve_bench.py --port 8080 [--streams 1,8,64,256] [--temperatures 0.7,0]
                              [--max-tokens 128] [--procs 8] [--client models|lines|raw]

Clients are spread over --procs processes, each with one asyncio loop and one AsyncOpenAI
client kept for the whole run, so that connections stay open between rounds (as a load
generator or a router keeps them) and Python does not bound what is measured. With
`--client models` (the default) each chunk is parsed into the openai package's objects, as an
application iterating the stream would; with `--client lines` the package's raw streaming
response is read line by line and each `data:` line decoded with json.loads, as vLLM's serving
benchmark reads chunks, so that the client's cost per chunk bounds less of what is measured.
With `--client raw` no client library is used: each stream takes a kept-alive HTTP/1.1
connection (asyncio streams, reused between rounds), writes a prepared request and reads the
chunked SSE answer, so that neither sending a round's requests nor reading its chunks costs
the client much. `--request-cost N` prints instead what one request costs a client process
in CPU time with each client (N one-token requests, one after another): the openai package's
cost, paid for each of a process's streams before the next is sent, spreads the start of a
256-stream round over tens of milliseconds.
Only loopback is contacted.
"""
import argparse
import asyncio
import json
import multiprocessing as mp
import statistics
import time
import urllib.request


def pct(xs, q):
    if not xs:
        return float("nan")
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(q * (len(xs) - 1) + 0.5))]


async def one(client, model, i, temp, max_tokens, start_at, mode, extra=None):
    # All streams of a round start together.
    await asyncio.sleep(max(0.0, start_at - time.time()))
    t0 = time.perf_counter()
    stamps = []
    tokens = 0
    args = dict(
        model=model,
        prompt=f"Item {i}: once upon a time",
        max_tokens=max_tokens,
        temperature=temp,
        seed=i,
        stream=True,
        stream_options={"include_usage": True},
        extra_body={"ignore_eos": True} | (extra or {}),
    )
    if mode == "raw":
        tokens = await raw_stream(client, i, args, stamps)
    elif mode == "models":
        stream = await client.completions.create(**args)
        async for chunk in stream:
            if chunk.choices and chunk.choices[0].text:
                stamps.append(time.perf_counter())
            if chunk.usage is not None:
                tokens = chunk.usage.completion_tokens
    else:
        async with client.completions.with_streaming_response.create(**args) as resp:
            async for line in resp.iter_lines():
                if not line.startswith("data:"):
                    continue
                data = line[5:].strip()
                if data == "[DONE]":
                    continue  # read to the end, so that the connection goes back to the pool
                chunk = json.loads(data)
                if chunk.get("choices") and chunk["choices"][0].get("text"):
                    stamps.append(time.perf_counter())
                if chunk.get("usage"):
                    tokens = chunk["usage"]["completion_tokens"]
    ttft = stamps[0] - t0 if stamps else float("nan")
    itl = [b - a for a, b in zip(stamps, stamps[1:])]
    return tokens, ttft, itl, t0, stamps[-1] if stamps else t0


class RawPool:
    """Kept-alive HTTP/1.1 connections to 127.0.0.1:port: a stream takes an idle one or opens
    one, and gives it back when its answer has been read to the end, so that a process holds
    no more connections than it ever had streams at once."""

    def __init__(self, port):
        self.port = port
        self.idle = []

    async def get(self, key):
        if self.idle:
            return self.idle.pop()
        return await asyncio.open_connection("127.0.0.1", self.port)

    def put(self, key, c):
        self.idle.append(c)


async def raw_stream(pool, key, args, stamps):
    """POSTs a completion request and reads its SSE stream; returns the usage's token count."""
    body = json.dumps({k: v for k, v in args.items() if k != "extra_body"}
                      | args.get("extra_body", {})).encode()
    head = (f"POST /v1/completions HTTP/1.1\r\nHost: 127.0.0.1:{pool.port}\r\n"
            f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n").encode()
    reader, writer = await pool.get(key)
    writer.write(head + body)
    status = await reader.readline()
    if not status:
        # A kept-alive connection the server had closed: once more on a new one.
        writer.close()
        reader, writer = await asyncio.open_connection("127.0.0.1", pool.port)
        writer.write(head + body)
        status = await reader.readline()
    if b" 200 " not in status:
        raise RuntimeError(f"stream {key}: {status!r}")
    chunked = False
    while True:
        line = await reader.readline()
        if line in (b"\r\n", b""):
            break
        if line.lower().startswith(b"transfer-encoding:") and b"chunked" in line.lower():
            chunked = True
    if not chunked:
        raise RuntimeError(f"stream {key}: the answer is not chunked")
    tokens, buf = 0, b""
    while True:
        size = int((await reader.readline()).split(b";")[0], 16)
        data = await reader.readexactly(size + 2)
        if size == 0:
            break
        buf += data[:-2]
        *events, buf = buf.split(b"\n\n")
        for ev in events:
            if not ev.startswith(b"data:"):
                continue
            payload = ev[5:].strip()
            if payload == b"[DONE]":
                continue
            chunk = json.loads(payload)
            if chunk.get("choices") and chunk["choices"][0].get("text"):
                stamps.append(time.perf_counter())
            if chunk.get("usage"):
                tokens = chunk["usage"]["completion_tokens"]
    pool.put(key, (reader, writer))
    return tokens


def engine_counters(port):
    """The engine's own clocks from /metrics: seconds in the model's passes, seconds of its
    own host work, and steps, so that a round's window can be set against the engine's busy
    time (what the clients wait on besides the engine shows as the difference)."""
    try:
        text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read().decode()
    except OSError:
        return None
    want = {"kiln_engine_model_seconds_total": "model_s", "kiln_engine_host_seconds_total": "host_s",
            "kiln_engine_stream_seconds_total": "stream_s",
            "kiln_engine_steps_total": "steps",
            "kiln_engine_draft_tokens_total": "draft_tokens",
            "kiln_engine_draft_passes_total": "draft_passes"}
    out = {}
    for line in text.splitlines():
        parts = line.split()
        if len(parts) == 2 and parts[0] in want:
            out[want[parts[0]]] = float(parts[1])
    return out if {"model_s", "host_s", "steps"} <= out.keys() else None


# Per worker process: its event loop and client, kept between rounds.
LOOP = None
CLIENT = None
MODE = None


def init_worker(port, mode):
    global LOOP, CLIENT, MODE
    MODE = mode
    LOOP = asyncio.new_event_loop()
    asyncio.set_event_loop(LOOP)
    if MODE == "raw":
        CLIENT = RawPool(port)
        return
    from openai import AsyncOpenAI

    # The package's default pool keeps 100 connections alive: more than a process's streams.
    CLIENT = AsyncOpenAI(base_url=f"http://127.0.0.1:{port}/v1", api_key="none", max_retries=0,
                         timeout=600)


def worker(args):
    model, ids, temp, max_tokens, start_at, mode, extras = args

    async def run():
        return await asyncio.gather(*[one(CLIENT, model, i, temp, max_tokens, start_at, mode,
                                          extras.get(i)) for i in ids])

    return LOOP.run_until_complete(run())


async def request_cost(port, model, n):
    """CPU milliseconds of this process per one-token streamed request, for each client."""
    from openai import AsyncOpenAI

    client = AsyncOpenAI(base_url=f"http://127.0.0.1:{port}/v1", api_key="none", max_retries=0)
    pool = RawPool(port)
    for mode in ["lines", "raw", "lines", "raw"]:
        c = pool if mode == "raw" else client
        t0 = time.process_time()
        for i in range(n):
            await one(c, model, i, 0.7, 1, 0.0, mode)
        ms = 1e3 * (time.process_time() - t0) / n
        print(json.dumps({"request_cost_client": mode, "cpu_ms_per_request": round(ms, 3)}))


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--port", type=int, default=8080)
    ap.add_argument("--streams", default="1,8,64,256")
    ap.add_argument("--temperatures", default="0.7,0")
    ap.add_argument("--max-tokens", type=int, default=128)
    ap.add_argument("--procs", type=int, default=8)
    ap.add_argument("--client", choices=["models", "lines", "raw"], default="models")
    ap.add_argument("--request-cost", type=int, default=0, metavar="N")
    ap.add_argument("--extra", default="{}", metavar="JSON",
                    help="fields added to every counted stream's request, e.g. '{\"draft_max\": 0}'")
    ap.add_argument("--side", type=int, default=0, metavar="N",
                    help="N more streams in each round, started with the counted ones and not "
                         "counted in their figures (their tokens are printed apart)")
    ap.add_argument("--side-extra", default="{}", metavar="JSON",
                    help="fields added to the side streams' requests, e.g. '{\"prompt_lookup\": 8}'")
    a = ap.parse_args()
    fields = {}
    for flag, text in [("--extra", a.extra), ("--side-extra", a.side_extra)]:
        try:
            fields[flag] = json.loads(text)
        except json.JSONDecodeError as e:
            ap.error(f"{flag}: not JSON ({e})")
        if not isinstance(fields[flag], dict):
            ap.error(f"{flag}: expected a JSON object of request fields, got {text}")
    if a.side < 0:
        ap.error(f"--side: {a.side} streams")
    extra, side_extra = fields["--extra"], fields["--side-extra"]
    # The model's id from /v1/models (plain HTTP: the raw client needs no package).
    with urllib.request.urlopen(f"http://127.0.0.1:{a.port}/v1/models", timeout=30) as r:
        model = json.load(r)["data"][0]["id"]
    if a.request_cost > 0:
        asyncio.run(request_cost(a.port, model, a.request_cost))
        return
    with mp.Pool(a.procs, initializer=init_worker, initargs=(a.port, a.client)) as pool:
        # Warm-up: connections, kernels, and the decode steps of each concurrency (a server in
        # steady state has recorded them), 16 tokens each, outside the figures.
        # The side streams too: the rounds' steps have n + side rows.
        for n in [int(s) + a.side for s in a.streams.split(",")]:
            procs = min(a.procs, n)
            pool.map(worker, [(model, list(range(p, n, procs)), 0.7, 16, time.time(), a.client,
                               {}) for p in range(procs)])
        for temp in [float(t) for t in a.temperatures.split(",")]:
            for n in [int(s) for s in a.streams.split(",")]:
                procs = min(a.procs, n + a.side)
                # Streams n.. are the side streams: ids, seeds and prompts of their own.
                total = n + a.side
                extras = {i: (extra if i < n else side_extra) for i in range(total)}
                groups = [list(range(p, total, procs)) for p in range(procs)]
                start_at = time.time() + 0.5
                before = engine_counters(a.port)
                out = pool.map(worker, [(model, g, temp, a.max_tokens, start_at, a.client,
                                         extras) for g in groups])
                after = engine_counters(a.port)
                side = [r for g, rs in zip(groups, out) for i, r in zip(g, rs) if i >= n]
                res = [r for g, rs in zip(groups, out) for i, r in zip(g, rs) if i < n]
                tokens = sum(r[0] for r in res)
                t_begin = min(r[3] for r in res)
                t_end = max(r[4] for r in res)
                ttft = [r[1] for r in res]
                itl = [x for r in res for x in r[2]]
                engine = None
                if before and after:
                    engine = {k: round(after[k] - before[k], 4) for k in before}
                print(json.dumps({
                    "streams": n, "temperature": temp, "max_tokens": a.max_tokens,
                    "client": a.client, "procs": a.procs,
                    "tokens": tokens,
                    "aggregate_tok_s": round(tokens / max(t_end - t_begin, 1e-9), 1),
                    "ttft_p50_ms": round(1e3 * pct(ttft, 0.5), 2),
                    "ttft_p99_ms": round(1e3 * pct(ttft, 0.99), 2),
                    "itl_p50_ms": round(1e3 * pct(itl, 0.5), 3),
                    "itl_p99_ms": round(1e3 * pct(itl, 0.99), 3),
                    "itl_mean_ms": round(1e3 * statistics.fmean(itl), 3) if itl else None,
                    "window_s": round(t_end - t_begin, 4),
                    "engine": engine,
                    **({"side": a.side, "side_tokens": sum(r[0] for r in side)} if a.side else {}),
                }), flush=True)


if __name__ == "__main__":
    main()
