"""Where a model's step spends its time on the CPU: torch.profiler, grouped into kinds of work.

    .venv/bin/python benchmarks/profile_step.py [--model cpvt_ti] [--mode infer|train] [--size 224]
        [--batch 32] [--dtype fp32|bf16] [--steps 3] [--top 15] [--json out.json]

    .venv-timm/bin/python benchmarks/profile_step.py --compare timm,deit_tiny,cpvt_ti [--mode train] ...

``--compare`` profiles several models the same way and prints their operators side by side (ms per step and
calls per step): the check that two models run the same kernels (``timm``: timm's DeiT-Ti, when timm imports).

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
from throughput import step_fn, timm_model  # the same step the throughput benchmark times (this script's folder is on sys.path)

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


def profile_model(model: torch.nn.Module, args) -> list:
    """Operator events (self CPU time > 0) of ``args.steps`` profiled steps, after two warm-up steps."""
    step = step_fn(model, f"{args.mode} {args.dtype}", torch.randn(args.batch, 3, args.size, args.size))
    for _ in range(2):
        step()
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        for _ in range(args.steps):
            step()
    return [e for e in prof.key_averages() if e.self_cpu_time_total > 0]


def compare(args) -> int:
    """Side by side: each operator's ms and calls per step in every model of ``--compare``."""
    per: dict[str, dict[str, tuple[float, float]]] = {}
    for name in args.compare.split(","):
        torch.manual_seed(0)
        model = timm_model(args.size) if name == "timm" else cpvt.create_model(name, img_size=args.size)
        if model is None:
            raise SystemExit("timm does not import here: run this with .venv-timm/bin/python (make timm-env)")
        per[name] = {e.key: (e.self_cpu_time_total / 1e3 / args.steps, e.count / args.steps)
                     for e in profile_model(model, args)}
    names = list(per)
    print(f"{args.mode} {args.dtype} at {args.size} px, batch {args.batch}, {args.steps} steps, "
          f"{torch.get_num_threads()} threads; ms per step (calls per step)\n")
    print(f"{'operator':<46}" + "".join(f"{n:>22}" for n in names))
    ops = sorted(set().union(*per.values()), key=lambda k: -max(per[n].get(k, (0, 0))[0] for n in names))
    for op in ops[:args.top]:
        print(f"{op[:46]:<46}" + "".join(f"{per[n].get(op, (0, 0))[0]:>13.1f} ({per[n].get(op, (0, 0))[1]:>5.0f})"
                                          for n in names))
    print(f"{'all operators':<46}" + "".join(
        f"{sum(v[0] for v in per[n].values()):>13.1f} ({sum(v[1] for v in per[n].values()):>5.0f})" for n in names))
    return 0


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
    p.add_argument("--compare", help="comma-separated models (timm: timm's DeiT-Ti) profiled side by side")
    args = p.parse_args(argv)
    malloc = keep_freed_memory()
    if args.compare:
        return compare(args)
    torch.manual_seed(0)
    model = cpvt.create_model(args.model, img_size=args.size)
    events = profile_model(model, args)
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
