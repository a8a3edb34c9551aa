"""CPU inference: onnxruntime against PyTorch eager and torch.compile, for one model exported once.

    .venv/bin/python benchmarks/onnx_vs_torch.py [--model cpvt_ti] [--sizes 224,384] [--batch 8] [--rounds 5]
        [--threads N] [--no-compile] [--json out.json]

The model (random weights, seed 0) is exported once, at the first size, with
dynamic batch, height and width (``cpvt.deploy.export.export_model``, ONNX opset 18), so
every other size runs the same file, as a deployed model would. Every subject is
timed in the same process in interleaved rounds (subject after subject, round
after round); each cell is the median over rounds, and the table gives images/s
and the ratio to PyTorch eager. The same input goes through all three and the
largest |logit difference| from eager is printed beside each.

Numbers measured while other work runs on the machine are noisy: each round
sees a different share of the CPU. Interleaving moves every subject alike, so
read the ratios, not the absolute images/s, and rerun on an idle machine before
quoting them.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

import cpvt
from cpvt.deploy.export import export_model
from cpvt.utils.table import format_table


def subjects(model: torch.nn.Module, onnx_path: Path, threads: int, compiled: bool) -> dict:
    """name -> function from a float32 batch (torch) to logits (torch)."""
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.intra_op_num_threads, opts.inter_op_num_threads = threads, 1
    session = ort.InferenceSession(str(onnx_path), opts, providers=["CPUExecutionProvider"])
    name = session.get_inputs()[0].name

    def eager(x):
        with torch.inference_mode():
            return model(x)

    out = {"pytorch eager": eager}
    if compiled:
        runner = torch.compile(model, dynamic=True)  # one compilation for all sizes, as cpvt eval --compile

        def comp(x):
            with torch.inference_mode():
                return runner(x)

        out["pytorch compiled"] = comp
    out["onnxruntime"] = lambda x: torch.from_numpy(session.run(None, {name: x.numpy()})[0])
    return out


def measure(args) -> dict:
    torch.manual_seed(0)
    model = cpvt.create_model(args.model).eval()
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / f"{args.model}.onnx"
        t = time.perf_counter()
        export_model(model, path, img_size=args.sizes[0])
        export_s = time.perf_counter() - t
        fns = subjects(model, path, torch.get_num_threads(), not args.no_compile)
        res: dict = {"export_seconds": export_s, "sizes": {}}
        for size in args.sizes:
            x = torch.randn(args.batch, 3, size, size, generator=torch.Generator().manual_seed(size))
            ref = fns["pytorch eager"](x)
            diffs, warm = {}, {}
            for name, fn in fns.items():  # warm-up: compilation, allocator, first-call costs
                t = time.perf_counter()
                diffs[name] = (fn(x).float() - ref).abs().max().item()
                warm[name] = time.perf_counter() - t
                fn(x)
            times: dict[str, list[float]] = {name: [] for name in fns}
            for r in range(args.rounds):
                for name, fn in fns.items():
                    t = time.perf_counter()
                    for _ in range(args.iters):
                        fn(x)
                    times[name].append((time.perf_counter() - t) / args.iters)
                print(f"  {size} px: round {r + 1}/{args.rounds} done", file=sys.stderr, flush=True)
            res["sizes"][str(size)] = {
                name: {"img_per_s": args.batch / statistics.median(ts), "seconds": ts, "first_call_s": warm[name],
                       "max_abs_diff_vs_eager": diffs[name]} for name, ts in times.items()}
    return res


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default="cpvt_ti")
    p.add_argument("--sizes", default="224,384", help="comma-separated input sizes; the first is the export size")
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--iters", type=int, default=2, help="calls per subject per round")
    p.add_argument("--threads", type=int, default=None, help="torch and onnxruntime intra-op threads")
    p.add_argument("--no-compile", action="store_true")
    p.add_argument("--json", help="write every number here")
    args = p.parse_args(argv)
    args.sizes = [int(s) for s in args.sizes.split(",")]
    if args.threads:
        torch.set_num_threads(args.threads)
    import onnxruntime

    t0 = time.perf_counter()
    res = measure(args)
    env = {"torch": torch.__version__, "onnxruntime": onnxruntime.__version__, "threads": torch.get_num_threads(),
           "cpu": platform.processor() or platform.machine(), "model": args.model, "batch": args.batch,
           "rounds": args.rounds, "iters": args.iters, "command": " ".join(sys.argv)}
    print(f"\n{args.model}, torch {env['torch']}, onnxruntime {env['onnxruntime']}, {env['threads']} thread(s), "
          f"batch {args.batch}, median of {args.rounds} interleaved rounds x {args.iters} call(s); "
          f"exported once at {args.sizes[0]} px in {res['export_seconds']:.0f} s (dynamic H, W)")
    print("noisy if other work shares the CPU: read the ratios\n")
    rows = []
    for size, cells in res["sizes"].items():
        base = cells["pytorch eager"]["img_per_s"]
        for name, c in cells.items():
            rows.append([size, name, f"{c['img_per_s']:.2f}", f"{c['img_per_s'] / base:.2f}",
                         f"{c['max_abs_diff_vs_eager']:.1e}", f"{c['first_call_s']:.1f}"])
    print(format_table(rows, ["px", "runtime", "img/s", "vs eager", "max abs diff vs eager", "first call (s)"],
                       markdown=True))
    res["env"], res["seconds"] = env, time.perf_counter() - t0
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps(res, indent=1))
        print(f"wrote {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
