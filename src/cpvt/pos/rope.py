"""2D rotary position embedding (RoPE) of queries and keys, axial or mixed (RoPE-ViT).

Heo et al., "Rotary Position Embedding for Vision Transformer" (ECCV 2024).
Each pair of channels ``(2i, 2i+1)`` of a head's query and key is rotated by an
angle ``theta_i(y, x)`` that is *linear* in the token's grid position, so the
logit ``q_a . k_b`` depends on the positions only through their offset
``(y_a - y_b, x_a - x_b)``: relative position, with no table and no limit on
the grid size.

* ``axial``: half of the pairs turn with ``x``, the other half with ``y``, at
  fixed frequencies ``theta ** (-4j / head_dim)`` (``theta = 100``);
* ``mixed``: every pair turns with a learned mix ``f_x * x + f_y * y``,
  frequencies per block and head (initialised with random directions,
  ``theta = 10``), so heads can attend along diagonals.

Prefix (class) tokens are not rotated. Positions are token indices; a larger
image simply has larger indices (extrapolation, as in RoPE-ViT).

``fixed_grid="interpolate"`` (not in RoPE-ViT; an inference-time option) scales
the positions on any grid by the training grid's size over it, per axis, so the
offsets stay inside the range seen in training and a rotation means the same
image distance at every resolution: position interpolation (Chen et al. 2023,
arXiv 2306.15595, for language models; timm's ``ref_feat_shape`` does the same
for EVA's vision RoPE). On the training grid it is the plain RoPE.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from ..tokens import grid_cached, grid_positions, grid_step, rotate_pairs  # noqa: F401 (rotate_pairs: applied by the attention layer)
from .base import Grid, ModelShape, PositionEncoding

MODES = ("axial", "mixed")


class RoPE2D(PositionEncoding):
    """Rotary 2D encoding of queries and keys.

    Args:
        mode: ``axial`` (fixed frequencies, x on half the pairs and y on the other) or
            ``mixed`` (learned per-block, per-head frequencies over both axes).
        theta: frequency base (RoPE-ViT: 100 for axial, 10 for mixed; None picks that).
        fixed_grid: None (positions are token indices on every grid) or ``"interpolate"``
            (positions scaled by the training grid over the grid, per axis).
    """

    name = "rope"
    slot = "rope"
    GRID_FIXES = ("interpolate",)
    AUTO_FIX = "interpolate"

    def __init__(self, shape: ModelShape, mode: str = "axial", theta: float | None = None,
                 fixed_grid: str | None = None):
        super().__init__(shape, fixed_grid)
        if mode not in MODES:
            raise ValueError(f"rope_mode must be one of {MODES}, got {mode!r}")
        head_dim = shape.dim // shape.num_heads
        if head_dim % 4:
            raise ValueError(f"2D RoPE needs a head dimension divisible by 4, got {head_dim}")
        self.mode, self.num_heads, self.head_dim = mode, shape.num_heads, head_dim
        self.theta = float(theta if theta is not None else (100.0 if mode == "axial" else 10.0))
        mag = 1.0 / self.theta ** (torch.arange(0, head_dim, 4, dtype=torch.float32) / head_dim)  # (D/4,)
        if mode == "axial":
            self.register_buffer("freqs", mag, persistent=False)
            self._axial_cache: dict[tuple, Tensor] = {}
        else:
            # per block and head: a random direction, the two halves of the pairs at right angles (RoPE-ViT)
            angle = torch.rand(shape.depth, shape.num_heads, 1) * 2 * math.pi
            fx = torch.cat([mag * torch.cos(angle), mag * torch.cos(angle + math.pi / 2)], dim=-1)
            fy = torch.cat([mag * torch.sin(angle), mag * torch.sin(angle + math.pi / 2)], dim=-1)
            self.freqs = nn.Parameter(torch.stack([fx, fy]))  # (2, depth, heads, D/2)

    def positions(self, grid: Grid) -> tuple[Tensor, Tensor]:
        """Each token's (y, x), (N,) each: grid indices, or with ``fixed_grid``, indices in training-grid units."""
        step = None if self.grid_fix_for(grid) is None else grid_step(self.train_grid, grid.h, grid.w)
        return grid_positions(grid.h, grid.w, self.freqs.device, step)

    def qk_angles(self, grid: Grid, layer: int) -> Tensor:
        if self.mode == "axial":  # fixed: the same angles for every block, computed once per grid
            def compute() -> Tensor:
                ys, xs = self.positions(grid)
                return torch.cat([xs[:, None] * self.freqs, ys[:, None] * self.freqs], dim=-1)[None]

            # (1, N, D/2), shared by heads
            return grid_cached(self._axial_cache, (grid.h, grid.w, self.freqs.device), compute)
        ys, xs = self.positions(grid)
        fx, fy = self.freqs[0, layer], self.freqs[1, layer]  # (heads, D/2)
        return xs[None, :, None] * fx[:, None, :] + ys[None, :, None] * fy[:, None, :]  # (heads, N, D/2)

    def extra_repr(self) -> str:
        return (f"mode={self.mode!r}, theta={self.theta}, head_dim={self.head_dim}"
                + (f", fixed_grid={self.fixed_grid!r}" if self.fixed_grid else ""))
