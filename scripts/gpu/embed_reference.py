"""Reference embeddings from transformers for kiln's tiny random-weight fixtures: the final
hidden states (the base model's `last_hidden_state`, after the final norm)
of each fixture prompt, pooled by mean and by the last token, unnormalized, in float32.

    python3 scripts/gpu/embed_reference.py FIXTURES_DIR OUT.json

Writes {arch: [{"ids": [...], "mean": [...], "last": [...]}, ...]}; the test
`embeddings_match_transformers` reads it (crates/kiln-engine/tests/fixtures/embeddings.json).
"""
import json
import sys

import torch
from transformers import AutoModelForCausalLM


def main():
    root, out = sys.argv[1:3]
    res = {}
    for arch in ["tiny-qwen2", "tiny-llama", "tiny-phi3"]:
        ref = json.load(open(f"{root}/{arch}/reference.json"))
        m = AutoModelForCausalLM.from_pretrained(f"{root}/{arch}/hf", torch_dtype=torch.float32).eval()
        rows = []
        with torch.no_grad():
            for p in ref["prompts"]:
                h = m.model(torch.tensor([p["ids"]])).last_hidden_state[0]
                rows.append({"ids": p["ids"], "mean": h.mean(0).tolist(), "last": h[-1].tolist()})
        res[arch] = rows
        print(arch, len(rows), "prompts, dim", len(rows[0]["mean"]), flush=True)
    json.dump(res, open(out, "w"))


if __name__ == "__main__":
    main()
