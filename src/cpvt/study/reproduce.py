"""``cpvt reproduce``: CPVT's tables at a budget one machine can afford, beside the paper's numbers.

The experiments are data, under ``experiments/`` at the repository root:

* one TOML file per table row (``t1_encodings/peg.toml`` ...), saying *what* is
  compared: a model name with ``{size}`` left open, model overrides, and the
  paper's number for that row;
* ``budgets.toml``: *how much*: model size, datasets, training overrides,
  test scales and seeds for ``smoke``, ``cpu`` and ``gpu``;
* ``claims.toml``: the paper's claims as comparisons between rows, each
  checked on our numbers.

A sweep turns rows into training runs (identical runs shared by several rows
are trained once), trains what is not finished (an interrupted run resumes
from its last checkpoint; a finished one is skipped), evaluates each run at
every test scale without fine-tuning, and writes ``report.md`` with one table
per experiment, plots, and one reproduced / not reproduced line per claim.
Several ``cpvt reproduce`` processes may share one sweep: each run folder is
locked by whoever starts it (:mod:`cpvt.train.runlock`) and the others move on.
"""

from __future__ import annotations

import ast
import functools
import hashlib
import json
import re
import statistics
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from ..checkpoint import load_checkpoint
from ..models import create_model, model_from_checkpoint
from ..models.base import pair
from ..models import model_args as registry_args
from ..models.info import count_flops, count_params
from ..pos import all_encoding_options
from ..train.config import TrainConfig, apply_overrides, override_pairs, resolve_config
from ..train.engine import train
from ..train.precision import autocast_dtype
from ..train.evaluate import evaluate_runs
from ..train.runlock import run_lock
from ..utils.errors import RunLocked
from ..utils.fileio import write_text_atomic
from .experiments import (  # noqa: F401 (the experiment definitions, re-exported for scripts)
    DEIT_SIZES,
    NOT_INHERITED,
    TABLES,
    TITLES,
    Row,
    TableSpec,
    dataset_entries,
    environment,
    experiments_dir,
    load_budget,
    load_claims,
    load_rows,
    parse_tables,
    scales_of,
)
from .report import write_report

# ----------------------------------------------------------------------------- formulas

_FUNCS = {"round": round, "list": list, "range": range, "min": min, "max": max, "int": int}
_NODES = (ast.Expression, ast.BinOp, ast.UnaryOp, ast.Call, ast.Name, ast.Load, ast.Constant, ast.List, ast.Tuple,
          ast.Add, ast.Sub, ast.Mult, ast.Div, ast.FloorDiv, ast.USub)


def evaluate_formula(text: str, **names: int) -> Any:
    """A row's ``"= ..."`` value: arithmetic over ``depth`` and ``grid`` plus round/list/range/min/max/int."""
    try:
        tree = ast.parse(text.strip(), mode="eval")
    except SyntaxError as e:
        raise ValueError(f"formula {text!r} does not parse: {e.msg}") from None
    for node in ast.walk(tree):
        if not isinstance(node, _NODES) or (isinstance(node, ast.Name) and node.id not in {**_FUNCS, **names}):
            raise ValueError(f"formula {text!r}: only arithmetic over {sorted(names)} and {sorted(_FUNCS)} is allowed")
    return eval(compile(tree, "<formula>", "eval"), {"__builtins__": {}}, {**_FUNCS, **names})  # noqa: S307 (checked above)


# ----------------------------------------------------------------------------- planning


@dataclass
class Job:
    """One training run, shared by every (row, seed) that resolves to it."""

    data: str  # the dataset entry's name (its data unless the entry is named)
    dir: Path
    config: Any  # TrainConfig
    sizes: dict[str, Any]  # scale label -> its result's key (classification: the test size in px; see test_plan)
    eval_limit: int | None
    record: Path  # the result record, small and committed: <out>/records/<data>/<run name>.json
    members: list[tuple[str, int]] = field(default_factory=list)  # (row id, seed)
    # rows that test this run with other model options (row id -> options), each with a record of its own
    variants: dict[str, dict[str, Any]] = field(default_factory=dict)
    test: dict[str, Any] = field(default_factory=dict)  # evaluate_runs' keyword arguments (test_plan)

    def evaluate(self, overrides: dict[str, Any] | None = None) -> dict[str, Any]:
        """The final weights tested as the entry says, with these model options: the record's score fields."""
        [res] = evaluate_runs([str(self.dir / "last.safetensors")], limit=self.eval_limit, model_overrides=overrides,
                              compile=self.config.compile, **self.test)
        at = {s: res["sizes"][str(key)] for s, key in self.sizes.items()}
        first = next(iter(at.values()))
        if res.get("task") != "segmentation":
            return {"scales": {s: r["top1"] for s, r in at.items()}, "top5": {s: r["top5"] for s, r in at.items()},
                    "eval_images": first.get("images")}
        return {"metric": "miou", "split": res["split"], "classes": res["classes"],
                "scales": {s: r["miou"] for s, r in at.items()}, "pixel_acc": {s: r["pixel_acc"] for s, r in at.items()},
                "iou": {s: [round(v, 3) for v in r["iou"]] for s, r in at.items()}, "eval_images": first["frames"]}

    def variant_record(self, rid: str) -> Path:
        """``<run name>@<row name>.json`` beside the run's record."""
        return self.record.with_name(f"{self.record.stem}@{rid.split('/', 1)[1]}.json")

    @property
    def trained(self) -> bool:
        """Trained and tested when its record exists: the run folder (checkpoints) may be gone, the record is in git."""
        return self.record.exists()

    @property
    def done(self) -> bool:
        """Its record and every variant's record exist."""
        return self.trained and all(self.variant_record(rid).exists() for rid in self.variants)


def _seeds(table: str, row: Row, entry: dict, budget: dict, override: int | None) -> int:
    """``--seeds``, else the dataset's ``row_seeds`` for this row, else its table's seeds, else the budget's."""
    if override:
        return override
    t = "T1" if table == "T2" else table
    per_row = entry.get("row_seeds", {}).get(row.name)
    return int(per_row or entry.get("seeds", {}).get(t) or budget.get("seeds", {}).get(t) or 1)


def select_rows(rows: dict[str, Row], tables: list[str], names: str | None) -> set[str] | None:
    """``--rows peg,ape``: the ids of the named rows in ``tables`` (a file stem or ``folder/stem``); None: all."""
    if not names:
        return None
    wanted = {n.strip() for n in names.split(",") if n.strip()}
    pool = [r for r in rows.values() if r.table in tables]
    picked = {r.id for r in pool if r.id in wanted or r.name in wanted}
    unknown = sorted(wanted - {r.id for r in pool} - {r.name for r in pool})
    if unknown:
        stems = sorted({r.name for r in pool})
        raise ValueError(f"no row named {', '.join(unknown)} in {','.join(tables)}; rows there: {', '.join(stems)}")
    return picked


def test_plan(entry: dict, budget: dict, cfg, patch: int) -> tuple[dict[str, Any], dict[str, Any]]:
    """How a dataset entry tests a run: (scale label -> the key of its result in ``evaluate_runs``'s ``sizes``,
    the keyword arguments of :func:`cpvt.train.evaluate.evaluate_runs`). Each scale is a multiple of the
    training size, rounded to whole patches.

    * classification: square test sizes (the key is the size in px);
    * segmentation (``task = "segmentation"``), Scale: whole frames resized to each size (key ``"HxW"``);
    * segmentation with ``canvas = [H, W]`` in the entry, Canvas: frames resized to that one size, scored
      through sliding windows of each scaled size, averaged where they overlap; a window as large as the
      canvas is the whole frame (key ``"HxW window hxw"`` or ``"HxW"``).

    Entry keys: ``split`` (the split scored; default ``val`` where the data has one), and for segmentation
    ``frames`` (``"native"`` or ``[H, W]``: the resolution test frames are decoded and scored at; default the
    run's ``frame_size``).
    """
    from ..train.evaluate import column_key

    scales = scales_of(entry, budget)
    seg = cfg.task == "segmentation"
    if not seg:
        if "canvas" in entry or "frames" in entry:
            raise ValueError(f"dataset entry {entry['name']!r}: canvas and frames are for segmentation runs "
                             f"(task = \"segmentation\"), not {cfg.task!r}")
        grid = int(cfg.img_size) // patch
        sizes = {f"{s:g}": patch * max(1, round(s * grid)) for s in scales}
        return sizes, {"img_sizes": sorted(set(sizes.values())), "split": entry.get("split")}
    h, w = pair(cfg.img_size)
    grown = {f"{s:g}": (patch * max(1, round(s * h / patch)), patch * max(1, round(s * w / patch))) for s in scales}
    common = {"split": entry.get("split"), "frames": entry.get("frames")}
    if "canvas" not in entry:
        return ({k: column_key(v, None) for k, v in grown.items()},
                {"img_sizes": list(dict.fromkeys(grown.values())), **common})
    canvas = pair(entry["canvas"])
    windows = {}
    for label, (wh, ww) in grown.items():
        if wh > canvas[0] or ww > canvas[1]:
            raise ValueError(f"dataset entry {entry['name']!r}: the {label}x window {wh}x{ww} does not fit in the "
                             f"canvas {canvas[0]}x{canvas[1]}")
        windows[label] = None if (wh, ww) == canvas else (wh, ww)  # a window of the whole canvas: the frame
    return ({k: column_key(canvas, v) for k, v in windows.items()},
            {"img_sizes": [canvas], "windows": list(dict.fromkeys(windows.values())), **common})


def row_config(row: Row, entry: dict, budget: dict, seed: int, out: Path, data_root: str | None = None,
               cache_dir: str | None = None, sets: list | None = None):
    """The TrainConfig of one (row, dataset, seed): recipe <- budget [train] <- ``--set`` <- model <- model_args
    <- seed, then the entry's ``recorded_with`` (left out of the run's name). ``sets``: the command's ``--set`` pairs, config keys and ``model.KEY`` options for every run."""

    size = entry.get("size", budget.get("size", "micro"))
    family = row.model.split("_")[0]  # DeiT sizes are spelled out (deit_tiny), CPVT's abbreviated (cpvt_ti)
    model = row.model.format(size=DEIT_SIZES.get(size, size) if family == "deit" else size)
    cfg = resolve_config(entry.get("recipe"), {"model": model, "data": entry["data"], "img_size": entry.get("img_size"),
                                               "data_root": data_root, "cache_dir": cache_dir})
    apply_overrides(cfg, dict(entry.get("train", {})))
    given = dict(override_pairs(sets))
    apply_overrides(cfg, {k: v for k, v in given.items() if not k.startswith("model.")})
    args = {**entry.get("model_args", {}), **row.model_args,
            **{k[len("model."):]: v for k, v in given.items() if k.startswith("model.")}}
    fixed = {k: v for k, v in args.items() if not (isinstance(v, str) and v.startswith("="))}
    depth, patch, default_size = _model_shape(model, json.dumps(fixed, sort_keys=True))
    img_size = pair(cfg.img_size) if isinstance(cfg.img_size, (list, tuple)) else int(cfg.img_size or default_size)
    names = {"depth": depth, "grid": min(pair(img_size)) // patch}
    cfg.model_args = {k: evaluate_formula(v[1:], **names) if isinstance(v, str) and v.startswith("=") else v
                      for k, v in args.items()}
    defaults = {**all_encoding_options(), **registry_args(model)}
    norm = lambda v: list(v) if isinstance(v, (list, tuple)) else v  # noqa: E731
    # an override equal to the model's default is dropped, so rows that mean the same run share it
    cfg.model_args = {k: v for k, v in cfg.model_args.items() if k not in defaults or norm(v) != norm(defaults[k])}
    cfg.img_size, cfg.seed = (list(img_size) if isinstance(img_size, tuple) else img_size), seed
    cfg.out = str(out / "runs" / entry["name"] / run_name(cfg))
    # settings that keep the numerics the entry's committed records were made with after a default changed
    # what it computes: applied after naming, since the name already meant them (see dataset_entries)
    apply_overrides(cfg, dict(entry.get("recorded_with", {})))
    return cfg, patch


@functools.cache
def _model_shape(model: str, args_json: str) -> tuple[int, int, int]:
    """(depth, patch size, default image size) of a registry model with these arguments (JSON).

    Built on the meta device (no memory), and cached: a sweep's plan asks for the same model once per seed and
    dataset, and each meta build still runs every initialiser (about 0.05 s).
    """
    with torch.device("meta"):
        base = create_model(model, **json.loads(args_json))
    return len(base.blocks), int(base.patch_size), int(base.img_size[0])


#: Config keys that say how a run executes, not what it computes: left out of its name, so changing them
#: (``--set workers=0``) reuses the run's records.
EXECUTION_KEYS = ("data_root", "cache_dir", "workers", "compile")


def run_name(cfg) -> str:
    """``<model>-<hash>-s<seed>``: the hash covers the settings that differ from ``TrainConfig``'s defaults.

    So a config field added later, whose default keeps the old behaviour, leaves
    every finished run's name (and its committed record) valid.
    """
    defaults = TrainConfig().to_dict()
    key = {k: v for k, v in cfg.to_dict().items()
           if k not in ("out", "seed", *EXECUTION_KEYS) and v != defaults.get(k)}
    digest = hashlib.sha1(json.dumps(key, sort_keys=True).encode()).hexdigest()[:8]
    return f"{cfg.model}-{digest}-s{cfg.seed}"


def plan(root: Path, budget_name: str, tables: list[str], out: Path, seeds: int | None = None,
         data_root: str | None = None, cache_dir: str | None = None, sets: list | None = None) -> list[Job]:
    """Every training run the tables need, deduplicated, in a stable order.

    A run shared by several rows lists all of them as members, so a run trained for one row serves the others.
    """
    rows, budget = load_rows(root), load_budget(root, budget_name)
    jobs: dict[str, Job] = {}
    for entry in dataset_entries(budget):
        only = entry.get("rows")
        if only is not None:
            unknown = sorted(set(only) - {r.name for r in rows.values()})
            if unknown:
                raise ValueError(f"dataset entry {entry['name']!r}: no row named {', '.join(unknown)}")
        for table in tables:
            if table not in entry.get("tables", []) or table == "T5":
                continue
            # (the row whose runs are trained, the T2 row testing them with other options or None)
            table_rows = [(rows[r.run], r if r.eval_args else None) if r.run else (r, None)
                          for r in rows.values() if r.table == table]
            if only is not None:  # a T1 row by its name; a T2 test-time row (eval_args) by its own name
                table_rows = [(r, v) for r, v in table_rows if (v or r).name in only]
            for row, variant in table_rows:
                for seed in range(_seeds(table, row, entry, budget, seeds)):
                    cfg, patch = row_config(row, entry, budget, seed, out, data_root, cache_dir, sets)
                    job = jobs.get(cfg.out)
                    if job is None:
                        sizes, test = test_plan(entry, budget, cfg, patch)
                        record = out / "records" / entry["name"] / f"{Path(cfg.out).name}.json"
                        job = jobs[cfg.out] = Job(entry["name"], Path(cfg.out), cfg, sizes, entry.get("eval_limit"),
                                                  record, test=test)
                    if (row.id, seed) not in job.members:
                        job.members.append((row.id, seed))
                    if variant is not None:
                        job.variants[variant.id] = dict(variant.eval_args)
    return list(jobs.values())


# ----------------------------------------------------------------------------- running


@functools.cache
def code_version() -> str | None:
    """The git commit of the code that runs (``+dirty`` with uncommitted changes to it), or None outside a clone.

    Stored in every record: a number comes back bit for bit only with the code,
    thread count and data it was made with. Read once per process, at the first
    call (:func:`reproduce` makes it before any training), so a commit made while
    a run trains does not relabel the run with code it did not load. A run
    resumed in a later process is labelled with that process's code.
    """
    src = Path(__file__).resolve().parent
    try:
        head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=src, capture_output=True, text=True, timeout=10)
        dirty = subprocess.run(["git", "status", "--porcelain", "--", "."], cwd=src, capture_output=True, text=True,
                               timeout=10)
    except (OSError, subprocess.SubprocessError):
        return None
    if head.returncode != 0:
        return None
    return head.stdout.strip() + ("+dirty" if dirty.stdout.strip() else "")


def _size_label(key: Any) -> str:
    """A test size as printed: ``64px`` (classification) or ``360x480 window 120x160`` (segmentation)."""
    return f"{key}px" if isinstance(key, int) else str(key)


def _write_json(path: Path, obj: Any) -> None:
    write_text_atomic(path, json.dumps(obj, indent=2))


def run_job(job: Job) -> dict[str, Any]:
    """Train (or resume) one run and evaluate its final weights at every test size; then test them with each
    variant's options. A run already recorded is not trained again unless a variant needs its weights and the
    run folder is gone (then it retrains: the same seed and threads give the same weights) or holds only an
    interrupted retrain's checkpoint (then it resumes that; testing a half-trained checkpoint would record
    numbers of other weights than the record's)."""
    last = job.dir / "last.safetensors"
    if job.trained:
        result = json.loads(job.record.read_text())
        if not last.exists() or load_checkpoint(last).progress.get("epoch", 0) < job.config.epochs:
            train(job.config, resume=True)
    else:
        result = _train_and_test(job)
    for rid, args in job.variants.items():
        if not job.variant_record(rid).exists():
            _test_variant(job, rid, args, result)
    return result


def _test_variant(job: Job, rid: str, args: dict[str, Any], result: dict[str, Any]) -> None:
    """The run's final weights tested with ``args`` (e.g. ``peg_fixed_grid = "dilate"``): a record of its own."""
    t0 = time.perf_counter()
    scores = job.evaluate(args)
    keep = ("run", "data", "dataset", "model", "model_args", "seed", "train_size", "epochs", "threads", "precision",
            "sizes", "params", "trainable", "pos_params")
    record = {**{k: result[k] for k in keep if k in result}, "rows": [rid], "eval_args": args, **scores,
              "train_s": 0.0, "eval_s": round(time.perf_counter() - t0, 1), "code": code_version()}
    _write_json(job.variant_record(rid), record)


def _train_and_test(job: Job) -> dict[str, Any]:
    t0 = time.perf_counter()
    metrics = train(job.config, resume=True)
    train_s = time.perf_counter() - t0
    last = job.dir / "last.safetensors"
    t_eval = time.perf_counter()
    scores = job.evaluate()
    eval_s = time.perf_counter() - t_eval
    model = model_from_checkpoint(load_checkpoint(last))
    log = job.dir / "log.jsonl"
    epochs = [json.loads(line) for line in log.read_text().splitlines()] if log.exists() else []
    val = "val_miou" if "metric" in scores else "val_top1"
    curve = [[r["epoch"], r[val]] for r in epochs if val in r]
    # a run resumed across sessions trained in several processes: its training time is every epoch's, from the log
    train_s = max(train_s, sum(r.get("epoch_time_s", 0) for r in epochs))
    result = {
        "run": job.dir.name, "data": job.data, "dataset": job.config.data, "model": job.config.model, "model_args": job.config.model_args,
        "seed": job.config.seed, "rows": [m[0] for m in job.members], "train_size": job.config.img_size,
        "epochs": job.config.epochs, "threads": torch.get_num_threads(),
        "precision": str(autocast_dtype(torch.device("cpu" if not torch.cuda.is_available() else "cuda"), job.config.amp, model)
                         or torch.float32).removeprefix("torch."), "compiled": bool(job.config.compile), "curve": curve,
        "sizes": job.sizes, **scores, **count_params(model), "train_loss": metrics.get("train_loss"), "train_s": round(train_s, 1),
        "eval_s": round(eval_s, 1), "code": code_version(),
    }
    job.record.parent.mkdir(parents=True, exist_ok=True)
    _write_json(job.record, result)
    return result


def measure_cost(rows: list[Row], cost: dict[str, Any], out: Path) -> list[dict[str, Any]]:
    """T5: parameters, FLOPs and inference throughput, measured round-robin in one process (ratios compare)."""
    path = out / "cost.json"
    key = {"rows": [r.id for r in rows], "cost": cost}
    if path.exists():
        prev = json.loads(path.read_text())
        if prev.get("key") == key:
            print("T5: cost already measured (cost.json)", flush=True)
            return prev["rows"]
    batch, iters, warmup = int(cost.get("batch_size", 16)), int(cost.get("iters", 3)), int(cost.get("warmup", 1))
    models, results = {}, []
    for r in rows:
        m = create_model(r.model, **({"img_size": cost["img_size"]} if "img_size" in cost else {})).eval()
        size = m.img_size[0]
        info = {"row": r.id, "model": r.model, "img_size": size, **count_params(m), "flops": count_flops(m, size)}
        models[r.id] = (m, torch.randn(batch, 3, size, size))
        results.append(info)
    times: dict[str, list[float]] = {r.id: [] for r in rows}
    with torch.inference_mode():
        for i in range(warmup + iters):
            for r in rows:  # round-robin so that drifts in machine speed hit every model alike
                m, x = models[r.id]
                t = time.perf_counter()
                m(x)
                if i >= warmup:
                    times[r.id].append(time.perf_counter() - t)
            print(f"T5: timing round {i + 1}/{warmup + iters}", flush=True)
    for info in results:
        info["img_per_s"] = batch / statistics.median(times[info["row"]])
    _write_json(path, {"key": key, "rows": results})
    return results


def reproduce(tables: str = "all", budget: str = "cpu", seeds: int | None = None, out: str | None = None,
              experiments: str | None = None, data_root: str | None = None, cache_dir: str | None = None,
              rows: str | None = None, compile: bool = False, data: str | None = None,
              sets: list | None = None) -> Path:
    """Run (or resume) a sweep and write its report; returns the report path.

    ``rows`` (``--rows peg,ape``) trains only the named rows, and ``data``
    (``--data imagenette``) only the runs of the named dataset entries of the
    budget (so a sweep can finish the main protocol before its studies); the
    report still covers every finished run of the tables in ``out``. ``compile`` trains and
    evaluates through ``torch.compile`` (also set by a budget's ``train.compile``);
    it is not part of a run's identity, so compiled and eager runs share records.
    ``sets`` (``--set KEY=VALUE``) change every run's config; a run's name hashes
    its settings, so a changed run is a new run with a record of its own.
    """
    code_version()  # read now, before any run: the records name the code this process loaded
    root = experiments_dir(experiments)
    wanted = parse_tables(tables)
    spec = load_budget(root, budget)  # ValueError naming the defined budgets
    changing = [k for k, _ in override_pairs(sets) if k not in EXECUTION_KEYS]
    if changing and out is None:
        raise ValueError(f"--set {', '.join(changing)} changes what the runs compute: give them an --out of their own, "
                         f"so their records are not reported beside the budget's (runs/reproduce/{budget})")
    if seeds is not None and seeds < 1:
        raise ValueError(f"--seeds must be at least 1, got {seeds}")
    out_dir = Path(out or f"runs/reproduce/{budget}")
    out_dir.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    jobs = plan(root, budget, wanted, out_dir, seeds, data_root, cache_dir, sets)
    for job in jobs:
        job.config.compile = job.config.compile or compile
    picked = select_rows(load_rows(root), wanted, rows)
    selected = [j for j in jobs if picked is None or any(rid in picked for rid in [*(m[0] for m in j.members), *j.variants])]
    if data is not None:
        names = [n.strip() for n in data.split(",") if n.strip()]
        known = [e["name"] for e in dataset_entries(spec)]
        unknown = [n for n in names if n not in known]
        if unknown or not names:
            raise ValueError(f"no dataset entry named {', '.join(unknown) or repr(data)} in budget {budget!r}; "
                             f"its entries: {', '.join(known)}")
        selected = [j for j in selected if j.data in names]
    if picked is not None:  # a run not asked for itself is only tested with the options of the rows asked for
        for j in selected:
            if not any(rid in picked for rid, _ in j.members):
                j.variants = {rid: args for rid, args in j.variants.items() if rid in picked}
    todo = [j for j in selected if not j.done]
    tests_only = sum(j.trained for j in todo)
    print(f"cpvt reproduce {','.join(wanted)} --budget {budget}{f' --rows {rows}' if rows else ''}"
          f"{f' --data {data}' if data else ''}: {len(selected)} "
          f"training runs, {len(selected) - len(todo)} already finished, {len(todo)} to run"
          f"{f' ({tests_only} of them trained, to be tested with other model options)' if tests_only else ''}; "
          f"output in {out_dir}", flush=True)
    spent: list[float] = []
    for k, job in enumerate(todo, 1):
        eta = f", about {statistics.mean(spent) * (len(todo) - k + 1) / 60:.0f} min left" if spent else ""
        what = (f"test with {', '.join(r for r in job.variants if not job.variant_record(r).exists())}" if job.trained
                else ", ".join(sorted({m[0] for m in job.members})))
        print(f"\n[{k}/{len(todo)}{eta}] {job.data}: {what} (seed {job.config.seed}) -> {job.dir}", flush=True)
        t = time.perf_counter()
        try:  # several `cpvt reproduce` processes share a sweep: each run goes to whoever locks it first
            with run_lock(job.dir):
                if job.done:  # finished by another process meanwhile
                    print("    finished by another process", flush=True)
                    continue
                res = run_job(job)
        except RunLocked as e:
            print(f"    skipped: {e}", flush=True)
            continue
        spent.append(time.perf_counter() - t)
        for rid in ["", *job.variants]:
            r = json.loads(job.variant_record(rid).read_text()) if rid else res
            print(f"    {'mIoU' if 'metric' in r else 'top-1'} by test size{f' ({rid})' if rid else ''}: "
                  + ", ".join(f"{_size_label(job.sizes[s])} {v:.2f}" for s, v in r["scales"].items()), flush=True)
    cost = None
    if "T5" in wanted:
        t5_rows = [r for r in load_rows(root).values() if r.table == "T5"]
        cost = measure_cost(t5_rows, spec.get("cost", {}), out_dir)
    # the report covers every finished run of the tables, not only the selected rows or seeds;
    # the rows a run serves come from today's plan (a row added later may share a finished run)
    every = _finished_plan(root, budget, wanted, out_dir, jobs, data_root, cache_dir)
    results = [{**json.loads(j.record.read_text()), "rows": sorted({m[0] for m in j.members})} for j in every if j.trained]
    results += [json.loads(j.variant_record(rid).read_text()) for j in every for rid in j.variants
                if j.variant_record(rid).exists()]
    path = write_report(root, budget, spec, wanted, results, cost, out_dir,
                        command=_command(tables, budget, seeds, out, rows, sets), elapsed=time.perf_counter() - t0)
    print(f"\nreport: {path}", flush=True)
    return path


def _finished_plan(root: Path, budget: str, tables: list[str], out: Path, jobs: list[Job], data_root: str | None,
                   cache_dir: str | None) -> list[Job]:
    """The budget's own plan plus every seed up to the highest one recorded in ``out``, whatever ``--seeds``
    planned for training, so that a sweep run one seed at a time (``--seeds 1``) still reports every seed."""
    pool = {j.dir: j for j in plan(root, budget, tables, out, None, data_root, cache_dir)}
    recorded = [int(m.group(1)) for p in out.glob("records/*/*.json") if (m := re.search(r"-s(\d+)(?:@.*)?$", p.stem))]
    if recorded and max(recorded) >= 1:  # seeds beyond 0 recorded: plan up to the highest
        for j in plan(root, budget, tables, out, max(recorded) + 1, data_root, cache_dir):
            pool.setdefault(j.dir, j)
    for j in jobs:
        pool.setdefault(j.dir, j)
    return list(pool.values())


def _command(tables: str, budget: str, seeds: int | None, out: str | None, rows: str | None = None,
             sets: list | None = None) -> str:
    parts = ["cpvt reproduce", tables, "--budget", budget]
    parts += [f"--set {k}={v!r}" if isinstance(v, str) else f"--set {k}={v}" for k, v in override_pairs(sets)]
    if rows:
        parts += ["--rows", rows]
    if seeds:
        parts += ["--seeds", str(seeds)]
    if out:
        parts += ["--out", out]
    return " ".join(parts)
