"""Convolutional token embedding (CvT, PVTv2): overlapping strided convolution, then LayerNorm.

Wu et al., "CvT: Introducing Convolutions to Vision Transformers" (ICCV 2021);
Wang et al., PVTv2. The image is cut into tokens by a convolution whose kernel
is larger than its stride (CvT's first stage: 7x7, stride 4), so neighbouring
tokens overlap, and zero padding at the image border gives border tokens a
different response: position information with no table, at any resolution.
Both papers drop the position embedding when they use it.

It takes the model's ``patch_embed`` slot (same call signature as
:class:`cpvt.layers.PatchEmbed`: images -> tokens and their grid), so the
stride stays the model's patch size and every other hook is unchanged. Padding
``(k - 1) // 2`` keeps the grid at exactly ``H / patch x W / patch`` for any odd ``k``;
any padding from ``(k - patch) / 2`` up to ``k / 2`` does too (CvT's first stage uses 2 with 7x7, stride 4).
"""

from __future__ import annotations

from torch import Tensor, nn

from ..tokens import Grid, check_image, check_odd_kernel
from .base import ModelShape, PositionEncoding


class ConvEmbed(PositionEncoding):
    """Overlapping patch embedding.

    Args:
        kernel_size: odd kernel side; None: ``2 * patch - 1`` (7 at patch 4, PVTv2's first stage).
        padding: zero padding on each side; None: ``(kernel_size - 1) // 2``.
    """

    name = "convembed"
    slot = "patch_embed"

    def __init__(self, shape: ModelShape, kernel_size: int | None = None, padding: int | None = None):
        super().__init__(shape)
        k = 2 * shape.patch_size - 1 if kernel_size is None else int(kernel_size)
        check_odd_kernel("convembed_kernel_size", k)
        s = shape.patch_size
        pad = (k - 1) // 2 if padding is None else int(padding)
        if not (k - s) / 2 <= pad < k / 2:
            raise ValueError(f"convembed_padding {pad} does not keep the grid at H/{s} x W/{s} with a {k}x{k} "
                             f"kernel: it must be in [{(k - s) / 2:g}, {k / 2:g})")
        self.patch_size, self.in_chans, self.kernel_size, self.padding = s, shape.in_chans, k, pad
        self.proj = nn.Conv2d(shape.in_chans, shape.dim, k, stride=s, padding=pad)
        self.norm = nn.LayerNorm(shape.dim, eps=1e-5)

    def forward(self, x: Tensor) -> tuple[Tensor, Grid]:
        check_image(x, self.in_chans, self.patch_size)
        x = self.proj(x)  # (B, D, H/p, W/p)
        return self.norm(Grid.from_map(x)), Grid(x.shape[2], x.shape[3])

    def no_weight_decay(self) -> set[str]:
        return set()  # an embedding layer, decayed as in CvT / PVTv2

    def extra_repr(self) -> str:
        return f"kernel_size={self.kernel_size}, stride={self.patch_size}, padding={self.padding}"
