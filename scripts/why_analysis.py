"""The "why" measurements of the cpu budget's Imagenette study, on the sweep's trained seed-0 models.

For each model, at its training size (1x, 64 px) and at 2x (128 px):

- the position probe (``cpvt analyze position``): how well a linear read-out of the
  tokens recovers each token's place, on real and on constant images;
- attention distance (``cpvt analyze attention``) against uniform attention;
- the PEG response (``cpvt analyze peg``): border against interior tokens;
- distinct position codes: with a constant image (no content), how many of the
  tokens leaving the last block differ from one another. A token's place can only
  be told from what differs, so this counts the positions the model can tell apart
  from the encoding alone.

The PEG models are analysed twice: as trained, and tested with their kernels
dilated by the grid's ratio to the training grid (``peg_fixed_grid=dilate``;
identical to the plain model at 1x).

Their top-1 at every test size with that option is in the sweep's report (T2 rows
``experiments/t2_resolution/*_dilate.toml``), not here.

    OMP_NUM_THREADS=1 .venv/bin/python scripts/why_analysis.py [--images 256] [--out docs/results/cpu/why]

Run folders (their ``last`` checkpoint, as the sweep evaluates) come from ``scripts/sweep.sh cpu`` (``docs/results/cpu/runs``, not in
git); a model whose run folder is missing is listed and skipped.

Like the sweep, the script is incremental: the run folders are gone on a fresh
machine, so the models already in ``summary.json`` (same run, images and sizes)
are kept as measured, and only the others are analysed, with the other models of
their protocol that have weights here, so that each protocol's figures show all
its models (``--again``: every model with weights here).
"""

from __future__ import annotations

import argparse
import itertools
import json
import sys
import time
from pathlib import Path

import torch

from cpvt.study.analyze import analyze, image_batch, load_subject, normalise, stage_maps
from cpvt.utils.table import format_table

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "docs" / "results" / "cpu"
# (protocol, T1 row): the base protocol's PEG family and references, and the studies' two rows
SUBJECTS = [("imagenette", r) for r in ("none", "ape", "peg", "peg_plus", "peg_gap_plus", "ape_peg")] + [
    (study, r) for study in ("imagenette-patch4", "imagenette-mixres", "imagenette-rrc08", "imagenette-80ep",
                             "imagenette-wide")
    for r in ("ape", "peg")]
PEG_ROWS = ("peg", "peg_plus", "peg_gap_plus", "ape_peg")


def find_runs(results: Path, subjects: list[tuple[str, str]]) -> tuple[list[dict], list[str]]:
    """The seed-0 run of each subject whose record and run folder exist; the rest, as missing."""
    found, missing = [], []
    for data, row in subjects:
        records = [json.loads(p.read_text()) for p in sorted((results / "records" / data).glob("*-s0.json"))]
        records = [r for r in records if f"t1_encodings/{row}" in r["rows"]]
        runs = [r for r in records if (results / "runs" / data / r["run"] / "last.safetensors").exists()]
        if not runs:
            missing.append(f"{data}/{row}")
        # the final weights, as the sweep's own evaluation (cpvt.study.reproduce) uses
        found += [{"data": data, "row": row, "dir": str(results / "runs" / data / r["run"] / "last.safetensors"),
                   "record": r} for r in runs]
    return found, missing


@torch.no_grad()
def distinct_codes(run_dir: str, size: int, images: int = 4, overrides: dict | None = None) -> dict[str, float]:
    """Tokens leaving the last block on constant images: how many distinct vectors, of how many tokens."""
    subject = load_subject(run_dir, overrides=overrides)
    x = normalise(image_batch("constant", images, size, seed=0), subject)
    stages, _ = stage_maps(subject.model, x)
    last = stages[-1]  # (B, D, H, W)
    counts = []
    for t in last:
        v = t.flatten(1).T  # (H*W, D)
        scale = v.abs().max().clamp_min(1e-12)
        counts.append(len(torch.unique(torch.round(v / scale * 1e3), dim=0)))  # equal to 0.1% of the largest value
    return {"distinct": sum(counts) / len(counts), "tokens": last.shape[-1] * last.shape[-2]}


# (label suffix, model options, folder suffix): each model plain, and the PEG models with their kernels dilated
# by the grid's ratio to the training grid (the T2 rows *_dilate)
VARIANTS = [("", None, ""), (" (dilated)", {"peg_fixed_grid": "dilate"}, "-dilated")]


def label(data: str, row: str) -> str:
    """A model's name in the summary: its row, and the study in brackets (``peg [patch4]``)."""
    return row + ("" if data == "imagenette" else f" [{data.split('-', 1)[1]}]")


def labels(run: dict) -> list[str]:
    """The summary entries one run gives: plain, and dilated for the PEG models."""
    return [label(run["data"], run["row"]) + suffix for suffix, overrides, _ in VARIANTS
            if overrides is None or run["row"] in PEG_ROWS]


def protocol_mates(new: list[dict], runs: list[dict]) -> list[dict]:
    """``new`` and every other run of their protocols with weights here: a protocol's figure folders are
    rewritten whole, so each keeps all its models (in ``runs``' order)."""
    protocols = {r["data"] for r in new}
    return [r for r in runs if r["data"] in protocols]


def merge(previous: dict, new: dict, subjects: list[tuple[str, str]]) -> dict[str, dict]:
    """Entries of both (``new`` wins), ordered as the tables read: every plain model in ``subjects``'
    order, then the dilated ones."""
    models = {**previous, **new}
    order = {(d, r): i for i, (d, r) in enumerate(subjects)}
    key = lambda name: (name.endswith(")"), order.get((models[name]["data"], models[name]["row"]), len(order)))  # noqa: E731
    return {name: models[name] for name in sorted(models, key=key)}


def run_analyses(runs: list[dict], sizes: list[int], images: int, out: Path) -> dict[str, dict]:
    """The analysis tools on each seed-0 model at each size: the numbers ``summary_markdown`` tabulates."""
    base = {r["dir"]: label(r["data"], r["row"]) for r in runs}
    summary: dict[str, dict] = {}
    for suffix, overrides, folder in VARIANTS:
        members = [r for r in runs if overrides is None or r["row"] in PEG_ROWS]
        for r in members:
            summary[base[r["dir"]] + suffix] = {"data": r["data"], "row": r["row"], "run": r["record"]["run"],
                                                "overrides": overrides}
        # one figure folder per protocol (a study's models are compared among themselves), so that adding a
        # study's models leaves the figures of the models summarised before as they are
        protocols = list(dict.fromkeys(r["data"] for r in members))
        for size, kind, data in itertools.product(sizes, ("position", "attention", "peg"), protocols):
            subjects = [r["dir"] for r in members if r["data"] == data and (kind != "peg" or r["row"] in PEG_ROWS)]
            if not subjects:
                continue
            study = "" if data == "imagenette" else "-" + data.split("-", 1)[1]
            print(f"\n== {kind} at {size} px{suffix}, {data}", flush=True)
            res = analyze(kind, subjects, data="imagenette", out=str(out / f"{kind}-{size}{folder}{study}"),
                          images=images, img_size=size, overrides=overrides)
            for d, r in zip(subjects, res.values()):
                s = summary[base[d] + suffix].setdefault(str(size), {})
                if kind == "position":
                    s["probe_real"] = max(r["real"]["spearman"])
                    s["probe_constant"] = max(r["constant"]["spearman"])
                elif kind == "attention":
                    md = torch.tensor(r["mean_distance"]).mean(1)
                    s["attn_min_block"] = md.min().item()
                    s["attn_uniform"] = r["uniform_distance"]
                else:
                    c, real = r["constant"]["0@0"], r["real"]["0@0"]
                    s["peg_border_interior_constant"] = c["border_mean"] / max(c["interior_mean"], 1e-12)
                    s["peg_border_interior_real"] = real["border_mean"] / max(real["interior_mean"], 1e-12)
        for size in sizes:
            for r in members:
                summary[base[r["dir"]] + suffix][str(size)].update(distinct_codes(r["dir"], size, overrides=overrides))
    return summary


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--images", type=int, default=256, help="real images for the probe (half fit, half test)")
    ap.add_argument("--results", default=str(RESULTS), help="the sweep's folder (records/ and runs/)")
    ap.add_argument("--out", default=str(RESULTS / "why"))
    ap.add_argument("--sizes", default="64,128", help="analysis sizes in px: 1x and 2x")
    ap.add_argument("--again", action="store_true", help="analyse every model with weights here, even if summarised")
    args = ap.parse_args(argv)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    sizes = [int(s) for s in args.sizes.split(",")]
    runs, _ = find_runs(Path(args.results), SUBJECTS)
    previous, elapsed = {}, 0.0
    if (out / "summary.json").exists():
        old = json.loads((out / "summary.json").read_text())
        if (old["images"], old["sizes"]) == (args.images, sizes):  # otherwise not comparable: start again
            previous, elapsed = old["models"], old["elapsed_s"]
    done = lambda r: all(previous.get(n, {}).get("run") == r["record"]["run"] for n in labels(r))  # noqa: E731
    todo = runs if args.again else protocol_mates([r for r in runs if not done(r)], runs)
    if runs and not todo:
        print(f"every model with weights here is in {out / 'summary.json'} already (--again to redo them)")
        return 0
    if not runs and not previous:
        print("nothing to analyse: run scripts/sweep.sh cpu first", file=sys.stderr)
        return 1
    t0 = time.perf_counter()
    models = merge(previous, run_analyses(todo, sizes, args.images, out) if todo else {}, SUBJECTS)
    have = {(m["data"], m["row"]) for m in models.values()}
    missing = [f"{d}/{r}" for d, r in SUBJECTS if (d, r) not in have]
    if missing:
        print("not analysed (no trained weights here): " + ", ".join(missing), file=sys.stderr)
    a = {"images": args.images, "sizes": sizes, "missing": missing, "elapsed_s": elapsed + time.perf_counter() - t0,
         "models": models}
    (out / "summary.json").write_text(json.dumps(a, indent=1))
    figures = sorted(p.name for p in out.iterdir() if p.is_dir())
    (out / "summary.md").write_text("\n".join(summary_markdown(a, figures)))
    return 0


def summary_markdown(a: dict, figures: list[str]) -> list[str]:
    """``summary.md``: one line per model, each cell its value at 1x → 2x."""
    one, two = (str(s) for s in a["sizes"][:2])
    body = []
    for name, m in a["models"].items():
        if one not in m or two not in m:
            continue
        x, y = m[one], m[two]
        peg = lambda s, k: f"{s[k]:.2f}" if k in s else "–"  # noqa: E731
        body.append([name, f"{x['probe_real']:.2f} → {y['probe_real']:.2f}",
                     f"{x['probe_constant']:.2f} → {y['probe_constant']:.2f}",
                     f"{x['distinct']:.0f}/{x['tokens']} → {y['distinct']:.0f}/{y['tokens']}",
                     f"{x['attn_min_block'] / x['attn_uniform']:.3f} → {y['attn_min_block'] / y['attn_uniform']:.3f}",
                     f"{peg(x, 'peg_border_interior_constant')} → {peg(y, 'peg_border_interior_constant')}"])
    headers = ["model", "probe ρ, real images", "probe ρ, constant images", "distinct codes (constant)",
               "attention distance / uniform (lowest block)", "PEG border / interior (constant)"]
    lines = ["# Why: the trained models' position code at 1x and 2x", "",
             f"Produced by `OMP_NUM_THREADS=1 .venv/bin/python scripts/why_analysis.py` in "
             f"{a['elapsed_s'] / 60:.1f} min of analysis in all, {a['images']} validation images. Seed-0 runs of "
             f"the cpu sweep (see [report](../report.md)), each analysed once, when its weights were on the machine "
             f"(the script keeps the models it measured before and adds new ones); each cell is {one} px (1x) → "
             f"{two} px (2x). A study's models carry its name in brackets.", "",
             format_table(body, headers, markdown=True), ""]
    if a["missing"]:
        lines += [f"Not analysed (no weights on the machine yet): {', '.join(a['missing'])}.", ""]
    if figures:
        lines += ["Figures: " + ", ".join(f"[{name}]({name}/)" for name in figures), ""]
    return lines


if __name__ == "__main__":
    sys.exit(main())
