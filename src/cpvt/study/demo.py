"""``cpvt demo``: a PEG model trained at one size, run at 1x to 3x of it, on 2 CPU cores in a few minutes.

Three micro ViTs (depth 6, width 64: the ``demo`` recipe) are trained at 32 px on the built-in synthetic
scenes, where the label is the shape *and* the half of the image it is in, so position matters
(:mod:`cpvt.data.synthetic`):

* ``cpvt_micro_gap_plus``: PEGs after blocks 0-4, no class token (CPVT-GAP‡, Chu et al. 2023);
* ``deit_micro``: a learned absolute position embedding (DeiT), resampled bicubically to a larger grid;
* ``deit_micro_nope``: no position encoding at all (it can name the shape but must guess the half: <= 50%).

The demo's data gives each shape kind its own colour (``data.shape_colors``): with uniform random colours the
two plain ViTs stay near chance for the few hundred steps the demo can afford (measured: 27% and 15% top-1
after 1,100 steps, where the PEG model had 91%), and a table of models at chance shows nothing. The shape
is then easy, and what separates the models is the half, which needs absolute position.

All three train at once, one process and one thread each: for models this small, one thread per process uses
two cores better than two threads in one process, and a fixed thread count keeps the numbers independent of
the core count. Precision is pinned to fp32 (``amp = "off"``), so the table does not depend on whether the
CPU has bf16 instructions. Each model is then tested, without fine-tuning, on the *same held-out scenes*
rendered at 1x, 1.5x, 2x and 3x the training size (32, 48, 64, 96 px); the PEG model is tested twice: as
trained and with ``fixed_grid="auto"``, which dilates each PEG's convolution by the resolution ratio
(filter rarefaction, as in FCN's shift-and-stitch and a-trous convolution, Long et al. 2015, and as
ScaleCrafter re-dilates a diffusion UNet, He et al. 2023, arXiv 2310.07702).
"""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import time
from pathlib import Path

from ..train.config import override_pairs, resolve_config
from ..train.evaluate import evaluate_runs, plot_results, results_table, write_json
from ..utils.errors import EXIT_STOPPED

PEG, APE, NOPE = "cpvt_micro_gap_plus", "deit_micro", "deit_micro_nope"
MODELS = (PEG, APE, NOPE)
SCALES = (1, 1.5, 2, 3)
FIXED = f"{PEG} fixed_grid=auto"
LABELS = {PEG: "PEG as trained", FIXED: "PEG, fixed_grid=auto", APE: "APE (resampled)", NOPE: "no PE"}
NOISE = 3.0  # points of top-1: a difference below this is not called a change (see the README's seed spread)


def run_demo(out: str = "runs/demo", fresh: bool = False, sets: list[str] | None = None) -> list[dict]:
    """Train the three demo models (reusing finished runs), test them at 1x-3x, print the table and the
    reading of it, and write ``resolution.json``, ``resolution.png`` and ``scenes.png`` under ``out``."""
    t0 = time.perf_counter()
    root = Path(out)
    cfg = resolve_config("demo", {"model": MODELS[0]}, sets)  # checks the overrides before any process starts
    print(f"training {', '.join(MODELS)} at once ({cfg.epochs} epochs on synthetic shapes at {cfg.img_size}px, "
          f"one process and one thread each, amp={cfg.amp}); a finished run is reused, an interrupted one resumed",
          flush=True)
    train_in_parallel(MODELS, root, fresh=fresh, sets=sets or [])
    runs = [str(root / name) for name in MODELS]
    sizes = [round(cfg.img_size * k) for k in SCALES]
    results = evaluate_runs(runs, img_sizes=sizes, limit=cfg.val_limit)  # the held-out scenes training validated on
    fixed = evaluate_runs(runs[:1], img_sizes=sizes, limit=cfg.val_limit, model_overrides={"fixed_grid": "auto"})
    fixed[0]["label"] = FIXED
    results = [results[0], fixed[0], *results[1:]]
    for r in results:
        r.setdefault("label", Path(r["run"]).name)
    from ..data.named import open_source

    source = open_source(cfg.data, options=cfg.data_args)  # the scenes the runs were validated on
    held_out = range(min(source.sizes["val"], cfg.val_limit or source.sizes["val"]))
    print(f"\nTop-1 (%) on {len(held_out)} held-out scenes; trained at {cfg.img_size} px, tested at "
          f"{' / '.join(map(str, sizes))} px with no fine-tuning:\n")
    print(results_table(results))
    write_json(results, root / "resolution.json")
    plot = plot_results(results, root / "resolution.png", title=f"cpvt demo: trained at {cfg.img_size} px")
    acc = {r["label"]: [r["sizes"][str(s)]["top1"] for s in sizes] for r in results}
    print("\n" + reading(acc, sizes, sample_ceiling=_half_guess_score(source.labels("val", held_out))))
    scenes = draw_scenes(cfg, source, runs, sizes, root / "scenes.png")
    print(f"\nPlots: {plot}, {scenes}   JSON: {root / 'resolution.json'}   ({time.perf_counter() - t0:.0f} s in all)")
    return results


def reading(acc: dict[str, list[float]], sizes: list[int], chance: float = 10.0, ceiling: float = 50.0,
            sample_ceiling: float | None = None) -> str:
    """The demo's closing text, every claim derived from ``acc`` ({label: top-1 per size, 1x first}).

    ``ceiling``: the best a model with no position code can expect (50%); ``sample_ceiling``: what naming the
    shape and always guessing its more frequent half scores on the scenes tested (a finite sample is not
    balanced, so a model that ignores position can land a few points above 50%); "uses position" means
    above the larger of the two by more than :data:`NOISE`.

    Nothing in it holds for a model at chance: each statement compares a model to the no-position ceiling
    (50%) or to its own accuracy at 1x in points, with differences under :data:`NOISE` called unchanged.
    """
    peg, fixed, ape, nope = acc[PEG], acc[FIXED], acc[APE], acc[NOPE]
    big, top = sizes.index(2 * sizes[0]) if 2 * sizes[0] in sizes else len(sizes) - 1, len(sizes) - 1
    lines = [f"At the training size ({sizes[0]} px): PEG {peg[0]:.1f}%, APE {ape[0]:.1f}%, no PE {nope[0]:.1f}% "
             f"(chance {chance:.0f}%; a model with no position code can name the shape but must guess the half, "
             f"so it cannot beat {ceiling:.0f}% on average"
             + (f"; on these scenes naming the shape and always guessing its more frequent half scores "
                f"{sample_ceiling:.1f}%)." if sample_ceiling is not None else ").")]
    ceiling = max(ceiling, sample_ceiling or 0.0)
    learned = [label for label, a in ((LABELS[PEG], peg), (LABELS[APE], ape)) if a[0] > ceiling + NOISE]
    if learned:
        lines.append(f"{' and '.join(learned)} {'is' if len(learned) == 1 else 'are'} above that ceiling: "
                     f"{'it uses' if len(learned) == 1 else 'they use'} position.")
    if peg[0] <= ceiling + NOISE:
        lines.append(f"The PEG model does not beat the no-position ceiling at {sizes[0]} px, so this run says nothing "
                     "about how its position code carries to other sizes (train longer: --set epochs=N).")
        return "\n".join(lines)
    helped = False
    for k in (big, top):
        ratio = sizes[k] / sizes[0]
        name = f"{ratio:g}x ({sizes[k]} px)"
        lost = peg[0] - peg[k]
        text = (f"At {name} the PEG model as trained {'drops to' if lost > NOISE else 'holds at'} {peg[k]:.1f}%"
                f"{f' ({lost:.1f} points lost)' if lost > NOISE else ''}; ")
        gain = fixed[k] - peg[k]
        helped |= gain > NOISE
        if gain > NOISE:
            text += f"with fixed_grid=\"auto\" it keeps {fixed[k]:.1f}% ({gain:.1f} points back)"
        elif lost > NOISE:
            text += f"fixed_grid=\"auto\" does not help here ({fixed[k]:.1f}%)"
        else:
            text += f"with fixed_grid=\"auto\" {fixed[k]:.1f}%"
        text += f". The resampled APE: {ape[k]:.1f}% ({ape[k] - ape[0]:+.1f}); no PE: {nope[k]:.1f}%."
        lines.append(text)
    if helped:
        lines.append("Why: a PEG learns position from its zero padding, which a larger grid moves further from the "
                     "middle tokens; dilating the convolution by the size ratio makes it see the same neighbours, "
                     "in the same image units, as in training (docs/findings.md).")
    return "\n".join(lines)


def _half_guess_score(labels) -> float:
    """Top-1 (%) of naming each scene's shape and always guessing that shape's more frequent half."""
    counts = labels.bincount(minlength=10).view(-1, 2)
    return 100 * counts.max(dim=1).values.sum().item() / labels.numel()


def draw_scenes(cfg, source, runs: list[str], sizes: list[int], path: Path, scenes: int = 4) -> Path:
    """A few held-out scenes at each test size, each with every demo model's prediction (green: right)."""
    import torch

    from ..models.registry import model_from_checkpoint
    from ..utils.plotting import pyplot

    built = {PEG: (runs[0], {}), FIXED: (runs[0], {"fixed_grid": "auto"}), APE: (runs[1], {}), NOPE: (runs[2], {})}
    models = {label: model_from_checkpoint(run, **opts).eval() for label, (run, opts) in built.items()}
    mean, std = (torch.tensor(v).view(1, 3, 1, 1) for v in (cfg.mean, cfg.std))
    idx = list(range(scenes))
    truth = source.labels("val", idx).tolist()
    plt = pyplot()
    fig, axes = plt.subplots(scenes, len(sizes), figsize=(2.3 * len(sizes), 3.2 * scenes), dpi=110, squeeze=False)
    for j, size in enumerate(sizes):
        images = source.render("val", idx, size)
        x = (images.float() / 255 - mean) / std
        with torch.no_grad():
            preds = {label: m(x).argmax(1).tolist() for label, m in models.items()}
        for i in range(scenes):
            ax = axes[i][j]
            ax.imshow(images[i].permute(1, 2, 0).numpy(), interpolation="nearest")
            ax.set_xticks([]), ax.set_yticks([])
            ax.axvline(size / 2 - 0.5, color="white", lw=0.6, ls=":")
            if i == 0:
                ax.set_title(f"{size} px ({size / sizes[0]:g}x)", fontsize=9)
            if j == 0:
                ax.set_ylabel(f"truth: {source.classes[truth[i]]}", fontsize=8)
            for k, (label, p) in enumerate(preds.items()):
                ax.text(0.0, -0.04 - 0.085 * k, f"{LABELS[label]}: {source.classes[p[i]]}", transform=ax.transAxes,
                        fontsize=6, va="top", color="tab:green" if p[i] == truth[i] else "tab:red")
    fig.suptitle(f"Held-out scenes, trained at {sizes[0]} px: each model's prediction", fontsize=10)
    fig.tight_layout(h_pad=4.5, rect=(0, 0.035, 1, 1))  # room under each image for the four predictions
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    plt.close(fig)
    return path


def train_in_parallel(names: tuple[str, ...], root: Path, fresh: bool = False, sets: list | None = None) -> None:
    """Train each model of the demo in its own ``cpvt train`` process with one thread, all at once.

    Each process's output is echoed with the model's name in front and kept in
    ``<run>/train.out``. If one fails, the others finish (their runs stay
    resumable) and a ``SystemExit`` names the failures and their logs; Ctrl-C
    stops all three after their current step, with a checkpoint to resume from.
    """
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    procs: dict[str, subprocess.Popen] = {}
    echoes = []
    width = max(map(len, names))
    for name in names:
        out = root / name
        out.mkdir(parents=True, exist_ok=True)
        cmd = [sys.executable, "-m", "cpvt", "train", "--recipe", "demo", "--set", f"model={name}", "--out", str(out)]
        cmd += [] if fresh else ["--resume"]
        for key, value in override_pairs(sets):  # parsed overrides, written back as the literals they came from
            cmd += ["--set", f"{key}={value!r}"]
        proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, bufsize=1)
        procs[name] = proc
        echo = threading.Thread(target=_echo, args=(proc, f"[{name:<{width}}] ", out / "train.out"), daemon=True)
        echo.start()
        echoes.append(echo)
    try:
        codes = {name: proc.wait() for name, proc in procs.items()}
    except KeyboardInterrupt:  # each process got the SIGINT too and stops after its step with a checkpoint
        for proc in procs.values():
            proc.wait()
        raise
    for echo in echoes:
        echo.join()
    failed = {name: code for name, code in codes.items() if code != 0}
    if failed:
        why = "; ".join(f"{name} exited {code}{' (stopped; run again to resume)' if code == EXIT_STOPPED else ''}, "
                        f"log {root / name / 'train.out'}" for name, code in failed.items())
        raise SystemExit(f"demo training failed: {why}")


def _echo(proc: subprocess.Popen, prefix: str, log: Path) -> None:
    """Print each line of ``proc``'s output with ``prefix``, and keep it in ``log``."""
    with open(log, "a") as f:
        for line in proc.stdout:
            f.write(line)
            f.flush()
            print(prefix + line, end="", flush=True)
