#!/usr/bin/env python3
"""How close one-token decode is to this machine's read bandwidth, for kiln and llama.cpp.

For each GGUF file, rounds of three measures taken back to back (the order rotated each
round, so that drift falls on all alike): the machine's read bandwidth (scripts/read_bw.c on
the same number of threads, the best of its three passes), kiln's decode (`kiln bench
--json`) and llama.cpp's (scripts/llamacpp_bench.py through llama-cpp-python). A decode
step reads every matrix once (the output head: the token embedding where the file ties
them), so tok/s times those bytes is the bandwidth each one reaches, less the KV cache's
reads, which are left out (at 512 tokens of prompt, about 14% more for SmolLM2-135M's f16
cache, 1.4% for Qwen2.5-0.5B's): the shares are a little low, the bound a little high.
Prints a JSON line per measure and a summary per file: kiln and llama.cpp in GB/s and as a
share of the read bandwidth measured next to them, and the largest kiln/llama.cpp decode
ratio that the read bandwidth allows (read GB/s over llama.cpp's GB/s).

  python3 scripts/bw_bound.py --kiln target/release/kiln [--rounds 3] [--threads 2]
      [--prompt 512] [--gen 128] MODEL.gguf...

Environment: VENV (default /work/.venv-llama) for llama-cpp-python, as
scripts/bench-vs-llamacpp.sh installs it.
"""
import argparse
import json
import os
import re
import statistics
import struct
import subprocess
import sys

HERE = os.path.dirname(os.path.abspath(__file__))


def matrix_bytes(path):
    """Bytes of the tensors one decode step reads: all but the token embedding, which is
    only looked up, unless the file has no separate output head (tied)."""
    with open(path, "rb") as f:
        if f.read(4) != b"GGUF":
            raise SystemExit(f"{path}: not a GGUF file")
        (version,) = struct.unpack("<I", f.read(4))
        if version < 2:
            raise SystemExit(f"{path}: GGUF version {version} is not supported")
        n_tensors, n_kv = struct.unpack("<QQ", f.read(16))
        fixed = {0: 1, 1: 1, 2: 2, 3: 2, 4: 4, 5: 4, 6: 4, 7: 1, 10: 8, 11: 8, 12: 8}

        def string():
            (n,) = struct.unpack("<Q", f.read(8))
            return f.read(n).decode("utf-8", "replace")

        def value(ty):
            if ty in fixed:
                return f.read(fixed[ty])
            if ty == 8:
                return string()
            if ty == 9:
                ety, count = struct.unpack("<IQ", f.read(12))
                if ety in fixed:
                    f.seek(fixed[ety] * count, 1)
                else:
                    for _ in range(count):
                        value(ety)
                return None
            raise SystemExit(f"{path}: unknown GGUF value type {ty}")

        align = 32
        for _ in range(n_kv):
            key = string()
            (ty,) = struct.unpack("<I", f.read(4))
            v = value(ty)
            if key == "general.alignment" and ty == 4:
                (align,) = struct.unpack("<I", v)
        infos = []
        for _ in range(n_tensors):
            name = string()
            (nd,) = struct.unpack("<I", f.read(4))
            f.seek(8 * nd, 1)
            _ty, off = struct.unpack("<IQ", f.read(12))
            infos.append((off, name))
        start = (f.tell() + align - 1) // align * align
    size = os.path.getsize(path)
    infos.sort()
    sizes = {}
    for i, (off, name) in enumerate(infos):
        end = infos[i + 1][0] if i + 1 < len(infos) else size - start
        sizes[name] = end - off
    total = sum(sizes.values())
    if "output.weight" in sizes:
        total -= sizes.get("token_embd.weight", 0)
    return total


def read_bw(binary, threads):
    out = subprocess.run([binary, str(threads)], capture_output=True, text=True, check=True).stdout
    return max(float(x) for x in re.findall(r"([0-9.]+) GB/s", out))


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--kiln", required=True)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--prompt", type=int, default=512)
    ap.add_argument("--gen", type=int, default=128)
    ap.add_argument("models", nargs="+")
    a = ap.parse_args()
    if a.rounds < 1 or a.threads < 1 or a.prompt < 1 or a.gen < 1:
        ap.error("--rounds, --threads, --prompt and --gen take 1 or more")
    for path in [a.kiln] + a.models:
        if not os.path.isfile(path):
            ap.error(f"{path}: no such file")
    venv = os.environ.get("VENV", "/work/.venv-llama")
    if not os.path.isfile(os.path.join(venv, "bin", "python")):
        ap.error(f"VENV={venv} has no bin/python: install llama-cpp-python there "
                 "(scripts/bench-vs-llamacpp.sh does)")
    bw_bin = "/tmp/kiln_read_bw"
    subprocess.run(["gcc", "-O2", "-march=native", "-o", bw_bin,
                    os.path.join(HERE, "read_bw.c"), "-lpthread"], check=True)
    for m in a.models:
        nbytes = matrix_bytes(m)
        rows = {"read": [], "kiln": [], "llama": []}
        for r in range(a.rounds):
            order = ["read", "kiln", "llama"]
            order = order[r % 3:] + order[:r % 3]
            for who in order:
                if who == "read":
                    gbs = read_bw(bw_bin, a.threads)
                    rec = {"gb_s": gbs}
                else:
                    if who == "kiln":
                        cmd = [a.kiln, "bench", "--model", m, "--threads", str(a.threads),
                               "--prompt-tokens", str(a.prompt), "--gen-tokens", str(a.gen),
                               "--json"]
                    else:
                        cmd = [os.path.join(venv, "bin", "python"),
                               os.path.join(HERE, "llamacpp_bench.py"), "--model", m,
                               "--threads", str(a.threads), "--prompt-tokens", str(a.prompt),
                               "--gen-tokens", str(a.gen)]
                    run = subprocess.run(cmd, capture_output=True, text=True)
                    if run.returncode != 0:
                        raise SystemExit(f"{who} on {m} failed (exit {run.returncode}): "
                                         f"{run.stderr.strip()[-500:]}")
                    out = run.stdout
                    tok_s = json.loads(out.strip().splitlines()[-1])["decode_tok_s"]
                    rec = {"tok_s": tok_s, "gb_s": tok_s * nbytes / 1e9}
                rows[who].append(rec)
                print(json.dumps({"model": os.path.basename(m), "round": r + 1, "who": who,
                                  **rec}), flush=True)
        med = {k: statistics.median(x["gb_s"] for x in v) for k, v in rows.items()}
        print(f"{os.path.basename(m)}: {nbytes / 1e6:.0f} MB read a token; medians of "
              f"{a.rounds}: read {med['read']:.1f} GB/s, kiln {med['kiln']:.1f} "
              f"({med['kiln'] / med['read']:.0%}), llama.cpp {med['llama']:.1f} "
              f"({med['llama'] / med['read']:.0%}); kiln/llama.cpp "
              f"{med['kiln'] / med['llama']:.2f}x, at most {med['read'] / med['llama']:.2f}x "
              f"at the read bandwidth", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
