"""glibc's malloc as it comes against ``cpvt.train.allocator.keep_freed_memory``, side by side.

    .venv/bin/python benchmarks/allocator.py [--rounds 5] [--json out.json]

The setting is process-wide and must be made before the big tensors exist, so
every measurement runs in a fresh process (``--worker``); the two settings
alternate round after round, and each cell is the median over rounds, so a
noisy machine moves both alike: read the ratio. Each worker also prints a
checksum of what it computed (outputs, or the weights after its training steps),
and the benchmark stops if the two settings disagree: the allocator must not
change a single bit.

Cases: ``cpvt_ti`` inference (fp32, 224, batch 32) and training step (fp32,
224, batch 32); the micro model of the Imagenette sweep (``cpvt_micro``, 64 px,
batch 128, training step); the demo's (``cpvt_micro_gap_plus``, 32 px, batch 64).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import platform
import statistics
import subprocess
import sys
import time

CASES = [  # (label, model, mode, size, batch, model options)
    ("cpvt_ti infer 224 b32", "cpvt_ti", "infer", 224, 32, {}),
    ("cpvt_ti train 224 b32", "cpvt_ti", "train", 224, 32, {}),
    ("sweep micro train 64 b128", "cpvt_micro", "train", 64, 128, {"depth": 6, "embed_dim": 64, "num_heads": 4,
                                                                     "patch_size": 8}),
    ("demo micro train 32 b64", "cpvt_micro_gap_plus", "train", 32, 64, {"depth": 6, "embed_dim": 64, "num_heads": 2}),
]
SETTINGS = ("glibc default", "keep_freed_memory")


def worker(case: int, tuned: bool, steps: int) -> None:
    """Run in a fresh process: time ``steps`` calls after two warm-ups; print JSON (img/s, checksum)."""
    if tuned:
        from cpvt.train.allocator import keep_freed_memory

        assert keep_freed_memory(), "keep_freed_memory() made no setting on this system"
    import torch

    import cpvt

    label, name, mode, size, batch, options = CASES[case]
    torch.manual_seed(0)
    model = cpvt.create_model(name, img_size=size, **options)
    x = torch.randn(batch, 3, size, size)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
    out = None

    def step():
        nonlocal out
        if mode == "infer":
            model.eval()
            with torch.inference_mode():
                out = model(x)
        else:
            model.train()
            loss = model(x).logsumexp(-1).mean()
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()

    for _ in range(2):
        step()
    t0 = time.perf_counter()
    for _ in range(steps):
        step()
    dt = (time.perf_counter() - t0) / steps
    h = hashlib.sha256()
    for t in [out] if mode == "infer" else [p.detach() for p in model.parameters()]:
        h.update(t.contiguous().numpy().tobytes())
    print(json.dumps({"img_per_s": batch / dt, "checksum": h.hexdigest()[:16]}))


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--steps", type=int, default=4, help="timed calls per process")
    p.add_argument("--cases", default=",".join(str(i) for i in range(len(CASES))), help="indices into CASES")
    p.add_argument("--json", help="write every number here")
    p.add_argument("--worker", nargs=3, type=int, metavar=("CASE", "TUNED", "STEPS"), help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.worker:
        worker(*args.worker)
        return 0
    cases = [int(c) for c in args.cases.split(",")]
    env = {k: v for k, v in os.environ.items() if k not in ("MALLOC_MMAP_THRESHOLD_", "MALLOC_TRIM_THRESHOLD_")}
    speeds = {(c, s): [] for c in cases for s in SETTINGS}
    sums: dict[tuple[int, str], set[str]] = {(c, s): set() for c in cases for s in SETTINGS}
    for r in range(args.rounds):
        for c in cases:
            for tuned, setting in enumerate(SETTINGS):
                cmd = [sys.executable, __file__, "--worker", str(c), str(tuned), str(args.steps)]
                res = json.loads(subprocess.run(cmd, env=env, check=True, capture_output=True, text=True).stdout)
                speeds[c, setting].append(res["img_per_s"])
                sums[c, setting].add(res["checksum"])
        print(f"round {r + 1}/{args.rounds} done", file=sys.stderr, flush=True)
    rows = []
    for c in cases:
        a, b = (statistics.median(speeds[c, s]) for s in SETTINGS)
        same = sums[c, SETTINGS[0]] == sums[c, SETTINGS[1]] and len(sums[c, SETTINGS[0]]) == 1
        if not same:
            raise SystemExit(f"{CASES[c][0]}: the two settings computed different numbers: {sums}")
        rows.append({"case": CASES[c][0], "default_img_s": a, "tuned_img_s": b, "ratio": b / a, "bit_identical": same})
    print(f"\n{'case':<28} {'glibc default':>14} {'keep_freed':>11} {'ratio':>6}  same bits")
    for r in rows:
        print(f"{r['case']:<28} {r['default_img_s']:>10.1f} img/s {r['tuned_img_s']:>7.1f} img/s "
              f"{r['ratio']:>5.2f}x  {'yes' if r['bit_identical'] else 'NO'}")
    print(f"\n{args.rounds} rounds x {args.steps} timed steps per process; medians; {platform.processor() or platform.machine()}, "
          f"torch threads default ({os.cpu_count()} CPUs)")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"rounds": args.rounds, "steps": args.steps, "rows": rows}, f, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
