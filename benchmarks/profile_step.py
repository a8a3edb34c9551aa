"""Where a model's step spends its time on the CPU: torch.profiler, grouped into kinds of work.

    .venv/bin/python benchmarks/profile_step.py [--model cpvt_ti] [--mode infer|train] [--size 224]
        [--batch 32] [--dtype fp32|bf16] [--steps 3] [--top 15] [--json out.json]

Runs two warm-up steps, then profiles ``--steps`` steps (as every cpvt command,
after ``keep_freed_memory``; ``CPVT_MALLOC=default`` for glibc's own behaviour).
Prints the operators with the most self time, then the same time grouped into
kinds (matmul, attention, convolution, normalisation, activation, copies,
element-wise, optimiser, other), as shares of the total. Shares survive a noisy
machine better than times do.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections import defaultdict

import torch
from torch.profiler import ProfilerActivity, profile

import cpvt
from cpvt.train.allocator import keep_freed_memory
from throughput import step_fn  # the same step the throughput benchmark times (this script's folder is on sys.path)

KINDS = [  # (kind, substrings of aten operator names), first match wins
    ("attention", ("scaled_dot_product", "flash_attention", "_softmax", "bmm", "baddbmm")),
    ("matmul", ("addmm", "aten::mm", "matmul", "linear")),
    ("convolution", ("convolution", "conv2d", "conv_depthwise")),
    ("normalisation", ("layer_norm", "batch_norm")),
    ("activation", ("gelu", "silu", "relu")),
    ("copies", ("copy_", "contiguous", "clone", "cat", "to_copy")),
    ("optimiser", ("adam", "foreach", "Optimizer")),
    ("element-wise", ("aten::add", "aten::mul", "aten::div", "aten::sub", "aten::where", "aten::sum", "aten::mean",
                      "aten::fill_", "aten::zero_")),
]


def kind_of(name: str) -> str:
    return next((k for k, keys in KINDS if any(s in name for s in keys)), "other")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default="cpvt_ti")
    p.add_argument("--mode", choices=("infer", "train"), default="infer")
    p.add_argument("--size", type=int, default=224)
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--dtype", choices=("fp32", "bf16"), default="fp32")
    p.add_argument("--steps", type=int, default=3)
    p.add_argument("--top", type=int, default=15)
    p.add_argument("--json", help="write the grouped shares here")
    args = p.parse_args(argv)
    malloc = keep_freed_memory()
    torch.manual_seed(0)
    model = cpvt.create_model(args.model, img_size=args.size)
    step = step_fn(model, f"{args.mode} {args.dtype}", torch.randn(args.batch, 3, args.size, args.size))
    for _ in range(2):
        step()
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        for _ in range(args.steps):
            step()
    events = [e for e in prof.key_averages() if e.self_cpu_time_total > 0]
    total = sum(e.self_cpu_time_total for e in events)
    print(f"{args.model} {args.mode} {args.dtype} at {args.size} px, batch {args.batch}, {args.steps} steps, "
          f"{torch.get_num_threads()} threads, keep_freed_memory: {malloc}; self CPU {total / 1e6:.2f} s\n")
    print(f"{'operator':<52} {'share':>6} {'calls':>7}")
    for e in sorted(events, key=lambda e: -e.self_cpu_time_total)[:args.top]:
        print(f"{e.key[:52]:<52} {100 * e.self_cpu_time_total / total:>5.1f}% {e.count:>7}")
    groups: dict[str, float] = defaultdict(float)
    for e in events:
        groups[kind_of(e.key)] += e.self_cpu_time_total
    shares = {k: 100 * v / total for k, v in sorted(groups.items(), key=lambda kv: -kv[1])}
    print(f"\n{'kind':<16} {'share':>6}")
    for k, v in shares.items():
        print(f"{k:<16} {v:>5.1f}%")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"args": vars(args), "keep_freed_memory": malloc, "shares": shares}, f, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
