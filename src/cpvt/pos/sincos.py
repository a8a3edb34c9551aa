"""Fixed 2D sin-cos position embedding (ViT's appendix, MAE, CPVT Table 1: 72.3).

The first half of the channels encodes the column (x), the second half the row
(y), in MAE's order (He et al. 2022, ``get_2d_sincos_pos_embed``), so MAE's
tables load and compare directly; each half is ``sin`` then ``cos`` of the
coordinate at geometrically spaced frequencies. The table is a
pure function of the grid, so it is computed for whatever grid the input has;
prefix tokens get zeros.

Positions are token indices, so a larger grid reaches coordinates never seen in
training. ``fixed_grid="interpolate"`` (an inference-time option of this library)
scales them by the training grid over the grid, per axis, as RoPE's option of
the same name does: the table is then the training table sampled more finely,
as a resampled learned APE is.
"""

from __future__ import annotations

import torch
from torch import Tensor

from ..tokens import grid_step
from .base import Grid, ModelShape, PositionEncoding, is_exporting


def sincos_1d(positions: Tensor, dim: int, temperature: float = 10000.0) -> Tensor:
    """(N,) positions -> (N, dim): ``sin(p * w_i)`` then ``cos(p * w_i)``, with
    ``w_i = temperature ** (-i / (dim / 2))`` for ``i < dim / 2``."""
    omega = torch.arange(dim // 2, dtype=torch.float64) / (dim / 2)
    omega = temperature ** (-omega)
    angles = positions.double()[:, None] * omega[None]
    return torch.cat([angles.sin(), angles.cos()], dim=1)


def sincos_2d(h: int, w: int, dim: int, temperature: float = 10000.0,
              step: tuple[float, float] | None = None) -> Tensor:
    """(h*w, dim) table in row-major token order: first half of the channels from
    the column coordinate, second half from the row coordinate (MAE's order).
    Token ``(i, j)`` sits at ``(i * step[0], j * step[1])``; at its indices when ``step`` is None."""
    step = step or (1.0, 1.0)
    if dim % 4:
        raise ValueError(f"2D sin-cos needs an embedding dimension divisible by 4, got {dim}")
    rows = sincos_1d(torch.arange(h, dtype=torch.float64) * step[0], dim // 2, temperature)  # (h, dim/2)
    cols = sincos_1d(torch.arange(w, dtype=torch.float64) * step[1], dim // 2, temperature)  # (w, dim/2)
    table = torch.cat(
        [cols[None, :, :].expand(h, w, -1), rows[:, None, :].expand(h, w, -1)], dim=-1
    )
    return table.reshape(h * w, dim).float()


class SinCos2D(PositionEncoding):
    """Fixed 2D sin-cos table, computed for the current grid (no parameters).

    The table of the default grid is kept as a non-persistent buffer so it moves
    with ``.to()``; other grids are computed on the fly.

    Args:
        temperature: frequency base.
        fixed_grid: None (coordinates are token indices on every grid) or ``"interpolate"``
            (coordinates scaled by the training grid over the grid, per axis).
    """

    name = "sincos"
    slot = "pos_embed"
    GRID_FIXES = ("interpolate",)
    AUTO_FIX = "interpolate"

    def __init__(self, shape: ModelShape, temperature: float = 10000.0, fixed_grid: str | None = None):
        super().__init__(shape, fixed_grid)
        self.dim, self.num_prefix, self.temperature = shape.dim, shape.num_prefix, temperature
        self.register_buffer("base_table", sincos_2d(*self.train_grid, self.dim, temperature), persistent=False)

    def table(self, grid: Grid) -> Tensor:
        """(N, C) table for the grid's patch tokens (computed, not the stored one, while exporting: the
        exported graph must build the table of whatever grid it is given)."""
        if not is_exporting() and (grid.h, grid.w) == self.train_grid:
            return self.base_table
        step = None if self.grid_fix_for(grid) is None else grid_step(self.train_grid, grid.h, grid.w)
        return sincos_2d(grid.h, grid.w, self.dim, self.temperature, step).to(self.base_table.device)

    def add(self, x: Tensor, grid: Grid) -> Tensor:
        prefix, patches = grid.split(x)
        patches = patches + self.table(grid).to(patches.dtype)
        return torch.cat([prefix, patches], dim=1)
