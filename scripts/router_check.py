"""Checks what a router in front of two `kiln serve` replicas does with kiln's traffic, through
the `openai` client (streaming): usage: python3 router_check.py ROUTER_URL REPLICA1,REPLICA2 MODE

MODE session: 8 sessions of 3 turns, each request carrying `X-Session-ID` and `user`; prints how
many sessions stayed on one replica and how the sessions spread. MODE prefix: 6 groups of 3
requests sharing a long prefix; prints where each group went and the prefix-cache hits the
replicas counted. MODE alive: 6 requests, all must be answered (run after stopping a replica).
MODE drain PID URL: 12 concurrent streams (sessions of their own, so that both replicas get
some); once every one has streamed its first token and the replica at URL (process PID) runs
some of them, SIGTERM goes to PID and 12 more streams start: all 24 must end with their whole
answer (the stopped replica finishes what it streams and refuses new work with 503, which the
router must send to the other replica).

Requests run one after another, so each is attributed to the replica whose generated-token
counter (`kiln_generation_tokens_total` on its /metrics) moved. Only loopback is contacted.
Exits non-zero when a check fails."""
import os
import signal
import sys
import threading
import urllib.request

from openai import OpenAI


def counters(url):
    out = {}
    try:
        text = urllib.request.urlopen(url + "/metrics", timeout=5).read().decode()
    except OSError:
        return None
    for line in text.splitlines():
        p = line.split()
        if len(p) == 2 and p[0] in ("kiln_generation_tokens_total", "vllm:prefix_cache_hits_total",
                                    "vllm:num_requests_running"):
            out[p[0]] = float(p[1])
    return out


def ask(client, model, prompt, session=None):
    headers = {"X-Session-ID": session} if session else None
    stream = client.chat.completions.create(
        model=model, messages=[{"role": "user", "content": prompt}], max_tokens=4,
        temperature=0, stream=True, user=session, extra_headers=headers)
    chunks = sum(1 for c in stream if c.choices and c.choices[0].delta.content)
    assert chunks > 0, "no streamed content"


def stream_whole(client, model, i, started, results):
    """One stream of 24 tokens; records whether it got them all and a finish reason."""
    try:
        sid = f"drain-{i}"
        stream = client.chat.completions.create(
            model=model, messages=[{"role": "user", "content": f"Stream {i}: tell a story."}],
            max_tokens=24, temperature=0, stream=True, user=sid,
            extra_headers={"X-Session-ID": sid}, extra_body={"ignore_eos": True},
            stream_options={"include_usage": True})
        finish, tokens = None, None
        for c in stream:
            if c.choices and c.choices[0].delta.content:
                started.set()
            if c.choices and c.choices[0].finish_reason:
                finish = c.choices[0].finish_reason
            if c.usage is not None:
                tokens = c.usage.completion_tokens
        results[i] = (finish, tokens)
    except Exception as e:  # a lost request is what the check looks for
        results[i] = (f"error: {e}", None)
    started.set()


def which(replicas, before):
    after = [counters(r) for r in replicas]
    moved = [i for i, (b, a) in enumerate(zip(before, after))
             if a and b and a["kiln_generation_tokens_total"] > b["kiln_generation_tokens_total"]]
    return (moved[0] if len(moved) == 1 else None), after


def main():
    router, replicas, mode = sys.argv[1], sys.argv[2].split(","), sys.argv[3]
    client = OpenAI(base_url=router + "/v1", api_key="none", max_retries=0, timeout=120)
    # The model's name from a replica that runs (the router may still list a stopped one).
    for r in replicas:
        try:
            model = OpenAI(base_url=r + "/v1", api_key="none", max_retries=0).models.list().data[0].id
            break
        except Exception:
            continue
    else:
        sys.exit("no replica answered /v1/models")
    ok = True
    if mode == "session":
        placed = {}
        for s in range(8):
            sid = f"session-{s}"
            for turn in range(3):
                before = [counters(r) for r in replicas]
                ask(client, model, f"Turn {turn} of conversation {s}: say something.", sid)
                r, _ = which(replicas, before)
                placed.setdefault(sid, []).append(r)
        one = sum(1 for v in placed.values() if len(set(v)) == 1 and v[0] is not None)
        spread = [sum(1 for v in placed.values() if v[0] == i) for i in range(len(replicas))]
        print(f"session: {one}/8 sessions kept one replica; sessions per replica {spread}; {placed}")
        ok = one == 8
    elif mode == "prefix":
        base = [counters(r) for r in replicas]
        groups = []
        for g in range(6):
            prefix = f"Document {g}. " + " ".join(f"line {g}-{i} of the shared context." for i in range(40))
            seen = []
            for q in range(3):
                before = [counters(r) for r in replicas]
                ask(client, model, prefix + f" Question {q}: what is line {q}?")
                r, _ = which(replicas, before)
                seen.append(r)
            groups.append(seen)
        end = [counters(r) for r in replicas]
        hits = [e["vllm:prefix_cache_hits_total"] - b["vllm:prefix_cache_hits_total"] for b, e in zip(base, end)]
        together = sum(1 for g in groups if len(set(g)) == 1 and g[0] is not None)
        print(f"prefix: {together}/6 groups kept one replica; prefix-cache hit tokens per replica {hits}; {groups}")
        ok = together == 6 and sum(hits) > 0
    elif mode == "drain":
        pid, url = int(sys.argv[4]), sys.argv[5]
        results = {}
        first = [threading.Event() for _ in range(12)]
        wave1 = [threading.Thread(target=stream_whole, args=(client, model, i, first[i], results))
                 for i in range(12)]
        for t in wave1:
            t.start()
        for e in first:
            e.wait(120)
        running = (counters(url) or {}).get("vllm:num_requests_running", 0)
        os.kill(pid, signal.SIGTERM)
        wave2 = [threading.Thread(target=stream_whole,
                                  args=(client, model, 12 + i, threading.Event(), results))
                 for i in range(12)]
        for t in wave2:
            t.start()
        for t in wave1 + wave2:
            t.join(300)
        whole = [i for i, (f, n) in results.items() if f == "length" and n == 24]
        lost = {i: r for i, r in results.items() if i not in whole}
        print(f"drain: {len(whole)}/24 streams whole after SIGTERM to {pid} while it ran "
              f"{running:.0f} of 12 streams; lost {lost}")
        ok = len(whole) == 24 and running > 0
    elif mode == "alive":
        for i in range(6):
            ask(client, model, f"Request {i} after a replica stopped.")
        print("alive: 6/6 answered")
    print("ok" if ok else "FAILED")
    sys.exit(0 if ok else 1)


main()
