"""LookHere: directed attention masks plus a distance penalty (Fuller et al., NeurIPS 2024).

Each head looks in one direction: a query at grid position ``(y, x)`` may attend
only to the keys inside its head's field of view (a half-plane, a quadrant, a
90-degree triangle or a 45-degree octant, boundaries included, so a token
always sees itself), and every visible key is penalised by its Euclidean
distance in patches, as in 2D-ALiBi:

    bias[h, q, k] = -global_slope * layer_slope[l] * head_slope[h] * ||p_q - p_k||   (k visible)
    bias[h, q, k] = -inf                                                               (k outside the view)

The layer slopes fall linearly from ``layer_slopes[0]`` in the first block to
``layer_slopes[1]`` in the last. Directional heads have slope 0.5; "none" heads
see everything and take ALiBi's slopes. The class token attends to, and is seen
by, every token with no bias. No model position embedding is added and nothing
is learned; the masks are computed for whatever grid the input has, in raw
patch units (nothing is rescaled with resolution), which is what lets LookHere
extrapolate.

Heads are given by groups of four directions, as in the paper's code:

=======  ==============================  ===================================
variant  ``heads``                       directions
=======  ==============================  ===================================
LH-180   ``halves-diagonals-none``       4 half-planes, 4 diagonal halves, 4 unmasked
LH-90    ``corners-triangles-none``      4 quadrants, 4 axis triangles, 4 unmasked
LH-45    ``eighths1-eighths2-none``      8 octants, 4 unmasked
=======  ==============================  ===================================

``heads`` may be one of ``"180"``, ``"90"``, ``"45"``, a group string, or ``"auto"``
(LH-180 when the head count is a multiple of 3, else the four half-planes
``halves``). With H heads and G groups, each group contributes its first H / G
directions (cycling past four), so ViT-B's 12 heads get exactly the paper's
assignment and DeiT-Ti's 3 heads one direction from each group.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
from torch import Tensor

from ..tokens import grid_cached, grid_positions
from .alibi import alibi_slope_list
from .base import Grid, ModelShape, PositionEncoding

# Each direction decides, from the key's offset (dy, dx) = key - query in rows and columns
# (rows grow downwards), whether the key is visible. Boundaries are inclusive.
_BASE: dict[str, Callable[[Tensor, Tensor], Tensor]] = {
    "up": lambda dy, dx: dy <= 0,
    "down": lambda dy, dx: dy >= 0,
    "left": lambda dy, dx: dx <= 0,
    "right": lambda dy, dx: dx >= 0,
    "tri_up": lambda dy, dx: -dy >= dx.abs(),
    "tri_down": lambda dy, dx: dy >= dx.abs(),
    "tri_left": lambda dy, dx: -dx >= dy.abs(),
    "tri_right": lambda dy, dx: dx >= dy.abs(),
    "diag_up_right": lambda dy, dx: dx >= dy,
    "diag_up_left": lambda dy, dx: dx + dy <= 0,
    "diag_down_right": lambda dy, dx: dx + dy >= 0,
    "diag_down_left": lambda dy, dx: dy >= dx,
    "none": lambda dy, dx: torch.ones_like(dy, dtype=torch.bool),
}


def _both(a: str, b: str) -> Callable[[Tensor, Tensor], Tensor]:
    return lambda dy, dx: _BASE[a](dy, dx) & _BASE[b](dy, dx)


DIRECTIONS: dict[str, Callable[[Tensor, Tensor], Tensor]] = {
    **_BASE,
    **{f"{a}&{b}": _both(a, b) for a, b in [
        ("up", "left"), ("up", "right"), ("down", "left"), ("down", "right"),
        ("tri_up", "left"), ("tri_down", "left"), ("tri_left", "up"), ("tri_right", "up"),
        ("tri_up", "right"), ("tri_down", "right"), ("tri_left", "down"), ("tri_right", "down")]},
}
GROUPS: dict[str, list[str]] = {
    "halves": ["up", "down", "left", "right"],
    "diagonals": ["diag_up_right", "diag_up_left", "diag_down_right", "diag_down_left"],
    "corners": ["up&left", "up&right", "down&left", "down&right"],
    "triangles": ["tri_up", "tri_down", "tri_left", "tri_right"],
    "eighths1": ["tri_up&left", "tri_down&left", "tri_left&up", "tri_right&up"],
    "eighths2": ["tri_up&right", "tri_down&right", "tri_left&down", "tri_right&down"],
    "none": ["none"] * 4,
}
VARIANTS = {"180": "halves-diagonals-none", "90": "corners-triangles-none", "45": "eighths1-eighths2-none"}
DIRECTED_SLOPE = 0.5  # every directional head's slope in the paper's code


def head_plan(heads: str, num_heads: int) -> tuple[list[str], list[float]]:
    """Each head's direction and slope for a ``heads`` spec (see the module docstring)."""
    spec = VARIANTS.get(heads, heads)
    if spec == "auto":
        spec = VARIANTS["180"] if num_heads % 3 == 0 else "halves"
    groups = spec.split("-")
    unknown = [g for g in groups if g not in GROUPS]
    if unknown:
        raise ValueError(f"unknown LookHere direction group(s) {unknown}; use {', '.join(GROUPS)} joined by '-', "
                         f"or a variant: {', '.join(VARIANTS)}, auto")
    if num_heads % len(groups):
        raise ValueError(f"LookHere heads {heads!r} has {len(groups)} groups, which do not split {num_heads} heads "
                         f"evenly; pick a spec whose group count divides the head count (e.g. 'halves')")
    per = num_heads // len(groups)
    directions, slopes = [], []
    for g in groups:
        directions += [GROUPS[g][i % 4] for i in range(per)]
        slopes += alibi_slope_list(per) if g == "none" else [DIRECTED_SLOPE] * per
    return directions, slopes


def lookhere_maps(grid: Grid, directions: Sequence[str], slopes: Sequence[float], device=None) -> Tensor:
    """(heads, T, T): ``head_slope * distance`` where visible, ``inf`` where masked; 0 on prefix rows/columns.

    Multiply by ``-global_slope * layer_slope`` to get one block's bias.
    """
    ys, xs = grid_positions(grid.h, grid.w, device)
    dy, dx = ys[None, :] - ys[:, None], xs[None, :] - xs[:, None]  # (query, key) offsets: key - query
    dist = torch.sqrt(dy**2 + dx**2)
    maps = torch.zeros(len(directions), grid.num_tokens, grid.num_tokens, device=device)
    p = grid.num_prefix
    for h, (d, s) in enumerate(zip(directions, slopes)):
        visible = DIRECTIONS[d](dy, dx)
        maps[h, p:, p:] = torch.where(visible, s * dist, torch.full_like(dist, float("inf")))
    return maps


class LookHere(PositionEncoding):
    """Directed attention masks with a distance penalty, one direction per head (no learned parameters).

    Args:
        heads: ``"auto"``, a variant (``"180"``, ``"90"``, ``"45"``) or a group string such as
            ``"halves-diagonals-none"``.
        global_slope: scale of every distance penalty (2 in the paper's configurations).
        layer_slopes: the penalty's scale in the first and the last block, linear in between.
    """

    name = "lookhere"
    slot = "lookhere"

    def __init__(self, shape: ModelShape, heads: str = "auto", global_slope: float = 2.0,
                 layer_slopes: tuple[float, float] = (1.5, 0.5)):
        super().__init__(shape)
        if len(layer_slopes) != 2:
            raise ValueError(f"lookhere_layer_slopes takes (first, last), got {layer_slopes!r}")
        self.heads = heads
        self.directions, self.head_slopes = head_plan(heads, shape.num_heads)
        self.register_buffer("slopes", torch.tensor(self.head_slopes), persistent=False)  # follows .to(device)
        self.global_slope = float(global_slope)
        first, last = float(layer_slopes[0]), float(layer_slopes[1])
        self.layer_scale = [first + (last - first) * i / max(shape.depth - 1, 1) for i in range(shape.depth)]
        self._cache: dict[tuple, Tensor] = {}

    def maps(self, grid: Grid) -> Tensor:
        device = self.slopes.device
        key = (grid.h, grid.w, grid.num_prefix, device)  # one (heads, T, T) map per grid; each block only rescales it
        return grid_cached(self._cache, key, lambda: lookhere_maps(grid, self.directions, self.head_slopes, device))

    def attn_bias(self, grid: Grid, layer: int) -> Tensor:
        return -(self.global_slope * self.layer_scale[layer]) * self.maps(grid)

    def extra_repr(self) -> str:
        return (f"heads={self.heads!r} ({', '.join(self.directions)}), global_slope={self.global_slope}, "
                f"layer_slopes={self.layer_scale[0]:g}..{self.layer_scale[-1]:g}")
