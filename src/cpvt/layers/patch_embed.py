"""Patch embedding: a strided convolution that turns an image into a token grid."""

from __future__ import annotations

from torch import Tensor, nn

from ..tokens import Grid, check_image


class PatchEmbed(nn.Module):
    """(B, C, H, W) -> tokens (B, H/p * W/p, D) and their :class:`Grid`.

    Any height and width that are multiples of the patch size are accepted; the
    grid travels with the tokens so every position encoding knows the layout.
    State-dict keys match timm's ``patch_embed.proj.weight`` / ``.bias``; with
    ``norm=True`` a LayerNorm follows (``patch_embed.norm``, the pyramids' stage embedding).
    """

    def __init__(self, patch_size: int = 16, in_chans: int = 3, embed_dim: int = 768, norm: bool = False):
        super().__init__()
        self.patch_size, self.in_chans = patch_size, in_chans
        self.proj = nn.Conv2d(in_chans, embed_dim, kernel_size=patch_size, stride=patch_size)
        self.norm = nn.LayerNorm(embed_dim) if norm else nn.Identity()

    def forward(self, x: Tensor) -> tuple[Tensor, Grid]:
        check_image(x, self.in_chans, self.patch_size)
        x = self.proj(x)  # (B, D, H/p, W/p)
        grid = Grid(x.shape[2], x.shape[3])
        return self.norm(Grid.from_map(x)), grid  # (B, N, D)
