"""Check a segmentation pilot against the protocol's criteria, on the validation split only.

    python scripts/seg_pilot.py RUN [RUN ...] [--window HxW] [--frames native|HxW] [--classes road,sky,building]

For each run (a folder written by ``cpvt train`` on a mask dataset):

* **convergence**: what the last 10% of epochs added to validation mIoU (the training log's curve);
* **per-class IoU** on ``val`` of the classes named (position-dependent ones: road, sky, building), so
  that a position encoding can be seen to help (the learned APE clearly past no position encoding);
* **the head's ceiling**: the mIoU of an oracle that gives every patch (the model's output token) the
  majority label of its pixels and upsamples it nearest-neighbour. The linear head predicts one class
  vector per token and upsamples it, so it cannot do much better than this; a model far below the ceiling
  is limited by its backbone, not by the head's resolution.

Nothing here is tuned on ``test``.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch
import torch.nn.functional as F

from cpvt.data import open_source
from cpvt.models.base import pair
from cpvt.study.report import last_gain
from cpvt.train.evaluate import evaluate_runs
from cpvt.train.metrics import ConfusionMatrix


def token_oracle(masks: torch.Tensor, patch: int, num_classes: int, ignore: int) -> dict:
    """mIoU of the per-patch majority label upsampled back (ignored pixels neither vote nor score)."""
    n, h, w = masks.shape
    m = masks.long()
    onehot = F.one_hot(torch.where(m == ignore, num_classes, m), num_classes + 1)[..., :num_classes]
    votes = F.avg_pool2d(onehot.permute(0, 3, 1, 2).float(), patch, ceil_mode=True)  # (n, C, h/p, w/p)
    pred = votes.argmax(1).repeat_interleave(patch, 1).repeat_interleave(patch, 2)[:, :h, :w]
    cm = ConfusionMatrix(num_classes, ignore)
    cm.update(pred, m)
    return cm.compute()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("runs", nargs="+")
    ap.add_argument("--window", default=None, help="score through sliding windows of this HxW (canvas runs)")
    ap.add_argument("--frames", default=None, help="decode val frames at native or HxW (default: the run's)")
    ap.add_argument("--classes", default="Road,Sky,Building")
    args = ap.parse_args()
    window = pair([int(v) for v in args.window.split("x")]) if args.window else None
    frames = args.frames if args.frames in (None, "native") else pair([int(v) for v in args.frames.split("x")])
    wanted = [c.strip().lower() for c in args.classes.split(",")]
    ceiling_done = set()
    for run in args.runs:
        cfg = json.loads((Path(run) / "config.json").read_text())
        log = [json.loads(line) for line in (Path(run) / "log.jsonl").read_text().splitlines()]
        curve = [[r["epoch"], r["val_miou"]] for r in log if "val_miou" in r]
        size = pair(cfg["frame_size"] if frames is None and cfg.get("frame_size") else cfg["img_size"])
        test_size = size if frames is None else None
        kw = {"split": "val", "frames": frames, "windows": [window]}
        if frames == "native":
            src = open_source(cfg["data"], cache_dir=cfg.get("cache_dir"))
            test_size = src.split("val").frame_size
        [res] = evaluate_runs([str(Path(run) / "last.safetensors")], img_sizes=[test_size], **kw)
        [r] = res["sizes"].values()
        classes = [c.lower() for c in res["classes"]]
        per = {c: r["iou"][classes.index(c)] for c in wanted if c in classes}
        print(f"{run}: epochs {curve[-1][0] if curve else '?'}, val mIoU {r['miou']:.2f}, pixel acc "
              f"{r['pixel_acc']:.2f}, last 10% of epochs added {last_gain(curve) or float('nan'):+.2f}; "
              + ", ".join(f"{c} {v:.1f}" for c, v in per.items()), flush=True)
        key = (cfg["data"], tuple(res["frame_size"]), cfg["model_args"].get("patch_size"))
        if key not in ceiling_done:
            ceiling_done.add(key)
            src = open_source(cfg["data"], cache_dir=cfg.get("cache_dir"))
            split = src.split("val", size=None if frames == "native" else tuple(res["frame_size"]))
            # the oracle's patch in scored pixels: the model's patch times the frame's upsampling to be scored
            scale = res["frame_size"][0] / test_size[0] if window is None else 1.0
            patch = int(round(cfg["model_args"].get("patch_size", 16) * scale))
            o = token_oracle(split.masks, patch, len(split.classes), split.ignore_index)
            print(f"  head ceiling (per-patch majority label, {patch} px patches on {res['frame_size']} frames): "
                  f"mIoU {o['miou']:.2f}, pixel acc {o['pixel_acc']:.2f}", flush=True)


if __name__ == "__main__":
    main()
