"""Numerical fingerprint of the package, to compare before and after a restructure.

Prints one line per item: output and gradient hashes of every micro model in the
registry (every encoding and pyramid family) at two input sizes, with and without
the PEG's test-time fixes; the weights after a 2-epoch training run; and the
reproduction plan's run names for every budget. Two checkouts that print the same
lines compute the same numbers.

    python scripts/fingerprint.py > before.txt    # on the old code
    python scripts/fingerprint.py > after.txt     # on the new code
    diff before.txt after.txt

It uses only the public API and the ``cpvt`` command, so it runs unchanged on both.
"""

from __future__ import annotations

import argparse
import hashlib
import importlib
import subprocess
import sys
import tempfile
from pathlib import Path

import torch

import cpvt


def digest(tensors) -> str:
    h = hashlib.sha256()
    for t in tensors:
        h.update(t.detach().contiguous().float().numpy().tobytes())
    return h.hexdigest()[:16]


def model_lines(pattern: str) -> list[str]:
    lines = []
    for name in cpvt.list_models(pattern):
        for opts in ({}, {"peg_fixed_grid": "dilate"}) if "peg" in cpvt.model_args(name).get("pos", "") else ({},):
            torch.manual_seed(0)
            model = cpvt.create_model(name, num_classes=10, **opts)
            for size in (32, 48):
                torch.manual_seed(1)
                x = torch.randn(2, 3, size, size)
                model.zero_grad()
                model.train(False)
                y = model(x)
                y.square().sum().backward()
                grads = [p.grad if p.grad is not None else torch.zeros(()) for p in model.parameters()]
                lines.append(f"{name} {opts or ''} {size}px out={digest([y])} grad={digest(grads)}")
    return lines


def train_line(work: Path) -> str:
    out = work / "run"
    cmd = [sys.executable, "-m", "cpvt", "train", "--model", "cpvt_micro", "--data", "synthetic", "--epochs", "2",
           "--out", str(out), "--set", "train_limit=512", "--set", "val_limit=128", "--set", "amp=off",
           "--set", "attention=math-short"]  # the attention path `auto` took when the recorded hashes were made
    subprocess.run(cmd, check=True, capture_output=True, env={"OMP_NUM_THREADS": "1", **_env()})
    from safetensors.torch import load_file

    weights = load_file(str(out / "last.safetensors"))
    return f"train cpvt_micro synthetic 2 epochs weights={digest(weights[k] for k in sorted(weights))}"


def _env() -> dict[str, str]:
    import os

    return {k: v for k, v in os.environ.items() if k != "OMP_NUM_THREADS"}


def plan_lines(work: Path) -> list[str]:
    for module in ("cpvt.study.reproduce", "cpvt.study.reproduce"):
        try:
            reproduce = importlib.import_module(module)
            break
        except ImportError:
            continue
    root = Path(__file__).resolve().parents[1] / "experiments"
    lines = []
    for budget in ("smoke", "cpu", "gpu"):
        jobs = reproduce.plan(root, budget, ["T1", "T2", "T3", "T4"], work / budget)
        names = sorted(f"{job.data}/{job.dir.name}" for job in jobs)
        lines.append(f"plan {budget} {len(names)} runs names={hashlib.sha256(' '.join(names).encode()).hexdigest()[:16]}")
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default="*micro*", help="registry pattern (default: every micro model)")
    parser.add_argument("--no-train", action="store_true", help="skip the 2-epoch training run")
    args = parser.parse_args()
    torch.set_num_threads(1)
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        lines = model_lines(args.models) + plan_lines(work)
        if not args.no_train:
            lines.append(train_line(work))
    print("\n".join(lines))


if __name__ == "__main__":
    main()
