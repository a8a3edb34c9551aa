"""The figures of docs/analysis.md: `cpvt analyze` on the cpu-budget CIFAR-10 runs of the reproduction suite.

    .venv/bin/python scripts/analysis_figures.py --sweep docs/results/cpu --out docs/analysis

Finds the seed-0 CIFAR-10 runs of the rows below in the sweep's results.json and
runs the four analyses on them side by side.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from cpvt.study.analyze import analyze

ROWS = {
    "t1_encodings/ape": "APE",
    "t1_encodings/none": "no PE",
    "t1_encodings/peg": "PEG",
    "t1_encodings/peg_plus": "PEG at 0-4",
    "t4_peg/circular": "PEG circular",
    "t1_encodings/rpe": "RPE",
    "t1_encodings/rope": "RoPE axial",
    "t1_encodings/rope_mixed": "RoPE mixed",
    "t1_encodings/alibi": "2D-ALiBi",
    "t1_encodings/convffn": "ConvFFN",
    "t1_encodings/convembed": "conv embed",
    "t1_encodings/convproj": "conv proj",
}
# Rows each analysis skips: attention maps need a query x key grid (the conv projection's keys are
# strided); the PEG response needs a PEG.
SKIP = {
    "attention": {"t1_encodings/convproj"},
    "peg": {r for r in ROWS if r not in ("t1_encodings/peg", "t1_encodings/peg_plus", "t4_peg/circular")},
}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sweep", default="docs/results/cpu", help="a `cpvt reproduce` output folder")
    ap.add_argument("--data", default="cifar10")
    ap.add_argument("--out", default="docs/analysis")
    ap.add_argument("--images", type=int, default=128)
    args = ap.parse_args()
    # one pass over the sweep's run folders: (row, seed) -> folder, for this dataset
    folders = {}
    for result in sorted((Path(args.sweep) / "runs" / args.data).glob("*/result.json")):
        run = json.loads(result.read_text())
        for row in run["rows"]:
            folders[(row, run["seed"])] = result.parent
    found = {}
    for row in ROWS:
        if (row, 0) not in folders:
            raise SystemExit(f"{args.sweep} has no finished seed-0 {args.data} run for {row}; run `cpvt reproduce` first")
        found[row] = folders[(row, 0)]
    print("runs:", *(f"  {ROWS[r]}: {found[r]}" for r in ROWS), sep="\n")
    for kind in ("equivariance", "position", "attention", "peg"):
        print(f"\n== {kind}")
        specs = [str(found[row]) for row in ROWS if row not in SKIP.get(kind, ())]
        analyze(kind, specs, data=args.data, out=str(Path(args.out)), images=args.images)


if __name__ == "__main__":
    main()
