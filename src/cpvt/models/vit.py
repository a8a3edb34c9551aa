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
from ..pos import BlockPosition, Grid, ModelShape, PositionEncoding, build_position_encodings
from ..pos.base import add_tensors, rename_flat_params


def _pair(v: int | tuple[int, int] | list[int]) -> tuple[int, int]:
    return (v, v) if isinstance(v, int) else (int(v[0]), int(v[1]))


class ClassifierAPI:
    """The model API shared by the single-stage and pyramid models (timm's names).

    Needs ``position_encodings()``, ``forward_features``, and the attributes
    ``global_pool``, ``num_prefix``, ``embed_dim``, ``head_drop``, ``head``,
    ``in_chans`` and ``patch_size`` (the total stride).
    """

    def save_flat_params_by_slot(self) -> None:
        """Save and load flat-parameter encodings (the APE table) under their slot name (timm's ``pos_embed``)."""
        self.register_state_dict_post_hook(lambda m, sd, prefix, _: rename_flat_params(m, sd, prefix, to_flat=True))
        self.register_load_state_dict_pre_hook(
            lambda m, sd, prefix, *_: rename_flat_params(m, sd, prefix, to_flat=False)
        )

    def reparameterize(self) -> "ClassifierAPI":
        """Fuse train-time branches (RepCPE) for inference; outputs stay equal. Returns self."""
        for enc in self.position_encodings():
            if hasattr(enc, "reparameterize"):
                enc.reparameterize()
        return self

    def forward_head(self, x: Tensor, pre_logits: bool = False) -> Tensor:
        """Tokens (B, T, D) -> logits (B, num_classes), or pooled features (B, D)."""
        x = x[:, 0] if self.global_pool == "token" else x[:, self.num_prefix :].mean(dim=1)
        x = self.head_drop(x)
        return x if pre_logits else self.head(x)

    def forward(self, x: Tensor) -> Tensor:
        return self.forward_head(self.forward_features(x))

    def reset_classifier(self, num_classes: int) -> None:
        """Replace the head with a freshly initialised one (0: no classifier)."""
        self.num_classes = num_classes
        self.head = nn.Linear(self.embed_dim, num_classes) if num_classes > 0 else nn.Identity()
        self.head.apply(_init_linear)

    def grid_for(self, img_size: int | tuple[int, int]) -> tuple[int, int]:
        """Token grid an input of ``img_size`` produces, the last stage's for a pyramid (ValueError if invalid)."""
        h, w = _pair(img_size)
        check_image(torch.empty(1, self.in_chans, h, w, device="meta"), self.in_chans, self.patch_size)
        return h // self.patch_size, w // self.patch_size


class EncodingSlots:
    """Holds position encodings as child modules named by their ``slot`` (``pos_embed``, ``pos_block``, ...),
    which gives the state dict timm's and the official code's key names."""

    pos_slots: tuple[str, ...] = ()

    def attach_encodings(self, encodings: list[PositionEncoding]) -> None:
        for enc in encodings:
            self.add_module(enc.slot, enc)  # a patch_embed encoding replaces the plain embedding
            self.pos_slots += (enc.slot,)

    def position_encodings(self) -> list[PositionEncoding]:
        """The encodings held here, in the order of the ``pos`` spec."""
        return [getattr(self, slot) for slot in self.pos_slots]

    def no_weight_decay(self) -> set[str]:
        """Parameter names (as in ``named_parameters``) to exclude from weight decay: the class token and
        what each encoding excludes."""
        names = {"cls_token"} if getattr(self, "cls_token", None) is not None else set()
        for slot in self.pos_slots:
            names |= {f"{slot}.{n}" for n in getattr(self, slot).no_weight_decay()}
        return names


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
        pos: position encoding spec: ``"none"``, ``"ape"``, ``"sincos"``,
            ``"rpe"``, ``"peg"`` or a ``+`` combination such as ``"ape+peg"``.
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
        img_size = _pair(img_size)
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

        self.apply(_init_linear)
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


# -- the hook plumbing, shared with the pyramid models ---------------------------
def between_blocks(encodings: list[PositionEncoding], x: Tensor, grid: Grid, after: int) -> tuple[Tensor, Tensor | None]:
    """Every encoding's between-block hook, in order; their Q/K-only deltas add."""
    qk = None
    for enc in encodings:
        x, delta = enc.between(x, grid, after)
        qk = add_tensors(qk, delta)
    return x, qk


def block_position(encodings: list[PositionEncoding], grid: Grid, layer: int, qk: Tensor | None) -> BlockPosition:
    """Collect what the encodings hand block ``layer``: biases and angles add, hidden-token hooks chain."""
    bias = angles = None
    for enc in encodings:
        bias = add_tensors(bias, enc.attn_bias(grid, layer))
        angles = add_tensors(angles, enc.qk_angles(grid, layer))
    ffns = [f for enc in encodings if (f := enc.ffn_hidden(grid, layer)) is not None]

    def ffn(h: Tensor) -> Tensor:
        for f in ffns:
            h = f(h)
        return h

    projections = [f for enc in encodings if (f := enc.qkv_tokens(grid, layer)) is not None]
    if len(projections) > 1:
        raise ValueError("only one position encoding may replace the q/k/v projection inputs")
    contents = [f for enc in encodings if (f := enc.content_bias(grid, layer)) is not None]

    def content(x: Tensor) -> Tensor:
        return sum(f(x) for f in contents)

    return BlockPosition(grid, bias, qk, angles, ffn if ffns else None, projections[0] if projections else None,
                         content if contents else None)


def run_blocks(x: Tensor, grid: Grid, encodings: list[PositionEncoding], pos_drop: nn.Module, blocks: nn.ModuleList):
    """Embedded tokens (prefix prepended) -> the token stream before block 0 and after every block.

    The input hooks (``add``), dropout and the between-block hook before block 0 come
    first; then each block with its :class:`BlockPosition`, followed by the between hook.
    """
    for enc in encodings:
        x = enc.add(x, grid)
    x, qk = between_blocks(encodings, pos_drop(x), grid, -1)
    yield x
    for i, blk in enumerate(blocks):
        x = blk(x, block_position(encodings, grid, i, qk))
        x, qk = between_blocks(encodings, x, grid, i)
        yield x


def _init_linear(m: nn.Module) -> None:
    """Linear layers: trunc-normal(0.02) weights, zero bias (DeiT / timm)."""
    if isinstance(m, nn.Linear):
        nn.init.trunc_normal_(m.weight, std=0.02)
        if m.bias is not None:
            nn.init.zeros_(m.bias)
