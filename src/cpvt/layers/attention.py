"""Multi-head self-attention through ``scaled_dot_product_attention``.

There is one attention class; position enters it only through the
:class:`~cpvt.pos.BlockPosition` the model hands it: an additive logit bias
(relative bias, passed to SDPA as a float mask) and an optional Q/K-only input.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..pos.base import BlockPosition
from ..pos.rope import rotate_pairs


class Attention(nn.Module):
    """Self-attention with a fused ``qkv`` projection (timm's key names)."""

    def __init__(self, dim: int, num_heads: int, qkv_bias: bool = True, attn_drop: float = 0.0, proj_drop: float = 0.0):
        super().__init__()
        if dim % num_heads:
            raise ValueError(f"embed_dim {dim} is not divisible by num_heads {num_heads}")
        self.num_heads, self.head_dim = num_heads, dim // num_heads
        self.qkv = nn.Linear(dim, dim * 3, bias=qkv_bias)
        self.attn_drop = attn_drop
        self.proj = nn.Linear(dim, dim)
        self.proj_drop = nn.Dropout(proj_drop)
        self.keep_attn = False  # analysis: also compute and keep the attention probabilities
        self.last_attn: Tensor | None = None  # (B, heads, T, T) when keep_attn

    def _heads(self, t: Tensor, parts: int) -> Tensor:
        b, n, _ = t.shape  # (B, T, parts*C) -> (parts, B, heads, T, head_dim)
        return t.reshape(b, n, parts, self.num_heads, self.head_dim).permute(2, 0, 3, 1, 4)

    def _project(self, xq: Tensor, xk: Tensor, xv: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """Query, key, value heads (B, heads, T, head_dim); one fused matmul when all three read the same tokens."""
        if xq is xk is xv:
            return tuple(self._heads(self.qkv(xq), 3).unbind(0))
        w, bias = self.qkv.weight, self.qkv.bias
        c = w.shape[1]
        return tuple(
            self._heads(F.linear(inp, w[i * c : (i + 1) * c], None if bias is None else bias[i * c : (i + 1) * c]), 1)[0]
            for i, inp in enumerate((xq, xk, xv))
        )

    def forward(self, x: Tensor, pos: BlockPosition, qk_input: Tensor | None = None) -> Tensor:
        """x: (B, T, C), already normed. ``qk_input``, if given, feeds the query and
        key projections instead of ``x`` (the values always come from ``x``)."""
        b, t, c = x.shape
        if pos.qkv_tokens is not None:  # conv projection (CvT): separate, possibly strided, q/k/v inputs
            if qk_input is not None:
                raise ValueError("a Q/K-only PEG cannot be combined with a convolutional q/k/v projection")
            inputs = pos.qkv_tokens(x)
        else:
            inputs = (x, x, x) if qk_input is None else (qk_input, qk_input, x)
        q, k, v = self._project(*inputs)
        if k.shape[2] != q.shape[2] and (pos.attn_bias is not None or pos.qk_angles is not None):
            raise ValueError("strided keys (convproj_kv_stride > 1) cannot take a per-pair attention bias or "
                             "RoPE; use convproj_kv_stride=1 to combine them")
        if pos.qk_angles is not None:  # RoPE: rotate the patch tokens' queries and keys
            p = pos.grid.num_prefix
            q = torch.cat([q[:, :, :p], rotate_pairs(q[:, :, p:], pos.qk_angles)], dim=2)
            k = torch.cat([k[:, :, :p], rotate_pairs(k[:, :, p:], pos.qk_angles)], dim=2)
        mask = None if pos.attn_bias is None else pos.attn_bias.to(q.dtype)  # (heads, T, T)
        if self.keep_attn:  # the same logits SDPA uses, made explicit
            logits = (q.float() @ k.float().transpose(-2, -1)) * self.head_dim**-0.5
            self.last_attn = (logits if mask is None else logits + mask.float()).softmax(dim=-1).detach()
        x = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, dropout_p=self.attn_drop if self.training else 0.0)
        x = x.transpose(1, 2).reshape(b, t, c)  # (B, T, C)
        return self.proj_drop(self.proj(x))
