"""PaPE: parabolic position encoding (arXiv 2602.01418, 2026).

Each block and head adds to the attention logit between a query token ``i`` and
a key token ``j`` a sum of K parabolas in learned 1D projections of their
offset, whose curvature and slope the *query's content* chooses:

    bias[b, h, i, j] = scale * sum_k ( -a_k(x_i) * d_k^2 + b_k(x_i) * d_k ),
    d_k = w_hk . (p_i - p_j),   a = softplus(W_a x_i) >= 0,   b = W_b x_i,

with ``x_i`` the block's normed input token, ``p`` the (column, row) grid
position, ``w_hk`` learned 2-vectors and ``scale = head_dim ** -0.5`` (the
logits' own scale). The bias is translation invariant and, as ``a >= 0``,
concave: it decays with distance at a rate each query picks. The class token
sits at (-1, -1), one diagonal step outside the grid, and takes part like any
token. Nothing depends on the grid size, so the model runs at any resolution;
offsets simply grow (nothing is rescaled), as in the paper.
``fixed_grid="interpolate"`` (an inference-time option of this library, as for
RoPE and sin-cos) scales the patch tokens' positions by the training grid over
the grid, per axis, so the offsets stay inside the range seen in training; the
class token stays at (-1, -1).

The paper's code appends channels to every query and key so that SDPA computes
the bias; here the same factorisation (a query-side feature of ``2K + 1``
channels times a key-side one) is one float32 matrix product, which keeps the
large canceling terms ``a * (u_i^2 + u_j^2 - 2 u_i u_j)`` out of bf16, and the
bias goes to SDPA as an additive mask. Weights use PyTorch's default
``nn.Linear`` initialisation, as the paper's code does, and take weight decay.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..tokens import grid_cached, grid_positions, grid_step
from .base import Grid, ModelShape, PositionEncoding


def default_parabolas(head_dim: int) -> int:
    """The paper's 50 parabolas per head at head width 64, scaled with the head width (12 at 16)."""
    return max(1, round(50 * head_dim / 64))


class PaPE(PositionEncoding):
    """Content-chosen parabolic logit bias, per block and head.

    Args:
        parabolas: parabolas per head (K); None: 50 at head width 64, scaled with the head width.
        fixed_grid: None (positions are token indices on every grid) or ``"interpolate"``
            (patch positions scaled by the training grid over the grid, per axis).
    """

    name = "pape"
    slot = "pape"
    GRID_FIXES = ("interpolate",)
    AUTO_FIX = "interpolate"

    def __init__(self, shape: ModelShape, parabolas: int | None = None, fixed_grid: str | None = None):
        super().__init__(shape, fixed_grid)
        heads, dim = shape.num_heads, shape.dim
        k = default_parabolas(dim // heads) if parabolas is None else int(parabolas)
        if k < 1:
            raise ValueError(f"pape_parabolas must be at least 1, got {parabolas}")
        self.num_heads, self.parabolas, self.num_prefix = heads, k, shape.num_prefix
        self.scale = (dim // heads) ** -0.5
        # plain parameters, not nn.Linear: the model's trunc-normal(0.02) init of Linear layers must not reach them
        self.position = nn.Parameter(torch.empty(shape.depth, heads * k, 2))  # p -> u, per block
        self.curve = nn.Parameter(torch.empty(shape.depth, 2 * heads * k, dim))  # x -> (a, b), per block
        for w in (self.position, self.curve):
            bound = 1.0 / math.sqrt(w.shape[-1])  # nn.Linear's default: kaiming_uniform(a=sqrt(5))
            nn.init.uniform_(w, -bound, bound)
        self._positions: dict[tuple, Tensor] = {}

    def no_weight_decay(self) -> set[str]:
        return set()  # content projections: decayed like the rest of the block (as in the paper's code)

    def positions(self, grid: Grid) -> Tensor:
        """(T, 2) (column, row) of every token; prefix tokens at (-1, -1)."""
        def compute() -> Tensor:
            step = None if self.grid_fix_for(grid) is None else grid_step(self.train_grid, grid.h, grid.w)
            ys, xs = grid_positions(grid.h, grid.w, self.position.device, step)
            prefix = torch.full((grid.num_prefix, 2), -1.0, device=self.position.device)
            return torch.cat([prefix, torch.stack([xs, ys], dim=1)])

        return grid_cached(self._positions, (grid.h, grid.w, grid.num_prefix, self.position.device), compute)

    def bias(self, x: Tensor, grid: Grid, layer: int) -> Tensor:
        """Normed tokens (B, T, C) -> logit bias (B, heads, T, T), float32."""
        b, t, _ = x.shape
        h, k = self.num_heads, self.parabolas
        pos = self.positions(grid)  # outside the autocast block: an exported graph cannot hand it a symbolic float
        with torch.autocast(x.device.type, enabled=False):
            u = (pos @ self.position[layer].float().T).view(t, h, k).transpose(0, 1)  # (H, T, K)
            ab = (x.float() @ self.curve[layer].float().T).view(b, t, 2, h, k).permute(2, 0, 3, 1, 4)
            a, slope = F.softplus(ab[0]), ab[1]  # (B, H, T, K), chosen by each query
            # sum_k -a_ik (u_ik - u_jk)^2 + slope_ik (u_ik - u_jk) as one product of a query-side and a key-side
            # feature (the paper's trick): [sum_k slope u_i - a u_i^2, -a, 2 a u_i - slope] . [1, u_j^2, u_j]
            ui = u[None]  # (1, H, T, K)
            row = (slope * ui - a * ui * ui).sum(-1, keepdim=True)
            query = torch.cat([row, -a, 2 * a * ui - slope], dim=-1) * self.scale  # (B, H, T, 2K + 1)
            key = torch.cat([torch.ones_like(u[..., :1]), u * u, u], dim=-1)  # (H, T, 2K + 1)
            return query @ key.transpose(-1, -2)

    def content_bias(self, grid: Grid, layer: int) -> Callable[[Tensor], Tensor]:
        return lambda x: self.bias(x, grid, layer)

    def extra_repr(self) -> str:
        return (f"heads={self.num_heads}, parabolas={self.parabolas}"
                + (f", fixed_grid={self.fixed_grid!r}" if self.fixed_grid else ""))
