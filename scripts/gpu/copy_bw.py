"""Device-to-device copy bandwidth of 1 GiB (PyTorch), the reference for kernels' GB/s."""
import time

import torch

x = torch.empty(1 << 30, dtype=torch.uint8, device="cuda")
y = torch.empty_like(x)
for _ in range(3):
    y.copy_(x)
torch.cuda.synchronize()
t = time.perf_counter()
for _ in range(20):
    y.copy_(x)
torch.cuda.synchronize()
dt = (time.perf_counter() - t) / 20
print("copy GB/s (read+write)", round(2 * x.numel() / dt / 1e9))
