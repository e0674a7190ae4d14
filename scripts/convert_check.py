"""Does llama.cpp read what `kiln convert` writes, and compute the folder's logits from it?

For each tiny fixture (tests/fixtures/tiny-*), converts `hf/` with `kiln convert`, loads the
file with llama.cpp (the llama-cpp-python package), evaluates each reference prompt's token ids
and compares the logits of every position with the float64 reference that transformers
computed from the same folder (`logits_base.f32`). Also tokenizes each plain prompt with
llama.cpp and compares the ids with the reference's.

    python3 scripts/convert_check.py ./target/release/kiln
"""
import json
import os
import subprocess
import sys
import tempfile

import numpy as np
from llama_cpp import Llama

kiln = sys.argv[1] if len(sys.argv) > 1 else "./target/release/kiln"
root = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "tests", "fixtures")
worst = 0.0
with tempfile.TemporaryDirectory() as tmp:
    for arch in ["llama", "qwen2", "phi3"]:
        fx = os.path.join(root, f"tiny-{arch}")
        out = os.path.join(tmp, f"{arch}.gguf")
        subprocess.run([kiln, "convert", os.path.join(fx, "hf"), out], check=True,
                       stdout=subprocess.DEVNULL)
        ref = json.load(open(os.path.join(fx, "reference.json")))
        logits = np.fromfile(os.path.join(fx, "logits_base.f32"), dtype="<f4")
        logits = logits.reshape(ref["logits"]["rows"], ref["logits"]["cols"])
        llm = Llama(model_path=out, n_ctx=256, logits_all=True, verbose=False, n_threads=2)
        row, err, tok_same, tok_all = 0, 0.0, 0, 0
        for p in ref["prompts"]:
            ids = p["ids"]
            llm.reset()
            llm.eval(ids)
            got = np.array(llm.scores[: len(ids)], dtype=np.float64)
            want = logits[row : row + len(ids)].astype(np.float64)
            row += len(ids)
            err = max(err, float(np.abs(got - want).max()))
            if "chat" not in p:
                tok_all += 1
                add_bos = bool(ids) and ids[0] == llm.token_bos() and llm.token_bos() >= 0
                mine = llm.tokenize(p["text"].encode(), add_bos=add_bos, special=False)
                tok_same += mine == ids
        worst = max(worst, err)
        print(f"{arch}: llama.cpp loads the converted file; max |logit - reference| {err:.2e} "
              f"over {row} positions x {ref['logits']['cols']}; plain prompts tokenized as the "
              f"folder: {tok_same}/{tok_all}")
        del llm
print(f"worst {worst:.2e}")
sys.exit(0 if worst < 5e-3 else 1)
