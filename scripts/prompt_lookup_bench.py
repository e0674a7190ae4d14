#!/usr/bin/env python3
"""Prompt lookup against plain greedy decoding on a copy task: 10 passages of about 300
tokens, each asked to be repeated exactly, decoded by `kiln run --temperature 0` with and
without `--prompt-lookup K` (alternated, the order swapped every passage). Prints each
passage's generated tok/s both ways and whether the texts are identical, then the totals.

    python3 scripts/prompt_lookup_bench.py ./target/release/kiln [K] [THREADS]
"""
import random
import re
import statistics
import subprocess
import sys

SENTENCES = [
    "The river wound slowly through the valley, past the old mill and the stone bridge.",
    "Children gathered there every summer to fish, to swim and to argue about the rules of games.",
    "In autumn the leaves turned gold and red, and the farmers brought their harvest to town.",
    "The market filled the square from dawn, with carts of apples, cheese, bread and honey.",
    "A baker named Ada sold rye loaves that were still warm when the church bell rang nine.",
    "Her brother kept bees on the hill behind the school and sold the wax to candle makers.",
    "When the rains came, the road to the station flooded and the bus stopped at the chapel.",
    "The station master wrote the delays on a chalkboard in a neat and patient hand.",
    "Travellers waited in the small hall, reading newspapers or watching the clouds move.",
    "The library opened on Tuesdays and Saturdays, and its windows looked over the orchard.",
    "Its oldest book was a record of the parish, written in brown ink two centuries ago.",
    "Every name in it had been copied again by a schoolteacher who loved local history.",
    "In winter the pond froze hard enough to skate on, and lanterns hung from the willows.",
    "The blacksmith repaired skates for free, though he complained loudly about the rust.",
    "Spring brought lambs to the fields and long evenings when the light lingered past eight.",
    "The council met in the back room of the inn to discuss drains, fences and the fair.",
    "Nobody could remember a meeting that ended on time, and nobody truly minded.",
    "The fair itself came in late August, with a carousel, a brass band and a pie contest.",
    "Judges tasted forty pies and declared, as they did every year, that all were excellent.",
    "At night the streets were quiet except for the owls and the distant sound of the weir.",
    "A new footpath now joins the village to the coast, eleven miles through woods and dunes.",
    "Walkers stop at the halfway farm for tea, scones and a view of the lighthouse.",
    "The lighthouse keeper retired last year, but he still climbs the stairs every Sunday.",
    "He says the sea looks different from the top, calmer and more honest than from the beach.",
]


def passages(n=10, per=12):
    rng = random.Random(7)
    out = []
    for _ in range(n):
        out.append(" ".join(rng.sample(SENTENCES, per)))
    return out


def run(kiln, text, k, threads):
    prompt = "Repeat the following passage exactly, word for word:\n\n" + text
    r = subprocess.run(
        [kiln, "run", "--temperature", "0", "-n", "400", "--threads", threads,
         "--prompt-lookup", str(k), prompt],
        capture_output=True, text=True, check=True)
    m = re.search(r"(\d+) generated at ([\d.]+) tok/s", r.stderr)
    return r.stdout, int(m.group(1)), float(m.group(2))


def main():
    kiln = sys.argv[1]
    k = int(sys.argv[2]) if len(sys.argv) > 2 else 8
    threads = sys.argv[3] if len(sys.argv) > 3 else "2"
    rows = []
    for i, p in enumerate(passages()):
        order = [0, k] if i % 2 == 0 else [k, 0]
        got = {}
        for kk in order:
            got[kk] = run(kiln, p, kk, threads)
        same = got[0][0] == got[k][0]
        rows.append((got[0][1], got[0][2], got[k][2], same))
        print(f"passage {i}: {got[0][1]} tokens, plain {got[0][2]:.1f} tok/s, "
              f"prompt lookup {got[k][2]:.1f} tok/s ({got[k][2] / got[0][2]:.2f}x), "
              f"{'identical' if same else 'DIFFERENT'}", flush=True)
    ratios = [b / a for _, a, b, _ in rows]
    t_plain = sum(n / a for n, a, _, _ in rows)
    t_pl = sum(n / b for n, _, b, _ in rows)
    print(f"median speedup {statistics.median(ratios):.2f}x; total time {t_plain:.2f} s plain, "
          f"{t_pl:.2f} s with prompt lookup ({t_plain / t_pl:.2f}x); "
          f"identical {sum(r[3] for r in rows)} of {len(rows)}")


if __name__ == "__main__":
    main()
