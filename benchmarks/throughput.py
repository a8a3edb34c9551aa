"""Throughput: cpvt models eager and compiled, beside timm's DeiT-Ti and the machine's matmul limit, in one run.

    .venv/bin/python benchmarks/throughput.py [--sizes 224,384] [--batch 32] [--rounds 5] [--json out.json]
    python3 benchmarks/throughput.py --device cuda --modes "infer bf16,train bf16" ...   # on a GPU
    .venv-timm/bin/python benchmarks/throughput.py ...   # adds timm's deit_tiny_patch16_224 (`make timm-env`)
    ... --memory                                         # also peak RSS of training / evaluation, one process each

Every subject is measured in the same process, in interleaved rounds (subject after
subject, round after round; the order reversed in every other round, so no subject always
runs first or last), and each cell is the median over rounds, so a noisy
machine moves every column alike: read the ratios, not the absolute numbers.

Subjects: timm's DeiT-Ti (when timm imports), cpvt's DeiT-Ti, DeiT-Ti without position and CPVT-Ti, eager;
unless ``--no-compile``, cpvt's DeiT-Ti and CPVT-Ti compiled, and timm's and cpvt's compiled with inductor's
freezing (``compiled+frozen``: inference columns only, as ``cpvt eval --compile`` runs). The CPU's model name
and bf16 instruction sets are printed and stored in the JSON.

Modes (``--modes``): inference and one training step (forward, backward, AdamW),
each in fp32 and under bf16 autocast. On a CPU without bf16 instructions (AVX2
only) bf16 is emulated, so there the fp32 columns are the ones to read. The
process calls ``cpvt.train.allocator.keep_freed_memory`` first, as every cpvt command
does; it is process-wide, so timm's model runs under it too. The matmul limit is the best GFLOP/s of a large square
matmul in each dtype, measured between the rounds; "of limit" is the model's
achieved GFLOP/s (forward FLOPs from ``cpvt.models.info.count_flops``, training counted
as 3x the forward) over that limit.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

import cpvt
from cpvt.models.info import count_flops
from cpvt.train.allocator import keep_freed_memory
from cpvt.utils.compiling import compile_model
from cpvt.train.precision import cpu_description, cpu_has_native_bf16
from cpvt.utils.table import format_table

MODES = ("infer fp32", "infer bf16", "train fp32", "train bf16")
CPU = torch.device("cpu")


def timm_model(size: int):
    """timm's deit_tiny_patch16_224 at ``size`` (random weights), or None when timm cannot be imported."""
    try:
        import timm
    except Exception:  # noqa: BLE001 - timm imports torchvision, whose compiled ops fail with the CPU-only build
        return None
    return timm.create_model("deit_tiny_patch16_224", img_size=size, num_classes=1000)


def subjects(size: int, compiled: bool, device: torch.device = CPU) -> dict[str, torch.nn.Module]:
    out = _subjects(size, compiled)
    return {name: m.to(device) for name, m in out.items()}


def _subjects(size: int, compiled: bool) -> dict[str, torch.nn.Module]:
    out: dict[str, torch.nn.Module] = {}
    t = timm_model(size)
    if t is not None:
        out["timm deit_tiny"] = t
    for name in ("deit_tiny", "deit_tiny_nope", "cpvt_ti"):
        out[f"cpvt {name}"] = cpvt.create_model(name, img_size=size)
    if compiled:
        for name in ("deit_tiny", "cpvt_ti"):
            out[f"cpvt {name} compiled"] = torch.compile(cpvt.create_model(name, img_size=size))
        # frozen (inference only): weights folded into the graph and pre-packed, as `cpvt eval --compile` runs
        if t is not None:
            out["timm deit_tiny compiled+frozen"] = compile_model(timm_model(size), frozen=True)
        for name in ("deit_tiny", "cpvt_ti"):
            out[f"cpvt {name} compiled+frozen"] = compile_model(cpvt.create_model(name, img_size=size), frozen=True)
    return out


def step_fn(model: torch.nn.Module, mode: str, x: torch.Tensor):
    """One timed call: inference, or a training step (its own optimiser), in fp32 or under bf16 autocast."""
    kind = x.device.type
    if mode.startswith("infer"):
        model.eval()
        bf16 = mode.endswith("bf16")

        def infer():
            with torch.no_grad(), torch.autocast(kind, dtype=torch.bfloat16, enabled=bf16):
                model(x)
        return infer
    model.train()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
    y = torch.randint(0, model.num_classes, (x.shape[0],), device=x.device)  # timm models have num_classes too
    bf16 = mode.endswith("bf16")

    def train():
        with torch.autocast(kind, dtype=torch.bfloat16, enabled=bf16):
            loss = F.cross_entropy(model(x).float(), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    return train


def synchronize(device: torch.device) -> None:
    """Wait for the device's queued work (a GPU's kernels run after the host returns); nothing on a CPU."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def matmul_gflops(dtype: torch.dtype, n: int = 2048, repeats: int = 5, device: torch.device = CPU) -> float:
    n = 8192 if device.type == "cuda" else n  # a GPU needs a larger product to reach its limit
    a, b = torch.randn(n, n, dtype=dtype, device=device), torch.randn(n, n, dtype=dtype, device=device)
    a @ b
    synchronize(device)
    t = time.perf_counter()
    for _ in range(repeats):
        a @ b
    synchronize(device)
    return 2 * n**3 * repeats / (time.perf_counter() - t) / 1e9


def measure(args) -> dict:
    results: dict = {"sizes": {}, "limit_gflops": {}}
    limits: dict[str, list[float]] = {"fp32": [], "bf16": []}
    device = torch.device(args.device)
    for size in args.sizes:
        models = subjects(size, not args.no_compile, device)
        x = torch.randn(args.batch, 3, size, size, device=device)
        flops = {name: count_flops(cpvt.create_model(name.split()[1], img_size=size), size) / 1e9
                 for name in models if name.startswith("cpvt")}
        calls = {(name, mode): step_fn(m, mode, x) for name, m in models.items() for mode in args.modes
                 if not (name.endswith("frozen") and mode.startswith("train"))}  # frozen weights cannot train
        for fn in calls.values():  # warm-up: compilation, allocator, first-call costs
            fn()
            fn()
        times: dict[tuple[str, str], list[float]] = {key: [] for key in calls}
        for r in range(args.rounds):
            # forward order in even rounds, reversed in odd ones: a subject's place in a round moves its time (in one
            # run the later subjects of a round trained up to 10 % slower), and alternating evens it out
            order = list(calls.items()) if r % 2 == 0 else list(reversed(calls.items()))
            for key, fn in order:
                synchronize(device)
                t = time.perf_counter()
                for _ in range(args.iters):
                    fn()
                synchronize(device)
                times[key].append((time.perf_counter() - t) / args.iters)
            for dtype in {"bf16" if m.endswith("bf16") else "fp32" for m in args.modes}:  # an emulated bf16 matmul
                limits[dtype].append(matmul_gflops(getattr(torch, {"bf16": "bfloat16", "fp32": "float32"}[dtype]),
                                                   device=device))
            print(f"  {size} px: round {r + 1}/{args.rounds} done", file=sys.stderr, flush=True)
        results["sizes"][str(size)] = {
            f"{name}|{mode}": {"img_per_s": args.batch / statistics.median(ts), "round_s": ts,
                               "gflops_per_img": flops.get(name) or flops.get(f"cpvt {name.split()[1]}")}
            for (name, mode), ts in times.items()}
    results["limit_gflops"] = {k: max(v) for k, v in limits.items() if v}  # (on AVX2 takes a minute)
    return results


def paired_ratio(cells: dict, name: str, ref: str, mode: str) -> str:
    """``name``'s speed over ``ref``'s, one ratio per round (the two ran minutes apart at most, so a slow spell of
    the machine moves both): the median over rounds and the range, e.g. ``0.97 [0.91, 1.04]``."""
    if f"{name}|{mode}" not in cells:
        return "-"
    ratios = sorted(b / a for a, b in zip(cells[f"{name}|{mode}"]["round_s"], cells[f"{ref}|{mode}"]["round_s"]))
    return f"{statistics.median(ratios):.2f} [{ratios[0]:.2f}, {ratios[-1]:.2f}]"


def peak_rss_mb(kind: str, name: str, mode: str, size: int, batch: int, malloc: str = "") -> float:
    """Peak resident memory (MB) of a fresh process that runs 3 steps of one measurement
    (``malloc="default"``: without ``keep_freed_memory``)."""
    # VmHWM, not ru_maxrss: Linux keeps ru_maxrss across exec, so a child of this (large) process would report
    # the parent's size at fork time
    code = (f"import sys; peak_kb = lambda: int(next(l.split()[1] for l in open('/proc/self/status') "
            f"if l.startswith('VmHWM'))); from cpvt.train.allocator import keep_freed_memory; keep_freed_memory(); import torch; "
            f"sys.path.insert(0, {str(Path(__file__).parent)!r}); import throughput as t; "
            f"m = t.timm_model({size}) if {kind!r} == 'timm' else t.cpvt.create_model({name!r}, img_size={size}); "
            f"fn = t.step_fn(m, {mode!r}, torch.randn({batch}, 3, {size}, {size})); [fn() for _ in range(3)]; "
            f"print(peak_kb() / 1024)")
    env = {**os.environ, "CPVT_MALLOC": malloc}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, env=env)
    return float(out.stdout.strip().splitlines()[-1])


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--sizes", default="224,384", help="comma-separated input sizes")
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--iters", type=int, default=2, help="calls per subject per round")
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--no-compile", action="store_true")
    p.add_argument("--modes", default=",".join(MODES), help=f"comma-separated, from {', '.join(MODES)} (default: all; "
                   "on a CPU without bf16 instructions bf16 is emulated and slow)")
    p.add_argument("--memory", action="store_true", help="also measure peak RSS (fresh process per case)")
    p.add_argument("--memory-only", action="store_true", help="only the peak RSS cases")
    p.add_argument("--device", default="cpu", help="cpu (default) or cuda")
    p.add_argument("--json", help="write every number here")
    args = p.parse_args(argv)
    if args.device != "cpu" and args.memory:
        p.error("--memory measures the peak RSS of CPU processes; leave it out with --device cuda")
    args.sizes = [int(s) for s in args.sizes.split(",")]
    args.modes = [m.strip() for m in args.modes.split(",")]
    if unknown := [m for m in args.modes if m not in MODES]:
        p.error(f"unknown mode(s) {unknown}; choose from {', '.join(MODES)}")
    malloc = keep_freed_memory()  # as every cpvt command does; process-wide, so timm's model gets it too
    if args.threads:
        torch.set_num_threads(args.threads)
    t0 = time.perf_counter()
    args.memory = args.memory or args.memory_only
    res = {"sizes": {}, "limit_gflops": {}} if args.memory_only else measure(args)
    cpu_name, bf16_sets = cpu_description()
    if args.device.startswith("cuda"):
        print(f"\nGPU: {torch.cuda.get_device_name(torch.device(args.device))}")
    env = {"torch": torch.__version__, "threads": torch.get_num_threads(), "cpu": cpu_name, "bf16_instructions": bf16_sets,
           "batch": args.batch, "rounds": args.rounds, "iters": args.iters, "native_bf16": cpu_has_native_bf16(),
           "keep_freed_memory": malloc, "device": args.device,
           "gpu": torch.cuda.get_device_name(torch.device(args.device)) if args.device.startswith("cuda") else None}
    print(f"\nCPU: {cpu_name}; bf16 instructions: {', '.join(bf16_sets) or 'none (AVX2 only: bf16 emulated)'}")
    print(f"torch {env['torch']}, {env['threads']} threads, batch {args.batch}, median of {args.rounds} interleaved "
          f"rounds; matmul limit "
          f"{', '.join(f'{k} {v:.0f}' for k, v in res['limit_gflops'].items())} GFLOP/s; "
          f"native bf16: {env['native_bf16']}; keep_freed_memory: {malloc}\n")
    for size, cells in res["sizes"].items():
        names = list(dict.fromkeys(k.split("|")[0] for k in cells))
        ref = "timm deit_tiny" if "timm deit_tiny" in names else "cpvt deit_tiny"
        rows = []
        for name in names:
            row = [name]
            for mode in args.modes:
                if f"{name}|{mode}" not in cells:  # a frozen model in a training mode
                    row.append("-")
                    continue
                c = cells[f"{name}|{mode}"]
                base = cells[f"{ref}|{mode}"]["img_per_s"]
                limit = res["limit_gflops"]["bf16" if mode.endswith("bf16") else "fp32"]
                g = c["gflops_per_img"] or cells[f"cpvt deit_tiny|{mode}"]["gflops_per_img"]
                achieved = c["img_per_s"] * g * (3 if mode.startswith("train") else 1)
                row.append(f"{c['img_per_s']:.1f} ({c['img_per_s'] / base:.2f}x, {100 * achieved / limit:.0f}%)")
            rows.append(row)
        print(f"{size} px: img/s (ratio to {ref}, share of the matmul limit)")
        print(format_table(rows, ["model"] + list(args.modes), markdown=True) + "\n")
        paired = [[name] + [paired_ratio(cells, name, ref, mode) for mode in args.modes] for name in names if name != ref]
        print(f"{size} px: speed ratio to {ref} paired by round (median over rounds [lowest, highest]; a range that "
              f"spans 1.00 does not separate the two from this machine's noise)")
        print(format_table(paired, ["model"] + list(args.modes), markdown=True) + "\n")
        for mode in args.modes:
            peg, nope = (cells[f"cpvt {n}|{mode}"]["img_per_s"] for n in ("cpvt_ti", "deit_tiny_nope"))
            print(f"PEG cost at {size} px ({mode}): cpvt_ti runs at {peg / nope:.3f} of deit_tiny_nope "
                  f"(paired by round: {paired_ratio(cells, 'cpvt cpvt_ti', 'cpvt deit_tiny_nope', mode)})")
        print()
    if args.memory:
        train, infer = ("train bf16", "infer bf16") if cpu_has_native_bf16() else ("train fp32", "infer fp32")
        cases = [("cpvt", "cpvt_ti", train, 224, 64), ("cpvt", "cpvt_ti", infer, 512, 32)]
        if timm_model(224) is not None:
            cases += [("timm", "deit_tiny", train, 224, 64), ("timm", "deit_tiny", infer, 512, 32)]
        res["memory"] = [{"kind": k, "model": n, "mode": m, "size": s, "batch": b,
                          "peak_rss_mb": peak_rss_mb(k, n, m, s, b),
                          "peak_rss_mb_glibc_default": peak_rss_mb(k, n, m, s, b, malloc="default")}
                         for k, n, m, s, b in cases]
        print(format_table([[f"{r['kind']} {r['model']}", r["mode"], r["size"], r["batch"], f"{r['peak_rss_mb']:.0f}",
                             f"{r['peak_rss_mb_glibc_default']:.0f}"] for r in res["memory"]],
                           ["model", "mode", "px", "batch", "peak RSS (MB)", "with CPVT_MALLOC=default"], markdown=True))
    res["env"], res["seconds"] = env, time.perf_counter() - t0
    if args.json:
        Path(args.json).write_text(json.dumps(res, indent=1))
        print(f"wrote {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
