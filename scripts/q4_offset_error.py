#!/usr/bin/env python3
"""Relative error of a 4-bit product (Q4_0 and Q4_1 weights) with x rounded to 8 bits per
group of 32, when the offset term takes x's exact group sums (the GPU's k_mv1q) or the sums of
the rounded values (kiln's CPU kernels, llama.cpp): numpy, float64 reference over the decoded
weights. usage: python3 scripts/q4_offset_error.py [ROWS] [COLS] [SEED]"""
import sys
import numpy as np

rows = int(sys.argv[1]) if len(sys.argv) > 1 else 512
cols = int(sys.argv[2]) if len(sys.argv) > 2 else 2048
rng = np.random.default_rng(int(sys.argv[3]) if len(sys.argv) > 3 else 0)
g = cols // 32
x = rng.standard_normal(cols)
xg = x.reshape(g, 32)
amax = np.abs(xg).max(axis=1, keepdims=True)
dx = amax / 127.0
xq = np.rint(xg / dx)  # -127..127
exact_sum = xg.sum(axis=1)
rounded_sum = dx[:, 0] * xq.sum(axis=1)
for name in ["Q4_0", "Q4_1"]:
    q = rng.integers(0, 16, size=(rows, g, 32)).astype(np.float64)
    d = rng.uniform(0.001, 0.02, size=(rows, g))
    m = -8.0 * d if name == "Q4_0" else rng.uniform(-0.1, 0.0, size=(rows, g))
    w = d[:, :, None] * q + m[:, :, None]
    want = (w * xg[None]).sum(axis=(1, 2))
    dot = (d * dx[:, 0][None] * (q * xq[None]).sum(axis=2))
    for label, s in [("exact sums", exact_sum), ("rounded sums", rounded_sum)]:
        got = (dot + m * s[None]).sum(axis=1)
        err = np.linalg.norm(got - want) / np.linalg.norm(want)
        print(f"{name} {rows}x{cols}, offsets with {label}: relative error {100 * err:.2f}%")
