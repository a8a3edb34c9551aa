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

Test-time geometry
------------------
What a scheme learned is tied to the grid it was trained on (the model's default
grid, ``ModelShape.grid``): a PEG's zero-padding code counts distances in tokens,
RoPE's rotations and sin-cos coordinates grow with the token index. On a larger
grid some schemes can keep the training grid's geometry without retraining: a
*grid fix*, chosen per scheme by its ``<scheme>_fixed_grid`` option. One
vocabulary serves them all:

=================  ===================================================  ====================
fix                what runs on a grid other than the training grid      schemes
=================  ===================================================  ====================
``"dilate"``       kernels dilated by the grid's ratio to the training   PEG, ConvFFN
                   grid, per axis, rounded half up
``"dilate_*"``     analyses of ``"dilate"`` (smoothed, border or         PEG
                   content taps only)
``"resample"``     tokens resampled to the training grid and back        PEG
``"interpolate"``  coordinates scaled by training grid / grid, per       RoPE, sin-cos, PaPE
                   axis (position interpolation)
=================  ===================================================  ====================

The base class records the training grid (:attr:`PositionEncoding.train_grid`),
checks the option against the fixes the scheme declares
(:attr:`PositionEncoding.GRID_FIXES`) in :meth:`PositionEncoding.check_grid_fix`,
and tells a hook what to do on a grid with :meth:`PositionEncoding.grid_fix_for`:
None on the training grid, so every fix reproduces the trained model there. None
of these fixes is from the papers; they are inference-time options of this library.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import ClassVar

from torch import Tensor, nn

from ..tokens import BlockPosition, Grid, grid_cached, is_exporting  # noqa: F401 (part of this interface)

FIXED_GRID_MODES = ("off", "auto")
"""Values of the model-wide ``fixed_grid`` switch (:func:`set_fixed_grid`)."""

LEGACY_GRID_FIXES = {False: None, True: "resample"}
"""Boolean spellings of a ``fixed_grid`` option: the PEG's option began as a switch for its only
fix then, resampling (``peg_fixed_grid=True``). A boolean is read through this table before it is
checked, so ``True`` is accepted wherever ``"resample"`` is, and ``False`` means no fix, as None does."""


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
        GRID_FIXES: the test-time grid fixes the scheme implements (see the
            module docstring); a scheme that declares any takes a ``fixed_grid``
            constructor argument (the user's ``<name>_fixed_grid``, default None)
            and hands it to ``__init__`` here.
        AUTO_FIX: the scheme's best fix as measured by the reproduction suite
            (one of ``GRID_FIXES``), or None where none is known to help: the
            value a model-wide "best fix for each scheme" switch would pick.

    Every scheme is built from the :class:`ModelShape` of its model, and calls
    ``super().__init__(shape)`` (``super().__init__(shape, fixed_grid)`` with fixes).
    """

    name: ClassVar[str] = ""
    slot: ClassVar[str] = ""
    flat_param: ClassVar[str | None] = None
    GRID_FIXES: ClassVar[tuple[str, ...]] = ()
    AUTO_FIX: ClassVar[str | None] = None

    def __init__(self, shape: ModelShape, fixed_grid: bool | str | None = None):
        super().__init__()
        self.train_grid: tuple[int, int] = tuple(shape.grid)  # the grid at the model's default (training) size
        self.fixed_grid = self.check_grid_fix(fixed_grid)

    @classmethod
    def check_grid_fix(cls, fix: bool | str | None) -> str | None:
        """The ``fixed_grid`` option normalised: one of :attr:`GRID_FIXES` or None (no fix).

        A boolean is read through :data:`LEGACY_GRID_FIXES` first. Anything else raises a
        ValueError that names the user's option (``peg_fixed_grid``) and the values it takes.
        """
        value = LEGACY_GRID_FIXES[fix] if isinstance(fix, bool) else fix
        if value is None or (isinstance(value, str) and value in cls.GRID_FIXES):
            return value
        option = f"{cls.name}_fixed_grid"
        if not cls.GRID_FIXES:
            raise ValueError(f"{option}: {cls.name!r} has no test-time grid fix, got {fix!r}")
        legacy = ", ".join(f"{k} means {v!r}" for k, v in LEGACY_GRID_FIXES.items() if v is None or v in cls.GRID_FIXES)
        raise ValueError(f"{option} must be None (no fix) or one of {cls.GRID_FIXES} ({legacy}); got {fix!r}")

    def grid_fix_for(self, grid: Grid) -> str | None:
        """The fix to apply on ``grid``: None when the option is off or ``grid`` is the training grid
        (where every fix is the trained scheme itself), else :attr:`fixed_grid`.

        While exporting, the grid's sizes are symbolic and cannot be compared with the training grid:
        the fix is returned, so the exported graph takes the general path, which on the training grid
        computes the same numbers (a dilation of 1, a coordinate step of 1).
        """
        if self.fixed_grid is None or (not is_exporting() and (grid.h, grid.w) == self.train_grid):
            return None
        return self.fixed_grid

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


def set_fixed_grid(modules: Iterable[nn.Module], mode: str = "auto", keep: Iterable[str] = ()) -> dict[str, str | None]:
    """The model-wide test-time switch: set the grid fix of every position encoding among ``modules`` (a
    model's ``.modules()``) that has fixes. ``"auto"``: each scheme's :attr:`PositionEncoding.AUTO_FIX` (its
    best fix as measured: dilate for the PEG and ConvFFN, interpolate for RoPE, sin-cos and PaPE);
    ``"off"``: none, the model as trained. Schemes named in ``keep`` (``"peg"``: an explicit
    ``peg_fixed_grid``) keep their own setting. Returns {scheme name: its fix}, for the schemes with fixes.

    Nothing changes on the training grid, where every fix computes the trained model. The fixes rescale
    the position code to the training geometry, which suits a *scale* change (the same view at more pixels);
    for a *canvas* change (a larger view at the training scale) CamVid measured them as mixed (ConvFFN -2.3,
    the PEG within 2 points, RoPE +6.8 mIoU at 3x), against 4-11 points that the whole frame costs every
    model: run the larger view as windows of the training size instead (``cpvt predict --window``;
    docs/dense.md, "Which fix, for which change").
    """
    if mode not in FIXED_GRID_MODES:
        raise ValueError(f"fixed_grid must be 'off' (run as trained) or 'auto' (each encoding's measured best "
                         f"test-time fix), got {mode!r}; one encoding's own fix is its <name>_fixed_grid option")
    keep = set(keep)
    chosen: dict[str, str | None] = {}
    for m in modules:
        if isinstance(m, PositionEncoding) and m.GRID_FIXES:
            if m.name not in keep:
                m.fixed_grid = m.AUTO_FIX if mode == "auto" else None
            chosen[m.name] = m.fixed_grid
    return chosen
