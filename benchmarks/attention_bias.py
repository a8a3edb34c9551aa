"""Attention with a position bias on the CPU, side by side: what a bias costs at inference.

Two findings it measures:
- PyTorch's fused CPU SDPA kernel takes an additive mask only in 4D; a 3D
  (heads, T, T) mask, which broadcasts correctly, silently sends the call to the
  math path. cpvt's attention therefore hands SDPA ``bias[None]``.
- PaPE's bias written as five (T, T) terms against the same sum factored into
  one query-side by key-side product (``2K + 1`` channels, as in PaPE's code).

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/attention_bias.py [--batch 16] [--repeats 3]

Prints forward times per call and ratios (> 1: the second is faster), then the
inference time of micro models with each bias encoding relative to the APE model.
"""

from __future__ import annotations

import argparse

import torch
import torch.nn.functional as F

import cpvt
from attention_backends import time_call  # benchmarks/ is on the path when a script here runs


def pape_terms(a, slope, u, scale):
    """The bias as separate (T, T) terms: sum_k -a (u_i - u_j)^2 + slope (u_i - u_j)."""
    ui = u[None]
    quad = (a * ui * ui).sum(-1, keepdim=True) + a @ (u * u).transpose(-1, -2) - 2 * (a * ui) @ u.transpose(-1, -2)
    lin = (slope * ui).sum(-1, keepdim=True) - slope @ u.transpose(-1, -2)
    return scale * (lin - quad)


def pape_product(a, slope, u, scale):
    """The same sum as one product of (B, H, T, 2K + 1) and (H, 2K + 1, T) features."""
    ui = u[None]
    row = (slope * ui - a * ui * ui).sum(-1, keepdim=True)
    query = torch.cat([row, -a, 2 * a * ui - slope], dim=-1) * scale
    key = torch.cat([torch.ones_like(u[..., :1]), u * u, u], dim=-1)
    return query @ key.transpose(-1, -2)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--grids", default="8,16,28", help="token grid sides (micro models at 64, 128, 224 px)")
    args = p.parse_args()
    torch.manual_seed(0)
    b, heads, dim, k = args.batch, 4, 16, 12  # the cpu budget's micro models: width 64, 4 heads, 12 parabolas
    sides = [int(s) for s in args.grids.split(",")]
    print(f"torch {torch.__version__}, {torch.get_num_threads()} thread(s), batch {b}, {heads} heads, forward only\n")

    print(f"{'tokens':>7}{'3D mask ms':>12}{'4D mask ms':>12}{'3D/4D':>8}{'PaPE terms ms':>15}{'one product ms':>16}{'terms/product':>15}{'max |diff|':>12}")
    with torch.inference_mode():
        for side in sides:
            t = side * side + 1
            q, kk, v = (torch.randn(b, heads, t, dim) for _ in range(3))
            bias = torch.randn(heads, t, t)
            m3 = time_call(lambda: F.scaled_dot_product_attention(q, kk, v, attn_mask=bias), args.repeats)
            m4 = time_call(lambda: F.scaled_dot_product_attention(q, kk, v, attn_mask=bias[None]), args.repeats)
            a, slope = F.softplus(torch.randn(b, heads, t, k)), torch.randn(b, heads, t, k)
            u = torch.randn(heads, t, k) * side / 2
            terms = time_call(lambda: pape_terms(a, slope, u, dim ** -0.5), args.repeats)
            prod = time_call(lambda: pape_product(a, slope, u, dim ** -0.5), args.repeats)
            diff = (pape_terms(a, slope, u, dim ** -0.5) - pape_product(a, slope, u, dim ** -0.5)).abs().max().item()
            print(f"{t:>7}{m3 * 1e3:>12.1f}{m4 * 1e3:>12.1f}{m3 / m4:>8.2f}{terms * 1e3:>15.1f}{prod * 1e3:>16.1f}"
                  f"{terms / prod:>15.2f}{diff:>12.1e}")

    print(f"\nmicro models (depth 6, width 64, patch 8), batch {b}: inference time relative to the APE model")
    names = ["deit_micro", "deit_micro_alibi", "deit_micro_lookhere", "deit_micro_pape", "deit_micro_rpe"]
    models = {n: cpvt.create_model(n, depth=6, embed_dim=64, patch_size=8, img_size=64, num_classes=10).eval() for n in names}
    print(f"{'model':<22}" + "".join(f"{s * 8:>8}px" for s in sides))
    times = {n: [] for n in names}
    with torch.inference_mode():
        for side in sides:
            x = torch.randn(b, 3, side * 8, side * 8)
            for n in names:  # round-robin: machine drift hits every model alike
                times[n].append(time_call(lambda: models[n](x), args.repeats))
    for n in names:
        print(f"{n:<22}" + "".join(f"{t / ref:>10.2f}" for t, ref in zip(times[n], times["deit_micro"])))


if __name__ == "__main__":
    main()
