#!/usr/bin/env python3
"""Makes the tiny random-weight models that kiln's architecture tests compare against.

For each architecture (llama, qwen2, phi3) this writes, under OUTDIR/tiny-ARCH/:

  hf/              a Hugging Face folder: config.json, f32 *.safetensors (qwen2's sharded with an
                   index), tokenizer.json, tokenizer_config.json (chat template, special tokens)
  model.gguf       the same model as GGUF, written the way llama.cpp's converter writes it
                   (llama: q/k rows permuted for interleaved RoPE; phi3: fused qkv and gate/up)
  lora/            a PEFT LoRA adapter with random, non-zero A and B
  reference.json   prompts, their token ids, a rendered chat prompt, and the logits layout
  logits_base.f32  little-endian f32 logits of every position of every prompt, base model
  logits_lora.f32  the same with the adapter merged by PEFT (merge_and_unload)

The weights are random but the structure is real: GQA ratios, q/k/v biases (qwen2), tied
embeddings (qwen2) or an untied head, fused projections (phi3 in its HF folder), a
byte-level BPE vocabulary (qwen2) or a SentencePiece-style BPE with byte fallback (llama,
phi3). Reference logits are computed in float64 on the CPU with transformers' eager
attention, so they are the exact values that f32 implementations approximate.

Usage: python3 scripts/make_tiny_fixtures.py OUTDIR
Needs: torch, transformers (5.x), peft, safetensors, tokenizers, jinja2, numpy, gguf (gguf-py).
"""

import json
import os
import sys

import numpy as np

CORPUS = [
    "The quick brown fox jumps over the lazy dog.",
    "Hello, world! This is a tiny model for testing the kiln inference engine.",
    "Once upon a time, there was a little robot who loved to read books about the sea.",
    "The sky is blue because light scatters in the air; the sunset is red for the same reason.",
    "I don't think we'll stop now: they're going to the market, and she's buying apples.",
    "Numbers like 1234, 56 and 7890 appear in text, as do dates such as 2024-05-17.",
    "def add(a, b):\n    return a + b\n\nprint(add(2, 3))\n",
    "Question: what is the capital of France?\nAnswer: Paris is the capital of France.",
    "Machine learning models predict the next token given the previous tokens in a sequence.",
    "Café, naïve, résumé: a few accented words appear here and there.",
    "We the people, in order to form a more perfect union, establish justice.",
    "A language model assigns probabilities to sequences of words and characters.",
    "The weather today is sunny with a chance of rain in the late afternoon.",
    "Please write a short story about a cat, a hat, and a very small boat.",
] * 3

PROMPTS = [
    "The quick brown fox jumps over the lazy dog.",
    "Hello, world! 1234 isn't 56 \u20ac caf\u00e9 \U0001F642 done",
]
CHAT = [
    {"role": "system", "content": "You are a helpful assistant."},
    {"role": "user", "content": "Tell me about the sea, please."},
]

QWEN2_PATTERN = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*"
    r"|\s*[\r\n]+|\s+(?!\S)|\s+"
)

TEMPLATES = {
    # TinyLlama-1.1B-Chat's (Zephyr style): relies on trim_blocks.
    "llama": (
        "{% for message in messages %}\n{% if message['role'] == 'user' %}\n"
        "{{ '<|user|>\n' + message['content'] + eos_token }}\n"
        "{% elif message['role'] == 'system' %}\n{{ '<|system|>\n' + message['content'] + eos_token }}\n"
        "{% elif message['role'] == 'assistant' %}\n{{ '<|assistant|>\n'  + message['content'] + eos_token }}\n"
        "{% endif %}\n{% if loop.last and add_generation_prompt %}\n{{ '<|assistant|>' }}\n{% endif %}\n"
        "{% endfor %}"
    ),
    # Qwen2.5-Instruct's, without the tool-calling branches.
    "qwen2": (
        "{%- if messages[0]['role'] == 'system' %}\n"
        "    {{- '<|im_start|>system\\n' + messages[0]['content'] + '<|im_end|>\\n' }}\n"
        "{%- else %}\n"
        "    {{- '<|im_start|>system\\nYou are Qwen, created by Alibaba Cloud. You are a helpful assistant.<|im_end|>\\n' }}\n"
        "{%- endif %}\n"
        "{%- for message in messages %}\n"
        "    {%- if (message.role == \"user\") or (message.role == \"system\" and not loop.first) or (message.role == \"assistant\" and not message.tool_calls) %}\n"
        "        {{- '<|im_start|>' + message.role + '\\n' + message.content + '<|im_end|>' + '\\n' }}\n"
        "    {%- endif %}\n"
        "{%- endfor %}\n"
        "{%- if add_generation_prompt %}\n"
        "    {{- '<|im_start|>assistant\\n' }}\n"
        "{%- endif %}\n"
    ),
    # Phi-3-mini-4k-instruct's.
    "phi3": (
        "{% for message in messages %}{% if message['role'] == 'system' %}"
        "{{'<|system|>\n' + message['content'] + '<|end|>\n'}}"
        "{% elif message['role'] == 'user' %}{{'<|user|>\n' + message['content'] + '<|end|>\n'}}"
        "{% elif message['role'] == 'assistant' %}{{'<|assistant|>\n' + message['content'] + '<|end|>\n'}}"
        "{% endif %}{% endfor %}{% if add_generation_prompt %}{{ '<|assistant|>\n' }}{% else %}{{ eos_token }}{% endif %}"
    ),
}


# ----------------------------------------------------------------------------- tokenizers

def merges_of(tok):
    """The trained merges as (left, right) pairs, whatever format this tokenizers version saves."""
    m = json.loads(tok.to_str())["model"]["merges"]
    return [tuple(x.split(" ", 1)) if isinstance(x, str) else tuple(x) for x in m]


def byte_level_tokenizer(n_merges, specials):
    """Qwen2-style: NFC, Qwen2's split regex, byte-level BPE, specials appended at the end."""
    from tokenizers import AddedToken, Regex, Tokenizer, decoders, models, normalizers
    from tokenizers import pre_tokenizers, processors, trainers

    tok = Tokenizer(models.BPE())
    tok.normalizer = normalizers.NFC()
    tok.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(QWEN2_PATTERN), behavior="isolated", invert=False),
        pre_tokenizers.ByteLevel(add_prefix_space=False, trim_offsets=False, use_regex=False),
    ])
    tok.decoder = decoders.ByteLevel(add_prefix_space=False, trim_offsets=False, use_regex=False)
    alphabet = pre_tokenizers.ByteLevel.alphabet()
    trainer = trainers.BpeTrainer(vocab_size=len(alphabet) + n_merges, initial_alphabet=alphabet,
                                  show_progress=False, special_tokens=[])
    tok.train_from_iterator(CORPUS, trainer)
    tok.post_processor = processors.ByteLevel(trim_offsets=False)
    tok.add_special_tokens([AddedToken(s, special=True, normalized=False) for s in specials])
    return tok


def spm_tokenizer(n_merges, legacy, extra_specials, add_bos):
    """Llama-style BPE: `<unk> <s> </s>`, 256 byte-fallback tokens, then pieces with ▁ for spaces.

    `legacy` gives TinyLlama's form (Prepend + Replace normalizer, no pre-tokenizer); otherwise
    the newer form (Metaspace pre-tokenizer, prepend_scheme "first").
    """
    from tokenizers import AddedToken, Tokenizer, decoders, models, normalizers
    from tokenizers import pre_tokenizers, processors, trainers

    trainer_tok = Tokenizer(models.BPE(unk_token="<unk>"))
    trainer_tok.pre_tokenizer = pre_tokenizers.Metaspace(replacement="\u2581", prepend_scheme="always", split=True)
    base = ["<unk>", "<s>", "</s>"]
    trainer = trainers.BpeTrainer(vocab_size=200 + n_merges, special_tokens=base, show_progress=False,
                                  limit_alphabet=70)
    trainer_tok.train_from_iterator(CORPUS, trainer)
    trained = trainer_tok.get_vocab()
    merges = merges_of(trainer_tok)
    vocab = {t: i for i, t in enumerate(base)}
    for b in range(256):
        vocab[f"<0x{b:02X}>"] = len(vocab)
    for t, _ in sorted(trained.items(), key=lambda kv: kv[1]):
        if t not in vocab:
            vocab[t] = len(vocab)
    tok = Tokenizer(models.BPE(vocab=vocab, merges=merges, unk_token="<unk>", byte_fallback=True, fuse_unk=True))
    if legacy:
        tok.normalizer = normalizers.Sequence([normalizers.Prepend("\u2581"), normalizers.Replace(" ", "\u2581")])
        tok.decoder = decoders.Sequence([decoders.Replace("\u2581", " "), decoders.ByteFallback(), decoders.Fuse(),
                                         decoders.Strip(" ", 1, 0)])
    else:
        tok.pre_tokenizer = pre_tokenizers.Metaspace(replacement="\u2581", prepend_scheme="first", split=False)
        tok.decoder = decoders.Sequence([decoders.Metaspace(replacement="\u2581", prepend_scheme="first", split=False),
                                         decoders.ByteFallback(), decoders.Fuse()])
    tok.add_special_tokens([AddedToken(s, special=True, normalized=False) for s in base])
    tok.add_special_tokens([AddedToken(s, special=True, normalized=False) for s in extra_specials])
    if add_bos:
        tok.post_processor = processors.TemplateProcessing(
            single="<s> $A", pair="<s> $A <s> $B", special_tokens=[("<s>", vocab["<s>"])])
    return tok


# ----------------------------------------------------------------------------- models

def init_random(model, torch, std=0.1):
    """Random weights big enough that logits are far from uniform; norms around 1."""
    g = torch.Generator().manual_seed(1234)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "norm" in name:
                p.copy_(1.0 + std * torch.randn(p.shape, generator=g))
            else:
                p.copy_(std * torch.randn(p.shape, generator=g))


def rope_theta_of(cfg_json):
    rp = cfg_json.get("rope_parameters") or {}
    return float(rp.get("rope_theta", cfg_json.get("rope_theta", 10000.0)))


def llama_permute(w, n_head, n_head_kv):
    """llama.cpp's convert_hf_to_gguf.py LlamaModel.permute (halves -> interleaved pairs)."""
    if n_head_kv is not None and n_head != n_head_kv:
        n_head = n_head_kv
    return (w.reshape(n_head, 2, w.shape[0] // n_head // 2, *w.shape[1:])
            .swapaxes(1, 2).reshape(w.shape))


def write_gguf(path, arch, cfg, sd, tok_json, tok_cfg, spm, chat_template):
    import gguf

    w = gguf.GGUFWriter(path, arch)
    w.add_name(f"tiny-{arch}")
    n_head, n_kv = cfg["num_attention_heads"], cfg["num_key_value_heads"]
    dim = cfg["hidden_size"]
    w.add_context_length(cfg["max_position_embeddings"])
    w.add_embedding_length(dim)
    w.add_block_count(cfg["num_hidden_layers"])
    w.add_feed_forward_length(cfg["intermediate_size"])
    w.add_head_count(n_head)
    w.add_head_count_kv(n_kv)
    w.add_rope_freq_base(rope_theta_of(cfg))
    w.add_layer_norm_rms_eps(cfg["rms_norm_eps"])
    w.add_rope_dimension_count(dim // n_head)
    w.add_file_type(0)  # ALL_F32
    if arch == "phi3":
        w.add_uint32("phi3.rope.scaling.original_context_length", cfg.get("original_max_position_embeddings") or cfg["max_position_embeddings"])

    # Vocabulary, in id order, with llama.cpp's token types.
    model = tok_json["model"]
    added = {t["id"]: t for t in tok_json["added_tokens"]}
    id_to_tok = {i: t for t, i in model["vocab"].items()}
    for i, t in added.items():
        id_to_tok[i] = t["content"]
    n_vocab = max(id_to_tok) + 1
    tokens, types, scores = [], [], []
    merges = [tuple(m.split(" ", 1)) if isinstance(m, str) else tuple(m) for m in model["merges"]]
    rank = {a + b: r for r, (a, b) in enumerate(merges)}
    for i in range(n_vocab):
        t = id_to_tok[i]
        tokens.append(t)
        if i in added and added[i]["special"]:
            types.append(2 if t == "<unk>" else 3)
        elif spm and len(t) == 6 and t.startswith("<0x") and t.endswith(">"):
            types.append(6)
        else:
            types.append(1)
        # SentencePiece merges the pair whose union scores best: a merge's rank, negated.
        scores.append(-float(rank[t]) if t in rank else 0.0)
    w.add_tokenizer_model("llama" if spm else "gpt2")
    if not spm:
        w.add_tokenizer_pre("qwen2")
        w.add_token_merges([f"{a} {b}" for a, b in merges])
    w.add_token_list(tokens)
    w.add_token_types(types)
    if spm:
        w.add_token_scores(scores)
        w.add_add_space_prefix(True)
    tid = {t: i for i, t in enumerate(tokens)}
    if tok_cfg.get("bos_token"):
        w.add_bos_token_id(tid[tok_cfg["bos_token"]])
    elif arch == "qwen2":
        w.add_bos_token_id(tid["<|endoftext|>"])
    w.add_eos_token_id(tid[tok_cfg["eos_token"]])
    if "<unk>" in tid:
        w.add_unk_token_id(tid["<unk>"])
    w.add_add_bos_token(bool(tok_cfg.get("add_bos_token", False)))
    w.add_chat_template(chat_template)

    def t(name, arr):
        w.add_tensor(name, np.ascontiguousarray(arr, dtype=np.float32))

    t("token_embd.weight", sd["model.embed_tokens.weight"])
    t("output_norm.weight", sd["model.norm.weight"])
    if "lm_head.weight" in sd and not cfg.get("tie_word_embeddings", False):
        t("output.weight", sd["lm_head.weight"])
    for l in range(cfg["num_hidden_layers"]):
        p = f"model.layers.{l}."
        b = f"blk.{l}."
        t(b + "attn_norm.weight", sd[p + "input_layernorm.weight"])
        t(b + "ffn_norm.weight", sd[p + "post_attention_layernorm.weight"])
        t(b + "attn_output.weight", sd[p + "self_attn.o_proj.weight"])
        t(b + "ffn_down.weight", sd[p + "mlp.down_proj.weight"])
        if arch == "phi3":
            t(b + "attn_qkv.weight", sd[p + "self_attn.qkv_proj.weight"])
            t(b + "ffn_up.weight", sd[p + "mlp.gate_up_proj.weight"])
            continue
        q, k = sd[p + "self_attn.q_proj.weight"], sd[p + "self_attn.k_proj.weight"]
        if arch == "llama":
            q, k = llama_permute(q, n_head, n_head), llama_permute(k, n_head, n_kv)
        t(b + "attn_q.weight", q)
        t(b + "attn_k.weight", k)
        t(b + "attn_v.weight", sd[p + "self_attn.v_proj.weight"])
        for x in "qkv":
            key = p + f"self_attn.{x}_proj.bias"
            if key in sd:
                t(b + f"attn_{x}.bias", sd[key])
        t(b + "ffn_gate.weight", sd[p + "mlp.gate_proj.weight"])
        t(b + "ffn_up.weight", sd[p + "mlp.up_proj.weight"])
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()


def render_chat(template, tok_cfg):
    """What transformers' apply_chat_template renders (same jinja2 environment settings)."""
    from jinja2.sandbox import ImmutableSandboxedEnvironment

    env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True)
    return env.from_string(template).render(
        messages=CHAT, add_generation_prompt=True,
        bos_token=tok_cfg.get("bos_token") or "", eos_token=tok_cfg.get("eos_token") or "")


def logits_of(model, torch, prompts_ids):
    m = model.double().eval()
    out = []
    with torch.no_grad():
        for ids in prompts_ids:
            x = torch.tensor([ids], dtype=torch.long)
            out.append(m(input_ids=x).logits[0].float().numpy())
    return np.concatenate(out, axis=0)


def eager(cfg):
    """Plain attention for the reference: the textbook computation, no fused kernels."""
    try:
        cfg._attn_implementation = "eager"
    except Exception:  # older or newer config classes may refuse; sdpa in float64 is as exact
        pass
    return cfg


def make(arch, out_root):
    import torch
    import transformers
    from peft import LoraConfig, get_peft_model

    torch.manual_seed(0)
    folder = os.path.join(out_root, f"tiny-{arch}")
    hf = os.path.join(folder, "hf")
    os.makedirs(hf, exist_ok=True)

    if arch == "qwen2":
        specials = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
        tok = byte_level_tokenizer(140, specials)
        tok_cfg = {"bos_token": None, "eos_token": "<|im_end|>", "pad_token": "<|endoftext|>",
                   "add_bos_token": False}
        spm = False
    elif arch == "llama":
        tok = spm_tokenizer(120, legacy=True, extra_specials=[], add_bos=True)
        tok_cfg = {"bos_token": "<s>", "eos_token": "</s>", "unk_token": "<unk>", "add_bos_token": True,
                   "add_eos_token": False, "legacy": True}
        spm = True
    else:
        tok = spm_tokenizer(120, legacy=False, add_bos=False, extra_specials=[
            "<|endoftext|>", "<|assistant|>", "<|placeholder1|>", "<|end|>", "<|system|>", "<|user|>"])
        tok_cfg = {"bos_token": "<s>", "eos_token": "<|endoftext|>", "unk_token": "<unk>",
                   "pad_token": "<|endoftext|>", "add_bos_token": False, "add_eos_token": False}
        spm = True
    tok_cfg["chat_template"] = TEMPLATES[arch]
    tok_cfg["tokenizer_class"] = "PreTrainedTokenizerFast"
    tok_cfg["model_max_length"] = 256
    tok.save(os.path.join(hf, "tokenizer.json"))
    with open(os.path.join(hf, "tokenizer_config.json"), "w") as f:
        json.dump(tok_cfg, f, indent=2, ensure_ascii=False)
    vocab = tok.get_vocab_size(with_added_tokens=True)
    tid = tok.get_vocab(with_added_tokens=True)

    common = dict(vocab_size=vocab, hidden_size=64, num_hidden_layers=2, max_position_embeddings=256,
                  rms_norm_eps=1e-5, hidden_act="silu")
    if arch == "llama":
        cfg = transformers.LlamaConfig(**common, intermediate_size=128, num_attention_heads=4,
                                       num_key_value_heads=1, rope_theta=10000.0, tie_word_embeddings=False,
                                       attention_bias=False, mlp_bias=False, bos_token_id=tid["<s>"],
                                       eos_token_id=tid["</s>"])
        model = transformers.LlamaForCausalLM(eager(cfg))
        targets = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
    elif arch == "qwen2":
        common["num_hidden_layers"] = 3
        cfg = transformers.Qwen2Config(**common, intermediate_size=160, num_attention_heads=4,
                                       num_key_value_heads=2, rope_theta=1000000.0, tie_word_embeddings=True,
                                       use_sliding_window=False, bos_token_id=tid["<|endoftext|>"],
                                       eos_token_id=tid["<|im_end|>"])
        model = transformers.Qwen2ForCausalLM(eager(cfg))
        targets = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
    else:
        cfg = transformers.Phi3Config(**common, intermediate_size=128, num_attention_heads=4,
                                      num_key_value_heads=4, rope_theta=10000.0, rope_scaling=None,
                                      original_max_position_embeddings=256, partial_rotary_factor=1.0,
                                      tie_word_embeddings=False, sliding_window=None,
                                      resid_pdrop=0.0, embd_pdrop=0.0, attention_dropout=0.0,
                                      bos_token_id=tid["<s>"], eos_token_id=tid["<|endoftext|>"],
                                      pad_token_id=tid["<|endoftext|>"])
        model = transformers.Phi3ForCausalLM(eager(cfg))
        targets = ["qkv_proj", "o_proj", "gate_up_proj", "down_proj"]
    model = model.float()
    init_random(model, torch)
    if arch == "qwen2":
        model.save_pretrained(hf, max_shard_size="150KB")
    else:
        model.save_pretrained(hf)
    with open(os.path.join(hf, "config.json")) as f:
        cfg_json = json.load(f)
    sd = {k: v.detach().float().numpy().copy() for k, v in model.state_dict().items()}
    if cfg_json.get("tie_word_embeddings"):
        sd.pop("lm_head.weight", None)

    chat_text = render_chat(TEMPLATES[arch], tok_cfg)
    prompts = [{"text": p, "ids": tok.encode(p, add_special_tokens=True).ids} for p in PROMPTS]
    prompts.append({"text": chat_text, "ids": tok.encode(chat_text, add_special_tokens=False).ids,
                    "chat": CHAT})
    all_ids = [p["ids"] for p in prompts]
    decoded = [tok.decode(p["ids"], skip_special_tokens=True) for p in prompts[:2]]

    base_logits = logits_of(model, torch, all_ids)
    model = model.float()

    write_gguf(os.path.join(folder, "model.gguf"), arch, cfg_json, sd, json.loads(tok.to_str()),
               tok_cfg, spm, TEMPLATES[arch])

    # LoRA: random, non-zero A and B on every projection; PEFT merges it for the reference.
    lcfg = LoraConfig(r=4, lora_alpha=8, lora_dropout=0.0, target_modules=targets, bias="none",
                      init_lora_weights=False, task_type="CAUSAL_LM")
    pm = get_peft_model(model, lcfg)
    g = torch.Generator().manual_seed(99)
    with torch.no_grad():
        for name, p in pm.named_parameters():
            if "lora_" in name:
                p.copy_(0.1 * torch.randn(p.shape, generator=g))
    pm.save_pretrained(os.path.join(folder, "lora"))
    card = os.path.join(folder, "lora", "README.md")  # PEFT's boilerplate model card
    if os.path.exists(card):
        os.remove(card)
    merged = pm.merge_and_unload()
    lora_logits = logits_of(merged, torch, all_ids)

    base_logits.astype("<f4").tofile(os.path.join(folder, "logits_base.f32"))
    lora_logits.astype("<f4").tofile(os.path.join(folder, "logits_lora.f32"))
    ref = {
        "arch": arch,
        "vocab_size": vocab,
        "prompts": prompts,
        "decoded": decoded,
        "logits": {"rows": int(base_logits.shape[0]), "cols": int(base_logits.shape[1]),
                   "order": "prompt by prompt, every position, row-major", "dtype": "float64 reference stored as f32"},
        "lora": {"r": 4, "alpha": 8, "targets": targets},
        "versions": {"torch": torch.__version__, "transformers": transformers.__version__},
    }
    with open(os.path.join(folder, "reference.json"), "w") as f:
        json.dump(ref, f, indent=1, ensure_ascii=False)
    print(arch, "vocab", vocab, "logit std", float(base_logits.std()),
          "lora change", float(np.abs(lora_logits - base_logits).max()),
          "ids", [len(i) for i in all_ids], flush=True)


def main():
    out = sys.argv[1] if len(sys.argv) > 1 else "tiny-fixtures"
    archs = sys.argv[2:] or ["llama", "qwen2", "phi3"]
    failed = []
    for arch in archs:
        try:
            make(arch, out)
        except Exception:  # keep going: one architecture's failure should not cost the others
            import traceback
            traceback.print_exc()
            failed.append(arch)
    if failed:
        print("FAILED:", failed)
        sys.exit(1)


if __name__ == "__main__":
    main()
