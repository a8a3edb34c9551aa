"""2D-ALiBi: an attention-logit bias proportional to the distance between patches.

Press et al. (ALiBi, ICLR 2022) penalise attention linearly with distance, with
one fixed slope per head (the geometric sequence ``2 ** (-8 h / H)``, h = 1..H,
when H is a power of two; otherwise the reference recipe below);
the 2D version uses the Euclidean distance between token grid positions
(as compared in LookHere, NeurIPS 2024). Nothing is learned by default and the
bias exists for any grid, which is why it holds up well above the training
resolution. Prefix (class) tokens get no bias.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from ..tokens import grid_cached, grid_positions
from .base import Grid, ModelShape, PositionEncoding


def alibi_slopes(num_heads: int) -> Tensor:
    """:func:`alibi_slope_list` as a float32 tensor."""
    return torch.tensor(alibi_slope_list(num_heads), dtype=torch.float32)


def alibi_slope_list(num_heads: int) -> list[float]:
    """ALiBi's per-head slopes, as its reference code computes them (plain numbers, so they
    exist even while a model is built on the meta device).

    For a power of two H: ``2 ** (-8 h / H)``, h = 1..H. Otherwise, with P the
    largest power of two below H: the P slopes of P heads, then every other
    slope of 2P heads for the remaining H - P (so 3 heads get 1/16, 1/256, 1/4).
    """
    if num_heads < 1:
        raise ValueError(f"ALiBi needs at least one head, got {num_heads}")

    def power_of_two(n: int) -> list[float]:
        return [2.0 ** (-8.0 * h / n) for h in range(1, n + 1)]

    p = 1 << (num_heads.bit_length() - 1)
    return power_of_two(p) if p == num_heads else power_of_two(p) + power_of_two(2 * p)[0::2][: num_heads - p]


class ALiBi2D(PositionEncoding):
    """Distance-proportional logit bias ``-slope_h * ||p_query - p_key||``.

    Args:
        learned: make the slopes trainable (initialised to ALiBi's).
    """

    name = "alibi"
    slot = "alibi"

    def __init__(self, shape: ModelShape, learned: bool = False):
        super().__init__(shape)
        self.learned = learned
        slopes = alibi_slopes(shape.num_heads)
        if learned:
            self.slopes = nn.Parameter(slopes)
        else:
            self.register_buffer("slopes", slopes, persistent=False)
        self._dist_cache: dict[tuple, Tensor] = {}
        self._bias_cache: dict[tuple, Tensor] = {}

    def distances(self, grid: Grid) -> Tensor:
        """(T, T) Euclidean distance between token grid positions; 0 on prefix rows and columns."""
        def compute() -> Tensor:
            ys, xs = grid_positions(grid.h, grid.w, self.slopes.device)
            pos = torch.stack([ys, xs], dim=1)
            d = torch.zeros(grid.num_tokens, grid.num_tokens, device=self.slopes.device)
            d[grid.num_prefix :, grid.num_prefix :] = torch.cdist(pos, pos)
            return d

        return grid_cached(self._dist_cache, (grid.h, grid.w, grid.num_prefix, self.slopes.device), compute)

    def attn_bias(self, grid: Grid, layer: int) -> Tensor:
        if self.learned:
            return -self.slopes[:, None, None] * self.distances(grid)  # (heads, T, T)
        key = (grid.h, grid.w, grid.num_prefix, self.slopes.device)  # fixed slopes: the same bias for every block
        return grid_cached(self._bias_cache, key, lambda: -self.slopes[:, None, None] * self.distances(grid))

    def extra_repr(self) -> str:
        return f"heads={len(self.slopes)}, learned={self.learned}"
