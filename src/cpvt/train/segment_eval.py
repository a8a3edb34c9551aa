"""Segmentation evaluation at any size: whole frames resized, or a sliding window of crops.

Two ways to test a model on a larger input, one for each kind of resolution change:

* **Scale** (the same field of view at more pixels): the whole frame resized to
  ``size`` and run at once.
* **Canvas** (a larger field of view at the same pixel scale, e.g. a model
  trained on crops run on whole frames): ``window=(h, w)`` runs the model on
  crops of that size, taken on a fixed grid that covers the frame
  (``ceil(H / h)`` rows of windows spread evenly from the top edge to the
  bottom one, likewise for columns); where windows overlap, a pixel's logits
  are averaged. Every pixel is scored once. A window as large as the frame is
  the whole frame.

Scoring: the logits are brought back to the split's stored resolution
(bilinear) before the argmax, and compared with the stored label map, so every
test size scores the same pixels against the same labels (no label is ever
resized, except when the caller decodes the split at another size). The counts
go into one :class:`~cpvt.train.metrics.ConfusionMatrix` over the whole split.
"""

from __future__ import annotations

import math
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from tqdm import tqdm

from ..data.base import SegSplit
from .augment import EvalTransform
from .augment_masks import resize_frames
from .distributed import DistInfo, all_reduce_sum
from .metrics import ConfusionMatrix
from .precision import autocast_dtype


def _pair(size) -> tuple[int, int]:
    h, w = (size, size) if isinstance(size, int) else size
    return int(h), int(w)


def window_starts(length: int, window: int) -> list[int]:
    """Offsets of ``ceil(length / window)`` windows spread evenly over ``length``, first at 0, last at the end."""
    if window >= length:
        return [0]
    n = math.ceil(length / window)
    return [round(i * (length - window) / (n - 1)) for i in range(n)]


def sliding_logits(model: nn.Module, x: Tensor, window: tuple[int, int], num_classes: int) -> Tensor:
    """Logits (B, K, H, W) of images (B, 3, H, W) from ``window``-sized crops on a fixed covering grid,
    overlapping logits averaged."""
    h, w = window
    H, W = x.shape[-2:]
    if (h, w) == (H, W) or (h >= H and w >= W):
        return model(x).float()
    out = x.new_zeros(x.shape[0], num_classes, H, W, dtype=torch.float32)
    count = x.new_zeros(1, 1, H, W, dtype=torch.float32)
    for top in window_starts(H, h):
        for left in window_starts(W, w):
            crop = x[..., top : top + h, left : left + w]
            out[..., top : top + crop.shape[-2], left : left + crop.shape[-1]] += model(crop).float()
            count[..., top : top + crop.shape[-2], left : left + crop.shape[-1]] += 1
    return out / count


@torch.no_grad()
def evaluate_segmentation(
    model: nn.Module,
    split: SegSplit,
    device: torch.device,
    mean,
    std,
    size: int | tuple[int, int] | None = None,
    window: int | tuple[int, int] | None = None,
    batch_size: int = 8,
    amp: str | torch.dtype | None = "off",
    info: DistInfo = DistInfo(),
    progress: bool = False,
) -> dict[str, Any]:
    """mIoU, per-class IoU, pixel accuracy (percent) and mean loss of ``model`` on ``split``.

    ``size``: frames resized to ``(h, w)`` before inference (None: as stored); ``window``: sliding-window
    inference with crops of ``(h, w)`` (None: the whole frame). ``amp``: ``"off"``, ``"auto"``, ``"bf16"`` or
    a dtype. Under DDP each process evaluates a shard of the frames and the counts are summed.
    """
    was_training = model.training
    model.eval()
    transform = EvalTransform(mean, std).to(device)
    dtype = amp if isinstance(amp, torch.dtype) or amp is None else autocast_dtype(device, amp, model)
    stored = tuple(split.images.shape[-2:])
    target_size = _pair(size) if size is not None else stored
    win = _pair(window) if window is not None else None
    matrix = ConfusionMatrix(split.num_classes, split.ignore_index)
    loss_stats = torch.zeros(2, dtype=torch.float64, device=device)  # loss sum, labelled pixels
    idx = torch.arange(info.rank, len(split), info.world_size)
    label = f"eval {target_size[0]}x{target_size[1]}" + (f" window {win[0]}x{win[1]}" if win else "")
    for start in tqdm(range(0, len(idx), batch_size), desc=label, leave=False,
                      disable=None if (progress and info.is_main) else True):
        b = idx[start : start + batch_size]
        images, masks = split.images[b].to(device), split.masks[b].to(device).long()  # (B, 3, H, W), (B, H, W)
        resized, _ = resize_frames(images, masks, target_size)
        x = transform(resized)
        with torch.autocast(device.type, dtype=dtype or torch.float32, enabled=dtype is not None):
            logits = sliding_logits(model, x, win, split.num_classes) if win else model(x).float()
        if tuple(logits.shape[-2:]) != stored:  # scored at the stored labels' resolution
            logits = F.interpolate(logits, size=stored, mode="bilinear", align_corners=False)
        matrix.update(logits, masks)
        loss_stats[0] += F.cross_entropy(logits, masks, ignore_index=split.ignore_index, reduction="sum")
        loss_stats[1] += (masks != split.ignore_index).sum()
    if matrix.counts is None:  # a process with no frames (more processes than frames) still takes part
        matrix.counts = torch.zeros(split.num_classes, split.num_classes, dtype=torch.long, device=device)
    matrix.all_reduce(lambda t: all_reduce_sum(t, info))
    all_reduce_sum(loss_stats, info)
    model.train(was_training)
    return {**matrix.compute(), "loss": loss_stats[0].item() / max(loss_stats[1].item(), 1), "frames": len(split),
            "size": list(target_size), "window": list(win) if win else None}
