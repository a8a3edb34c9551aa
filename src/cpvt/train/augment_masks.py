"""Joint augmentation of frames and label maps for segmentation, batched on the training device.

A :class:`~cpvt.data.base.SegSplit` hands out uint8 frames ``(B, 3, H, W)`` and label maps ``(B, H, W)``;
:class:`JointAugment` draws one geometric transform per sample (random scale, horizontal flip, random crop)
and applies it to the frame and its mask alike in one ``affine_grid`` + ``grid_sample`` pass on the device,
as :mod:`cpvt.train.augment` does for classification.

Why not kornia's ``AugmentationSequential(data_keys=["input", "mask"])``: its geometric ops pad a mask with
0, which is a class here; a pixel that comes from outside the frame must get the ignore index instead, so
that it is neither trained on nor scored. Sampling ``mask + 1`` with zero padding and mapping 0 back to the
ignore index does exactly that, and the transform is a few lines of arithmetic that the tests check
directly.

Decisions worth knowing:

* **Labels are never interpolated**: the mask is sampled with ``mode="nearest"``, so every output label is
  an input label of that sample or the ignore index. The frame is sampled bilinearly (no antialiasing when
  a scale below 1 shrinks it: the usual choice for scale jitter, as in mmsegmentation's resize).
* **Geometry**: the scale is relative to the input frame: ``s ~ U[scale]`` turns an ``H x W`` frame into
  ``sH x sW``, from which a ``crop = (h, w)`` window is taken at a uniform random offset, inside the scaled
  frame where it fits (``sH >= h``), else the scaled frame lies at a random place inside the window and the
  rest is padding. The crop size may differ from the frame size: CamVid's canvas protocol takes 120x160
  crops of native 360x480 frames; the scale protocol trains on whole 120x160 frames (decoded at that size)
  with ``crop=(120, 160)`` and scale jitter.
* **Padding**: a pixel whose source lies outside the frame is the ignore index in the mask and 0 in the
  frame, after normalisation when ``mean``/``std`` are given (so the dataset's mean colour), else black.
  Inside the frame the image is sampled with border padding, so frame edges do not fade to black.
* **Randomness** comes from torch's global CPU generator, four numbers per sample, so a seeded run draws
  the same transforms on any device and a resumed run continues the same sequence.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn


def _pair(size) -> tuple[int, int]:
    h, w = (size, size) if isinstance(size, int) else size
    if min(h, w) < 1:
        raise ValueError(f"a size must be positive, got {size!r}")
    return int(h), int(w)


def _as_float(images: Tensor) -> Tensor:
    """uint8 [0, 255] or float [0, 1] -> float32 [0, 1]."""
    return images.float().div_(255) if images.dtype == torch.uint8 else images.float()


class JointAugment(nn.Module):
    """Frames uint8 (B, 3, H, W) and masks (B, H, W) -> float (B, 3, h, w) and int64 (B, h, w), augmented alike.

    Args:
        crop: the output size ``(h, w)`` (an int means square).
        scale: the range of the random scale factor, relative to the input frame; ``(1, 1)`` for crop and
            flip only.
        hflip: probability of a horizontal flip.
        ignore_index: the mask value of pixels from outside the frame (the split's ``ignore_index``).
        mean, std: if given, the frame is normalised (``(x - mean) / std``) before padding, so padding is
            the mean colour.
    """

    def __init__(self, crop, scale: tuple[float, float] = (0.5, 2.0), hflip: float = 0.5, ignore_index: int = 255,
                 mean=None, std=None):
        super().__init__()
        self.crop = _pair(crop)
        if not 0 < scale[0] <= scale[1]:
            raise ValueError(f"scale must be a range (min, max) with 0 < min <= max, got {scale!r}")
        if not 0 <= hflip <= 1:
            raise ValueError(f"hflip is a probability, got {hflip!r}")
        self.scale, self.hflip, self.ignore_index = (float(scale[0]), float(scale[1])), float(hflip), int(ignore_index)
        self.normalise = mean is not None
        if self.normalise:
            self.register_buffer("mean", torch.tensor(mean, dtype=torch.float32).view(1, 3, 1, 1), persistent=False)
            self.register_buffer("std", torch.tensor(std, dtype=torch.float32).view(1, 3, 1, 1), persistent=False)

    def extra_repr(self) -> str:
        return f"crop={self.crop}, scale={self.scale}, hflip={self.hflip}, ignore_index={self.ignore_index}"

    def sample(self, batch: int, frame: tuple[int, int]) -> Tensor:
        """Draw one transform per sample: ``theta`` (B, 2, 3) for ``affine_grid`` (``align_corners=False``),
        mapping output coordinates to input coordinates, both normalised to [-1, 1]."""
        (H, W), (h, w) = frame, self.crop
        r = torch.rand(batch, 4, dtype=torch.float64)  # the global CPU generator: the same draws on any device
        s = self.scale[0] + (self.scale[1] - self.scale[0]) * r[:, 0]  # (B,)
        flip = torch.where(r[:, 1] < self.hflip, -1.0, 1.0).to(torch.float64)  # (B,)
        sh, sw = s * H, s * W  # the scaled frame
        # window offset in scaled-frame pixels: inside the frame where it fits, else the frame inside the window
        ty = torch.minimum(sh - h, torch.zeros(())) + (sh - h).abs() * r[:, 2]  # (B,)
        tx = torch.minimum(sw - w, torch.zeros(())) + (sw - w).abs() * r[:, 3]
        # output pixel centre j -> scaled x = tx + j + 0.5 -> frame x = that / s -> normalised 2x / W - 1;
        # in the output's normalised u = (2j + 1) / w - 1 this is (w / sW) u + (w + 2 tx) / sW - 1; a flip negates it
        theta = torch.zeros(batch, 2, 3, dtype=torch.float64)
        theta[:, 0, 0] = flip * w / sw
        theta[:, 0, 2] = flip * ((w + 2 * tx) / sw - 1)
        theta[:, 1, 1] = h / sh
        theta[:, 1, 2] = (h + 2 * ty) / sh - 1
        return theta

    @torch.no_grad()
    def forward(self, images: Tensor, masks: Tensor) -> tuple[Tensor, Tensor]:
        if images.ndim != 4 or masks.shape != (images.shape[0], *images.shape[2:]):
            raise ValueError(f"expected images (B, 3, H, W) and masks (B, H, W), got {tuple(images.shape)} and "
                             f"{tuple(masks.shape)}")
        b, (h, w) = images.shape[0], self.crop
        theta = self.sample(b, tuple(images.shape[2:])).to(images.device, torch.float32)
        grid = F.affine_grid(theta, [b, 1, h, w], align_corners=False)  # (B, h, w, 2)
        x = _as_float(images)
        if self.normalise:
            x = (x - self.mean) / self.std
        x = F.grid_sample(x, grid, mode="bilinear", padding_mode="border", align_corners=False)  # (B, 3, h, w)
        shifted = masks.unsqueeze(1).float() + 1  # 0 is left for "outside the frame"
        m = F.grid_sample(shifted, grid, mode="nearest", padding_mode="zeros", align_corners=False)  # (B, 1, h, w)
        inside = m > 0
        x = x * inside  # padding: 0, the mean colour once normalised
        m = torch.where(inside, m.long() - 1, self.ignore_index).squeeze(1)  # (B, h, w)
        return x, m


def resize_frames(images: Tensor, masks: Tensor, size) -> tuple[Tensor, Tensor]:
    """A batch of frames (B, 3, H, W) and masks (B, H, W) at ``size = (h, w)``, e.g. for testing at another size.

    Images are resized bicubic with antialiasing (what Pillow does when decoding), uint8 in -> uint8 out
    (rounded, clamped), float in -> float out; masks take the source pixel under each output pixel's centre
    (``nearest-exact``, the same rule as :func:`cpvt.data.masks.resize_nearest`) and keep their dtype.
    """
    h, w = _pair(size)
    if (h, w) == tuple(images.shape[2:]):
        return images, masks
    x = F.interpolate(images.float(), size=(h, w), mode="bicubic", antialias=True, align_corners=False)
    if images.dtype == torch.uint8:
        x = x.round_().clamp_(0, 255).to(torch.uint8)
    m = F.interpolate(masks.unsqueeze(1).float(), size=(h, w), mode="nearest-exact").squeeze(1).to(masks.dtype)
    return x, m
