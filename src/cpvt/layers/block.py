"""Pre-norm transformer block."""

from __future__ import annotations

from torch import Tensor, nn

from ..tokens import BlockPosition
from .attention import Attention
from .drop_path import DropPath
from .mlp import Mlp


class Block(nn.Module):
    """``x + attn(norm1(x))`` then ``x + mlp(norm2(x))``, with stochastic depth.

    A Q/K-only position delta (``pos.qk_delta``) is added to the residual stream
    only for the queries and keys of this block's attention: they read
    ``norm1(x + delta)`` while the values read ``norm1(x)``. ``attn_scale``,
    ``sr_ratio`` and ``window`` select the attention variant (see :class:`Attention`).
    """

    def __init__(
        self,
        dim: int,
        num_heads: int,
        mlp_ratio: float = 4.0,
        qkv_bias: bool = True,
        drop: float = 0.0,
        attn_drop: float = 0.0,
        drop_path: float = 0.0,
        norm_eps: float = 1e-6,
        act: str = "gelu",
        attn_scale: float | None = None,
        sr_ratio: int = 1,
        window: int = 0,
    ):
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, eps=norm_eps)
        self.attn = Attention(dim, num_heads, qkv_bias, attn_drop, drop, attn_scale, sr_ratio, window)
        self.drop_path1 = DropPath(drop_path)
        self.norm2 = nn.LayerNorm(dim, eps=norm_eps)
        self.mlp = Mlp(dim, int(dim * mlp_ratio), drop, act)
        self.drop_path2 = DropPath(drop_path)

    def forward(self, x: Tensor, pos: BlockPosition) -> Tensor:
        qk_input = None if pos.qk_delta is None else self.norm1(x + pos.qk_delta)
        x = x + self.drop_path1(self.attn(self.norm1(x), pos, qk_input))
        x = x + self.drop_path2(self.mlp(self.norm2(x), pos.ffn_hidden))
        return x
