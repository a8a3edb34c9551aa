"""The training engine against the bare step it wraps, on a reproduction protocol, in one process.

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/engine_overhead.py [--entry imagenette] [--model cpvt_micro]
        [--steps 8] [--rounds 5] [--attention auto,math,default] [--json out.json]

The run is built exactly as ``cpvt reproduce`` builds it (``cpvt.study.reproduce.plan``: recipe, budget entry,
row model, seed 0) and set up by the engine itself (``cpvt.train.engine.setup``: the decoded split, the task's
augmentation, AdamW with its schedule and gradient clipping). Then, interleaved over ``--rounds`` rounds, each a
median over its cell:

* **bare step**: forward, loss, backward and AdamW on one fixed, already augmented batch, PyTorch's default
  attention (``benchmarks/throughput.py``'s training step, the issue's reference);
* **engine, attention=A**: ``--steps`` real steps of :func:`cpvt.train.engine.train_one_epoch` (the batch order,
  gather, augmentation, loss, the per-step checks, clipping, the schedule, the progress bar and the epoch's
  statistics), once per ``--attention`` value;
* **parts**: the gather of a batch from the decoded split, and the task's augmentation of it.

Prints images/s and each subject's ratio to the bare step (the issue's target: the engine within 10 %). The
CPU's model name is printed and stored in the JSON: times differ between machine kinds, read the ratios.
"""

from __future__ import annotations

import argparse
import copy
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

from cpvt.study.experiments import experiments_dir
from cpvt.study.reproduce import plan
from cpvt.train.allocator import keep_freed_memory
from cpvt.train.distributed import init_distributed
from cpvt.train.engine import setup, train_one_epoch
from cpvt.train.precision import cpu_description
from cpvt.utils.table import format_table
from throughput import step_fn  # this script's folder is on sys.path


def protocol_config(entry: str, model: str, out: Path, budget: str = "cpu"):
    """Seed 0 of ``model`` in the budget's dataset entry ``entry``: the TrainConfig the sweep trains."""
    jobs = plan(experiments_dir(), budget, ["T1", "T2", "T3", "T4", "T6S", "T6C"], out)
    for job in jobs:
        if job.data == entry and job.config.model == model and job.config.seed == 0:
            cfg = job.config
            cfg.out = str(out / "run")
            return cfg
    names = sorted({f"{j.data}:{j.config.model}" for j in jobs})
    raise SystemExit(f"no run of {model} in entry {entry!r} of budget {budget!r}; runs: {', '.join(names)}")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--entry", default="imagenette", help="dataset entry of the budget (default: imagenette)")
    p.add_argument("--model", default="cpvt_micro")
    p.add_argument("--budget", default="cpu")
    p.add_argument("--steps", type=int, default=8, help="engine steps per timed cell")
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--attention", default="auto,math,default", help="engine subjects, one per attention value")
    p.add_argument("--json", help="write every number here")
    args = p.parse_args(argv)
    malloc = keep_freed_memory()
    tmp = Path(tempfile.mkdtemp(prefix="cpvt-engine-"))
    cfg = protocol_config(args.entry, args.model, tmp, args.budget)
    info, device = init_distributed("cpu")
    st = setup(cfg, None, info, device)
    size = st.sizes[0]
    per_step = cfg.batch_size
    steps = min(args.steps, st.order.steps)

    idx = st.order.indices(0, 0)
    x, y = st.task.train_batch(st.augment[size], st.train_split, idx, device)
    bare_model = copy.deepcopy(st.model)  # a copy, so the engine's training does not move it
    bare = step_fn(bare_model, "train " + ("bf16" if st.dtype == torch.bfloat16 else "fp32"), x)

    def engine(attention: str):
        def run():
            cfg.attention = attention
            st.epoch, st.step = 0, st.order.steps - steps  # the epoch's last `steps` steps, then its statistics
            train_one_epoch(st)
        return run

    def gather():
        st.train_split.images[idx].to(device)

    images = st.train_split.images[idx].to(device)

    def augment():
        st.augment[size](images)

    subjects = {"bare step": (bare, 1), "gather": (gather, 1), "augmentation": (augment, 1)}
    for a in args.attention.split(","):
        subjects[f"engine, attention={a}"] = (engine(a), steps)
    times: dict[str, list[float]] = {name: [] for name in subjects}
    for fn, _ in subjects.values():
        fn()  # warm-up
    for _ in range(args.rounds):
        for name, (fn, n) in subjects.items():
            t = time.perf_counter()
            fn()
            times[name].append((time.perf_counter() - t) / n)
    med = {name: statistics.median(v) for name, v in times.items()}
    cpu = cpu_description()
    print(f"{cfg.model} on {args.entry} ({args.budget} budget): batch {per_step} at {size}px, amp={st.dtype or 'off'}, "
          f"{torch.get_num_threads()} thread(s), {args.rounds} rounds; CPU {cpu[0]} (bf16 instructions: {', '.join(cpu[1]) or 'none'}); keep_freed_memory: {malloc}\n")
    rows = [[name, f"{1e3 * med[name]:.1f}", f"{per_step / med[name]:.0f}", f"{med[name] / med['bare step']:.2f}"]
            for name in subjects]
    print(format_table(rows, ["subject", "ms per step", "img/s", "x bare step"], markdown=True))
    if args.json:
        Path(args.json).write_text(json.dumps({"args": vars(args), "cpu": cpu, "threads": torch.get_num_threads(),
                                               "batch": per_step, "size": size, "ms": {k: 1e3 * v for k, v in med.items()},
                                               "rounds_ms": {k: [1e3 * t for t in v] for k, v in times.items()}},
                                              indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
