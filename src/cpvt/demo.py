"""``cpvt demo``: CPVT's claim, live, on 2 CPU cores in a few minutes.

Three micro ViTs are trained on the built-in synthetic shapes at 32 px (the
label is the shape *and* the half of the image it is in, so position matters):

* ``cpvt_micro_gap_plus``: PEGs after blocks 0-4, no class token (CPVT-GAP‡);
* ``deit_micro``: a learned absolute position embedding (DeiT);
* ``deit_micro_nope``: no position encoding at all.

All three are slimmed to depth 6 and width 64 (the ``demo`` recipe) so that
each gets ~550 optimiser steps. The training scenes are zoomed about the image
centre by up to 2x (see :mod:`cpvt.data.synthetic`), so shapes span as many
tokens in training as they do in the larger test renders. Each model is then
tested, without fine-tuning, on the *same held-out scenes* (not zoomed)
rendered at 1x, 1.5x and 2x the training resolution (32, 48, 64 px).
"""

from __future__ import annotations

import time
from pathlib import Path

from .config import resolve_config
from .engine import train
from .evaluate import evaluate_runs, plot_results, results_table, write_json

MODELS = ("cpvt_micro_gap_plus", "deit_micro", "deit_micro_nope")


def run_demo(out: str = "runs/demo", fresh: bool = False, sets: list[str] | None = None) -> list[dict]:
    t0 = time.perf_counter()
    root = Path(out)
    runs = []
    for name in MODELS:
        cfg = resolve_config("demo", {"model": name, "out": str(root / name)}, sets)
        print(f"\n== training {name} ({cfg.epochs} epochs on synthetic shapes at {cfg.img_size}px)", flush=True)
        train(cfg, resume=not fresh)  # a finished run is reused, an interrupted one resumed
        runs.append(str(root / name))
    sizes = [32, 48, 64]
    results = evaluate_runs(runs, img_sizes=sizes)
    from .data.synthetic import SyntheticShapes

    ceiling = 100 * SyntheticShapes.position_free_ceiling
    print("\nTop-1 (%) on held-out synthetic scenes; trained at 32 px, tested at 32 / 48 / 64 px with no fine-tuning:\n")
    print(results_table(results))
    write_json(results, root / "resolution.json")
    plot = plot_results(results, root / "resolution.png", title="cpvt demo: synthetic shapes, trained at 32 px")
    by = {Path(r["run"]).name: r["sizes"] for r in results}

    def acc(model: str, size: int) -> float:
        return by[model][str(size)]["top1"]

    keep = {m: acc(m, 64) / max(acc(m, 32), 1e-9) for m in MODELS}
    print(
        f"\nHow to read it: the label needs absolute position (which half the shape is in), so a model with no "
        f"position encoding sees a bag of patches and cannot beat {ceiling:.0f}% (deit_micro_nope: "
        f"{acc('deit_micro_nope', 32):.1f}%). At the training size the PEG model (cpvt_micro_gap_plus, PEGs after "
        f"blocks 0-4, position from zero padding) reaches {acc('cpvt_micro_gap_plus', 32):.1f}% and the learned APE "
        f"(deit_micro) {acc('deit_micro', 32):.1f}% in the same number of steps. At 2x the resolution, with no "
        f"fine-tuning, they keep {100 * keep['cpvt_micro_gap_plus']:.0f}% and {100 * keep['deit_micro']:.0f}% of "
        f"that accuracy. The scenes are identical at every size, and training zoomed them by up to 2x, so shapes "
        f"spanning twice the tokens are not new to the models; what the larger renders add is distances from the "
        f"border and the midline of up to twice the tokens seen in training, which is what a position code built "
        f"from zero padding counts."
    )
    print(f"\nPlot: {plot}   JSON: {root / 'resolution.json'}   ({time.perf_counter() - t0:.0f} s in all)")
    return results
