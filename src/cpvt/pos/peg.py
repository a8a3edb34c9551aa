"""Positional Encoding Generator (PEG), CPVT's conditional position encoding.

Chu et al., "Conditional Positional Encodings for Vision Transformers",
arXiv 2102.10882 (ICLR 2023).

A PEG reshapes the patch tokens to their grid, applies a depth-wise ``k x k``
convolution with zero padding and adds the result back::

    PEG(x) = x + F(x),   F = DWConv_k(reshape(x)),   class token untouched.

The encoding is generated from each token's neighbourhood, so it exists for
any ``H x W``. Absolute position comes from the zero padding: border tokens see
zeros where interior tokens see neighbours, and stacking blocks spreads that
signal inwards (Islam et al. 2020). Circular or replicate padding keeps the
shape but removes that border signal, which is CPVT's "no padding" ablation.

Every knob the paper ablates is a constructor argument:

* ``positions``: -1 = before block 0, ``i`` = after block ``i`` (default ``(0,)``;
  CPVT‡ uses ``(0, 1, 2, 3, 4)``);
* ``kernel_size``: 3 by default; 1 is the "no neighbourhood" control; a kernel
  larger than the grid (27 at 14x14) is the paper's global-kernel row;
* ``kind``: ``depthwise`` (default) or ``separable`` (depth-wise ``k x k``
  followed by a point-wise ``1 x 1``); ``layers`` stacks that many convolutions
  (linearly, no activation between) inside one generator;
* ``padding``: ``zeros`` (default), ``circular``, ``replicate`` or ``reflect``;
* ``frozen``: keep the random initialisation (no gradient);
* ``qk_only``: ``F(x)`` is added only to the input of the next attention's query
  and key projections; the residual stream and the values stay un-encoded;
* ``fixed_grid`` (not in the paper; inference-time variants measured by the
  reproduction suite) keeps the training grid's geometry on any other grid.
  The values are :attr:`PEG.GRID_FIXES`, checked and routed by the base class
  (:mod:`cpvt.pos.base`, "Test-time geometry"):

  - ``True`` or ``"resample"``: the tokens are resampled (bilinear,
    antialiased) to the model's own grid (the training grid), ``F`` runs
    there, and its output is resampled back. The zero-padding signal then
    marks the same *relative* positions at every resolution, as a resampled
    APE does, instead of the same distances in tokens;
  - ``"dilate"``: ``F`` runs on the tokens as they are, with its kernels
    dilated by the grid's ratio to the training grid (per axis, rounded half
    up: 1.5x dilates by 2, 2.5x by 3; the padding grows with it). At 2x each
    tap reaches the tokens that cover the image area its neighbour covered at
    1x, and the border signal reaches twice as many tokens, the same fraction
    of the grid; no content is blurred. Prior art: dilating a trained
    network's convolutions by the resolution ratio at inference, without
    retraining, is ScaleCrafter's re-dilation of a pretrained diffusion UNet
    (He et al. 2023, arXiv 2310.07702). It rests on the identity behind FCN's
    filter rarefaction and shift-and-stitch (Long, Shelhamer, Darrell 2015,
    arXiv 1411.4038) and à-trous / dilated convolution (Chen et al., DeepLab,
    arXiv 1412.7062; Yu & Koltun, arXiv 1511.07122): on an input upsampled by
    ``s``, a filter dilated by ``s`` gives the original response upsampled.
    Applying it to a PEG (or any conditional position encoding) in a ViT is
    this library's inference-time option; we found no earlier work that does.

  - ``"dilate_smooth"``: ``"dilate"``, with each tap reading the tokens that
    cover its 1x neighbour's area instead of one of them: the map is first
    smoothed per axis with a triangle of width ``2d - 1`` (at 2x: 1/4, 1/2,
    1/4), averaged over the tokens inside the grid only. An anti-aliased
    dilation, to test whether plain dilation loses by skipping the new detail
    between its taps. Eager only: it does not export.

  - ``"dilate_border"`` and ``"dilate_content"``: the two halves of
    ``"dilate"``, to tell apart what it does to the PEG's two roles. A
    zero-padded convolution is the same convolution with replicate padding
    (content only: on a constant map it is the same everywhere) plus the
    difference of the two (the border signal, zero away from the border).
    ``"dilate_border"`` dilates only the border signal and keeps the content
    taps on neighbouring tokens; ``"dilate_content"`` does the reverse. Zero
    padding only. On Imagenette (docs/results/cpu/conclusion.md) the border
    half never cost more than 0.1 points against plain at 1.5x and 2x over
    six trained PEGs, and gained up to 1.7; full dilation gained most at
    exactly 2x on an 8x8 grid and cost up to 4 points at 1.5x or at patch 4.

  On the model's own grid all of them are the plain PEG. All but
  ``dilate_smooth`` export with a dynamic
  height and width: while exporting, the dilation is integer arithmetic on
  the symbolic grid and each dilated kernel runs as a sum of its shifted taps
  (ONNX convolutions need a fixed dilation), so one file serves every size.

State-dict layout follows the official code (Twins ``PosCNN``):
``pos_block.{j}.proj.0.weight`` (C, 1, k, k) and ``.bias`` (C,).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from functools import partial

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..tokens import Grid, check_odd_kernel, grid_dilation, is_exporting, map_patches
from .base import ModelShape, PositionEncoding

PADDING_MODES = ("zeros", "circular", "replicate", "reflect")
KINDS = ("depthwise", "separable")
ANALYSIS_MODES = ("dilate_smooth",)  # test-time analyses: eager only


class PosConv(nn.Module):
    """One generator: the convolutional part ``F`` of ``PEG(x) = x + F(x)``."""

    def __init__(self, dim: int, kernel_size: int, kind: str, layers: int, padding: str):
        super().__init__()
        convs: list[nn.Module] = []
        for _ in range(layers):
            convs.append(nn.Conv2d(dim, dim, kernel_size, 1, kernel_size // 2, groups=dim, padding_mode=padding))
            if kind == "separable":
                convs.append(nn.Conv2d(dim, dim, 1))
        self.proj = nn.Sequential(*convs)
        for conv in self.proj:
            # Official init: normal(0, sqrt(2 / fan_out)), fan_out = k * k * C_out / groups.
            fan_out = conv.kernel_size[0] * conv.kernel_size[1] * conv.out_channels // conv.groups
            nn.init.normal_(conv.weight, 0.0, math.sqrt(2.0 / fan_out))
            nn.init.zeros_(conv.bias)

    def forward(self, fmap: Tensor, dilation: tuple[int, int] | None = None, variant: str = "dilate") -> Tensor:
        """``(B, C, H, W) -> (B, C, H, W)``; ``dilation`` spreads every k x k kernel's taps apart. ``variant``
        (a ``fixed_grid`` mode) says how: all of each kernel (``"dilate"``), after smoothing the map
        (``"dilate_smooth"``, :func:`triangle_smooth`), or only its border signal or its content taps
        (``"dilate_border"``, ``"dilate_content"``, :func:`split_depthwise`)."""
        exporting = is_exporting()  # a given dilation may be symbolic then: no branching on its value
        if dilation is None or (not exporting and dilation == (1, 1)):
            return self.proj(fmap)  # the plain PEG: one Conv per kernel, exported as such
        if exporting and variant in ANALYSIS_MODES:
            raise NotImplementedError(f"peg_fixed_grid={variant!r} is a test-time analysis mode and does not "
                                      "export; export with 'dilate' or 'resample'")
        for conv in self.proj:
            # the separable kind's point-wise step has nothing to dilate
            if conv.kernel_size == (1, 1):
                fmap = conv(fmap)
            elif variant == "dilate_smooth":
                fmap = dilated_depthwise(conv, triangle_smooth(fmap, dilation), dilation)
            elif variant in ("dilate_border", "dilate_content"):
                border = variant == "dilate_border"
                fmap = split_depthwise(conv, fmap, dilation if not border else (1, 1), dilation if border else (1, 1))
            else:
                fmap = dilated_depthwise(conv, fmap, dilation)
        return fmap


def triangle_smooth(fmap: Tensor, dilation: tuple[int, int]) -> Tensor:
    """``fmap`` (B, C, H, W) smoothed per axis by a triangle of width ``2d - 1`` (weights ``d - |i|``,
    normalised): the tokens of a grid ``d`` times finer that cover one token of the coarser grid. Near the
    border only the tokens inside the grid count (the weights are renormalised), so the zero padding of the
    convolution that follows stays the only border signal."""
    c = fmap.shape[1]
    for axis, d in zip((2, 3), dilation):
        d = int(d)
        if d == 1:
            continue
        tri = (d - (fmap.new_tensor(range(-(d - 1), d)).abs())).float()
        shape = (1, 1, -1, 1) if axis == 2 else (1, 1, 1, -1)
        pad = (0, 0, d - 1, d - 1) if axis == 2 else (d - 1, d - 1, 0, 0)
        kernel = tri.view(shape)
        ones = fmap.new_ones((1, 1) + tuple(fmap.shape[2:]), dtype=torch.float32)
        weight = F.conv2d(F.pad(ones, pad), kernel)
        fmap = (F.conv2d(F.pad(fmap.float(), pad), kernel.expand(c, -1, -1, -1), groups=c) / weight).to(fmap.dtype)
    return fmap


def split_depthwise(conv: nn.Conv2d, fmap: Tensor, content: tuple[int, int], border: tuple[int, int]) -> Tensor:
    """A zero-padded depth-wise ``conv`` split into its two roles, each with its own dilation.

    ``conv_zeros(x) = conv_replicate(x) + (conv_zeros(x) - conv_replicate(x))``: the first term reads content
    only (a constant map gives the same output everywhere), the second is the border signal the zero padding
    adds (zero farther than the kernel's reach from the border). The content term runs with dilation
    ``content``, the border term with ``border``; equal dilations give the plain dilated convolution.
    """
    return dilated_depthwise(conv, fmap, content, "replicate") + (
        dilated_depthwise(conv, fmap, border, "zeros") - dilated_depthwise(conv, fmap, border, "replicate"))


def dilated_depthwise(conv: nn.Conv2d, fmap: Tensor, dilation: tuple[int, int], padding: str | None = None) -> Tensor:
    """``conv`` (depth-wise, odd kernel, stride 1, same-size output) run on ``fmap`` with its taps spread
    ``dilation`` apart and its padding (``padding``, default the conv's own mode) widened to match. The
    ``fixed_grid="dilate"`` option of the zero-padded convolutions (PEG, ConvFFN)."""
    exporting = is_exporting()
    padding = padding or conv.padding_mode
    pad = [conv.kernel_size[i] // 2 * dilation[i] for i in (0, 1)]
    if exporting or padding != "zeros":
        mode = "constant" if padding == "zeros" else padding
        fmap = F.pad(fmap, (pad[1], pad[1], pad[0], pad[0]), mode=mode)
        pad = [0, 0]
    if exporting:
        return _depthwise_taps(fmap, conv.weight, conv.bias, dilation)
    return F.conv2d(fmap, conv.weight, conv.bias, padding=pad, dilation=dilation, groups=conv.groups)


def _depthwise_taps(padded: Tensor, weight: Tensor, bias: Tensor, dilation: tuple[int, int]) -> Tensor:
    """A depth-wise dilated convolution of an already padded map, as the sum of its shifted taps.

    Equal to ``F.conv2d(padded, weight, bias, dilation=dilation, groups=C)``; the
    dilation may be a symbolic size, which an ONNX ``Conv`` cannot take.
    """
    kh, kw = weight.shape[-2:]
    h = padded.shape[-2] - (kh - 1) * dilation[0]
    w = padded.shape[-1] - (kw - 1) * dilation[1]
    out = bias.view(1, -1, 1, 1).to(padded.dtype)
    for i in range(kh):
        for j in range(kw):
            tap = padded[:, :, i * dilation[0]: i * dilation[0] + h, j * dilation[1]: j * dilation[1] + w]
            out = out + tap * weight[:, 0, i, j].view(1, -1, 1, 1)
    return out


class PEG(PositionEncoding):
    """One or more PEGs inserted between transformer blocks (see module docstring)."""

    name = "peg"
    slot = "pos_block"
    GRID_FIXES = ("resample", "dilate", "dilate_smooth", "dilate_border", "dilate_content")
    AUTO_FIX = "dilate"

    def __init__(
        self,
        shape: ModelShape,
        positions: Sequence[int] = (0,),
        kernel_size: int = 3,
        kind: str = "depthwise",
        layers: int = 1,
        padding: str = "zeros",
        frozen: bool = False,
        qk_only: bool = False,
        fixed_grid: bool | str | None = None,
    ):
        super().__init__(shape, fixed_grid)  # checks fixed_grid against GRID_FIXES; True means "resample"
        positions = (positions,) if isinstance(positions, int) else tuple(int(p) for p in positions)
        # A PEG must be read by something: Q/K-only feeds the next attention, and after the last
        # block of a class-token stream only the class token goes on to the head, so a PEG
        # there would change nothing the model outputs.
        last = min(shape.depth - 2, shape.last_read_position) if qk_only else shape.last_read_position
        if not positions or any(not -1 <= p <= last for p in positions):
            what = ("Q/K-only needs a following attention block" if qk_only else
                    "a class-token model reads no patch token after its last block" if shape.num_prefix else
                    "each position must be inside the model")
            raise ValueError(
                f"peg_positions {list(positions)} invalid for depth {shape.depth}: each must be in "
                f"[-1, {last}] (-1 = before block 0, i = after block i; {what})"
            )
        check_odd_kernel("peg_kernel_size", kernel_size)
        if kind not in KINDS:
            raise ValueError(f"peg_kind must be one of {KINDS}, got {kind!r}")
        if padding not in PADDING_MODES:
            raise ValueError(f"peg_padding must be one of {PADDING_MODES}, got {padding!r}")
        if layers < 1:
            raise ValueError(f"peg_layers must be >= 1, got {layers}")
        if self.fixed_grid in ("dilate_border", "dilate_content") and padding != "zeros":
            raise ValueError(f"peg_fixed_grid={fixed_grid!r} splits off the zero padding's border signal; "
                             f"it needs peg_padding='zeros', got {padding!r}")
        self.positions, self.kernel_size, self.padding = positions, kernel_size, padding
        self.kind, self.layers, self.frozen, self.qk_only = kind, layers, frozen, qk_only
        for j in range(len(positions)):
            self.add_module(str(j), PosConv(shape.dim, kernel_size, kind, layers, padding))
        if frozen:
            self.requires_grad_(False)

    def generators_at(self, after: int) -> list[PosConv]:
        return [self.get_submodule(str(j)) for j, p in enumerate(self.positions) if p == after]

    def _check_grid(self, grid: Grid) -> None:
        pad = self.kernel_size // 2
        side = min(grid.h, grid.w)
        if (self.padding == "circular" and pad > side) or (self.padding == "reflect" and pad >= side):
            raise ValueError(
                f"PEG with {self.padding} padding and kernel {self.kernel_size} needs a token grid of at least "
                f"{pad + (self.padding == 'reflect')} per side; got {grid.h}x{grid.w}"
            )

    def between(self, x: Tensor, grid: Grid, after: int) -> tuple[Tensor, Tensor | None]:
        qk_delta = None
        for gen in self.generators_at(after):
            self._check_grid(grid)
            delta = map_patches(x, grid, self._generator(gen, grid), zero_prefix=True)
            if self.qk_only:
                qk_delta = delta if qk_delta is None else qk_delta + delta
            else:
                x = x + delta
        return x, qk_delta

    def _generator(self, gen: PosConv, grid: Grid):
        """``gen`` as it runs on ``grid``: plain, or keeping the training grid's geometry (``fixed_grid``)."""
        fix = self.grid_fix_for(grid)  # None on the training grid (while exporting, the general path serves it)
        if fix is None:
            return gen
        if fix == "resample":
            return partial(self._on_ref_grid, gen)
        return partial(gen, dilation=grid_dilation(self.train_grid, grid.h, grid.w), variant=fix)

    def _on_ref_grid(self, gen: PosConv, fmap: Tensor) -> Tensor:
        """The generator run on the training grid: the map resampled there, convolved, resampled back."""
        # float32: antialiased resampling has no bfloat16 kernel on the CPU
        ref = F.interpolate(fmap.float(), size=self.train_grid, mode="bilinear", align_corners=False,
                            antialias=True).to(fmap.dtype)
        return F.interpolate(gen(ref), size=fmap.shape[-2:], mode="bilinear", align_corners=False)

    def extra_repr(self) -> str:
        return (
            f"positions={list(self.positions)}, kernel_size={self.kernel_size}, kind={self.kind!r}, "
            f"layers={self.layers}, padding={self.padding!r}, frozen={self.frozen}, qk_only={self.qk_only}"
            + (f", fixed_grid={self.fixed_grid!r} at {self.train_grid}" if self.fixed_grid else "")
        )
