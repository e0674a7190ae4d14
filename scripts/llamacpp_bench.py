#!/usr/bin/env python3
"""llama.cpp's side of scripts/bench-vs-llamacpp.sh, through llama-cpp-python.

Measures what `kiln bench --json` does, the same way: load time (model and context ready),
prefill of PROMPT tokens (the same English text, repeated), decode of GEN tokens one at a
time (greedy), peak RSS. Prints one JSON object. Peak RSS is also given less the Python
interpreter's own (measured before loading), which is what compares with kiln's.
"""
import argparse
import json
import resource
import time


def rss_mb():
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", required=True)
    ap.add_argument("--threads", type=int, required=True)
    ap.add_argument("--prompt-tokens", type=int, default=512)
    ap.add_argument("--gen-tokens", type=int, default=128)
    a = ap.parse_args()

    import numpy as np
    import llama_cpp

    base_rss = rss_mb()
    t_start = time.perf_counter()
    llm = llama_cpp.Llama(
        model_path=a.model,
        n_ctx=a.prompt_tokens + a.gen_tokens,
        n_batch=512,
        n_threads=a.threads,
        n_threads_batch=a.threads,
        verbose=False,
    )
    load_s = time.perf_counter() - t_start
    seed = ("The quick brown fox jumps over the lazy dog while the scientist explains, "
            "step by step, why the sky is blue and how light scatters in the air. ")
    base = llm.tokenize(seed.encode(), add_bos=False, special=False)
    prompt = [base[i % len(base)] for i in range(a.prompt_tokens)]
    t0 = time.perf_counter()
    llm.eval(prompt)
    prefill_s = time.perf_counter() - t0
    n_vocab = llm.n_vocab()

    def last_logits():
        ptr = llama_cpp.llama_get_logits_ith(llm.ctx, -1)
        return np.ctypeslib.as_array(ptr, shape=(n_vocab,))

    t1 = time.perf_counter()
    for _ in range(a.gen_tokens):
        nxt = int(np.argmax(last_logits()))
        llm.eval([nxt])
    decode_s = time.perf_counter() - t1
    print(json.dumps({
        "backend": f"llama.cpp {llama_cpp.__version__} ({a.threads} threads)",
        "load_s": load_s,
        "prefill_tok_s": a.prompt_tokens / prefill_s,
        "decode_tok_s": a.gen_tokens / decode_s,
        "peak_rss_mb_process": rss_mb(),
        "peak_rss_mb": rss_mb() - base_rss,
    }))


if __name__ == "__main__":
    main()
