"""Evaluate trained runs at many resolutions without fine-tuning, and plot them.

Each checkpoint rebuilds its model from the config stored inside it; APE models
resample their table, PEG models generate their encoding for the new grid.
Images get the standard preprocessing: resize the shorter side to
``size / crop_pct``, centre-crop ``size`` (synthetic scenes are rendered
natively at each size instead).

Segmentation runs (``model_args["task"] == "segmentation"``) are scored by mIoU
and pixel accuracy (:func:`cpvt.train.segment_eval.evaluate_segmentation`), under
two resolution protocols:

* **Scale**: the test frames are decoded once (``frames``: the run's
  ``frame_size`` by default, ``"native"`` for the files' own size, or ``(h, w)``),
  resized whole to each test size, and the logits brought back to the decoded
  resolution and scored against its label maps: every size scores the same pixels.
  ``frames="native"`` gives a larger test size real detail (decoding at the run's
  120x160 and resizing up to 240x320 does not).
* **Canvas**: ``windows=[(h, w), ...]`` runs each resized frame as a sliding window
  of ``h x w`` crops (overlapping logits averaged); ``None`` in the list is the whole
  frame. CamVid's canvas protocol: ``frames="native", img_sizes=[(360, 480)],
  windows=[(120, 160), (240, 320), None]`` (1x, 2x, 3x the field of view of a
  model trained on 120x160 crops).

Each segmentation row's ``sizes`` maps a column key to that column's results:
``"HxW"`` for a whole frame, ``"HxW window hxw"`` for a sliding window
(:func:`column_key`).
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import torch

from ..checkpoint import CheckpointError, load_checkpoint, resolve_checkpoint  # noqa: F401 - re-exported
from ..data.base import DataError, printable
from ..models import model_from_checkpoint
from ..models.base import pair
from ..utils.table import format_table
from ..utils.compiling import compile_model, compiled_graphs
from .tasks import evaluate


def _trained_model(run: str, overrides: dict[str, Any] | None, dev: torch.device):
    """A run's checkpoint and its model, rebuilt with ``overrides``, on ``dev`` in eval mode."""
    ckpt = load_checkpoint(resolve_checkpoint(run))
    if not ckpt.meta:
        raise CheckpointError(f"{run} is a plain weights file without a model description; evaluate a cpvt run")
    try:
        return ckpt, model_from_checkpoint(ckpt, **(overrides or {})).to(dev).eval()
    except (TypeError, ValueError) as e:  # an unknown option, or one that changes the weights' shapes
        raise ValueError(f"{run}: cannot rebuild {ckpt.meta['model_name']} with "
                         f"{overrides}: {str(e).splitlines()[0]}") from None


def _check_classes(run: str, ckpt, model, name: str, source) -> None:
    if len(source.classes) != model.num_classes:
        raise DataError(
            f"{run} was trained on {model.num_classes} classes but {name!r} has {len(source.classes)}: "
            f"evaluate on the data it was trained on (its classes: {', '.join(ckpt.classes[:10])}...)"
        )


def is_segmentation(ckpt) -> bool:
    """Whether a checkpoint holds a segmentation model (``create_model(..., task="segmentation")``)."""
    return (ckpt.meta.get("model_args") or {}).get("task") == "segmentation"


def _square_sizes(run: str, sizes: list) -> list[int]:
    """A classification run's test sizes: ``N`` or ``(N, N)``; ``(H, W)`` with H != W is a clear error."""
    out = []
    for s in sizes:
        h, w = pair(s)
        if h != w:
            raise ValueError(f"{run} is a classification run, evaluated at square sizes (N or NxN), got {h}x{w}; "
                             "HxW sizes are for segmentation runs")
        out.append(h)
    return out


def column_key(size: tuple[int, int], window: tuple[int, int] | None) -> str:
    """A segmentation result's key in ``row["sizes"]`` and its table column: ``"HxW"`` or ``"HxW window hxw"``."""
    key = f"{size[0]}x{size[1]}"
    return key if window is None else f"{key} window {window[0]}x{window[1]}"


def _column_order(key: str) -> tuple:
    """Sort key of a column: by size, then window (smallest first, the whole frame last)."""
    size, _, window = key.partition(" window ")
    h, w = map(int, size.split("x"))
    return (h, w, tuple(map(int, window.split("x"))) if window else (float("inf"), float("inf")))


def _pick_split(run: str, source, split: str | None) -> str:
    """``split`` if the source has it (a clear error otherwise); by default ``val`` if present, else ``test``."""
    if split is None:
        return "val" if "val" in source.splits else "test"
    if split not in source.splits:
        raise DataError(f"{run}: the data has no {split!r} split (it has: {', '.join(source.splits)})")
    return split


def _segmentation_row(run, ckpt, model, dev, sizes, name, source, batch_size, amp, limit, compile,
                      split=None, frames=None, windows=None) -> dict[str, Any]:
    """mIoU / pixel accuracy of a segmentation run on whole frames resized to each size, per window."""
    from .segment_eval import evaluate_segmentation

    cfg, pre = ckpt.config, model.pretrained_cfg
    train_size = tuple(pre["input_size"][1:])
    sizes = [pair(s) for s in sizes or [train_size]]
    windows = [None if w is None else pair(w) for w in windows or [None]]
    for s in sizes:
        model.grid_for(s)  # clear errors before any decoding
        for w in windows:
            if w is not None and (w[0] > s[0] or w[1] > s[1]):
                raise ValueError(f"window {w[0]}x{w[1]} does not fit in the test size {s[0]}x{s[1]}: a sliding "
                                 "window is at most the frame it slides over")
    for w in windows:
        if w is not None:
            model.grid_for(w)
    split_name = _pick_split(run, source, split)
    if frames == "native":
        decode = None
    elif frames is not None:
        decode = pair(frames)
    else:
        frame = cfg.get("frame_size")
        decode = tuple(frame) if frame else None
    split_frames = source.split(split_name, size=decode, limit=limit)
    for note in split_frames.notes:
        print(f"note: {printable(note)}", flush=True)
    scored = list(split_frames.frame_size)
    row: dict[str, Any] = {
        "run": str(run), "model": ckpt.meta["model_name"], "pos": ckpt.meta["model_args"].get("pos"),
        "task": "segmentation", "data": name, "split": split_name, "train_size": list(train_size),
        "decoded_at": "native" if frames == "native" else ("run" if frames is None else "x".join(map(str, decode))),
        "frame_size": scored, "classes": list(split_frames.classes), "sizes": {},
    }
    runner, graphs = model, 0
    if compile:
        runner, graphs = (compile_model(model, dynamic=len(sizes) > 1 or windows != [None] or None, frozen=True),
                          compiled_graphs())
    for s in sizes:
        for w in windows:
            t0 = time.perf_counter()
            result = evaluate_segmentation(runner, split_frames, dev, pre["mean"], pre["std"], size=s, window=w,
                                           batch_size=batch_size, amp=amp or cfg.get("amp", "auto"), progress=True)
            row["sizes"][column_key(s, w)] = {**result, "scored_size": scored,
                                              "seconds": time.perf_counter() - t0}
    if compile:
        row["compile"] = {"graphs": compiled_graphs() - graphs}
    return row


def evaluate_runs(
    runs: list[str],
    data: str | None = None,
    img_sizes: list[int | tuple[int, int]] | None = None,
    crop_pct: float | None = None,
    batch_size: int | None = None,
    device: str = "auto",
    data_root: str | None = None,
    cache_dir: str | None = None,
    amp: str | None = None,
    limit: int | None = None,
    model_overrides: dict[str, Any] | None = None,
    compile: bool = False,
    split: str | None = None,
    frames: str | tuple[int, int] | None = None,
    windows: list[tuple[int, int] | None] | None = None,
) -> list[dict[str, Any]]:
    """Top-1 / top-5 of every run at every size (mIoU / pixel accuracy for a segmentation run, sizes ``(H, W)``;
    a classification run takes square sizes only). ``data`` defaults to the run's own.

    ``batch_size``: frames or images a forward pass; default 256 for classification, the run's
    ``eval_batch_size`` for segmentation (whole frames with per-pixel logits need far more memory).
    ``amp`` defaults to each run's own training precision (``auto`` for runs saved without one).
    ``model_overrides`` rebuild each trained model with changed options before its
    weights are loaded: inference-time variants such as ``peg_fixed_grid=True``.
    ``compile`` runs each model through ``torch.compile`` with symbolic sizes, so
    all sizes share one compilation; each row records the graphs built for it and
    the seconds of its first batch (compilation included).

    ``split``: the split scored (``"val"`` or ``"test"``; default ``val`` if the data has one, else ``test``).

    Segmentation runs only (a classification run given either is a ValueError):

    * ``frames``: the resolution the test frames are decoded (and scored) at: ``None`` the run's
      ``frame_size``, ``"native"`` the files' own size, or ``(h, w)``. Each ``img_sizes`` size resizes
      these frames whole (scale protocol); scoring stays at the decoded resolution.
    * ``windows``: sliding windows ``(h, w)``, ``None`` meaning the whole frame (canvas protocol); every
      (size, window) pair is one result, keyed ``"HxW"`` or ``"HxW window hxw"`` (:func:`column_key`).
      A window must fit in every test size; a window equal to the test size is the whole frame.

    Each segmentation result holds ``miou``, ``pixel_acc``, ``iou`` (per class), ``loss``, ``pixels``
    (labelled pixels scored), ``frames`` (how many), ``size``, ``window``, ``scored_size`` and ``seconds``.
    """
    from ..data import open_source

    dev = torch.device(("cuda" if torch.cuda.is_available() else "cpu") if device == "auto" else device)
    results, sources, noted = [], {}, set()
    for run in runs:
        ckpt, model = _trained_model(run, model_overrides, dev)
        cfg, pre = ckpt.config, model.pretrained_cfg  # the run's data; what the model expects of its input
        segmentation = is_segmentation(ckpt)
        if not segmentation and (frames is not None or windows not in (None, [None])):
            raise ValueError(f"{run} is a classification run: --frames and --window(s) (frames, windows) are "
                             "for segmentation runs; a classification run is evaluated at --img-sizes only")
        train_size = pre["input_size"][1]
        sizes = img_sizes or [train_size]
        if not segmentation:
            sizes = _square_sizes(run, sizes)
            for s in sizes:
                model.grid_for(s)  # clear error before any decoding
        name = data or cfg.get("data")
        if name is None:  # a Hub layout folder (or a converted checkpoint) keeps the model, not its run config
            raise DataError(f"{run} does not record the data it was trained on (it holds no run config): "
                            "name it with --data (data=...)")
        options = cfg.get("data_args") or {} if data is None else {}  # another dataset: its own defaults
        key = (name, data_root or cfg.get("data_root"), cache_dir or cfg.get("cache_dir"), repr(sorted(options.items())))
        if key not in sources:
            sources[key] = open_source(name, data_root=key[1], cache_dir=key[2], options=options)
        source = sources[key]
        _check_classes(run, ckpt, model, name, source)
        if segmentation:
            # frames of up to 360x480 with per-pixel logits: the run's own eval batch (CamVid's recipe: 16), not
            # classification's 256 (one batch of 256 whole CamVid frames took over 11 GB)
            seg_batch = batch_size or int(cfg.get("eval_batch_size") or 16)
            results.append(_segmentation_row(run, ckpt, model, dev, img_sizes, name, source, seg_batch, amp, limit,
                                             compile, split=split, frames=frames, windows=windows))
            continue
        split_name = _pick_split(run, source, split)
        pct = crop_pct if crop_pct is not None else pre["crop_pct"]
        row: dict[str, Any] = {
            "run": str(run), "model": ckpt.meta["model_name"], "pos": ckpt.meta["model_args"].get("pos"),
            "data": name, "split": split_name, "train_size": train_size, "crop_pct": pct, "sizes": {},
            **({"model_overrides": model_overrides} if model_overrides else {}),
        }
        mean, std = pre["mean"], pre["std"]
        runner, graphs = model, 0
        if compile:
            runner, graphs = compile_model(model, dynamic=len(sizes) > 1 or None, frozen=True), compiled_graphs()
        for s in sizes:
            images = source.split(split_name, s, mode="eval", crop_pct=pct, limit=limit)
            for note in images.notes:  # skipped files and ignored links: said once, not once per size
                if (key, split_name, note) not in noted:
                    noted.add((key, split_name, note))
                    print(f"note: {printable(note)}", flush=True)
            t0 = time.perf_counter()
            row["sizes"][str(s)] = evaluate(runner, images, dev, mean, std, batch_size or 256,
                                           amp or cfg.get("amp", "auto"), progress=True)
            row["sizes"][str(s)]["seconds"] = time.perf_counter() - t0
        if compile:
            row["compile"] = {"graphs": compiled_graphs() - graphs}
        results.append(row)
    return results


def _segmentation_table(results: list[dict[str, Any]], markdown: bool = False) -> str:
    """mIoU and pixel accuracy (percent) per column (test size ``HxW``, and window), one row per segmentation run."""
    sizes = sorted({s for r in results for s in r["sizes"]}, key=_column_order)
    headers = ["run", "model", "pos", "train px"] + [f"mIoU @{s}" for s in sizes] + [f"pix acc @{s}" for s in sizes]
    rows = []
    for r in results:
        cells = [round(r["sizes"][s]["miou"], 2) if s in r["sizes"] else "" for s in sizes]
        cells += [round(r["sizes"][s]["pixel_acc"], 2) if s in r["sizes"] else "" for s in sizes]
        rows.append([Path(r["run"]).name or r["run"], r["model"], r["pos"], "x".join(map(str, r["train_size"]))] + cells)
    return format_table(rows, headers, markdown=markdown)


def results_table(results: list[dict[str, Any]], markdown: bool = False) -> str:
    """Top-1 per test size, one row per classification run; segmentation runs get a table of their own below."""
    segmentation = [r for r in results if r.get("task") == "segmentation"]
    results = [r for r in results if r.get("task") != "segmentation"]
    if segmentation:
        seg = _segmentation_table(segmentation, markdown)
        return seg if not results else results_table(results, markdown) + "\n\n" + seg
    sizes = sorted({int(s) for r in results for s in r["sizes"]})
    headers = ["run", "model", "pos", "train px"] + [f"top-1 @{s}" for s in sizes]
    rows = []
    for r in results:
        cells = [r["sizes"][str(s)]["top1"] if str(s) in r["sizes"] else "" for s in sizes]
        rows.append([r.get("label") or Path(r["run"]).name or r["run"], r["model"], r["pos"], r["train_size"]] + [
            round(c, 2) if isinstance(c, float) else c for c in cells
        ])
    return format_table(rows, headers, markdown=markdown)


def plot_results(results: list[dict[str, Any]], path: str | Path, title: str | None = None) -> Path:
    """Top-1 against test resolution (classification runs), or mIoU per test size and window (segmentation
    runs), one curve per run, the training size starred. A mix of both is refused (one axis each)."""
    from ..utils.plotting import pyplot, save

    seg = [r.get("task") == "segmentation" for r in results]
    if any(seg) and not all(seg):
        raise ValueError("--plot draws classification runs (top-1) or segmentation runs (mIoU), not both in one "
                         "figure: evaluate them in two commands")
    segmentation = bool(results) and all(seg)
    if segmentation:  # categorical x: one column per size and window
        columns = sorted({s for r in results for s in r["sizes"]}, key=_column_order)
        x_of, metric = columns.index, "miou"
        train_key = lambda r: "x".join(map(str, r["train_size"]))  # noqa: E731
    else:
        columns = [str(s) for s in sorted({int(s) for r in results for s in r["sizes"]})]
        x_of, metric, train_key = int, "top1", lambda r: str(r["train_size"])  # noqa: E731
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(max(6.4, 1.1 * len(columns) + 2) if segmentation else 6.4, 4.2), dpi=120)
    for r in results:
        keys = [c for c in columns if c in r["sizes"]]
        (line,) = ax.plot([x_of(k) for k in keys], [r["sizes"][k][metric] for k in keys], marker="o",
                          label=f"{r.get('label') or Path(r['run']).name} ({r['pos']})")
        if train_key(r) in r["sizes"]:
            ax.plot([x_of(train_key(r))], [r["sizes"][train_key(r)][metric]], marker="*", ms=14,
                    color=line.get_color())
    if segmentation:
        ax.set_xticks(range(len(columns)), [c.replace(" window ", "\nwindow ") for c in columns], fontsize=8)
    ax.set_xlabel("test size (HxW), no fine-tuning  (star: training size)" if segmentation
                  else "test resolution (px), no fine-tuning  (star: training resolution)")
    ax.set_ylabel("mIoU (%)" if segmentation else "top-1 accuracy (%)")
    ax.set_title(title or ("mIoU across test sizes" if segmentation else "Accuracy across resolutions"))
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    return save(fig, path)


def write_json(results: list[dict[str, Any]], path: str | Path) -> None:
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    Path(path).write_text(json.dumps(results, indent=2))
