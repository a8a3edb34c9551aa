"""Predictions of segmentation runs on whole test frames, side by side: frame, ground truth, then each model.

    python scripts/seg_figure.py OUT.png --run "PEG as trained=RUN" --run "PEG dilated=RUN:peg_fixed_grid=dilate" \
        --run "APE=RUN" [--frames 0,80,160] [--size 360x480] [--split test] [--title TEXT]

Each ``--run`` is ``LABEL=RUN_FOLDER`` with optional ``:KEY=VALUE,...`` model options (test-time fixes). Frames
are decoded at their native size, resized whole to ``--size`` (default: native) and scored there, as the
reproduction suite's largest test size does. Needs the runs' checkpoints, so it runs where the sweep trained
them; the PNG it writes is what the CamVid page shows.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from cpvt.checkpoint import load_checkpoint
from cpvt.data import open_source
from cpvt.deploy.predict import seg_palette
from cpvt.models import model_from_checkpoint
from cpvt.models.base import pair
from cpvt.utils.plotting import pyplot


def parse_run(text: str) -> tuple[str, Path, dict]:
    label, _, rest = text.partition("=")
    path, _, opts = rest.partition(":")
    overrides = {}
    for kv in filter(None, opts.split(",")):
        k, _, v = kv.partition("=")
        overrides[k.strip()] = json.loads(v) if v[:1] in "[{0123456789-" or v in ("true", "false") else v
    return label.strip(), Path(path), overrides


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("out")
    ap.add_argument("--run", action="append", required=True)
    ap.add_argument("--frames", default="0,80,160")
    ap.add_argument("--size", default=None, help="HxW the frames are resized to (default: native)")
    ap.add_argument("--split", default="test")
    ap.add_argument("--title", default=None)
    args = ap.parse_args()
    runs = [parse_run(r) for r in args.run]
    first = json.loads((runs[0][1] / "config.json").read_text())
    split = open_source(first["data"], cache_dir=first.get("cache_dir")).split(args.split)
    idx = [int(i) for i in args.frames.split(",")]
    size = pair([int(v) for v in args.size.split("x")]) if args.size else split.frame_size
    images = split.images[idx].float() / 255
    masks = split.masks[idx].long()
    if size != split.frame_size:
        images = F.interpolate(images, size=size, mode="bilinear", antialias=True, align_corners=False)
        masks = F.interpolate(masks[:, None].float(), size=size, mode="nearest")[:, 0].long()
    palette = seg_palette(len(split.classes))
    ignore = masks == split.ignore_index

    def colour(labels: torch.Tensor) -> np.ndarray:
        out = palette[labels.clamp(max=len(split.classes) - 1).numpy()].astype(np.uint8)
        out[ignore.numpy()] = 255  # void (not scored): white
        return out

    columns = [("frame", (images.permute(0, 2, 3, 1).numpy() * 255).astype(np.uint8)), ("ground truth", colour(masks))]
    for label, path, overrides in runs:
        model = model_from_checkpoint(load_checkpoint(path / "last.safetensors"), **overrides).eval()
        pre = model.pretrained_cfg
        mean = torch.tensor(pre["mean"]).view(1, 3, 1, 1)
        std = torch.tensor(pre["std"]).view(1, 3, 1, 1)
        with torch.inference_mode():
            pred = model((images - mean) / std).argmax(1)
        right = (pred == masks) & ~ignore
        acc = 100 * right.sum().item() / max((~ignore).sum().item(), 1)
        columns.append((f"{label}\n(pixel acc {acc:.1f}% on these)", colour(pred)))
    plt = pyplot()
    fig, axes = plt.subplots(len(idx), len(columns), figsize=(2.6 * len(columns), 2.1 * len(idx) + 0.9), dpi=110,
                             squeeze=False)
    for j, (name, arr) in enumerate(columns):
        for i in range(len(idx)):
            axes[i][j].imshow(arr[i])
            axes[i][j].set_xticks([])
            axes[i][j].set_yticks([])
        axes[0][j].set_title(name, fontsize=8)
    from matplotlib.patches import Patch

    handles = [Patch(color=palette[k] / 255, label=c) for k, c in enumerate(split.classes)]
    handles.append(Patch(facecolor="white", edgecolor="grey", label="void (not scored)"))
    fig.legend(handles=handles, loc="lower center", ncol=min(len(handles), 12), fontsize=7, frameon=False)
    fig.suptitle(args.title or "", fontsize=9)
    fig.tight_layout(rect=(0, 0.4 / (2.1 * len(idx) + 0.9), 1, 1))
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(args.out)  # not plotting.save: its tight_layout would drop the legend's margin
    plt.close(fig)
    print(args.out)


if __name__ == "__main__":
    main()
