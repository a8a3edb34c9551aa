"""Plain vision transformer (ViT / DeiT / CPVT) with a pluggable position encoding.

One class serves DeiT with any encoding and every CPVT variant: the difference
between "DeiT-tiny" and "CPVT-Ti" is only the ``pos`` spec (``"ape"`` vs
``"peg"``). The model calls each encoding at its hooks (see
:mod:`cpvt.pos.base`) with the token grid of the current input, so any input
whose sides are multiples of the patch size runs, at any aspect ratio.

State-dict keys are timm's (``cls_token``, ``pos_embed``, ``patch_embed.proj``,
``blocks.{i}.norm1`` / ``attn.qkv`` / ``attn.proj`` / ``norm2`` / ``mlp.fc1`` /
``mlp.fc2``, ``norm``, ``head``) plus the official PEG keys
``pos_block.{j}.proj.0``, so a timm DeiT state dict loads with ``strict=True``.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn

from ..layers import Block, PatchEmbed, check_image
from ..pos import Grid, ModelShape, build_position_encodings
from .base import ClassifierAPI, EncodingSlots, init_linear, pair, run_blocks


class VisionTransformer(ClassifierAPI, EncodingSlots, nn.Module):
    """ViT with position encodings chosen by ``pos`` and configured by ``**pos_options``.

    Args:
        img_size: default input size (int or (H, W)); it fixes the APE's stored
            grid and the size ``cpvt info`` measures at, not the sizes that run.
        patch_size: side of the square patches.
        in_chans: input channels.
        num_classes: classifier outputs (0 for no classifier).
        embed_dim, depth, num_heads, mlp_ratio, qkv_bias: transformer shape.
        global_pool: ``"token"`` (a class token is prepended and classified) or
            ``"avg"`` (no class token; the mean of the final normed tokens, GAP).
        drop_rate: dropout after the MLP / projection and before the head.
        pos_drop_rate: dropout after the input position encoding.
        attn_drop_rate: dropout on the attention weights.
        drop_path_rate: stochastic depth, linearly increasing to this value.
        pos: position encoding spec: a scheme of :func:`cpvt.list_encodings`
            (``none``, ``ape``, ``sincos``, ``rpe``, ``peg``, ``repcpe``,
            ``convffn``, ``convembed``, ``convproj``, ``rope``, ``alibi``,
            ``lookhere``, ``pape``) or a ``+`` combination such as ``"ape+peg"``.
        **pos_options: options of the chosen schemes, ``<scheme>_<arg>``
            (for example ``peg_positions=[0, 1]``, ``peg_padding="circular"``).
    """

    def __init__(
        self,
        img_size: int | tuple[int, int] = 224,
        patch_size: int = 16,
        in_chans: int = 3,
        num_classes: int = 1000,
        embed_dim: int = 768,
        depth: int = 12,
        num_heads: int = 12,
        mlp_ratio: float = 4.0,
        qkv_bias: bool = True,
        global_pool: str = "token",
        drop_rate: float = 0.0,
        pos_drop_rate: float = 0.0,
        attn_drop_rate: float = 0.0,
        drop_path_rate: float = 0.0,
        pos: str = "ape",
        **pos_options: Any,
    ):
        super().__init__()
        img_size = pair(img_size)
        if global_pool not in ("token", "avg"):
            raise ValueError(f"global_pool must be 'token' or 'avg', got {global_pool!r}")
        check_image(torch.empty(1, in_chans, *img_size, device="meta"), in_chans, patch_size)
        self.img_size, self.patch_size, self.in_chans = img_size, patch_size, in_chans
        self.num_classes, self.embed_dim, self.global_pool = num_classes, embed_dim, global_pool
        self.num_prefix = 1 if global_pool == "token" else 0

        self.patch_embed = PatchEmbed(patch_size, in_chans, embed_dim)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, embed_dim)) if self.num_prefix else None
        grid = (img_size[0] // patch_size, img_size[1] // patch_size)
        shape = ModelShape(embed_dim, depth, num_heads, self.num_prefix, grid, int(embed_dim * mlp_ratio), patch_size,
                           in_chans)
        self.attach_encodings(build_position_encodings(pos, shape, **pos_options))
        self.pos_drop = nn.Dropout(pos_drop_rate)

        rates = [drop_path_rate * i / max(depth - 1, 1) for i in range(depth)]  # linear stochastic depth
        self.blocks = nn.ModuleList(
            Block(embed_dim, num_heads, mlp_ratio, qkv_bias, drop_rate, attn_drop_rate, r) for r in rates
        )
        self.norm = nn.LayerNorm(embed_dim, eps=1e-6)
        self.head_drop = nn.Dropout(drop_rate)
        self.head = nn.Linear(embed_dim, num_classes) if num_classes > 0 else nn.Identity()

        self.apply(init_linear)
        if self.cls_token is not None:
            nn.init.normal_(self.cls_token, std=1e-6)
        self.save_flat_params_by_slot()

    # -- the model API --------------------------------------------------------
    def forward_features(self, x: Tensor) -> Tensor:
        """Images (B, C, H, W) -> normed tokens (B, P + H/p * W/p, D)."""
        *_, last = self._stages(x)
        return self.norm(last)

    def forward_intermediates(self, x: Tensor) -> list[Tensor]:
        """The token stream at every stage, ``depth + 1`` tensors (B, P + N, D), un-normed.

        Entry 0 is the input to block 0 (patch embedding, added encodings, a PEG at
        -1); entry ``i + 1`` is the output of block ``i`` (and of a PEG after it).
        """
        return list(self._stages(x))

    def _stages(self, x: Tensor):
        x, grid = self.patch_embed(x)  # (B, N, D)
        if self.cls_token is not None:
            x = torch.cat([self.cls_token.expand(x.shape[0], -1, -1), x], dim=1)  # (B, 1+N, D)
        yield from run_blocks(x, Grid(grid.h, grid.w, self.num_prefix), self.position_encodings(), self.pos_drop,
                              self.blocks)
