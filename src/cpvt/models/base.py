"""What both model families share: the classifier API, the encoding slots and the hook plumbing.

:class:`~cpvt.models.vit.VisionTransformer` (one stage) and
:class:`~cpvt.models.pyramid.PyramidViT` (several) differ in how they lay out
stages; both hold their position encodings in :class:`EncodingSlots` and run
their blocks through :func:`run_blocks`, which calls every encoding at its hooks
(:mod:`cpvt.pos.base`). So a scheme written once works in both.
"""

from __future__ import annotations

from functools import partial

import torch
from torch import Tensor, nn

from ..pos import PositionEncoding
from ..pos.base import add_tensors, rename_flat_params, set_fixed_grid
from ..tokens import BlockPosition, Grid, check_image


def pair(v: int | tuple[int, int] | list[int]) -> tuple[int, int]:
    """``7`` or ``(7, 5)`` -> ``(h, w)``."""
    return (v, v) if isinstance(v, int) else (int(v[0]), int(v[1]))


class FixedGridAPI:
    """``set_fixed_grid``: the model-wide test-time switch, for every model class (classifier, segmentation
    model, feature getter)."""

    def set_fixed_grid(self, mode: str = "auto", keep: tuple[str, ...] = ()) -> dict[str, str | None]:
        """Give every position encoding its measured best test-time grid fix (``"auto"``) or none (``"off"``),
        keeping the encodings named in ``keep`` as they are; returns {encoding: fix}. Recorded in
        ``model_args["fixed_grid"]`` so a checkpoint or export of the model rebuilds it. See
        :func:`cpvt.pos.base.set_fixed_grid`."""
        chosen = set_fixed_grid(self.modules(), mode, keep)
        if isinstance(getattr(self, "model_args", None), dict):
            args = {k: v for k, v in self.model_args.items() if k != "fixed_grid"}
            self.model_args = {**args, "fixed_grid": mode} if mode != "off" else args
        return chosen


class ClassifierAPI(FixedGridAPI):
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

    def reparameterize(self) -> ClassifierAPI:
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
        self.head.apply(init_linear)

    def grid_for(self, img_size: int | tuple[int, int]) -> tuple[int, int]:
        """Token grid an input of ``img_size`` produces, the last stage's for a pyramid (ValueError if invalid)."""
        h, w = pair(img_size)
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


# -- the hook plumbing ---------------------------------------------------------
def between_blocks(encodings: list[PositionEncoding], x: Tensor, grid: Grid, after: int) -> tuple[Tensor, Tensor | None]:
    """Every encoding's between-block hook, in order; their Q/K-only deltas add."""
    qk = None
    for enc in encodings:
        x, delta = enc.between(x, grid, after)
        qk = add_tensors(qk, delta)
    return x, qk


def block_position(encodings: list[PositionEncoding], grid: Grid, layer: int, qk: Tensor | None) -> BlockPosition:
    """Collect what the encodings hand block ``layer``: biases and angles add, hidden-token hooks chain.

    Written as one plain loop, with the hooks combined by module-level functions, so that ``torch.compile``
    traces it into the caller's graph (comprehension variables captured by closures break the graph).
    """
    bias = angles = None
    ffns, projections, contents = [], [], []
    for enc in encodings:
        bias = add_tensors(bias, enc.attn_bias(grid, layer))
        angles = add_tensors(angles, enc.qk_angles(grid, layer))
        ffn = enc.ffn_hidden(grid, layer)
        if ffn is not None:
            ffns.append(ffn)
        projection = enc.qkv_tokens(grid, layer)
        if projection is not None:
            projections.append(projection)
        content = enc.content_bias(grid, layer)
        if content is not None:
            contents.append(content)
    if len(projections) > 1:
        raise ValueError("only one position encoding may replace the q/k/v projection inputs")
    return BlockPosition(grid, bias, qk, angles, _combine(_chain, ffns), projections[0] if projections else None,
                         _combine(_total, contents))


def _combine(how, fns: list):
    """None for no hook, the hook itself for one, ``how`` over all of them for several."""
    if not fns:
        return None
    return fns[0] if len(fns) == 1 else partial(how, tuple(fns))


def _chain(fns: tuple, h: Tensor) -> Tensor:
    for f in fns:
        h = f(h)
    return h


def _total(fns: tuple, x: Tensor) -> Tensor:
    out = fns[0](x)
    for f in fns[1:]:
        out = out + f(x)
    return out


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


def init_linear(m: nn.Module) -> None:
    """Linear layers: trunc-normal(0.02) weights, zero bias (DeiT / timm)."""
    if isinstance(m, nn.Linear):
        nn.init.trunc_normal_(m.weight, std=0.02)
        if m.bias is not None:
            nn.init.zeros_(m.bias)
