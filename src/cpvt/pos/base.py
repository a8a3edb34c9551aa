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
:class:`Grid` and must work for any ``H x W``. (:class:`Grid` and
:class:`BlockPosition` live in :mod:`cpvt.tokens`, below both this package and
:mod:`cpvt.layers`; they are re-exported here.)
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import ClassVar

from torch import Tensor, nn

from ..tokens import BlockPosition, Grid, grid_cached, is_exporting  # noqa: F401 (part of this interface)


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

    @property
    def last_read_position(self) -> int:
        """The last between-block position whose tokens still reach the output: after the last
        block a class-token stream hands only its class token to the head."""
        return self.depth - 2 if self.num_prefix else self.depth - 1


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
