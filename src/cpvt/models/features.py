"""Feature maps for dense prediction, with timm's contract.

timm (``pytorch-image-models``) gives every backbone the same three pieces, and
so does cpvt, written from their documented behaviour:

* ``model.forward_intermediates(x, indices=None, norm=False, output_fmt="NCHW",
  intermediates_only=False)`` -> ``(final, maps)`` (``final`` is what
  ``forward_features`` returns), or the ``maps`` alone. ``indices`` picks
  blocks (a single-stage ViT) or stages (a pyramid) as timm's
  ``feature_take_indices`` does: ``None`` all, an int ``n`` the last ``n``, a
  sequence those indices (negative ones count from the end).
* ``model.prune_intermediate_layers(indices, prune_norm, prune_head)``: drop
  what those maps do not need (later blocks or stages, the final norm, the head).
* ``create_model(name, features_only=True, out_indices=...)``: the model wrapped in
  :class:`FeatureGetter` (timm's ``FeatureGetterNet``), whose forward returns the
  list of NCHW maps and whose ``feature_info`` describes them.

What each map *is* (which token stream, what ``norm`` does) is documented on the
two model classes' ``forward_intermediates``.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from torch import Tensor, nn

from ..tokens import Grid
from .base import FixedGridAPI

OUTPUT_FORMATS = ("NCHW", "NLC")
Indices = int | Sequence[int] | None


def feature_take_indices(num_features: int, indices: Indices = None) -> tuple[list[int], int]:
    """Absolute indices to take out of ``num_features`` blocks or stages, sorted, and the largest.

    ``None``: all of them; an int ``n``: the last ``n``; a sequence: those indices, negative ones
    counted from the end (``-1`` is the last). Anything out of range is a ValueError naming the
    valid range (timm asserts; a ValueError says the same and survives ``python -O``). The result
    is sorted and without repeats because the maps come in network order, as in timm, and a
    :class:`FeatureGetter`'s ``feature_info`` must list them in that same order.
    """
    if indices is None:
        indices = num_features
    if isinstance(indices, int):
        if not 0 < indices <= num_features:
            raise ValueError(f"take the last n blocks/stages: n={indices} is out of range (1 to {num_features})")
        take = list(range(num_features - indices, num_features))
    else:
        take = []
        for i in indices:
            idx = num_features + i if i < 0 else i
            if not 0 <= idx < num_features:
                raise ValueError(f"feature index {i} is out of range (0 to {num_features - 1}, "
                                 f"or {-num_features} to -1 from the end)")
            take.append(int(idx))
        if not take:
            raise ValueError("indices is empty: give at least one block/stage index")
        take = sorted(set(take))
    return take, max(take)


def check_output_fmt(output_fmt: str) -> None:
    if output_fmt not in OUTPUT_FORMATS:
        raise ValueError(f"output_fmt must be {' or '.join(map(repr, OUTPUT_FORMATS))}, got {output_fmt!r}")


def token_map(tokens: Tensor, grid: Grid, output_fmt: str) -> Tensor:
    """A token stream (B, P + N, C) -> its patch tokens as a map (B, C, h, w) (``NCHW``) or as
    tokens (B, N, C) (``NLC``); the ``P`` prefix tokens (class token) are dropped either way."""
    patches = grid.split(tokens)[1]
    return grid.to_map(patches) if output_fmt == "NCHW" else patches


class FeatureInfo(list):
    """One dict per feature map (``num_chs``, ``reduction`` = stride in pixels, ``module`` = where it is
    taken, ``index`` = the block or stage index), in the order the maps come.

    Unlike timm's ``FeatureInfo``, which holds every block or stage and selects with ``out_indices``,
    this lists exactly the maps a :class:`FeatureGetter` returns: entry ``k`` describes map ``k``.
    """

    def get(self, key: str) -> list[Any]:
        return [info[key] for info in self]

    def channels(self) -> list[int]:
        """Channels of each map (timm's ``feature_info.channels()``)."""
        return self.get("num_chs")

    def reduction(self) -> list[int]:
        """Stride of each map relative to the input (timm's ``feature_info.reduction()``)."""
        return self.get("reduction")

    def module_name(self) -> list[str]:
        return self.get("module")


class FeatureGetter(FixedGridAPI, nn.Module):
    """A backbone's ``forward_intermediates`` as a module: forward(images) -> list of maps (timm's
    ``FeatureGetterNet``, what ``create_model(name, features_only=True)`` returns).

    On construction the wrapped model is pruned to what the maps need (timm does the same):
    blocks or stages after the last out index, the final norm unless ``norm=True``, and the
    classifier head. ``out_indices`` is then stored as absolute indices.

    State dict: the wrapped model's own keys (``blocks.0...``, no ``model.`` prefix), so weights move
    between a classifier and its feature model. :attr:`pruned_keys` are the keys of the pruned parts;
    loading ignores them, so a classification checkpoint of the same model (head included, of any
    class count) loads strictly, and every other missing or unexpected key is still an error.

    ``model_name``, ``model_args`` (the constructor arguments) and ``pretrained_cfg`` are the wrapped
    model's, so checkpoint tools and preprocessing still find them.
    """

    def __init__(self, model: nn.Module, out_indices: Indices = None, norm: bool = False,
                 output_fmt: str = "NCHW"):
        super().__init__()
        check_output_fmt(output_fmt)
        full = set(model.state_dict())
        take = model.prune_intermediate_layers(out_indices, prune_norm=not norm, prune_head=True)
        self.pruned_keys = frozenset(full - set(model.state_dict()))
        self.model = model
        self.out_indices, self.norm, self.output_fmt = take, norm, output_fmt
        self.feature_info = FeatureInfo(model.feature_info[i] for i in take)
        for attr in ("model_name", "model_args", "pretrained_cfg"):
            if hasattr(model, attr):
                setattr(self, attr, getattr(model, attr))
        self.register_state_dict_post_hook(_strip_prefix)
        self.register_load_state_dict_pre_hook(_add_prefix)

    def forward(self, x: Tensor) -> list[Tensor]:
        """Images (B, C, H, W) -> one map per out index, (B, C_i, H / r_i, W / r_i) (``NLC``: (B, N_i, C_i))."""
        return self.model.forward_intermediates(x, self.out_indices, norm=self.norm, output_fmt=self.output_fmt,
                                                 intermediates_only=True)

    def without_pruned(self, weights: dict[str, Any]) -> dict[str, Any]:
        """``weights`` less the keys of the parts pruned here (a classifier's head, unused blocks, ...)."""
        return {k: v for k, v in weights.items() if k not in self.pruned_keys}


_INNER = "model."


def _strip_prefix(module: FeatureGetter, state_dict: dict[str, Any], prefix: str, _metadata: Any) -> None:
    """``{prefix}model.blocks.0...`` -> ``{prefix}blocks.0...``, in place and in order."""
    inner = prefix + _INNER
    for key in [k for k in state_dict if k.startswith(prefix)]:
        value = state_dict.pop(key)
        state_dict[prefix + key[len(inner):] if key.startswith(inner) else key] = value


def _add_prefix(module: FeatureGetter, state_dict: dict[str, Any], prefix: str, *_: Any) -> None:
    """The reverse of :func:`_strip_prefix` before loading, the pruned parts' keys dropped."""
    for key in [k for k in state_dict if k.startswith(prefix)]:
        value = state_dict.pop(key)
        local = key[len(prefix):]
        if local not in module.pruned_keys:
            state_dict[prefix + _INNER + local] = value
