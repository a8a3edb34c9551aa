"""Multi-head self-attention through ``scaled_dot_product_attention``.

There is one attention class; position enters it only through the
:class:`~cpvt.tokens.BlockPosition` the model hands it: an additive logit bias
(relative bias, passed to SDPA as a float mask), RoPE angles, an optional
Q/K-only input or replaced q/k/v inputs (conv projection).

Two efficiency variants used by the pyramid models (Twins) change which keys a
query sees, not how position enters:

* ``sr_ratio > 1``: global sub-sampled attention (PVT / Twins GSA): keys and
  values come from the patch grid reduced by a ``sr x sr`` stride-``sr``
  convolution and LayerNorm (``attn.sr``, ``attn.norm``).
* ``window > 0``: locally-grouped attention (Twins LSA): the grid is padded
  with zeros to a multiple of ``window`` at the bottom/right and attention runs
  inside each ``window x window`` group. As in Twins, padded tokens are not
  masked (they are zero vectors before the q/k/v projection).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..tokens import BlockPosition, Grid, is_exporting, rotate_pairs


class Attention(nn.Module):
    """Self-attention with a fused ``qkv`` projection (timm's key names).

    Args:
        scale: logit scale; None is ``head_dim ** -0.5`` (CvT uses ``dim ** -0.5``).
        sr_ratio: key/value sub-sampling stride (1: every token is a key).
        window: side of the local attention windows (0: global attention).
    """

    def __init__(self, dim: int, num_heads: int, qkv_bias: bool = True, attn_drop: float = 0.0,
                 proj_drop: float = 0.0, scale: float | None = None, sr_ratio: int = 1, window: int = 0):
        super().__init__()
        if dim % num_heads:
            raise ValueError(f"embed_dim {dim} is not divisible by num_heads {num_heads}")
        if sr_ratio > 1 and window:
            raise ValueError("an attention layer is either sub-sampled (sr_ratio > 1) or windowed, not both")
        self.num_heads, self.head_dim = num_heads, dim // num_heads
        self.scale = self.head_dim**-0.5 if scale is None else float(scale)
        self.sr_ratio, self.window = int(sr_ratio), int(window)
        self.qkv = nn.Linear(dim, dim * 3, bias=qkv_bias)
        if self.sr_ratio > 1:
            self.sr = nn.Conv2d(dim, dim, self.sr_ratio, self.sr_ratio)
            self.norm = nn.LayerNorm(dim)
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

    def _reduce(self, x: Tensor, grid: Grid) -> Tensor:
        """GSA keys/values: prefix tokens kept, the patch grid sub-sampled by the ``sr`` conv + LayerNorm."""
        prefix, patches = grid.split(x)
        return torch.cat([prefix, self.norm(Grid.from_map(self.sr(grid.to_map(patches))))], dim=1)

    def _windows(self, x: Tensor, grid: Grid) -> tuple[Tensor, tuple[int, int]]:
        """(B, N, C) -> (B * groups, window^2, C), zero-padding the grid at the bottom/right."""
        if grid.num_prefix:
            raise ValueError("windowed attention takes no class token (use global_pool='avg')")
        b, _, c = x.shape
        s = self.window
        hp, wp = (grid.h + s - 1) // s * s, (grid.w + s - 1) // s * s  # ceil to a multiple of s (no negative
        # floor division: ONNX's integer Div truncates, so -(-h // s) would round the wrong way in an export)
        fmap = F.pad(x.reshape(b, grid.h, grid.w, c), (0, 0, 0, wp - grid.w, 0, hp - grid.h))
        groups = fmap.reshape(b, hp // s, s, wp // s, s, c).transpose(2, 3).reshape(-1, s * s, c)
        return groups, (hp, wp)

    def _unwindow(self, y: Tensor, grid: Grid, padded: tuple[int, int], b: int) -> Tensor:
        s, (hp, wp), c = self.window, padded, y.shape[-1]
        fmap = y.reshape(b, hp // s, wp // s, s, s, c).transpose(2, 3).reshape(b, hp, wp, c)
        return fmap[:, : grid.h, : grid.w].reshape(b, grid.h * grid.w, c)

    def forward(self, x: Tensor, pos: BlockPosition, qk_input: Tensor | None = None) -> Tensor:
        """x: (B, T, C), already normed. ``qk_input``, if given, feeds the query and
        key projections instead of ``x`` (the values always come from ``x``)."""
        b, t, c = x.shape
        if pos.qkv_tokens is not None:  # conv projection (CvT): separate, possibly strided, q/k/v inputs
            if qk_input is not None or self.sr_ratio > 1 or self.window:
                raise ValueError("a convolutional q/k/v projection cannot be combined with a Q/K-only PEG, "
                                 "sub-sampled or windowed attention")
            inputs = pos.qkv_tokens(x)
        else:
            inputs = (x, x, x) if qk_input is None else (qk_input, qk_input, x)
        if self.sr_ratio > 1:
            xq, xk, xv = inputs
            reduced = self._reduce(xk, pos.grid)
            inputs = (xq, reduced, reduced if xv is xk else self._reduce(xv, pos.grid))
        if self.window:
            xq, xk, xv = inputs
            wq, padded = self._windows(xq, pos.grid)
            wk = wq if xk is xq else self._windows(xk, pos.grid)[0]
            wv = wq if xv is xq else wk if xv is xk else self._windows(xv, pos.grid)[0]
            inputs = (wq, wk, wv)
        q, k, v = self._project(*inputs)
        if (self.window or k.shape[2] != q.shape[2]) and (pos.attn_bias is not None or pos.qk_angles is not None
                                                          or pos.content_bias is not None):
            raise ValueError("windowed, sub-sampled or strided keys cannot take a per-pair attention bias or RoPE; "
                             "use convproj_kv_stride=1 / sr_ratio=1 / no windows to combine them")
        if pos.qk_angles is not None:  # RoPE: rotate the patch tokens' queries and keys
            p = pos.grid.num_prefix
            q = torch.cat([q[:, :, :p], rotate_pairs(q[:, :, p:], pos.qk_angles)], dim=2)
            k = torch.cat([k[:, :, :p], rotate_pairs(k[:, :, p:], pos.qk_angles)], dim=2)
        mask = pos.attn_bias  # (heads, T, T)
        if pos.content_bias is not None:  # (B, heads, T, T), from the tokens the queries are made of
            bias = pos.content_bias(inputs[0])
            mask = bias if mask is None else mask + bias
        if mask is not None:
            # 4D, even when it is the same for every image: PyTorch's fused CPU kernel takes only a 4D mask and
            # silently falls back to the math path for a 3D one (about 6x slower at 785 tokens; benchmarks/attention_bias.py)
            mask = mask.to(q.dtype)
            mask = mask[None] if mask.dim() == 3 else mask
        if self.keep_attn:  # the same logits SDPA uses, made explicit
            logits = (q.float() @ k.float().transpose(-2, -1)) * self.scale
            self.last_attn = (logits if mask is None else logits + mask.float()).softmax(dim=-1).detach()
        y = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, scale=self.scale,
                                           dropout_p=self.attn_drop if self.training else 0.0)
        y = y.transpose(1, 2)
        if is_exporting():  # a real copy: the ONNX exporter's decomposition of SDPA can give the output strides
            y = y.clone(memory_format=torch.contiguous_format)  # that a view (what reshape became) cannot take
        y = y.reshape(q.shape[0], q.shape[2], c)  # (B or B*groups, T, C)
        if self.window:
            y = self._unwindow(y, pos.grid, padded, b)
        return self.proj_drop(self.proj(y))
