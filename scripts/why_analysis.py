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

And the inference-time variant of a PEG whose zero padding is seen at the training
grid (``peg_fixed_grid=True``: tokens are resampled to the training grid around
each PEG), evaluated at every test size beside the same models' sweep numbers.

    OMP_NUM_THREADS=1 .venv/bin/python scripts/why_analysis.py [--images 256] [--out docs/results/cpu/why]

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
from cpvt.table import format_table

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "docs" / "results" / "cpu"
# (protocol, T1 row): the base protocol's PEG family and references, and the studies' two rows
SUBJECTS = [("imagenette", r) for r in ("none", "ape", "peg", "peg_plus", "peg_gap_plus", "ape_peg")] + [
    (study, r) for study in ("imagenette-patch4", "imagenette-mixres") for r in ("ape", "peg")]
PEG_ROWS = ("peg", "peg_plus", "peg_gap_plus", "ape_peg")


def find_runs(results: Path) -> tuple[list[dict], list[str]]:
    """The seed-0 run of every subject whose record and run folder exist; the rest, as missing."""
    found, missing = [], []
    for data, row in SUBJECTS:
        records = [json.loads(p.read_text()) for p in sorted((results / "records" / data).glob("*-s0.json"))]
        rec = next((r for r in records if f"t1_encodings/{row}" in r["rows"]), None)
        folder = results / "runs" / data / rec["run"] if rec else None
        if folder is None or not (folder / "last.safetensors").exists():
            missing.append(f"{data}/{row}")
            continue
        # the final weights, as the sweep's own evaluation (cpvt.reproduce) uses
        found.append({"data": data, "row": row, "dir": str(folder / "last.safetensors"), "record": rec})
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


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--images", type=int, default=256, help="real images for the probe (half fit, half test)")
    ap.add_argument("--results", default=str(RESULTS), help="the sweep's folder (records/ and runs/)")
    ap.add_argument("--out", default=str(RESULTS / "why"))
    ap.add_argument("--sizes", default="64,128", help="test sizes in px: 1x and 2x")
    args = ap.parse_args(argv)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    sizes = [int(s) for s in args.sizes.split(",")]
    runs, missing = find_runs(Path(args.results))
    if missing:
        print("no trained run yet (skipped): " + ", ".join(missing), file=sys.stderr)
    if not runs:
        print("nothing to analyse: run scripts/sweep.sh cpu first", file=sys.stderr)
        return 1
    t0 = time.perf_counter()
    label = {r["dir"]: f"{r['row']}" + ("" if r["data"] == "imagenette" else f" [{r['data'].split('-', 1)[1]}]")
             for r in runs}
    summary: dict[str, dict] = {label[r["dir"]]: {"data": r["data"], "row": r["row"], "run": r["record"]["run"]}
                                for r in runs}
    dirs = [r["dir"] for r in runs]
    for size in sizes:
        for kind in ("position", "attention", "peg"):
            print(f"\n== {kind} at {size} px", flush=True)
            subjects = dirs if kind != "peg" else [r["dir"] for r in runs if r["row"] in PEG_ROWS]
            res = analyze(kind, subjects, data="imagenette", out=str(out / f"{kind}-{size}"), images=args.images,
                          img_size=size)
            by_label = dict(zip([d for d in subjects], res.values()))
            for d, r in by_label.items():
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
    print("\n== PEG resampled to the training grid (peg_fixed_grid=True)", flush=True)
    pegs = [r for r in runs if r["row"] in PEG_ROWS]
    test_sizes = sorted({px for r in pegs for px in r["record"]["sizes"].values()})
    fixed = evaluate_runs([r["dir"] for r in pegs], img_sizes=test_sizes,
                          model_overrides={"peg_fixed_grid": True}) if pegs else []
    for r, f in zip(pegs, fixed):
        plain = {px: r["record"]["scales"][s] for s, px in r["record"]["sizes"].items()}
        summary[label[r["dir"]]]["fixed_grid"] = {str(px): {"plain": plain[px], "fixed": f["sizes"][str(px)]["top1"]}
                                                  for px in test_sizes}
    elapsed = time.perf_counter() - t0
    (out / "summary.json").write_text(json.dumps({"images": args.images, "sizes": sizes, "elapsed_s": elapsed,
                                                  "missing": missing, "models": summary}, indent=1))
    write_markdown(summary, sizes, out, elapsed, missing)
    return 0


def write_markdown(summary: dict, sizes: list[int], out: Path, elapsed: float, missing: list[str]) -> None:
    one, two = (str(s) for s in sizes[:2])
    body = []
    for name, m in summary.items():
        if one not in m or two not in m:
            continue
        a, b = m[one], m[two]
        peg = lambda s, k: f"{s[k]:.2f}" if k in s else "–"  # noqa: E731
        body.append([name, f"{a['probe_real']:.2f} → {b['probe_real']:.2f}",
                     f"{a['probe_constant']:.2f} → {b['probe_constant']:.2f}",
                     f"{a['distinct']:.0f}/{a['tokens']} → {b['distinct']:.0f}/{b['tokens']}",
                     f"{a['attn_min_block'] / a['attn_uniform']:.3f} → {b['attn_min_block'] / b['attn_uniform']:.3f}",
                     f"{peg(a, 'peg_border_interior_constant')} → {peg(b, 'peg_border_interior_constant')}"])
    headers = ["model", "probe ρ, real images", "probe ρ, constant images", "distinct codes (constant)",
               "attention distance / uniform (lowest block)", "PEG border / interior (constant)"]
    lines = ["# Why: the trained models' position code at 1x and 2x", "",
             f"Produced by `OMP_NUM_THREADS=1 .venv/bin/python scripts/why_analysis.py` in {elapsed / 60:.1f} min. "
             f"Seed-0 runs of the cpu sweep (see [report](../report.md)); each cell is {one} px (1x) → {two} px (2x).",
             "", format_table(body, headers, markdown=True), ""]
    if missing:
        lines += [f"Not trained yet when this ran: {', '.join(missing)}.", ""]
    fixed = {n: m["fixed_grid"] for n, m in summary.items() if "fixed_grid" in m}
    if fixed:
        px = list(next(iter(fixed.values())))
        rows = [[n, *(f"{f[p]['plain']:.2f} / {f[p]['fixed']:.2f}" for p in px)] for n, f in fixed.items()]
        lines += ["## A PEG that sees the training grid", "",
                  "Top-1, plain / `peg_fixed_grid=True` (tokens resampled to the training grid around each PEG, "
                  "`cpvt eval RUN --set model.peg_fixed_grid=True`), all 3,925 validation images:", "",
                  format_table(rows, ["model", *(f"{p} px" for p in px)], markdown=True), ""]
    lines += ["Figures: " + ", ".join(f"[{k} {s} px]({k}-{s}/)" for s in sizes for k in ("position", "attention",
                                                                                      "peg")), ""]
    (out / "summary.md").write_text("\n".join(lines))


if __name__ == "__main__":
    sys.exit(main())
