"""Learned absolute position embedding (APE), as in ViT and DeiT.

One learned vector per token of the training grid (plus one per prefix token,
so the class token has its own entry, as in timm). At any other grid the patch
part of the table is resampled bicubically, which is what lets an APE model run
at a resolution it never saw (DeiT fine-tunes after this; CPVT's point is that a
PEG needs neither).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .base import Grid, ModelShape, PositionEncoding, is_exporting


def resample_abs_pos_embed(
    table: Tensor, new_grid: tuple[int, int], old_grid: tuple[int, int], num_prefix: int
) -> Tensor:
    """Resample a (1, P + h*w, C) table to a new grid: bicubic, antialiased when
    shrinking, prefix entries kept as they are. The identity on its own grid.

    This is the one helper every checkpoint filter and the model share.

    While the model is being exported (:func:`~cpvt.pos.base.is_exporting`) the
    shortcut is skipped, so the exported graph resamples for whatever grid it is
    given (the shortcut would bake the export grid's table in; at the export grid
    the bicubic resampling is the identity). Eager and compiled runs take the
    shortcut exactly as before.
    """
    if not is_exporting() and tuple(new_grid) == tuple(old_grid):
        return table
    prefix, patches = table[:, :num_prefix], table[:, num_prefix:]
    c = table.shape[-1]
    fmap = patches.reshape(1, old_grid[0], old_grid[1], c).permute(0, 3, 1, 2)  # (1, C, h, w)
    fmap = F.interpolate(fmap.float(), size=tuple(new_grid), mode="bicubic", antialias=True, align_corners=False)
    patches = fmap.permute(0, 2, 3, 1).reshape(1, -1, c).to(table.dtype)
    return torch.cat([prefix, patches], dim=1)


class LearnedAPE(PositionEncoding):
    """Learned table of shape (1, P + h*w, C), trunc-normal(0.02) initialised.

    Stored in the model's state dict under the bare key ``pos_embed`` (timm's).
    """

    name = "ape"
    slot = "pos_embed"
    flat_param = "table"

    def __init__(self, shape: ModelShape):
        super().__init__(shape)
        self.num_prefix = shape.num_prefix
        n = shape.num_prefix + shape.grid[0] * shape.grid[1]
        self.table = nn.Parameter(torch.zeros(1, n, shape.dim))
        nn.init.trunc_normal_(self.table, std=0.02)

    def add(self, x: Tensor, grid: Grid) -> Tensor:
        return x + resample_abs_pos_embed(self.table, (grid.h, grid.w), self.train_grid, self.num_prefix)

    def extra_repr(self) -> str:
        return f"grid={self.train_grid}, num_prefix={self.num_prefix}"
