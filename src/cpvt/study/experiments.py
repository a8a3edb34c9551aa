"""The experiments as data: table rows, budgets and claims under ``experiments/``.

Nothing here trains or imports PyTorch at module level; :mod:`cpvt.study.reproduce`
plans and runs sweeps from these definitions and :mod:`cpvt.study.report` writes
their report.

* one TOML file per table row (``t1_encodings/peg.toml`` ...): a model name with
  ``{size}`` left open, model overrides, and the paper's number for that row;
* ``budgets.toml``: model size, datasets, training overrides, test scales and
  seeds for each budget;
* ``claims.toml``: the paper's claims as comparisons between rows.
"""

from __future__ import annotations

import os
import platform
import sys
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any


@dataclass(frozen=True)
class TableSpec:
    """One of CPVT's tables as the sweep and the report see it.

    ``kind`` picks the report section that draws it: ``deltas`` (top-1 of each row
    against ``baseline``, trained runs), ``resolution`` (the runs of another table's
    rows tested at every size), ``dense`` (segmentation: rows trained and tested at
    every size in one table, beside rows testing those runs with test-time options;
    mIoU and per-class IoU) or ``cost`` (parameters, FLOPs, throughput; nothing
    trains). Adding a table is one entry here plus its row files.
    """

    title: str
    kind: str
    baseline: str | None = None

    @property
    def trains(self) -> bool:
        return self.kind in ("deltas", "dense")

    @property
    def tests_sizes(self) -> bool:
        """Its numbers come from testing at several sizes (resolution claims are judged on it)."""
        return self.kind in ("resolution", "dense")


TABLES: dict[str, TableSpec] = {
    "T1": TableSpec("T1: position encodings (top-1 at the training resolution)", "deltas", "t1_encodings/ape"),
    "T2": TableSpec("T2: resolution, trained at one size and tested without fine-tuning", "resolution"),
    "T3": TableSpec("T3: where the PEG goes", "deltas", "t3_placement/pos0"),
    "T4": TableSpec("T4: what makes a PEG work", "deltas", "t4_peg/kernel3"),
    "T5": TableSpec("T5: cost", "cost"),
    "T6S": TableSpec("T6S: CamVid segmentation, Scale (whole frames, tested at up to 3x the pixels per object)",
                     "dense"),
    "T6C": TableSpec("T6C: CamVid segmentation, Canvas (trained on crops, tested on up to 3x the field of view)",
                     "dense"),
}
TITLES = {name: spec.title for name, spec in TABLES.items()}
DEIT_SIZES = {"ti": "tiny", "s": "small", "b": "base"}


# ----------------------------------------------------------------------------- loading


def experiments_dir(path: str | Path | None = None) -> Path:
    """``path``, else ``$CPVT_EXPERIMENTS``, else ``./experiments``, else the repository's."""
    candidates = [path, os.environ.get("CPVT_EXPERIMENTS"), "experiments", Path(__file__).resolve().parents[3] / "experiments"]
    for c in candidates:
        if c is not None and (Path(c) / "budgets.toml").exists():
            return Path(c)
    where = path or os.environ.get("CPVT_EXPERIMENTS") or "./experiments"
    raise ValueError(f"no experiments folder with a budgets.toml at {where}; pass --experiments DIR (the repository's experiments/)")


@dataclass
class Row:
    """One table row: a file under ``experiments/<table folder>/``."""

    id: str  # "t1_encodings/peg"
    table: str
    label: str
    model: str | None = None  # may contain {size}
    model_args: dict[str, Any] = field(default_factory=dict)
    paper: dict[str, Any] = field(default_factory=dict)
    run: str | None = None  # a row whose runs this one reads (T2: a T1 row; a dense table: a row of its own table)
    eval_args: dict[str, Any] = field(default_factory=dict)  # with run: model options for testing those runs only
    order: int = 0  # position in its table
    highlight: bool = False  # T2: drawn thick in the resolution plot

    @property
    def name(self) -> str:
        """The file name without ``.toml`` (``peg`` for ``t1_encodings/peg``): what ``--rows`` takes."""
        return self.id.split("/", 1)[1]


def load_rows(root: Path) -> dict[str, Row]:
    rows: dict[str, Row] = {}
    for path in sorted(root.glob("t*/*.toml")):
        with open(path, "rb") as f:
            d = tomllib.load(f)
        rid = f"{path.parent.name}/{path.stem}"
        unknown = set(d) - {"table", "label", "model", "model_args", "paper", "run", "order", "highlight", "eval_args"}
        if unknown or d.get("table") not in TABLES:
            raise ValueError(f"{path}: needs table = one of {tuple(TABLES)}; unknown keys {sorted(unknown)}")
        rows[rid] = Row(rid, d["table"], d.get("label", rid), d.get("model"), d.get("model_args", {}), d.get("paper", {}),
                        run=d.get("run"), eval_args=d.get("eval_args", {}), order=int(d.get("order", 0)),
                        highlight=bool(d.get("highlight", False)))
        if rows[rid].eval_args and not rows[rid].run:
            raise ValueError(f"{path}: eval_args (options for testing another row's runs) needs run = \"<row>\"")
    for r in rows.values():
        if (r.table == "T2" or r.run) and r.run not in rows:
            raise ValueError(f"experiments/{r.id}.toml: run = {r.run!r} is not a row")
        if r.run and r.model:
            raise ValueError(f"experiments/{r.id}.toml: a row trains (model = ...) or reads another row's runs "
                             "(run = ...), not both")
        if r.table != "T2" and not (r.model or (r.run and TABLES[r.table].kind == "dense")):
            raise ValueError(f"experiments/{r.id}.toml: needs model = ...")
    return dict(sorted(rows.items(), key=lambda kv: (kv[1].table, kv[1].order, kv[0])))


def load_budget(root: Path, name: str) -> dict[str, Any]:
    with open(root / "budgets.toml", "rb") as f:
        budgets = tomllib.load(f)
    if name not in budgets:
        raise ValueError(f"unknown budget {name!r}; {root / 'budgets.toml'} defines {', '.join(budgets)}")
    return budgets[name]


NOT_INHERITED = ("name", "base", "note", "study", "rows", "row_seeds")


def dataset_entries(budget: dict[str, Any]) -> list[dict[str, Any]]:
    """A budget's ``[[datasets]]`` entries, resolved.

    Each entry is named by ``name`` (default: its ``data``); runs and records go under that name.
    ``base = "<name>"`` starts from an earlier entry: every key this one does not set, except
    ``note``, ``study``, ``rows`` and ``row_seeds``, with ``train`` and ``model_args`` merged key by
    key. ``rows = [...]`` limits the entry to those rows (file stems): the trained rows by name, and
    in T2 the test-time rows (``eval_args``) by their own name, so ``["peg", "peg_dilate"]`` trains
    the PEG and tests it dilated but not resampled. ``study = "..."`` marks a
    variant of the protocol measured for the report's "why" section rather than for the tables.
    ``recorded_with = { key = value }`` holds config settings that reproduce how the entry's committed records
    were computed after a default changed what it computes (``attention = "math-short"``: the training
    attention path before ``auto`` was measured in fp32). They apply to every run of the entry, and are
    inherited, but stay out of run names: the names already meant them, so no record is orphaned and no
    new run of the entry mixes other numerics into its rows.
    """
    out: dict[str, dict[str, Any]] = {}
    for raw in budget.get("datasets", []):
        entry = dict(raw)
        if "base" in entry:
            if entry["base"] not in out:
                raise ValueError(f"dataset entry {entry.get('name', entry.get('data'))!r}: base {entry['base']!r} "
                                 f"is not an earlier entry (entries: {', '.join(out) or 'none'})")
            base = out[entry["base"]]
            merged = {k: v for k, v in base.items() if k not in NOT_INHERITED}
            for key in ("train", "model_args"):
                merged[key] = {**base.get(key, {}), **entry.pop(key, {})}
            entry = {**merged, **entry}
        if "data" not in entry:
            raise ValueError(f"dataset entry {entry.get('name')!r} needs data = ... (or a base)")
        entry["name"] = entry.get("name", entry["data"])
        if entry["name"] in out:
            raise ValueError(f"two dataset entries are named {entry['name']!r}; give one a name = ...")
        out[entry["name"]] = entry
    return list(out.values())


def load_claims(root: Path) -> list[dict[str, Any]]:
    path = root / "claims.toml"
    if not path.exists():
        return []
    with open(path, "rb") as f:
        return tomllib.load(f).get("claim", [])


def parse_tables(spec: str) -> list[str]:
    """``all``, ``T1`` or ``t1,t3`` -> canonical table names, in order."""
    if spec.lower() == "all":
        return list(TABLES)
    out = []
    for part in spec.replace(" ", "").split(","):
        t = part.upper()
        if t not in TABLES:
            raise ValueError(f"unknown table {part!r}; choose from {', '.join(TABLES)} or all (comma-separate several)")
        out.append(t)
    return sorted(set(out), key=list(TABLES).index)


def scales_of(entry: dict, budget: dict) -> list[float]:
    """Test scales of one dataset: its own ``scales``, else the budget's."""
    return [float(s) for s in entry.get("scales", budget.get("scales", [1.0]))]


def environment() -> str:
    import torch  # only when a report is written

    return f"{platform.machine()}, {os.cpu_count()} cores, Python {sys.version.split()[0]}, torch {torch.__version__}" + (
        f", {torch.cuda.get_device_name()}" if torch.cuda.is_available() else ", no GPU")
