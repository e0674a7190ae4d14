"""Quantizes a GGUF file with llama.cpp's own quantizer (`llama_model_quantize`, through the
llama-cpp-python package that scripts/bench-vs-llamacpp.sh installs), so that kiln and
llama.cpp are compared on files llama.cpp itself wrote.

usage: $VENV/bin/python scripts/llama_quantize.py IN.gguf OUT.gguf TYPE [THREADS]
       TYPE: q4_0, q4_1, q5_0, q8_0, q4_k_m, q5_k_m, q6_k
"""
import sys

import llama_cpp

TYPES = {
    "q4_0": llama_cpp.LLAMA_FTYPE_MOSTLY_Q4_0,
    "q4_1": llama_cpp.LLAMA_FTYPE_MOSTLY_Q4_1,
    "q5_0": llama_cpp.LLAMA_FTYPE_MOSTLY_Q5_0,
    "q8_0": llama_cpp.LLAMA_FTYPE_MOSTLY_Q8_0,
    "q4_k_m": llama_cpp.LLAMA_FTYPE_MOSTLY_Q4_K_M,
    "q5_k_m": llama_cpp.LLAMA_FTYPE_MOSTLY_Q5_K_M,
    "q6_k": llama_cpp.LLAMA_FTYPE_MOSTLY_Q6_K,
}


def main():
    if len(sys.argv) not in (4, 5) or sys.argv[3] not in TYPES:
        sys.exit(__doc__ + f"\nunknown or missing TYPE; one of {', '.join(TYPES)}")
    src, dst, kind = sys.argv[1], sys.argv[2], sys.argv[3]
    params = llama_cpp.llama_model_quantize_default_params()
    params.ftype = TYPES[kind]
    threads = sys.argv[4] if len(sys.argv) == 5 else "2"
    if not threads.isdigit() or int(threads) < 1:
        sys.exit(f"THREADS must be a whole number of at least 1, not {threads!r}")
    params.nthread = int(threads)
    rc = llama_cpp.llama_model_quantize(src.encode(), dst.encode(), params)
    if rc != 0:
        sys.exit(f"llama_model_quantize {src} -> {dst} ({kind}) failed: {rc}")
    print(f"{src} -> {dst} ({kind})")


if __name__ == "__main__":
    main()
