"""Semantic segmentation: a registry backbone's feature maps, a light head, logits at the input's size.

Two heads, chosen by the backbone's family (one rule, :func:`segmentation_head`):

* a plain ViT gets :class:`LinearHead`, Segmenter's linear decoder (Strudel et
  al. 2021, "Segmenter: Transformer for Semantic Segmentation"; SETR-naive,
  Zheng et al. 2021, is the same idea with one hidden layer): the last block's
  patch tokens after the final norm, one linear classifier per token, the
  (B, classes, H/p, W/p) map upsampled bilinearly to (H, W). Light on purpose:
  what the tokens know about position is what the logits show.
* a pyramid gets :class:`FPNHead`, the Semantic FPN of Kirillov et al. 2019
  ("Panoptic Feature Pyramid Networks"), as PVT, PVTv2 and Twins use it for
  ADE20K: every stage projected to one width, a top-down pathway that adds each
  coarser map to the next finer one, each level smoothed by a 3x3 convolution
  and brought to the finest stride, summed, then classified.

The model works at any H x W the backbone takes (multiples of its stride),
non-square included, and its logits always come out at the input's size.
"""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor, nn

from .base import FixedGridAPI
from .features import FeatureGetter

TASKS = ("classification", "segmentation")


class LinearHead(nn.Module):
    """Per-token linear classifier (a 1x1 convolution on the token map): (B, C, h, w) -> (B, classes, h, w)."""

    def __init__(self, in_chs: list[int], num_classes: int):
        super().__init__()
        self.classifier = nn.Conv2d(in_chs[-1], num_classes, kernel_size=1)

    def forward(self, maps: list[Tensor]) -> Tensor:
        return self.classifier(maps[-1])


class FPNHead(nn.Module):
    """Semantic FPN over a pyramid's stages (finest first): (B, C_i, H/r_i, W/r_i) -> (B, classes, H/r_0, W/r_0).

    ``dim``: the common width (Kirillov et al. use 256 for ResNets; a quarter of the widest stage, at
    least 32, keeps this head small next to cpvt's small backbones).
    """

    def __init__(self, in_chs: list[int], num_classes: int, dim: int | None = None):
        super().__init__()
        dim = dim or max(32, in_chs[-1] // 4)
        self.lateral = nn.ModuleList(nn.Conv2d(c, dim, kernel_size=1) for c in in_chs)
        self.smooth = nn.ModuleList(
            nn.Sequential(nn.Conv2d(dim, dim, kernel_size=3, padding=1, bias=False), nn.GroupNorm(1, dim), nn.GELU())
            for _ in in_chs)
        self.classifier = nn.Conv2d(dim, num_classes, kernel_size=1)

    def forward(self, maps: list[Tensor]) -> Tensor:
        levels = [lat(m) for lat, m in zip(self.lateral, maps)]
        for i in range(len(levels) - 2, -1, -1):  # top-down: each coarser level added to the next finer one
            levels[i] = levels[i] + F.interpolate(levels[i + 1], size=levels[i].shape[-2:], mode="bilinear",
                                                  align_corners=False)
        size = levels[0].shape[-2:]
        fused = sum(F.interpolate(s(lv), size=size, mode="bilinear", align_corners=False) if i else s(lv)
                    for i, (s, lv) in enumerate(zip(self.smooth, levels)))
        return self.classifier(fused)


def segmentation_head(backbone: nn.Module, num_classes: int) -> tuple[FeatureGetter, nn.Module]:
    """The feature getter and head a backbone gets: a ViT (``blocks``) its last block, normed, and a
    :class:`LinearHead`; a pyramid (``stages``) every stage and an :class:`FPNHead`."""
    if hasattr(backbone, "blocks"):
        features = FeatureGetter(backbone, out_indices=[-1], norm=True)
        return features, LinearHead(features.feature_info.channels(), num_classes)
    features = FeatureGetter(backbone, out_indices=None)
    return features, FPNHead(features.feature_info.channels(), num_classes)


class SegmentationModel(FixedGridAPI, nn.Module):
    """Images (B, 3, H, W) -> per-pixel logits (B, classes, H, W).

    What :func:`~cpvt.models.create_model` builds with ``task="segmentation"``. The backbone's facts the
    engine and tools read (``patch_size``, ``img_size``, ``in_chans``, ``grid_for``, ``position_encodings``)
    are the backbone's; ``num_classes`` is the number of segmentation classes.
    """

    task = "segmentation"

    def __init__(self, backbone: nn.Module, num_classes: int):
        super().__init__()
        self.backbone, self.head = segmentation_head(backbone, num_classes)
        self.num_classes = num_classes
        inner = self.backbone.model
        self.patch_size, self.img_size, self.in_chans = inner.patch_size, inner.img_size, inner.in_chans
        self.num_prefix = getattr(inner, "num_prefix", 0)
        self.embed_dim = inner.embed_dim  # the backbone's token width (the last stage's for a pyramid)

    def grid_for(self, img_size: int | tuple[int, int]) -> tuple[int, int]:
        return self.backbone.model.grid_for(img_size)

    def position_encodings(self) -> list[nn.Module]:
        return self.backbone.model.position_encodings()

    def no_weight_decay(self) -> set[str]:
        return {f"backbone.{n}" for n in self.backbone.model.no_weight_decay()}

    def forward(self, x: Tensor) -> Tensor:
        logits = self.head(self.backbone(x))  # (B, classes, H / r, W / r)
        return F.interpolate(logits, size=x.shape[-2:], mode="bilinear", align_corners=False)
