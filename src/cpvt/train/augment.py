"""Batched augmentation on the training device (kornia), and DeiT-style mixing.

Images arrive as uint8 batches ``(B, 3, S, S)`` straight from a
:class:`~cpvt.data.base.Split`; everything after that runs on the device in
one pass per batch, so decoding never has to keep up with a GPU.

Mixup / CutMix follow DeiT (timm's ``Mixup`` in batch mode): one
``lambda ~ Beta(alpha, alpha)`` per batch, the batch mixed with its reverse,
CutMix's lambda corrected to the box actually pasted. kornia's mixing ops
sample lambda per sample from a uniform range, a different recipe, so this
small piece is ours.
"""

from __future__ import annotations

import math

import kornia.augmentation as K
import torch
import torch.nn.functional as F
from kornia.augmentation.auto import RandAugment
from torch import Tensor, nn

from .config import TrainConfig


class TrainAugment(nn.Module):
    """uint8 (B, 3, S, S) -> normalised float (B, 3, img_size, img_size), randomly augmented."""

    def __init__(self, cfg: TrainConfig, img_size: int):
        super().__init__()
        ops: list[nn.Module] = []
        if cfg.crop == "rrc":
            ops.append(K.RandomResizedCrop((img_size, img_size), scale=cfg.rrc_scale, resample="BICUBIC", align_corners=False))
        elif cfg.crop == "pad":
            ops.append(K.RandomCrop((img_size, img_size), padding=cfg.pad, fill=0))
        elif cfg.crop == "none":
            ops.append(K.CenterCrop((img_size, img_size)))
        else:
            raise ValueError(f"crop must be rrc, pad or none, got {cfg.crop!r}")
        if cfg.hflip > 0:
            ops.append(K.RandomHorizontalFlip(p=cfg.hflip))
        if cfg.randaug_n > 0:
            ops.append(RandAugment(n=cfg.randaug_n, m=cfg.randaug_m))
        ops.append(K.Normalize(mean=torch.tensor(cfg.mean), std=torch.tensor(cfg.std)))
        if cfg.reprob > 0:
            ops.append(K.RandomErasing(p=cfg.reprob))
        self.ops = nn.Sequential(*ops)

    @torch.no_grad()
    def forward(self, images: Tensor) -> Tensor:
        return self.ops(images.float().div_(255))


class EvalTransform(nn.Module):
    """uint8 -> normalised float; resizing and cropping already happened in the data source."""

    def __init__(self, mean, std):
        super().__init__()
        self.register_buffer("mean", torch.tensor(mean).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(std).view(1, 3, 1, 1), persistent=False)

    @torch.no_grad()
    def forward(self, images: Tensor) -> Tensor:
        return (images.float().div_(255) - self.mean.to(images.device)) / self.std.to(images.device)


def mix_batch(x: Tensor, y: Tensor, num_classes: int, cfg: TrainConfig) -> tuple[Tensor, Tensor]:
    """Mixup or CutMix on a normalised batch. Returns images and soft targets (B, classes).

    Uses the global torch RNG, so it is reproduced exactly on resume.
    """
    target = F.one_hot(y, num_classes).float()
    use_mixup, use_cutmix = cfg.mixup > 0, cfg.cutmix > 0
    if not (use_mixup or use_cutmix) or torch.rand(()).item() >= cfg.mix_prob:
        return x, target
    cutmix = use_cutmix and (not use_mixup or torch.rand(()).item() < cfg.mix_switch_prob)
    alpha = cfg.cutmix if cutmix else cfg.mixup
    lam = torch.distributions.Beta(alpha, alpha).sample().item()
    if cutmix:
        h, w = x.shape[-2:]
        cut = math.sqrt(1.0 - lam)
        ch, cw = int(h * cut), int(w * cut)
        cy, cx = torch.randint(h, ()).item(), torch.randint(w, ()).item()
        y0, y1 = max(cy - ch // 2, 0), min(cy + ch // 2, h)
        x0, x1 = max(cx - cw // 2, 0), min(cx + cw // 2, w)
        x = x.clone()
        x[..., y0:y1, x0:x1] = x.flip(0)[..., y0:y1, x0:x1]
        lam = 1.0 - (y1 - y0) * (x1 - x0) / (h * w)  # the area actually pasted
    else:
        x = x * lam + x.flip(0) * (1.0 - lam)
    return x, target * lam + target.flip(0) * (1.0 - lam)
