"""RepCPE (FastViT): a large-kernel conditional position encoding, re-parameterised for inference.

Vasu et al., "FastViT: A Fast Hybrid Vision Transformer using Structural
Reparameterization" (ICCV 2023). During training a RepCPE is a PEG with a
7x7 depth-wise kernel and two branches, ``x + DWConv7x7(x)``. Both are linear
in ``x``, so :meth:`RepCPE.reparameterize` folds the identity into the kernel
(one added to the centre tap of every channel) and inference runs a single
convolution with no residual add. The fused model's outputs equal the
unfused one's up to float rounding.

Key names follow FastViT: ``rep_cpe.{j}.pe`` before fusing and
``rep_cpe.{j}.reparam_conv`` after.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import Tensor, nn

from ..tokens import Grid, check_odd_kernel, map_patches
from .base import ModelShape, PositionEncoding


class RepCPEConv(nn.Module):
    """``x + pe(x)`` while training; ``reparam_conv(x)`` once fused."""

    def __init__(self, dim: int, kernel_size: int):
        super().__init__()
        self.pe = nn.Conv2d(dim, dim, kernel_size, 1, kernel_size // 2, groups=dim)
        nn.init.normal_(self.pe.weight, 0.0, math.sqrt(2.0 / (kernel_size * kernel_size)))
        nn.init.zeros_(self.pe.bias)
        self.reparam_conv: nn.Conv2d | None = None

    def forward(self, x: Tensor) -> Tensor:
        return self.reparam_conv(x) if self.reparam_conv is not None else x + self.pe(x)

    @torch.no_grad()
    def fuse(self) -> None:
        if self.reparam_conv is not None:
            return
        k = self.pe.kernel_size[0]
        fused = nn.Conv2d(self.pe.in_channels, self.pe.out_channels, k, 1, k // 2, groups=self.pe.groups).to(
            self.pe.weight.device, self.pe.weight.dtype)
        weight = self.pe.weight.clone()
        weight[:, 0, k // 2, k // 2] += 1.0  # the identity branch
        fused.weight.copy_(weight)
        fused.bias.copy_(self.pe.bias)
        self.reparam_conv = fused
        del self.pe


class RepCPE(PositionEncoding):
    """Re-parameterisable depth-wise CPE at the given positions (-1: before block 0, i: after block i).

    Args:
        positions: where the generators go (default: after block 0, like CPVT's PEG).
        kernel_size: odd kernel side (FastViT: 7).
    """

    name = "repcpe"
    slot = "rep_cpe"

    def __init__(self, shape: ModelShape, positions: Sequence[int] = (0,), kernel_size: int = 7):
        super().__init__(shape)
        positions = (positions,) if isinstance(positions, int) else tuple(int(p) for p in positions)
        last = shape.last_read_position
        if not positions or any(not -1 <= p <= last for p in positions):
            raise ValueError(f"repcpe_positions {list(positions)} invalid for depth {shape.depth}: each must be in [-1, {last}]")
        check_odd_kernel("repcpe_kernel_size", kernel_size)
        self.positions, self.kernel_size = positions, kernel_size
        for j in range(len(positions)):
            self.add_module(str(j), RepCPEConv(shape.dim, kernel_size))

    @property
    def fused(self) -> bool:
        return all(self.get_submodule(str(j)).reparam_conv is not None for j in range(len(self.positions)))

    def between(self, x: Tensor, grid: Grid, after: int) -> tuple[Tensor, Tensor | None]:
        for j, p in enumerate(self.positions):
            if p == after:
                x = map_patches(x, grid, self.get_submodule(str(j)))
        return x, None

    def reparameterize(self) -> None:
        """Fold the identity branch into each kernel: one convolution per generator from now on."""
        for j in range(len(self.positions)):
            self.get_submodule(str(j)).fuse()

    def extra_repr(self) -> str:
        return f"positions={list(self.positions)}, kernel_size={self.kernel_size}, fused={self.fused}"
