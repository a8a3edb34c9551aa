"""CPU attention: PyTorch's fused SDPA kernel against the math path, side by side.

Finding that motivates it: in bf16 on the CPU the fused kernel's backward is
several times slower than the plain math path for micro-model shapes, so the
training engine should choose the backend by measurement, not by default.

    .venv/bin/python benchmarks/attention_backends.py [--threads 2] [--repeats 5]

Prints forward+backward time per call and the ratio math/fused (< 1: math is faster).
"""

from __future__ import annotations

import argparse
import time

import torch
import torch.nn.functional as F
from torch.nn.attention import SDPBackend, sdpa_kernel

# (label, batch, heads, tokens, head_dim)
SHAPES = [
    ("slim micro 64px/8, b128", 128, 4, 65, 16),  # the Imagenette protocol (width 64, 4 heads, patch 8)
    ("micro 32px, batch 128", 128, 4, 65, 32),
    ("micro 64px, batch 64", 64, 4, 257, 32),
    ("tiny 224px, batch 32", 32, 3, 197, 64),
]


def time_call(fn, repeats: int) -> float:
    fn()  # warm-up
    t = time.perf_counter()
    for _ in range(repeats):
        fn()
    return (time.perf_counter() - t) / repeats


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--repeats", type=int, default=5)
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    print(f"torch {torch.__version__}, {args.threads} threads, forward+backward per call\n")
    print(f"{'shape':<26}{'dtype':<10}{'fused ms':>10}{'math ms':>10}{'math/fused':>12}")
    for label, b, h, t, d in SHAPES:
        for dtype in (torch.float32, torch.bfloat16):
            q, k, v = (torch.randn(b, h, t, d, dtype=dtype, requires_grad=True) for _ in range(3))
            res = {}
            for backend in (SDPBackend.FLASH_ATTENTION, SDPBackend.MATH):
                def step():
                    with sdpa_kernel(backend):
                        F.scaled_dot_product_attention(q, k, v).sum().backward()
                res[backend] = time_call(step, args.repeats) * 1e3
            fused, math_ = res[SDPBackend.FLASH_ATTENTION], res[SDPBackend.MATH]
            print(f"{label:<26}{str(dtype).split('.')[-1]:<10}{fused:>10.1f}{math_:>10.1f}{math_ / fused:>12.2f}")


if __name__ == "__main__":
    main()
