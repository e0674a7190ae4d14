"""PyTorch + transformers on the same random-weight model folder that kiln loads.

    python3 scripts/gpu/hf_reference.py FOLDER IDS KILN_LOGITS OUT.json

IDS: comma-separated token ids; KILN_LOGITS: kiln's teacher-forced logits for them (raw f32,
from the teacher_logits example). Prints and writes: the difference between kiln's logits and
transformers' in float32, then transformers' own speed (bf16, eager, batch 1 and 64 greedy
decode, one 2,048-token prefill), measured on the same GPU in the same call.
"""
import json
import sys
import time

import numpy as np
import torch
from transformers import AutoModelForCausalLM


def main():
    folder, ids_csv, kiln_logits, out_json = sys.argv[1:5]
    ids = [int(x) for x in ids_csv.split(",")]
    res = {}
    m = AutoModelForCausalLM.from_pretrained(folder, torch_dtype=torch.float32).cuda().eval()
    with torch.no_grad():
        ref = m(torch.tensor([ids], device="cuda")).logits[0].float().cpu().numpy().astype(np.float64)
    k = np.fromfile(kiln_logits, dtype=np.float32).reshape(len(ids), -1).astype(np.float64)
    d = k - ref
    res["logits_vs_torch_f32"] = {
        "positions": len(ids),
        "rel_l2": float(np.linalg.norm(d) / np.linalg.norm(ref)),
        "max_abs": float(np.abs(d).max()),
        "ref_max_abs": float(np.abs(ref).max()),
        "top1_agree": float((k.argmax(1) == ref.argmax(1)).mean()),
    }
    print(json.dumps(res), flush=True)
    del m
    torch.cuda.empty_cache()

    m = AutoModelForCausalLM.from_pretrained(folder, torch_dtype=torch.bfloat16).cuda().eval()
    m.generation_config.eos_token_id = None
    m.generation_config.pad_token_id = 0

    def decode(batch, new):
        x = torch.randint(0, 1000, (batch, 32), device="cuda")
        torch.cuda.synchronize()
        t = time.perf_counter()
        with torch.no_grad():
            out = m.generate(x, max_new_tokens=new, min_new_tokens=new, do_sample=False)
        torch.cuda.synchronize()
        got = out.shape[1] - 32
        return batch * got / (time.perf_counter() - t)

    decode(1, 4)
    res["torch_bf16_decode_batch1_tok_s"] = decode(1, 64)
    res["torch_bf16_decode_batch64_tok_s"] = decode(64, 64)
    x = torch.randint(0, 1000, (1, 2048), device="cuda")
    with torch.no_grad():
        m(x)
        torch.cuda.synchronize()
        t = time.perf_counter()
        m(x)
        torch.cuda.synchronize()
    res["torch_bf16_prefill_2048_tok_s"] = 2048 / (time.perf_counter() - t)
    with open(out_json, "w") as f:
        json.dump(res, f, indent=1)
    print(json.dumps(res), flush=True)


if __name__ == "__main__":
    main()
