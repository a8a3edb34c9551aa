"""ConvFFN (PVTv2): a depth-wise 3x3 convolution inside the feed-forward network.

Wang et al., "PVT v2: Improved Baselines with Pyramid Vision Transformer"
(CVMJ 2022). Between the MLP's two linear layers, the hidden patch tokens are
laid out on their grid and passed through a depth-wise ``k x k`` convolution
(zero padding, no residual) before the activation: ``fc2(act(dwconv(fc1(x))))``.
Like a PEG, the zero padding gives it position information at the borders, and
it exists for any grid, so PVTv2 drops its position embedding. Prefix (class)
tokens skip the convolution.

Unlike a PEG, this is part of the feed-forward network, so its weights take
weight decay as PVTv2 does.

Its border code is, like the PEG's, a distance counted in tokens. The
inference-time option ``fixed_grid="dilate"`` (this library's, not PVTv2's)
dilates every kernel by the test grid's ratio to the training grid, as the
PEG's option of the same name does (:mod:`cpvt.pos.peg`).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

from torch import Tensor, nn

from ..tokens import Grid, check_odd_kernel, grid_dilation, map_patches
from .base import ModelShape, PositionEncoding
from .peg import dilated_depthwise


class ConvFFN(PositionEncoding):
    """Depth-wise convolution on the MLP's hidden tokens, in the chosen blocks.

    Args:
        kernel_size: odd kernel side (PVTv2: 3).
        layers: blocks that get one. Default: every block, except the last when the model has a class
            token (that block's patch tokens never reach a class-token head, so a conv there would get
            no gradient).
        fixed_grid: None (the same kernels on every grid) or ``"dilate"`` (on a grid other than the
            training grid, kernels dilated by the ratio of the two, rounded half up; an inference-time option).
    """

    name = "convffn"
    slot = "conv_ffn"
    GRID_FIXES = ("dilate",)
    AUTO_FIX = "dilate"

    def __init__(self, shape: ModelShape, kernel_size: int = 3, layers: Sequence[int] | None = None,
                 fixed_grid: str | None = None):
        super().__init__(shape, fixed_grid)
        check_odd_kernel("convffn_kernel_size", kernel_size)
        if not shape.mlp_hidden:
            raise ValueError("ConvFFN needs the model's MLP hidden size (ModelShape.mlp_hidden)")
        if layers is None:
            layers = tuple(range(shape.depth - 1 if shape.num_prefix and shape.depth > 1 else shape.depth))
        layers = tuple(int(i) for i in layers)
        if not layers or any(not 0 <= i < shape.depth for i in layers):
            raise ValueError(f"convffn_layers {list(layers)} invalid for depth {shape.depth}")
        self.kernel_size, self.layers = kernel_size, layers
        self.convs = nn.ModuleDict()
        for i in layers:
            conv = nn.Conv2d(shape.mlp_hidden, shape.mlp_hidden, kernel_size, 1, kernel_size // 2, groups=shape.mlp_hidden)
            nn.init.normal_(conv.weight, 0.0, math.sqrt(2.0 / (kernel_size * kernel_size)))  # PVTv2's fan-out init
            nn.init.zeros_(conv.bias)
            self.convs[str(i)] = conv

    def ffn_hidden(self, grid: Grid, layer: int) -> Callable[[Tensor], Tensor] | None:
        if str(layer) not in self.convs:
            return None
        conv = self.convs[str(layer)]
        if self.grid_fix_for(grid) is None:  # no fix, or the training grid
            return lambda h: map_patches(h, grid, conv)
        dilation = grid_dilation(self.train_grid, grid.h, grid.w)  # exporting: symbolic, so the training grid takes this path too
        return lambda h: map_patches(h, grid, lambda m: dilated_depthwise(conv, m, dilation))

    def no_weight_decay(self) -> set[str]:
        return set()  # part of the network, decayed like the MLP (PVTv2)

    def extra_repr(self) -> str:
        return (f"kernel_size={self.kernel_size}, layers={list(self.layers)}"
                + (f", fixed_grid={self.fixed_grid!r} at {self.train_grid}" if self.fixed_grid else ""))
