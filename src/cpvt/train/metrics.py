"""Segmentation metrics from one confusion matrix accumulated over a whole split.

mIoU averaged per batch is not the dataset's mIoU: a batch without a class
gives that class no IoU, and a small batch weighs as much as a large one. The
standard definition (PASCAL VOC, Everingham et al. 2010; Cityscapes, Cordts et
al. 2016; mmsegmentation's ``IoUMetric``) counts pixels over the whole split
first, then divides once:

* ``IoU_c = TP_c / (TP_c + FP_c + FN_c)`` per class ``c``;
* ``mIoU`` the mean over the classes that occur (in the ground truth or the
  predictions: a class with an empty union has no IoU and is left out of the
  mean, reported as NaN);
* pixel accuracy ``sum_c TP_c / labelled pixels``.

Pixels labelled with the ignore index (CamVid's void) are never counted.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor


class ConfusionMatrix:
    """Counts ``(true class, predicted class)`` pixel pairs; int64 on the device of the first update.

    ``update`` takes predicted labels or logits and the target masks; ``all_reduce`` sums the counts of
    DDP processes (each evaluated a shard); ``compute`` gives the metrics.
    """

    def __init__(self, num_classes: int, ignore_index: int = 255):
        self.num_classes, self.ignore_index = int(num_classes), int(ignore_index)
        self.counts: Tensor | None = None  # (C, C): rows true, columns predicted

    def update(self, pred: Tensor, target: Tensor) -> None:
        """``pred``: labels (B, H, W) or logits (B, C, H, W); ``target``: labels (B, H, W), same size."""
        if pred.dim() == target.dim() + 1:
            pred = pred.argmax(1)  # (B, H, W)
        if pred.shape != target.shape:
            raise ValueError(f"predictions {tuple(pred.shape)} and targets {tuple(target.shape)} differ in size")
        c = self.num_classes
        target = target.long()
        keep = target != self.ignore_index
        t, p = target[keep], pred.long()[keep]
        if t.numel() and (t.min() < 0 or t.max() >= c):
            bad = sorted(set(t[(t < 0) | (t >= c)].unique().tolist()))
            raise ValueError(f"target labels {bad} are outside 0..{c - 1} and not the ignore index {self.ignore_index}")
        counts = torch.bincount(t * c + p, minlength=c * c).reshape(c, c)
        self.counts = counts if self.counts is None else self.counts + counts

    def all_reduce(self, reduce) -> None:
        """Sum the counts over processes with ``reduce(tensor)`` (e.g. ``cpvt.train.distributed.all_reduce_sum``)."""
        if self.counts is None:
            raise ValueError("no update before all_reduce: every process must evaluate at least one batch")
        reduce(self.counts)

    def compute(self) -> dict[str, float | list[float]]:
        """``miou``, ``pixel_acc`` (percent), ``iou`` (per class, percent; NaN for a class with an empty union),
        and ``pixels`` (labelled pixels counted)."""
        counts = self.counts if self.counts is not None else torch.zeros(self.num_classes, self.num_classes)
        counts = counts.double()
        tp = counts.diag()
        union = counts.sum(0) + counts.sum(1) - tp
        iou = torch.where(union > 0, tp / union.clamp(min=1), torch.full_like(tp, math.nan))
        present = iou[~iou.isnan()]
        total = counts.sum()
        return {"miou": 100 * present.mean().item() if present.numel() else math.nan,
                "pixel_acc": 100 * (tp.sum() / total).item() if total > 0 else math.nan,
                "iou": [100 * v for v in iou.tolist()], "pixels": int(total.item())}
