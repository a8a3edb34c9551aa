"""bf16 autocast against fp32 on this CPU, for the models ``amp=auto`` has to choose for, in one process.

    .venv/bin/python benchmarks/amp_choice.py [--threads 1] [--rounds 3] [--json out.json]

Each case (model, input size, batch, inference or one training step with AdamW) runs in fp32 and under bf16
autocast, interleaved round after round; a cell is the median over rounds, and the table reads as the ratio
bf16 / fp32 throughput (above 1: bf16 is faster). It prints the CPU model and its bf16 instructions
(AVX512-BF16, AMX), which decide the answer together with the model's size.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time

import torch
import torch.nn.functional as F

import cpvt
from cpvt.train.precision import cpu_description
from cpvt.utils.table import format_table

CASES = [  # (label, model, overrides, size, batch, mode)
    ("demo (micro, width 64, 32 px)", "cpvt_micro_gap_plus", dict(depth=6, embed_dim=64, num_heads=2), 32, 64, "train"),
    ("Imagenette protocol (micro, width 64, patch 8, 64 px)", "cpvt_micro",
     dict(depth=6, embed_dim=64, num_heads=4, patch_size=8), 64, 128, "train"),
    ("CPVT-Ti, 224 px, inference", "cpvt_ti", {}, 224, 16, "infer"),
    ("CPVT-Ti, 224 px, training", "cpvt_ti", {}, 224, 16, "train"),
]


def step(model, mode, x, y, opt, dtype):
    if mode == "infer":
        with torch.inference_mode(), torch.autocast("cpu", dtype=dtype, enabled=dtype is not None):
            model(x)
        return
    with torch.autocast("cpu", dtype=dtype, enabled=dtype is not None):
        loss = F.cross_entropy(model(x), y)
    loss.backward()
    opt.step()
    opt.zero_grad(set_to_none=True)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--iters", type=int, default=3, help="steps per case per round")
    p.add_argument("--json")
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    name, bf16 = cpu_description()
    print(f"CPU: {name}; bf16 instructions: {', '.join(bf16) or 'none (AVX2 only: bf16 is emulated)'}; "
          f"{args.threads} thread(s), torch {torch.__version__}")
    rows, out = [], []
    for label, mname, over, size, batch, mode in CASES:
        torch.manual_seed(0)
        model = cpvt.create_model(mname, img_size=size, num_classes=10, **over)
        model.train(mode == "train")
        opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
        x, y = torch.randn(batch, 3, size, size), torch.randint(0, 10, (batch,))
        times = {"fp32": [], "bf16": []}
        for dtype in (None, torch.bfloat16):  # warm-up
            step(model, mode, x, y, opt, dtype)
        for _ in range(args.rounds):
            for key, dtype in (("fp32", None), ("bf16", torch.bfloat16)):
                t0 = time.perf_counter()
                for _ in range(args.iters):
                    step(model, mode, x, y, opt, dtype)
                times[key].append(batch * args.iters / (time.perf_counter() - t0))
        fp32, b16 = statistics.median(times["fp32"]), statistics.median(times["bf16"])
        rows.append([label, mode, f"{fp32:.1f}", f"{b16:.1f}", f"{b16 / fp32:.2f}x"])
        out.append(dict(case=label, model=mname, size=size, batch=batch, mode=mode, fp32_img_s=fp32, bf16_img_s=b16))
        print(format_table([rows[-1]], ["case", "mode", "fp32 img/s", "bf16 img/s", "bf16 / fp32"]).splitlines()[-1],
              flush=True)
    print()
    print(format_table(rows, ["case", "mode", "fp32 img/s", "bf16 img/s", "bf16 / fp32"]))
    if args.json:
        with open(args.json, "w") as f:
            json.dump(dict(cpu=name, bf16_flags=bf16, threads=args.threads, cases=out), f, indent=2)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
