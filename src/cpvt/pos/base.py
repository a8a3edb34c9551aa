"""The one interface every position encoding implements.

Position can enter a vision transformer at only a few places, and each is a
*hook* the model calls with the token grid of the current forward pass:

=================  ==========================================  ==================
hook               what it does                                 schemes
=================  ==========================================  ==================
slot patch_embed   replaces the patch embedding (images ->      conv embedding
                   tokens, grid)
``add``            added to the tokens after the patch embed    APE, 2D sin-cos
``between``        mixes tokens before block 0 / after block i  PEG
``attn_bias``      added to the attention logits of block i     2D relative bias,
                                                                2D-ALiBi, LookHere
``content_bias``   a logit bias computed from block i's tokens  PaPE
``qk_angles``      rotates query/key channel pairs of block i   2D RoPE
``ffn_hidden``     transforms the MLP's hidden tokens, block i  ConvFFN
``qkv_tokens``     the inputs of the q, k, v projections        conv projection
=================  ==========================================  ==================

A scheme subclasses :class:`PositionEncoding` and overrides only the hooks it
uses; the others are identities, so the model never branches on which scheme it
holds. The model stores each scheme under the attribute named by its ``slot``
(``pos_embed``, ``pos_block``, ``rel_pos``), which is what gives the state dict
timm's and the official code's key names.

Nothing here knows the input resolution in advance: every hook receives a
:class:`Grid` and must work for any ``H x W``.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import ClassVar

import torch
from torch import Tensor, nn


@dataclass(frozen=True)
class Grid:
    """Token layout of one forward pass: ``num_prefix`` tokens (the class token),
    then an ``h x w`` grid of patch tokens in row-major order."""

    h: int
    w: int
    num_prefix: int = 0

    @property
    def num_patches(self) -> int:
        return self.h * self.w

    @property
    def num_tokens(self) -> int:
        return self.num_prefix + self.h * self.w

    def split(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """(B, P+N, C) -> prefix (B, P, C), patch tokens (B, N, C)."""
        return x[:, : self.num_prefix], x[:, self.num_prefix :]

    def to_map(self, tokens: Tensor) -> Tensor:
        """Patch tokens (B, N, C) -> feature map (B, C, H, W)."""
        b, n, c = tokens.shape
        return tokens.transpose(1, 2).reshape(b, c, self.h, self.w)

    @staticmethod
    def from_map(fmap: Tensor) -> Tensor:
        """Feature map (B, C, H, W) -> patch tokens (B, N, C)."""
        return fmap.flatten(2).transpose(1, 2)


@dataclass(frozen=True)
class ModelShape:
    """What a scheme needs to know about the model it is built for."""

    dim: int
    depth: int
    num_heads: int
    num_prefix: int
    grid: tuple[int, int]  # the grid at the model's default image size
    mlp_hidden: int = 0  # hidden width of the feed-forward networks
    patch_size: int = 16
    in_chans: int = 3


@dataclass
class BlockPosition:
    """What the encodings hand to one transformer block.

    ``attn_bias`` (heads, T, T) is added to the attention logits; ``qk_delta``
    (B, T, C) is added to the input of the query and key projections only (a
    PEG in Q/K-only mode), so the values see the un-encoded tokens.
    ``qk_angles`` rotates channel pairs ``(2i, 2i+1)`` of the patch tokens'
    queries and keys (RoPE); prefix tokens are not rotated.
    """

    grid: Grid
    attn_bias: Tensor | None = None
    qk_delta: Tensor | None = None
    qk_angles: Tensor | None = None  # (heads or 1, N, head_dim / 2): rotation of patch-token q/k pairs
    ffn_hidden: Callable[[Tensor], Tensor] | None = None  # applied to the MLP's hidden tokens (ConvFFN)
    qkv_tokens: Callable[[Tensor], tuple[Tensor, Tensor, Tensor]] | None = None  # normed x -> q/k/v inputs (CvT)
    content_bias: Callable[[Tensor], Tensor] | None = None  # normed x (B, T, C) -> logit bias (B, heads, T, T)


class PositionEncoding(nn.Module):
    """Base class of every position encoding. Each hook defaults to identity.

    Class attributes:
        name: the scheme's name in :func:`cpvt.pos.build_position_encodings`.
        slot: attribute name under which the model stores the module; two
            schemes with the same slot cannot be combined.
        flat_param: if set, the module holds a single parameter of this name
            that the model's state dict stores under the module's own name
            (timm keeps the learned table as the bare key ``pos_embed``).
    """

    name: ClassVar[str] = ""
    slot: ClassVar[str] = ""
    flat_param: ClassVar[str | None] = None

    def add(self, x: Tensor, grid: Grid) -> Tensor:
        """Input hook. x: (B, P+N, C) right after the prefix tokens are prepended."""
        return x

    def between(self, x: Tensor, grid: Grid, after: int) -> tuple[Tensor, Tensor | None]:
        """Between-block hook: called before block 0 (``after=-1``) and after each
        block ``i``. Returns the new tokens and an optional Q/K-only delta for the
        next block's attention."""
        return x, None

    def attn_bias(self, grid: Grid, layer: int) -> Tensor | None:
        """Attention hook: an additive bias (heads, T, T) for block ``layer``, or None."""
        return None

    def content_bias(self, grid: Grid, layer: int) -> Callable[[Tensor], Tensor] | None:
        """Content-bias hook: a function from block ``layer``'s normed tokens (B, T, C) to an
        additive logit bias (B, heads, T, T) (PaPE), or None. Biases of several schemes add."""
        return None

    def qk_angles(self, grid: Grid, layer: int) -> Tensor | None:
        """Rotation hook: angles (heads or 1, N, head_dim / 2) for the patch tokens'
        queries and keys in block ``layer`` (angles of several schemes add), or None."""
        return None

    def ffn_hidden(self, grid: Grid, layer: int) -> Callable[[Tensor], Tensor] | None:
        """Feed-forward hook: a function applied to the hidden tokens (B, T, hidden) of block
        ``layer``'s MLP, between its first linear layer and the activation, or None."""
        return None

    def qkv_tokens(self, grid: Grid, layer: int) -> Callable[[Tensor], tuple[Tensor, Tensor, Tensor]] | None:
        """Projection hook: a function from block ``layer``'s normed tokens (B, T, C) to the
        inputs of its query, key and value projections (keys/values may be fewer), or None."""
        return None

    def no_weight_decay(self) -> set[str]:
        """Names (relative to this module) of parameters excluded from weight decay.
        Position tables and generators are excluded by default, as in DeiT and Twins."""
        return {n for n, _ in self.named_parameters()}

    def extra_repr(self) -> str:
        return f"name={self.name!r}"


def is_exporting() -> bool:
    """True while ``torch.export`` / ``torch.onnx.export`` traces the model.

    An encoding whose eager code branches on the grid (the APE's shortcut on its
    own grid) uses this to keep a graph that is valid at every grid; eager and
    ``torch.compile`` runs never see it, so their numerics are unchanged.
    """
    return torch.compiler.is_exporting() or torch.onnx.is_in_onnx_export()


def grid_cached(cache: dict, key: tuple, compute: Callable[[], Tensor]) -> Tensor:
    """``cache[key]``, computed by ``compute()`` the first time a grid is seen.

    While exporting, the grid sizes are symbolic (they cannot be dictionary keys,
    and a cached tensor would freeze one grid into the graph), so the value is
    computed afresh, by the same code, and not stored.
    """
    if is_exporting():
        return compute()
    if key not in cache:
        cache[key] = compute()
    return cache[key]


def add_tensors(a: Tensor | None, b: Tensor | None) -> Tensor | None:
    """Sum of two optional tensors (None is zero)."""
    if a is None:
        return b
    if b is None:
        return a
    return a + b


def rename_flat_params(model: nn.Module, state_dict: dict, prefix: str, *, to_flat: bool) -> None:
    """Rename ``<path>.<flat_param>`` <-> ``<path>`` for every flat-parameter encoding
    in ``model``, in place. Used by the model's save and load hooks."""
    for path, module in model.named_modules():
        attr = getattr(module, "flat_param", None)
        if not path or not isinstance(module, PositionEncoding) or attr is None:
            continue
        nested, flat = f"{prefix}{path}.{attr}", f"{prefix}{path}"
        src, dst = (nested, flat) if to_flat else (flat, nested)
        if src in state_dict:
            state_dict[dst] = state_dict.pop(src)
