"""Convolutional q/k/v projection (CvT): depth-wise conv + BatchNorm before each projection.

Wu et al., "CvT: Introducing Convolutions to Vision Transformers" (ICCV 2021).
Before the linear query, key and value projections of each block, the patch
tokens are laid out on their grid and passed through a depth-wise ``k x k``
convolution (zero padding ``k // 2``, no bias) and BatchNorm. Queries keep the
grid (stride 1); keys and values use stride ``kv_stride`` (CvT: 2), so with
padding 1 and a 3x3 kernel a ``H x W`` grid gives ``ceil(H/2) x ceil(W/2)``
keys: attention costs a quarter. The zero padding carries position, and CvT
uses no position embedding at all. The class token bypasses the convolutions
and is prepended to the queries, keys and values; with a class-token head the
last block's query convolution is omitted, since those queries never reach the
output.

Strided keys do not line up with the query grid, so this cannot be combined
with encodings that bias or rotate the attention logits per token pair (RPE,
ALiBi, RoPE) unless ``kv_stride`` is 1.
"""

from __future__ import annotations

from collections.abc import Callable

from torch import Tensor, nn

from ..tokens import Grid, check_odd_kernel, map_patches
from .base import ModelShape, PositionEncoding


def conv_bn(dim: int, kernel_size: int, stride: int) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(dim, dim, kernel_size, stride, kernel_size // 2, groups=dim, bias=False), nn.BatchNorm2d(dim)
    )


def kv_grid(h: int, w: int, kernel_size: int, stride: int) -> tuple[int, int]:
    """The key/value grid a strided projection produces from an ``h x w`` grid."""
    pad = kernel_size // 2
    return (h + 2 * pad - kernel_size) // stride + 1, (w + 2 * pad - kernel_size) // stride + 1


class ConvProjection(PositionEncoding):
    """CvT's convolutional projection in every block.

    Args:
        kernel_size: odd kernel side (CvT: 3).
        kv_stride: stride of the key/value convolutions (CvT: 2; 1 keeps every key).
    """

    name = "convproj"
    slot = "conv_proj"

    def __init__(self, shape: ModelShape, kernel_size: int = 3, kv_stride: int = 2):
        super().__init__(shape)
        check_odd_kernel("convproj_kernel_size", kernel_size)
        if kv_stride < 1:
            raise ValueError(f"convproj_kv_stride must be >= 1, got {kv_stride}")
        self.kernel_size, self.kv_stride = kernel_size, kv_stride
        # With a class-token head, the last block's patch-token queries never reach the output: that block's
        # query convolution is left out (an identity) rather than kept as dead weights.
        skip_last_q = shape.num_prefix > 0
        self.q = nn.ModuleList(
            nn.Identity() if skip_last_q and i == shape.depth - 1 else conv_bn(shape.dim, kernel_size, 1)
            for i in range(shape.depth)
        )
        self.k = nn.ModuleList(conv_bn(shape.dim, kernel_size, kv_stride) for _ in range(shape.depth))
        self.v = nn.ModuleList(conv_bn(shape.dim, kernel_size, kv_stride) for _ in range(shape.depth))

    def qkv_tokens(self, grid: Grid, layer: int) -> Callable[[Tensor], tuple[Tensor, Tensor, Tensor]]:
        def project(x: Tensor) -> tuple[Tensor, Tensor, Tensor]:
            return tuple(map_patches(x, grid, conv[layer]) for conv in (self.q, self.k, self.v))

        return project

    def no_weight_decay(self) -> set[str]:
        return set()  # projection weights, decayed as in CvT

    def extra_repr(self) -> str:
        return f"kernel_size={self.kernel_size}, kv_stride={self.kv_stride}"
