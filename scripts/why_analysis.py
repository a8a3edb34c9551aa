"""The "why" measurements of the cpu budget's Imagenette study, on the sweep's trained models.

Two parts (``--parts``, default both):

``analyses``, on each subject's seed-0 model, at its training size (1x, 64 px)
and at 2x (128 px):

- the position probe (``cpvt analyze position``): how well a linear read-out of the
  tokens recovers each token's place, on real and on constant images;
- attention distance (``cpvt analyze attention``) against uniform attention;
- the PEG response (``cpvt analyze peg``): border against interior tokens;
- distinct position codes: with a constant image (no content), how many of the
  tokens leaving the last block differ from one another. A token's place can only
  be told from what differs, so this counts the positions the model can tell apart
  from the encoding alone.

``variants``, on every seed of the PEG rows: the inference-time variants of a PEG
that keep the training grid's geometry (``peg_fixed_grid``: ``resample``, tokens
resampled to the training grid around each PEG; ``dilate``, kernels dilated by the
grid's ratio to the training grid), evaluated at every test size on all 3,925
validation images, beside the same models' sweep numbers. Finished evaluations
are kept in ``variants.json`` and skipped on the next run, so the table grows with
the sweep.

    OMP_NUM_THREADS=1 .venv/bin/python scripts/why_analysis.py [--parts variants] [--images 256]

Run folders (their ``last`` checkpoint, as the sweep evaluates) come from ``scripts/sweep.sh cpu`` (``docs/results/cpu/runs``, not in
git); a model whose run folder is missing is listed and skipped.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch

from cpvt.analyze import analyze, image_batch, load_subject, normalise, stage_maps
from cpvt.evaluate import evaluate_runs
from cpvt.report import Stats
from cpvt.table import format_table

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "docs" / "results" / "cpu"
# (protocol, T1 row): the base protocol's PEG family and references, and the studies' two rows
SUBJECTS = [("imagenette", r) for r in ("none", "ape", "peg", "peg_plus", "peg_gap_plus", "ape_peg")] + [
    (study, r) for study in ("imagenette-patch4", "imagenette-mixres") for r in ("ape", "peg")]
PEG_ROWS = ("peg", "peg_plus", "peg_gap_plus", "ape_peg")


def find_runs(results: Path, subjects: list[tuple[str, str]], all_seeds: bool = False) -> tuple[list[dict], list[str]]:
    """The seed-0 run (or every seed's) of each subject whose record and run folder exist; the rest, as missing."""
    found, missing = [], []
    for data, row in subjects:
        records = [json.loads(p.read_text()) for p in sorted((results / "records" / data).glob("*-s*.json"))]
        records = [r for r in records if f"t1_encodings/{row}" in r["rows"] and (all_seeds or r["seed"] == 0)]
        runs = [r for r in records if (results / "runs" / data / r["run"] / "last.safetensors").exists()]
        if not runs:
            missing.append(f"{data}/{row}")
        # the final weights, as the sweep's own evaluation (cpvt.reproduce) uses
        found += [{"data": data, "row": row, "dir": str(results / "runs" / data / r["run"] / "last.safetensors"),
                   "record": r} for r in runs]
    return found, missing


@torch.no_grad()
def distinct_codes(run_dir: str, size: int, images: int = 4) -> dict[str, float]:
    """Tokens leaving the last block on constant images: how many distinct vectors, of how many tokens."""
    subject = load_subject(run_dir)
    x = normalise(image_batch("constant", images, size, seed=0), subject)
    stages, _ = stage_maps(subject.model, x)
    last = stages[-1]  # (B, D, H, W)
    counts = []
    for t in last:
        v = t.flatten(1).T  # (H*W, D)
        scale = v.abs().max().clamp_min(1e-12)
        counts.append(len(torch.unique(torch.round(v / scale * 1e3), dim=0)))  # equal to 0.1% of the largest value
    return {"distinct": sum(counts) / len(counts), "tokens": last.shape[-1] * last.shape[-2]}


MODES = ("dilate", "resample")


def run_analyses(runs: list[dict], sizes: list[int], images: int, out: Path) -> dict[str, dict]:
    """The analysis tools on each seed-0 model at each size: the numbers ``write_markdown`` tabulates."""
    label = {r["dir"]: f"{r['row']}" + ("" if r["data"] == "imagenette" else f" [{r['data'].split('-', 1)[1]}]")
             for r in runs}
    summary: dict[str, dict] = {label[r["dir"]]: {"data": r["data"], "row": r["row"], "run": r["record"]["run"]}
                                for r in runs}
    dirs = [r["dir"] for r in runs]
    for size in sizes:
        for kind in ("position", "attention", "peg"):
            print(f"\n== {kind} at {size} px", flush=True)
            subjects = dirs if kind != "peg" else [r["dir"] for r in runs if r["row"] in PEG_ROWS]
            if not subjects:
                continue
            res = analyze(kind, subjects, data="imagenette", out=str(out / f"{kind}-{size}"), images=images,
                          img_size=size)
            for d, r in zip(subjects, res.values()):
                s = summary[label[d]].setdefault(str(size), {})
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
        for r in runs:
            summary[label[r["dir"]]][str(size)].update(distinct_codes(r["dir"], size))
    return summary


def run_variants(results: Path, out: Path, modes: tuple[str, ...] = MODES) -> dict[str, dict]:
    """Every seed of every PEG row of the base protocol, evaluated with each ``peg_fixed_grid`` mode at its
    sweep test sizes; evaluations already in ``variants.json`` are kept, not repeated."""
    path = out / "variants.json"
    done: dict[str, dict] = json.loads(path.read_text()) if path.exists() else {}
    runs, missing = find_runs(results, [("imagenette", r) for r in PEG_ROWS], all_seeds=True)
    if missing:
        print("no trained run yet (skipped): " + ", ".join(missing), file=sys.stderr)
    for r in runs:
        rec = r["record"]
        entry = done.setdefault(rec["run"], {"row": r["row"], "seed": rec["seed"]})
        entry["plain"] = {str(px): rec["scales"][s] for s, px in rec["sizes"].items()}
    for mode in modes:  # one mode over every run, then the next: a stopped run has whole columns
        for r in runs:
            rec = r["record"]
            entry = done[rec["run"]]
            if mode in entry:
                continue
            print(f"\n== {rec['run']} with peg_fixed_grid={mode}", flush=True)
            t0 = time.perf_counter()
            [f] = evaluate_runs([r["dir"]], img_sizes=sorted(rec["sizes"].values()),
                                model_overrides={"peg_fixed_grid": mode})
            entry[mode] = {px: v["top1"] for px, v in f["sizes"].items()}
            entry[f"{mode}_s"] = time.perf_counter() - t0
            path.write_text(json.dumps(done, indent=1))  # after each evaluation: a stopped run keeps what it did
    return done


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--parts", default="analyses,variants", help="analyses, variants or both (comma-separated)")
    ap.add_argument("--images", type=int, default=256, help="real images for the probe (half fit, half test)")
    ap.add_argument("--results", default=str(RESULTS), help="the sweep's folder (records/ and runs/)")
    ap.add_argument("--out", default=str(RESULTS / "why"))
    ap.add_argument("--sizes", default="64,128", help="analysis sizes in px: 1x and 2x")
    ap.add_argument("--modes", default=",".join(MODES), help="peg_fixed_grid modes the variants part evaluates")
    args = ap.parse_args(argv)
    parts = set(args.parts.split(","))
    if not parts or parts - {"analyses", "variants"}:
        ap.error(f"--parts: analyses and/or variants, got {args.parts!r}")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    if "analyses" in parts:
        runs, missing = find_runs(Path(args.results), SUBJECTS)
        if missing:
            print("no trained run yet (skipped): " + ", ".join(missing), file=sys.stderr)
        if not runs:
            print("nothing to analyse: run scripts/sweep.sh cpu first", file=sys.stderr)
            return 1
        sizes = [int(s) for s in args.sizes.split(",")]
        t0 = time.perf_counter()
        summary = run_analyses(runs, sizes, args.images, out)
        (out / "analyses.json").write_text(json.dumps({"images": args.images, "sizes": sizes, "missing": missing,
                                                       "elapsed_s": time.perf_counter() - t0, "models": summary},
                                                      indent=1))
    if "variants" in parts:
        run_variants(Path(args.results), out, tuple(args.modes.split(",")))
    write_markdown(Path(args.results), out)
    return 0


def _records(results: Path, row: str) -> list[dict]:
    return [r for p in sorted((results / "records" / "imagenette").glob("*.json"))
            if f"t1_encodings/{row}" in (r := json.loads(p.read_text()))["rows"]]


def write_markdown(results: Path, out: Path) -> None:
    """``summary.md`` from ``analyses.json`` and ``variants.json``, whichever exist."""
    lines = ["# Why: the trained models' position code at 1x and 2x", ""]
    if (out / "analyses.json").exists():
        a = json.loads((out / "analyses.json").read_text())
        lines += _analyses_table(a)
    if (out / "variants.json").exists():
        lines += _variants_table(results, json.loads((out / "variants.json").read_text()))
    figures = sorted(p.name for p in out.iterdir() if p.is_dir())
    if figures:
        lines += ["Figures: " + ", ".join(f"[{name}]({name}/)" for name in figures), ""]
    (out / "summary.md").write_text("\n".join(lines))


def _analyses_table(a: dict) -> list[str]:
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
    lines = ["## The analysis tools", "",
             f"Produced by `OMP_NUM_THREADS=1 .venv/bin/python scripts/why_analysis.py --parts analyses` in "
             f"{a['elapsed_s'] / 60:.1f} min, {a['images']} validation images. Seed-0 runs of the cpu sweep "
             f"(see [report](../report.md)); each cell is {one} px (1x) → {two} px (2x).", "",
             format_table(body, headers, markdown=True), ""]
    if a["missing"]:
        lines += [f"Not trained yet when this ran: {', '.join(a['missing'])}.", ""]
    return lines


def _variants_table(results: Path, done: dict) -> list[str]:
    """Top-1 per row and mode, mean ± sd over seeds, with the change from 1x to 2x per seed; APE and no PE
    from their sweep records for reference."""
    sizes = sorted({int(px) for e in done.values() for px in e["plain"]})
    one, two = str(sizes[0]), str(2 * sizes[0])
    body = []
    refs = [(row, "plain", [{str(px): rec["scales"][s] for s, px in rec["sizes"].items()} for rec in _records(results, row)])
            for row in ("none", "ape")]
    rows = refs + [(row, mode, [e[mode] for e in done.values() if e["row"] == row and mode in e])
                   for row in PEG_ROWS for mode in ("plain", *MODES)]
    minutes = sum(e.get(f"{m}_s", 0.0) for e in done.values() for m in MODES) / 60
    for row, mode, per_seed in rows:
        if not per_seed:
            continue
        cells = [Stats([s[str(px)] for s in per_seed]).fmt(short=True) for px in sizes]
        delta = Stats([s[two] - s[one] for s in per_seed]).fmt(short=True, signed=True) if two in per_seed[0] else "—"
        body.append([row, mode, len(per_seed), *cells, delta])
    headers = ["row", "PEG at test", "n", *(f"{px} px" for px in sizes), f"Δ {one} → {two} px"]
    return ["## A PEG that keeps the training grid's geometry", "",
            "Top-1 (%) on all 3,925 validation images, mean ± sd over seeds; the models are the sweep's, unchanged. "
            "`plain`: the sweep's own numbers. `resample`: tokens resampled to the training grid around each PEG "
            "and its output resampled back. `dilate`: the PEG's kernels dilated by the grid's ratio to the training "
            "grid (rounded half up: 1 up to 1.25x, 2 at 1.5-2x, 3 at 2.5x, 4 at 3.5x). Both are inference-time "
            "options, `cpvt eval RUN --set model.peg_fixed_grid=dilate`. Δ: per seed, then mean ± sd.", "",
            f"Produced by `OMP_NUM_THREADS=1 .venv/bin/python scripts/why_analysis.py --parts variants` "
            f"({minutes:.0f} min of evaluation in all, one thread beside the sweep).", "",
            format_table(body, headers, markdown=True), ""]


if __name__ == "__main__":
    sys.exit(main())
