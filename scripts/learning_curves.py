"""Plot the learning curves (validation top-1 by epoch) stored in a sweep's result records.

    .venv/bin/python scripts/learning_curves.py docs/results/cpu imagenette docs/results/cpu/curves_imagenette.png

Prints, per run, top-1 at the end and how much the last 10% of epochs added.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

from cpvt.study.report import last_gain
from cpvt.utils.plotting import pyplot, save


def main(out_dir: str, data: str, png: str) -> None:
    records = [json.loads(p.read_text()) for p in sorted(Path(out_dir, "records", data).glob("*.json"))]
    records = [r for r in records if last_gain(r.get("curve") or []) is not None]
    if not records:
        raise SystemExit(f"no records with learning curves under {out_dir}/records/{data}")
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(7, 4.2), dpi=120)
    print(f"{'run':40s} {'rows':40s} {'last':>6s} {'last 10%':>9s}")
    for r in records:
        epochs, top1 = zip(*r["curve"])
        gain = last_gain(r["curve"])
        label = ", ".join(row.split("/")[1] for row in r["rows"] if row.startswith("t1_")) or r["rows"][0]
        ax.plot(epochs, top1, marker=".", label=f"{label} (seed {r['seed']})")
        print(f"{r['run']:40s} {label:40s} {top1[-1]:6.2f} {gain:+9.2f}")
    ax.set_xlabel("epoch")
    ax.set_ylabel(f"validation top-1 (%) at {records[0]['train_size']} px")
    ax.set_title(f"learning curves, {data}")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    print(f"wrote {save(fig, png)}")


if __name__ == "__main__":
    main(*sys.argv[1:4])
