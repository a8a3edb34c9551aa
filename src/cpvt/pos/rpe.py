"""2D relative position bias added to the attention logits (CPVT Table 1: 70.5).

Each head learns one scalar per relative offset ``(dy, dx)``, with both
components clipped to ``[-K, K]`` (K=8 by default, as in CPVT's comparison).
The table's size depends only on K, never on the grid, so the same parameters
serve every resolution. Prefix (class) tokens get three extra learned entries,
class->patch, patch->class and class->class, as in BEiT. The bias is
translation-invariant by construction: it carries no absolute position, which
is the reason CPVT gives for its lower accuracy.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from .base import Grid, ModelShape, PositionEncoding, grid_cached


def relative_index(h: int, w: int, num_prefix: int, max_offset: int, device=None) -> Tensor:
    """(T, T) long tensor: for each (query, key) pair, its row in the bias table.

    Patch pairs map to ``(dy + K) * (2K + 1) + (dx + K)`` with clipped offsets;
    prefix pairs to the three entries after the ``(2K+1)^2`` offsets.
    """
    k = max_offset
    side = 2 * k + 1
    ys, xs = torch.meshgrid(torch.arange(h, device=device), torch.arange(w, device=device), indexing="ij")
    coords = torch.stack([ys.flatten(), xs.flatten()], dim=1)  # (N, 2)
    rel = (coords[:, None, :] - coords[None, :, :]).clamp(-k, k) + k  # (N, N, 2)
    patch_index = rel[..., 0] * side + rel[..., 1]
    if num_prefix == 0:
        return patch_index
    t = num_prefix + h * w
    index = torch.empty(t, t, dtype=torch.long, device=device)
    index[num_prefix:, num_prefix:] = patch_index
    index[:num_prefix, num_prefix:] = side * side  # class -> patch
    index[num_prefix:, :num_prefix] = side * side + 1  # patch -> class
    index[:num_prefix, :num_prefix] = side * side + 2  # class -> class
    return index


class RelPosBias(PositionEncoding):
    """Learned relative bias, one table per block (or one shared by all blocks).

    Args:
        max_offset: K, the clipping distance in tokens.
        shared: one table for all blocks instead of one per block.
    """

    name = "rpe"
    slot = "rel_pos"

    def __init__(self, shape: ModelShape, max_offset: int = 8, shared: bool = False):
        super().__init__(shape)
        if max_offset < 1:
            raise ValueError(f"rpe_max_offset must be >= 1, got {max_offset}")
        self.max_offset, self.shared, self.num_prefix = max_offset, shared, shape.num_prefix
        entries = (2 * max_offset + 1) ** 2 + (3 if shape.num_prefix else 0)
        self.table = nn.Parameter(torch.zeros(1 if shared else shape.depth, entries, shape.num_heads))
        nn.init.trunc_normal_(self.table, std=0.02)
        self._index_cache: dict[tuple, Tensor] = {}

    def index(self, grid: Grid) -> Tensor:
        key = (grid.h, grid.w, self.table.device)  # derivable, so cached rather than stored
        return grid_cached(self._index_cache, key,
                           lambda: relative_index(grid.h, grid.w, self.num_prefix, self.max_offset, self.table.device))

    def attn_bias(self, grid: Grid, layer: int) -> Tensor:
        table = self.table[0 if self.shared else layer]  # (entries, heads)
        return table[self.index(grid)].permute(2, 0, 1)  # (heads, T, T)

    def extra_repr(self) -> str:
        return f"max_offset={self.max_offset}, shared={self.shared}, layers={self.table.shape[0]}"
