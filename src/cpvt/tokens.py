"""Token-grid geometry shared by the layers and the position encodings.

This module sits below both :mod:`cpvt.layers` and :mod:`cpvt.pos` (it imports
neither), so each can use it without an upward import:

* :class:`Grid`: the layout of one forward pass (prefix tokens, then an
  ``h x w`` grid of patch tokens in row-major order);
* :class:`BlockPosition`: what the encodings hand one transformer block;
* :func:`grid_positions`, :func:`rotate_pairs`: token coordinates and the
  pairwise rotation RoPE applies to queries and keys;
* :func:`grid_step`, :func:`grid_dilation`: the geometry of the test-time grid
  fixes (``fixed_grid="interpolate"`` of sin-cos, RoPE and PaPE; ``"dilate"``
  of the PEG and ConvFFN), which :class:`cpvt.pos.PositionEncoding` routes;
* :func:`map_patches`: split off the prefix, run a convolution over the patch
  map, put the prefix back (PEG, RepCPE, ConvFFN, conv projection);
* :func:`check_image`, :func:`check_odd_kernel`: the input and kernel checks;
* :func:`is_exporting`, :func:`grid_cached`: per-grid caches that step aside
  while ``torch.export`` traces symbolic sizes.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor


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


def grid_step(ref: tuple[int, int], h, w) -> tuple[float, float]:
    """Per-axis coordinate step of the ``fixed_grid="interpolate"`` fix on an ``h x w`` grid, for the
    training grid ``ref``: ``(ref_h / h, ref_w / w)``, so a larger grid spans the coordinates seen in
    training (position interpolation, Chen et al. 2023, arXiv 2306.15595). Exactly 1.0 on the training
    grid, which reproduces the training positions (and symbolic while a model is exported)."""
    return ref[0] / h, ref[1] / w


def grid_dilation(ref: tuple[int, int], h, w) -> tuple:
    """Per-axis dilation that keeps a ``k x k`` kernel trained on the ``ref`` grid at the image area it
    covered there, on an ``h x w`` grid: the ratio ``h / ref_h`` rounded half up, at least 1 (1 up to
    1.25x, 2 at 1.5-2x, 3 at 2.5x, 4 at 3.5x). Integer arithmetic, so a symbolic size stays symbolic
    (and serialisable) when a model is exported."""
    return tuple(torch.sym_max(1, (2 * n + r) // (2 * r)) for n, r in zip((h, w), ref))


def grid_positions(h: int, w: int, device=None, step: tuple[float, float] | None = None) -> tuple[Tensor, Tensor]:
    """Row-major (y, x) token coordinates, each (N,) float32: indices, times ``step`` per axis if given."""
    ys, xs = torch.meshgrid(torch.arange(h, device=device, dtype=torch.float32),
                            torch.arange(w, device=device, dtype=torch.float32), indexing="ij")
    ys, xs = ys.flatten(), xs.flatten()
    if step is not None:
        ys, xs = ys * step[0], xs * step[1]
    return ys, xs


def rotate_pairs(t: Tensor, angles: Tensor) -> Tensor:
    """Rotate channel pairs (2i, 2i+1) of ``t`` (..., N, D) by ``angles`` (..., N, D/2)."""
    x = t.float().unflatten(-1, (-1, 2))
    cos, sin = angles.cos(), angles.sin()
    x0, x1 = x[..., 0], x[..., 1]
    return torch.stack([x0 * cos - x1 * sin, x0 * sin + x1 * cos], dim=-1).flatten(-2).to(t.dtype)


def map_patches(x: Tensor, grid: Grid, fn: Callable[[Tensor], Tensor], *, zero_prefix: bool = False) -> Tensor:
    """Tokens (B, P+N, C) -> ``fn`` applied to the patch map (B, C, h, w), as tokens (B, P+N, C').

    The prefix (class) tokens are put back in front unchanged, or as zeros with
    ``zero_prefix`` (a delta to be added, as a PEG's is), since a convolution over
    the grid has no place for them.
    """
    prefix, patches = grid.split(x)
    out = Grid.from_map(fn(grid.to_map(patches)))
    return torch.cat([torch.zeros_like(prefix) if zero_prefix else prefix, out], dim=1)


def check_odd_kernel(name: str, kernel_size: int) -> None:
    """A convolution that keeps the grid's size needs a positive odd kernel (padding ``k // 2``)."""
    if isinstance(kernel_size, bool) or not isinstance(kernel_size, int) or kernel_size < 1 or kernel_size % 2 == 0:
        raise ValueError(f"{name} must be a positive odd number (same-size output), got {kernel_size!r}")


def check_image(x: Tensor, in_chans: int, patch_size: int) -> None:
    """Raise a ValueError that names the problem if ``x`` is not a valid input."""
    if x.ndim != 4:
        raise ValueError(f"expected an image batch of shape (B, C, H, W), got shape {tuple(x.shape)}")
    c, h, w = x.shape[1:]
    if c != in_chans:
        raise ValueError(f"expected {in_chans} input channels, got {c} (input shape {tuple(x.shape)})")
    if h < patch_size or w < patch_size or h % patch_size or w % patch_size:
        p = patch_size
        raise ValueError(
            f"input size {h}x{w} is not valid for patch size {p}: height and width must be positive "
            f"multiples of {p} (any aspect ratio), e.g. {max(p, h // p * p)}x{max(p, w // p * p)} "
            f"or {(h // p + 1) * p}x{(w // p + 1) * p}"
        )


def is_exporting() -> bool:
    """True while ``torch.export`` / ``torch.onnx.export`` traces the model.

    An encoding whose eager code branches on the grid (the APE's shortcut on its
    own grid) uses this to keep a graph that is valid at every grid; eager and
    ``torch.compile`` runs never see it, so their numerics are unchanged.
    """
    return torch.compiler.is_exporting() or torch.onnx.is_in_onnx_export()


def grid_cached(cache: dict, key: tuple, compute: Callable[[], Tensor]) -> Tensor:
    """``cache[key]``, computed by ``compute()`` the first time a grid is seen.

    Stored values are ordinary tensors even when first computed under
    ``torch.inference_mode()``, so evaluation before training is safe.
    While exporting or compiling, the grid sizes may be symbolic (a dictionary key
    would specialise the graph to one grid, and a cached tensor would freeze that
    grid into it), so the value is computed afresh, by the same code, inside the
    graph, and not stored: one compiled graph then serves every input size.
    """
    if is_exporting() or torch.compiler.is_compiling():
        return compute()
    if key not in cache:
        # A first call under torch.inference_mode() must not store an inference tensor: a later
        # training step could not save it for backward. The value is the same either way.
        with torch.inference_mode(False):
            cache[key] = compute()
    return cache[key]
