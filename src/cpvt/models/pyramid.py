"""Multi-stage (pyramid) vision transformers with the same pluggable position encodings.

Twins (Chu et al., 2021) and CvT (Wu et al., 2021) shrink the token grid stage
by stage, like a CNN. Each stage here is the single-stage model's body: a
patch embedding (a strided convolution, or the ``convembed`` encoding in the
``patch_embed`` slot), the stage's position encodings built from the same
``pos`` spec through :func:`cpvt.pos.build_position_encodings`, and blocks run
by the same hook plumbing (:func:`cpvt.models.vit.run_blocks`). So a Twins PEG
is exactly CPVT's PEG (``peg``, after block 0 of every stage), CvT is
``convembed+convproj`` with no position embedding, and any other encoding can
be tried in a pyramid with an override.

What the stage does not control is left to the attention variant of its blocks:
``sr_ratios`` (Twins/PVT global sub-sampled attention) and ``windows`` (Twins-SVT
locally-grouped attention in even blocks, sub-sampled in odd ones).

State-dict keys: ``stages.{i}.patch_embed``, ``stages.{i}.cls_token``,
``stages.{i}.<slot>`` (``pos_block``, ``conv_proj``, ...), ``stages.{i}.blocks.{j}``,
``norm``, ``head``. :mod:`cpvt.deploy.convert` maps timm's and CvT's layouts onto them.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor, nn

from ..layers import Block, PatchEmbed, check_image
from ..pos import Grid, ModelShape, PositionEncoding, build_position_encodings
from .base import ClassifierAPI, EncodingSlots, init_linear, pair, run_blocks
from .features import Indices, check_output_fmt, feature_take_indices, token_map


def _per_stage(value: Any, n: int, name: str) -> tuple:
    if isinstance(value, (list, tuple)):
        if len(value) != n:
            raise ValueError(f"{name} has {len(value)} entries but the model has {n} stages")
        return tuple(value)
    return (value,) * n


class PyramidStage(EncodingSlots, nn.Module):
    """One stage: embed (stride ``patch_size``), optional class token, encodings, blocks."""

    def __init__(self, shape: ModelShape, *, mlp_ratio: float, qkv_bias: bool, drop_rate: float, attn_drop_rate: float,
                 drop_path_rates: Sequence[float], norm_eps: float, act: str, attn_scale: float | None,
                 sr_ratio: int, window: int, pos: str, pos_drop_rate: float, pos_options: dict[str, Any]):
        super().__init__()
        self.num_prefix = shape.num_prefix
        self.patch_embed: nn.Module = PatchEmbed(shape.patch_size, shape.in_chans, shape.dim, norm=True)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, shape.dim)) if shape.num_prefix else None
        self.attach_encodings(build_position_encodings(pos, shape, **pos_options))
        self.pos_drop = nn.Dropout(pos_drop_rate)
        self.blocks = nn.ModuleList(
            Block(shape.dim, shape.num_heads, mlp_ratio, qkv_bias, drop_rate, attn_drop_rate, r, norm_eps, act,
                  attn_scale, *((1, window) if window and j % 2 == 0 else (sr_ratio, 0)))
            for j, r in enumerate(drop_path_rates)
        )

    def embed(self, x: Tensor) -> tuple[Tensor, Grid]:
        """Image or previous stage's map (B, C, H, W) -> tokens (class token prepended) and their grid."""
        x, grid = self.patch_embed(x)
        if self.cls_token is not None:
            x = torch.cat([self.cls_token.expand(x.shape[0], -1, -1), x], dim=1)
        return x, Grid(grid.h, grid.w, self.num_prefix)


def _check_choices(**options: tuple[Any, tuple[Any, ...]]) -> None:
    for name, (value, allowed) in options.items():
        if value not in allowed:
            raise ValueError(f"{name} must be {' or '.join(map(repr, allowed))}, got {value!r}")


class PyramidTransformer(ClassifierAPI, nn.Module):
    """A pyramid of transformer stages; per-stage arguments are sequences (or one value for all stages).

    Args:
        img_size: default input size; inputs must be multiples of the total stride.
        patch_sizes: each stage's embedding stride (Twins: 4, 2, 2, 2; CvT: 4, 2, 2).
        embed_dims: token width per stage.
        depths: blocks per stage.
        num_heads: attention heads per stage.
        mlp_ratios: MLP hidden width over the stage's width, per stage.
        sr_ratios: key/value sub-sampling stride per stage (1: full keys).
        windows: local window per stage for the even blocks (0: none; Twins-SVT: 7).
        global_pool: ``"avg"`` (mean of the last stage's normed tokens) or ``"token"``
            (a class token joins at the last stage and is classified, as in CvT).
        attn_scale: ``"head"`` (``head_dim ** -0.5``) or ``"dim"`` (``dim ** -0.5``, CvT).
        act: MLP activation, ``"gelu"`` or ``"quick_gelu"`` (official CvT).
        norm_eps: epsilon of the blocks' and the final LayerNorm.
        pos: position encoding spec of every stage (Twins: ``"peg"``).
        stage_pos_options: per-stage encoding options merged over ``**pos_options``.
        **pos_options: options for every stage's encodings, ``<scheme>_<arg>``.
    """

    def __init__(
        self,
        img_size: int | tuple[int, int] = 224,
        in_chans: int = 3,
        num_classes: int = 1000,
        patch_sizes: Sequence[int] = (4, 2, 2, 2),
        embed_dims: Sequence[int] = (64, 128, 256, 512),
        depths: Sequence[int] = (3, 4, 6, 3),
        num_heads: Sequence[int] = (1, 2, 4, 8),
        mlp_ratios: float | Sequence[float] = 4.0,
        sr_ratios: int | Sequence[int] = 1,
        windows: int | Sequence[int] = 0,
        qkv_bias: bool = True,
        global_pool: str = "avg",
        attn_scale: str = "head",
        act: str = "gelu",
        norm_eps: float = 1e-6,
        drop_rate: float = 0.0,
        pos_drop_rate: float = 0.0,
        attn_drop_rate: float = 0.0,
        drop_path_rate: float = 0.0,
        pos: str = "peg",
        stage_pos_options: Sequence[dict[str, Any]] | None = None,
        **pos_options: Any,
    ):
        super().__init__()
        n = len(depths)
        patch_sizes, embed_dims, num_heads = (_per_stage(v, n, k) for v, k in (
            (patch_sizes, "patch_sizes"), (embed_dims, "embed_dims"), (num_heads, "num_heads")))
        mlp_ratios, sr_ratios, windows = (_per_stage(v, n, k) for v, k in (
            (mlp_ratios, "mlp_ratios"), (sr_ratios, "sr_ratios"), (windows, "windows")))
        stage_opts = _per_stage(stage_pos_options or {}, n, "stage_pos_options")
        _check_choices(global_pool=(global_pool, ("token", "avg")), attn_scale=(attn_scale, ("head", "dim")))
        img_size = pair(img_size)
        self.patch_size = math.prod(patch_sizes)  # total stride: inputs must be multiples of it
        check_image(torch.empty(1, in_chans, *img_size, device="meta"), in_chans, self.patch_size)
        self.img_size, self.in_chans, self.num_classes = img_size, in_chans, num_classes
        self.embed_dim, self.global_pool = embed_dims[-1], global_pool
        self.num_prefix = 1 if global_pool == "token" else 0

        total = sum(depths)
        rates = [drop_path_rate * i / max(total - 1, 1) for i in range(total)]
        self.stages = nn.ModuleList()
        self.feature_info = []  # what forward_intermediates returns for each stage (timm's feature_info)
        chans, stride, start = in_chans, 1, 0
        for i in range(n):
            stride *= patch_sizes[i]
            prefix = self.num_prefix if i == n - 1 else 0
            shape = ModelShape(embed_dims[i], depths[i], num_heads[i], prefix,
                               (img_size[0] // stride, img_size[1] // stride), int(embed_dims[i] * mlp_ratios[i]),
                               patch_sizes[i], chans)
            self.stages.append(PyramidStage(
                shape, mlp_ratio=mlp_ratios[i], qkv_bias=qkv_bias, drop_rate=drop_rate, attn_drop_rate=attn_drop_rate,
                drop_path_rates=rates[start : start + depths[i]], norm_eps=norm_eps, act=act,
                attn_scale=embed_dims[i] ** -0.5 if attn_scale == "dim" else None, sr_ratio=sr_ratios[i],
                window=windows[i], pos=pos, pos_drop_rate=pos_drop_rate, pos_options={**pos_options, **stage_opts[i]},
            ))
            self.feature_info.append(dict(module=f"stages.{i}", num_chs=embed_dims[i], reduction=stride, index=i))
            chans, start = embed_dims[i], start + depths[i]
        self.norm = nn.LayerNorm(self.embed_dim, eps=norm_eps)
        self.head_drop = nn.Dropout(drop_rate)
        self.head = nn.Linear(self.embed_dim, num_classes) if num_classes > 0 else nn.Identity()
        self.head.apply(init_linear)
        self._init_stages()
        self.save_flat_params_by_slot()

    def _init_stages(self) -> None:
        """Twins' initialisation of the embeddings, blocks and class token; encodings keep their own."""
        for stage in self.stages:
            for module in (stage.patch_embed, stage.blocks):
                if not isinstance(module, PositionEncoding):
                    module.apply(_init_weights)
            if stage.cls_token is not None:
                nn.init.trunc_normal_(stage.cls_token, std=0.02)

    def position_encodings(self) -> list[PositionEncoding]:
        """Every stage's encodings, stage by stage."""
        return [enc for stage in self.stages for enc in stage.position_encodings()]

    def forward_features(self, x: Tensor) -> Tensor:
        """Images (B, C, H, W) -> the last stage's normed tokens (B, P + H/s * W/s, D_last)."""
        check_image(x, self.in_chans, self.patch_size)
        *_, (last, _) = self._stage_outputs(x)
        return self.norm(last)

    def forward_intermediates(self, x: Tensor, indices: Indices = None, norm: bool = False,
                              output_fmt: str = "NCHW",
                              intermediates_only: bool = False) -> tuple[Tensor, list[Tensor]] | list[Tensor]:
        """Images (B, C, H, W) -> ``(forward_features(x), maps)``, or the ``maps`` alone (timm's contract,
        :mod:`cpvt.models.features`).

        ``indices`` picks stages: ``None`` every stage, an int ``n`` the last ``n``, a list those stages
        (negative from the end); out of range is a ValueError. Map ``i`` is stage ``i``'s output, the map
        stage ``i + 1`` embeds: (B, C_i, H / r_i, W / r_i) with ``r_i`` the product of the strides so far
        (``output_fmt="NLC"``: (B, H / r_i * W / r_i, C_i)); a class token (CvT's, last stage) is dropped.
        ``norm=True`` applies the final norm to the last stage's map only, as timm's Twins does: that norm
        is sized for the last stage and trained on its tokens alone; the other maps are returned as is.
        ``intermediates_only=True`` returns the list and stops after the last stage it needs.
        """
        check_output_fmt(output_fmt)
        check_image(x, self.in_chans, self.patch_size)
        take, last = feature_take_indices(len(self.stages), indices)
        final = len(self.stages) - 1
        maps = []
        for i, (tokens, grid) in enumerate(self._stage_outputs(x)):
            if i in take:
                maps.append(token_map(self.norm(tokens) if norm and i == final else tokens, grid, output_fmt))
            if intermediates_only and i == last:
                return maps
        return self.norm(tokens), maps

    def prune_intermediate_layers(self, indices: Indices = 1, prune_norm: bool = False,
                                  prune_head: bool = True) -> list[int]:
        """Keep only what the maps at ``indices`` need (timm's method): stages after the last index go
        (and with the last stage the final norm, which only fits it), the final norm with ``prune_norm``,
        the classifier with ``prune_head``. Returns the absolute indices."""
        take, last = feature_take_indices(len(self.stages), indices)
        if last < len(self.stages) - 1:
            self.stages = self.stages[: last + 1]
            self.feature_info = self.feature_info[: last + 1]
            self.patch_size = self.feature_info[-1]["reduction"]  # the total stride of what is left
            prune_norm = True
        if prune_norm:
            self.norm = nn.Identity()
        if prune_head:
            self.reset_classifier(0)
        return take

    def _stage_outputs(self, x: Tensor):
        """Images -> each stage's output tokens (B, P + N_i, C_i) and their grid, stage by stage."""
        for stage in self.stages:
            x, grid = stage.embed(x)
            *_, tokens = run_blocks(x, grid, stage.position_encodings(), stage.pos_drop, stage.blocks)
            yield tokens, grid
            x = grid.to_map(tokens[:, grid.num_prefix :])  # the next stage embeds this one's patch-token map

    def no_weight_decay(self) -> set[str]:
        """Class tokens and position generators (as in Twins)."""
        return {f"stages.{i}.{n}" for i, stage in enumerate(self.stages) for n in stage.no_weight_decay()}


def _init_weights(m: nn.Module) -> None:
    """Linear: trunc-normal(0.02); convolutions (embeddings, key sub-sampling): He normal on fan-out (Twins)."""
    init_linear(m)
    if isinstance(m, nn.Conv2d):
        fan_out = m.kernel_size[0] * m.kernel_size[1] * m.out_channels // m.groups
        nn.init.normal_(m.weight, 0.0, math.sqrt(2.0 / fan_out))
        if m.bias is not None:
            nn.init.zeros_(m.bias)
