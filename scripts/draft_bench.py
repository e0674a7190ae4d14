#!/usr/bin/env python3
"""A draft model against plain decoding: 10 everyday chat prompts, each answered greedily (and
once more sampled with a seed) by `kiln run -m TARGET` with and without `--draft DRAFT`
(alternated, the order swapped every prompt), 192 tokens each. Prints each prompt's
generated tok/s both ways, the draft's acceptance, whether the texts are identical, then the
totals.

    python3 scripts/draft_bench.py KILN TARGET DRAFT [DRAFT_MAX] [THREADS] [P_MIN] [-- KILN_RUN_ARGS...]

For the default model: `kiln quantize` makes the F16 target from the Q4_1 file, which drafts.
P_MIN: `--draft-p-min` of the runs with the draft (default: kiln's). Arguments after `--` go
to every `kiln run` (e.g. `-- --device cuda --gpu-weights quantized`).
"""
import re
import statistics
import subprocess
import sys

PROMPTS = [
    "Write a short story about a robot who learns to paint.",
    "Explain how a bicycle stays upright when it moves.",
    "Give me five tips for keeping houseplants alive.",
    "What are the main causes of the seasons on Earth?",
    "Describe a busy market in a small town on a Saturday morning.",
    "How do I make a simple tomato soup?",
    "Write a polite email asking a colleague to review a report.",
    "Why do cats purr? Explain what scientists think.",
    "List the planets of the solar system with one fact about each.",
    "Explain the difference between weather and climate to a child.",
]


def run(kiln, target, draft, k, threads, prompt, sampled, extra, p_min):
    args = [kiln, "run", "-m", target, "-n", "192", "--threads", threads] + extra
    args += ["--temperature", "0.7", "--seed", "5"] if sampled else ["--temperature", "0"]
    if draft:
        args += ["--draft", draft, "--draft-max", str(k)]
        if p_min is not None:
            args += ["--draft-p-min", p_min]
    r = subprocess.run(args + [prompt], capture_output=True, text=True, check=True)
    m = re.search(r"(\d+) generated at ([\d.]+) tok/s", r.stderr)
    d = re.search(r"draft model: (\d+) of (\d+) proposed", r.stderr)
    taken = (int(d.group(1)), int(d.group(2))) if d else (0, 0)
    return r.stdout, int(m.group(1)), float(m.group(2)), taken


def main():
    argv, extra = sys.argv, []
    if "--" in argv:
        argv, extra = argv[:argv.index("--")], argv[argv.index("--") + 1:]
    kiln, target, draft = argv[1:4]
    k = int(argv[4]) if len(argv) > 4 else 8
    threads = argv[5] if len(argv) > 5 else "2"
    p_min = argv[6] if len(argv) > 6 else None
    for sampled in [False, True]:
        rows = []
        for i, p in enumerate(PROMPTS):
            order = [None, draft] if i % 2 == 0 else [draft, None]
            got = {}
            for d in order:
                got[d] = run(kiln, target, d, k, threads, p, sampled, extra, p_min)
            plain, fast = got[None], got[draft]
            same = plain[0] == fast[0]
            rows.append((plain[1], plain[2], fast[2], same, fast[3]))
            print(f"{'sampled' if sampled else 'greedy'} prompt {i}: {plain[1]} tokens, plain "
                  f"{plain[2]:.1f} tok/s, draft {fast[2]:.1f} tok/s ({fast[2] / plain[2]:.2f}x), "
                  f"{fast[3][0]} of {fast[3][1]} proposals taken, "
                  f"{'identical' if same else 'DIFFERENT'}", flush=True)
        ratios = [b / a for _, a, b, _, _ in rows]
        t_plain = sum(n / a for n, a, _, _, _ in rows)
        t_fast = sum(n / b for n, _, b, _, _ in rows)
        taken = sum(r[4][0] for r in rows)
        proposed = sum(r[4][1] for r in rows)
        print(f"{'sampled' if sampled else 'greedy'}: median speedup "
              f"{statistics.median(ratios):.2f}x; total time {t_plain:.2f} s plain, "
              f"{t_fast:.2f} s with the draft ({t_plain / t_fast:.2f}x); acceptance "
              f"{taken / max(proposed, 1):.3f} ({taken} of {proposed}); identical "
              f"{sum(r[3] for r in rows)} of {len(rows)}", flush=True)


if __name__ == "__main__":
    main()
