"""What a task adds to the one training engine: classification (a label per image) or segmentation (a label
per pixel).

:mod:`cpvt.train.engine` runs the same loop for both (seeded batch order, schedule, AMP, EMA, DDP, atomic
checkpoints, exact resume, the run lock, graceful stop); a :class:`Task` supplies the parts that differ:

* ``train_sizes(model)``: the training input sizes, checked against the model (fills in ``img_size``);
* ``load_splits(source, val_name)``: the decoded training and validation splits;
* ``model_options(split)``: what :func:`~cpvt.models.create_model` gets (``num_classes``; ``task`` for
  segmentation);
* ``eval_sizes(split)``: the input sizes validation runs at (checked against the model before training);
* ``augment(size, split)``: the per-size batch transform (a module the engine moves to the device);
* ``train_batch(augment, split, idx, device)``: one batch's inputs and targets;
* ``loss(logits, target)``: the training loss of float32 logits;
* ``validate(model, split, device, info)``: the validation numbers, of which ``logged`` go into the log as
  ``val_<key>`` (``logged_ema`` as ``val_<key>_ema`` for the EMA weights) and ``metric`` picks
  ``best.safetensors`` (``best_val_<metric>`` in ``metrics.json``).

:func:`resolve_task` picks the task once per run, from ``TrainConfig.task`` and the data source: ``auto``
is segmentation for a source of frames with label maps (:class:`~cpvt.data.masks.MaskFolderSource`), else
classification; a task that does not fit the data is a :class:`~cpvt.data.base.DataError`.
:func:`cpvt.data.open_source` opens ``--data``: a named dataset, a folder of frames with label maps
(``images/`` and ``masks/`` side by side, :func:`cpvt.data.named.is_mask_folder`) or an image folder.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from tqdm import tqdm

from ..data.base import DataError, SegSplit, Split
from ..data.masks import MaskFolderSource
from ..models.base import pair
from ..models.segmentation import TASKS
from .augment import EvalTransform, TrainAugment, mix_batch
from .augment_masks import JointAugment
from .config import IMAGENET_MEAN, IMAGENET_STD, TrainConfig
from .distributed import DistInfo, all_reduce_sum
from .precision import autocast_dtype



@torch.no_grad()
def evaluate(
    model: nn.Module,
    split: Split,
    device: torch.device,
    mean=IMAGENET_MEAN,
    std=IMAGENET_STD,
    batch_size: int = 256,
    amp: str = "auto",
    info: DistInfo = DistInfo(),
    progress: bool = False,
) -> dict[str, float]:
    """Top-1 / top-5 accuracy (percent) and mean loss on a decoded split.

    Under DDP each process evaluates a shard and the counts are summed.
    """
    was_training = model.training
    model.eval()
    transform = EvalTransform(mean, std).to(device)
    dtype = autocast_dtype(device, amp, model)
    idx = torch.arange(info.rank, len(split), info.world_size)
    stats = torch.zeros(4, dtype=torch.float64, device=device)  # correct1, correct5, loss sum, count
    k = min(5, split.num_classes)
    batches = range(0, len(idx), batch_size)
    for start in tqdm(batches, desc=f"eval {split.size}px", leave=False, disable=None if (progress and info.is_main) else True):
        b = idx[start : start + batch_size]
        x = transform(split.images[b].to(device))
        y = split.labels[b].to(device)
        with torch.autocast(device.type, dtype=dtype or torch.float32, enabled=dtype is not None):
            logits = model(x).float()
        top = logits.topk(k, dim=1).indices
        stats[0] += (top[:, 0] == y).sum()
        stats[1] += (top == y[:, None]).any(dim=1).sum()
        stats[2] += F.cross_entropy(logits, y, reduction="sum")
        stats[3] += len(b)
    all_reduce_sum(stats, info)
    model.train(was_training)
    n = max(stats[3].item(), 1)
    return {"top1": 100 * stats[0].item() / n, "top5": 100 * stats[1].item() / n, "loss": stats[2].item() / n,
            "images": int(stats[3].item())}


class Task:
    """The interface the engine calls (see the module docstring); one instance per run."""

    name: str = ""
    metric: str = ""  # the validation number that picks best.safetensors
    logged: tuple[str, ...] = ()  # validation numbers logged as val_<key>
    logged_ema: tuple[str, ...] = ()  # ... and, for the EMA weights, as val_<key>_ema

    def __init__(self, cfg: TrainConfig):
        self.cfg = cfg

    def train_sizes(self, model: nn.Module) -> tuple[Any, ...]:
        raise NotImplementedError

    def load_splits(self, source, val_name: str):
        raise NotImplementedError

    def model_options(self, split) -> dict[str, Any]:
        raise NotImplementedError

    def eval_sizes(self, split) -> tuple[Any, ...]:
        raise NotImplementedError

    def augment(self, size, split) -> nn.Module:
        raise NotImplementedError

    def train_batch(self, augment: nn.Module, split, idx: Tensor, device: torch.device) -> tuple[Tensor, Tensor]:
        raise NotImplementedError

    def loss(self, logits: Tensor, target: Tensor) -> Tensor:
        raise NotImplementedError

    def validate(self, model: nn.Module, split, device: torch.device, info: DistInfo) -> dict[str, Any]:
        raise NotImplementedError

    def describe(self, train_split, val_split) -> str:
        """The data part of the run's first log line."""
        raise NotImplementedError


def size_text(size) -> str:
    """``32`` -> ``"32"``, ``(32, 48)`` -> ``"32x48"``."""
    return str(size) if isinstance(size, int) else "x".join(map(str, size))


class ClassificationTask(Task):
    """A label per image: square inputs, TrainAugment + Mixup / CutMix, label-smoothed cross-entropy, top-1."""

    name, metric, logged, logged_ema = "classification", "top1", ("top1", "top5", "loss"), ("top1", "top5")

    def train_sizes(self, model: nn.Module) -> tuple[int, ...]:
        cfg = self.cfg
        if cfg.img_size is None:
            cfg.img_size = int(model.img_size[0])
        if not isinstance(cfg.img_size, int):
            raise ValueError(f"classification trains square images: img_size must be one number (px), got "
                             f"{list(cfg.img_size)}; [height, width] is for task=segmentation")
        sizes = tuple(cfg.train_sizes) or (cfg.img_size,)
        if any(isinstance(s, bool) or not isinstance(s, int) or s <= 0 for s in sizes):
            raise ValueError(f"train_sizes must be positive integers (px), got {list(cfg.train_sizes)}")
        for s in {cfg.img_size, *sizes}:
            model.grid_for(s)
        return sizes

    def load_splits(self, source, val_name: str) -> tuple[Split, Split]:
        cfg = self.cfg
        largest = max((cfg.img_size, *cfg.train_sizes))  # crops for the largest training size keep real detail
        storage = largest if cfg.crop != "rrc" else int(round(largest * cfg.storage_scale))
        train_split = source.split(cfg.train_split, storage, mode="train", limit=cfg.train_limit)
        val_split = source.split(val_name, cfg.img_size, mode="eval", crop_pct=cfg.crop_pct, limit=cfg.val_limit)
        return train_split, val_split

    def model_options(self, split: Split) -> dict[str, Any]:
        return {"num_classes": split.num_classes, "img_size": self.cfg.img_size, "drop_path_rate": self.cfg.drop_path}

    def eval_sizes(self, split: Split) -> tuple[int, ...]:
        return (self.cfg.img_size,)

    def augment(self, size: int, split: Split) -> nn.Module:
        return TrainAugment(self.cfg, size)

    def train_batch(self, augment: nn.Module, split: Split, idx: Tensor, device: torch.device) -> tuple[Tensor, Tensor]:
        x = augment(split.images[idx].to(device, non_blocking=True))
        return mix_batch(x, split.labels[idx].to(device), split.num_classes, self.cfg)

    def loss(self, logits: Tensor, target: Tensor) -> Tensor:
        return F.cross_entropy(logits, target, label_smoothing=self.cfg.label_smoothing)

    def validate(self, model: nn.Module, split: Split, device: torch.device, info: DistInfo) -> dict[str, Any]:
        cfg = self.cfg
        return evaluate(model, split, device, cfg.mean, cfg.std, cfg.eval_batch_size, cfg.amp, info)

    def describe(self, train_split: Split, val_split: Split) -> str:
        return (f"{len(train_split):,} train / {len(val_split):,} val images at {self.cfg.img_size}px, "
                f"{train_split.num_classes} classes")


class SegmentationTask(Task):
    """A label per pixel: ``img_size`` crops ([height, width]) of scale-jittered, flipped frames
    (:class:`~cpvt.train.augment_masks.JointAugment`), cross-entropy over the labelled pixels, mIoU on the
    validation frames seen through windows of the training crop (:func:`cpvt.train.segment_eval.evaluate_segmentation`;
    a crop as large as the frame is the whole frame)."""

    name, metric, logged, logged_ema = "segmentation", "miou", ("miou", "pixel_acc", "loss"), ("miou", "pixel_acc")

    def __init__(self, cfg: TrainConfig):
        super().__init__(cfg)
        self.ignore_index = 255  # the training split's, set by load_splits

    def train_sizes(self, model: nn.Module) -> tuple[tuple[int, int], ...]:
        cfg = self.cfg
        if cfg.train_sizes:
            raise ValueError(f"train_sizes (mixed-resolution training) is for classification; a segmentation run "
                             f"trains at img_size, got train_sizes={list(cfg.train_sizes)}")
        cfg.img_size = pair(cfg.img_size if cfg.img_size is not None else model.img_size)
        model.grid_for(cfg.img_size)
        return (cfg.img_size,)

    def load_splits(self, source, val_name: str) -> tuple[SegSplit, SegSplit]:
        cfg = self.cfg
        train_split = source.split(cfg.train_split, size=cfg.frame_size, limit=cfg.train_limit)
        val_split = source.split(val_name, size=cfg.frame_size, limit=cfg.val_limit)
        self.ignore_index = train_split.ignore_index
        return train_split, val_split

    def model_options(self, split: SegSplit) -> dict[str, Any]:
        return {"task": "segmentation", "num_classes": split.num_classes, "img_size": self.cfg.img_size,
                "drop_path_rate": self.cfg.drop_path}

    def eval_sizes(self, split: SegSplit) -> tuple[tuple[int, int], ...]:
        return (split.frame_size,)

    def augment(self, size: tuple[int, int], split: SegSplit) -> nn.Module:
        cfg = self.cfg
        return JointAugment(size, scale=cfg.seg_scale, hflip=cfg.hflip, ignore_index=split.ignore_index,
                            mean=cfg.mean, std=cfg.std)

    def train_batch(self, augment: nn.Module, split: SegSplit, idx: Tensor,
                    device: torch.device) -> tuple[Tensor, Tensor]:
        return augment(split.images[idx].to(device, non_blocking=True), split.masks[idx].to(device, non_blocking=True))

    def loss(self, logits: Tensor, target: Tensor) -> Tensor:
        """Mean cross-entropy over the labelled pixels (a batch with none gives 0, not NaN)."""
        total = F.cross_entropy(logits, target, ignore_index=self.ignore_index, reduction="sum")
        return total / (target != self.ignore_index).sum().clamp_min(1)

    def validate(self, model: nn.Module, split: SegSplit, device: torch.device, info: DistInfo) -> dict[str, Any]:
        from .segment_eval import evaluate_segmentation  # lazily: written alongside this module

        cfg = self.cfg
        # the training crop as the window: whole frames when crops are whole frames (Scale), the 1x canvas when
        # the model trains on crops of larger frames (Canvas), so validation sees what training saw
        return evaluate_segmentation(model, split, device, cfg.mean, cfg.std, window=pair(cfg.img_size),
                                     batch_size=cfg.eval_batch_size, amp=cfg.amp, info=info)

    def describe(self, train_split: SegSplit, val_split: SegSplit) -> str:
        return (f"{len(train_split):,} train / {len(val_split):,} val frames of {size_text(val_split.frame_size)}px, "
                f"{train_split.num_classes} classes (ignore index {train_split.ignore_index})")


def resolve_task(cfg: TrainConfig, source) -> Task:
    """The run's task: ``cfg.task``, or for ``auto`` the one the data source is for; a DataError if they differ."""
    segmentation = isinstance(source, MaskFolderSource)
    name = cfg.task if cfg.task != "auto" else ("segmentation" if segmentation else "classification")
    if name not in TASKS:
        raise ValueError(f"task must be auto, {' or '.join(TASKS)}, got {cfg.task!r}")
    if name == "classification" and segmentation:
        raise DataError(f"task=classification, but {cfg.data!r} holds frames with label maps (segmentation data): "
                        "train it with task=segmentation or task=auto")
    if name == "segmentation" and not segmentation:
        raise DataError(f"task=segmentation, but {cfg.data!r} is classification data (a label per image): "
                        "segmentation needs frames with label maps (camvid, or a folder with images/ and masks/)")
    return {"classification": ClassificationTask, "segmentation": SegmentationTask}[name](cfg)
