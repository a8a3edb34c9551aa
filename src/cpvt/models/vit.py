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
from .features import Indices, check_output_fmt, feature_take_indices, token_map


class VisionTransformer(ClassifierAPI, EncodingSlots, nn.Module):
    """ViT with position encodings chosen by ``pos`` and configured by ``**pos_options``.

    Args:
        img_size: default input size (int or (H, W)); it fixes the APE's stored
            grid and the size ``cpvt info`` measures at, not the sizes that run.
        patch_size: side of the square patches.
        in_chans: input channels.
        num_classes: classifier outputs (0 for no classifier).
        embed_dim: token width.
        depth: number of blocks.
        num_heads: attention heads per block.
        mlp_ratio: MLP hidden width over ``embed_dim``.
        qkv_bias: a bias in the q/k/v projection.
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
        # what forward_intermediates returns for each block (timm's feature_info; "blocks.{i}" names the block
        # whose output, after the between-block hooks that follow it, map i is)
        self.feature_info = [dict(module=f"blocks.{i}", num_chs=embed_dim, reduction=patch_size, index=i)
                             for i in range(depth)]
        self.head_drop = nn.Dropout(drop_rate)
        self.head = nn.Linear(embed_dim, num_classes) if num_classes > 0 else nn.Identity()

        self.apply(init_linear)
        if self.cls_token is not None:
            nn.init.normal_(self.cls_token, std=1e-6)
        self.save_flat_params_by_slot()

    # -- the model API --------------------------------------------------------
    def forward_features(self, x: Tensor) -> Tensor:
        """Images (B, C, H, W) -> normed tokens (B, P + H/p * W/p, D)."""
        x, grid = self._embed(x)
        *_, last = run_blocks(x, grid, self.position_encodings(), self.pos_drop, self.blocks)
        return self.norm(last)

    def forward_intermediates(self, x: Tensor, indices: Indices = None, norm: bool = False,
                              output_fmt: str = "NCHW",
                              intermediates_only: bool = False) -> tuple[Tensor, list[Tensor]] | list[Tensor]:
        """Images (B, C, H, W) -> ``(forward_features(x), maps)``, or the ``maps`` alone (timm's contract,
        :mod:`cpvt.models.features`).

        ``indices`` picks blocks: ``None`` every block, an int ``n`` the last ``n``, a list those blocks
        (negative from the end); out of range is a ValueError. Map ``i`` is block ``i``'s output *after*
        the position encodings' between-block hook that follows it (CPVT's PEG after block 0): the token
        stream block ``i + 1`` reads, which is what the rest of the network sees. It equals timm's (the
        bare block output) wherever no encoding acts between blocks. The class token is dropped; the
        patch tokens come as (B, D, H/p, W/p) (``output_fmt="NCHW"``) or (B, H/p * W/p, D) (``"NLC"``),
        un-normed unless ``norm=True``, which applies the final norm to each map (as timm does).
        ``intermediates_only=True`` returns the list and stops after the last block it needs.
        """
        check_output_fmt(output_fmt)
        take, last = feature_take_indices(len(self.blocks), indices)
        x, grid = self._embed(x)
        stream = run_blocks(x, grid, self.position_encodings(), self.pos_drop, self.blocks)
        next(stream)  # the input to block 0: no block's output
        maps = []
        for i, tokens in enumerate(stream):
            if i in take:
                maps.append(token_map(self.norm(tokens) if norm else tokens, grid, output_fmt))
            if intermediates_only and i == last:
                return maps
        return self.norm(tokens), maps

    def prune_intermediate_layers(self, indices: Indices = 1, prune_norm: bool = False,
                                  prune_head: bool = True) -> list[int]:
        """Keep only what the maps at ``indices`` need (timm's method): blocks after the last index go,
        the final norm with ``prune_norm``, the classifier with ``prune_head``. Returns the absolute
        indices; the encodings stay whole (their between-block hooks still run after the kept blocks)."""
        take, last = feature_take_indices(len(self.blocks), indices)
        self.blocks = self.blocks[: last + 1]
        self.feature_info = self.feature_info[: last + 1]
        if prune_norm:
            self.norm = nn.Identity()
        if prune_head:
            self.reset_classifier(0)
        return take

    def _embed(self, x: Tensor) -> tuple[Tensor, Grid]:
        """Images -> patch tokens with the class token prepended (B, P + N, D), and their grid."""
        x, grid = self.patch_embed(x)  # (B, N, D)
        if self.cls_token is not None:
            x = torch.cat([self.cls_token.expand(x.shape[0], -1, -1), x], dim=1)  # (B, 1+N, D)
        return x, Grid(grid.h, grid.w, self.num_prefix)
