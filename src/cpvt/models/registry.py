"""Models by name: a registry of tiny variant functions.

Each variant is a function that returns its constructor arguments and nothing
else; :func:`register_model` records it with the class it builds.
:func:`create_model` merges user overrides on top and remembers both, so a
checkpoint can rebuild the exact model (``model.model_name``,
``model.model_args``).
"""

from __future__ import annotations

import fnmatch
import inspect
import math
from collections.abc import Callable
from pathlib import Path
from typing import Any

from torch import nn

from ..checkpoint import Checkpoint, CheckpointError, load_checkpoint, resolve_checkpoint
from ..pos import all_encoding_options
from .features import FeatureGetter, Indices
from .pretrained import check_pretrained_cfg, default_pretrained_cfg, pretrained_cfg_from_config
from .segmentation import TASKS, SegmentationModel

_REGISTRY: dict[str, tuple[type[nn.Module], Callable[[], dict[str, Any]]]] = {}


def register_model(cls: type[nn.Module]) -> Callable:
    """Decorator: ``@register_model(VisionTransformer)`` over ``def name(): return dict(...)``."""

    def wrap(fn: Callable[[], dict[str, Any]]) -> Callable[[], dict[str, Any]]:
        if fn.__name__ in _REGISTRY:
            raise ValueError(f"model {fn.__name__!r} is registered twice")
        _REGISTRY[fn.__name__] = (cls, fn)
        return fn

    return wrap


def list_models(pattern: str = "*") -> list[str]:
    """Registered model names matching a shell-style pattern, sorted."""
    return sorted(n for n in _REGISTRY if fnmatch.fnmatchcase(n, pattern))


def _lookup(name: str) -> tuple[type[nn.Module], Callable[[], dict[str, Any]]]:
    if name not in _REGISTRY:
        close = [n for n in _REGISTRY if name.split("_")[0] in n][:8]
        hint = f"; similar: {', '.join(close)}" if close else ""
        raise ValueError(f"unknown model {name!r}{hint} (see `cpvt models` for all {len(_REGISTRY)})")
    return _REGISTRY[name]


def valid_overrides(name: str) -> set[str]:
    """Every keyword ``create_model(name, ...)`` accepts."""
    cls, _ = _lookup(name)
    params = inspect.signature(cls.__init__).parameters
    named = {p for p, v in params.items() if p != "self" and v.kind is not inspect.Parameter.VAR_KEYWORD}
    if any(v.kind is inspect.Parameter.VAR_KEYWORD for v in params.values()):
        named |= set(all_encoding_options())
    return named


def model_args(name: str, **overrides: Any) -> dict[str, Any]:
    """The constructor arguments of ``name`` with ``overrides`` applied (validated)."""
    _, fn = _lookup(name)
    unknown = set(overrides) - valid_overrides(name)
    if unknown:
        raise ValueError(
            f"unknown override(s) {sorted(unknown)} for model {name!r}; valid: {', '.join(sorted(valid_overrides(name)))}"
        )
    args = {**fn(), **overrides}
    _check_types(name, overrides, {**fn(), **all_encoding_options(), **_signature_defaults(name)})  # signature wins
    return args


def _signature_defaults(name: str) -> dict[str, Any]:
    cls, _ = _lookup(name)
    return {p: v.default for p, v in inspect.signature(cls.__init__).parameters.items()
            if v.default is not inspect.Parameter.empty}


def _check_types(name: str, overrides: dict[str, Any], defaults: dict[str, Any]) -> None:
    """A ValueError naming every override of the wrong kind for its default (a word where a number or a
    flag is expected, a flag where a number is) or a number that is not finite. Options whose default is
    None, a word or a sequence take several kinds and are checked where they are used."""
    bad = []
    for key, value in overrides.items():
        if isinstance(value, float) and not math.isfinite(value):
            bad.append(f"{key}={value!r} (not a finite number)")
            continue
        default = defaults.get(key)
        number = isinstance(value, (int, float)) and not isinstance(value, bool)
        if isinstance(default, bool):
            ok, kind = isinstance(value, bool), "True or False"
        elif isinstance(default, int):
            ok, kind = (number and float(value).is_integer()) or isinstance(value, (list, tuple)), "a whole number"
        elif isinstance(default, float):
            ok, kind = number or isinstance(value, (list, tuple)), "a number"
        else:
            continue
        if not ok:
            bad.append(f"{key}={value!r} (expects {kind}, like its default {default!r})")
    if bad:
        raise ValueError(f"model {name!r}: bad option(s) " + "; ".join(bad))


def create_model(name: str, *, pretrained: str | Path | Checkpoint | None = None, features_only: bool = False,
                 out_indices: Indices = None, **overrides: Any) -> nn.Module:
    """Build a registered model, e.g. ``create_model("cpvt_ti", num_classes=10, peg_kernel_size=5)``.

    ``pretrained``: a cpvt checkpoint (a path or a loaded :class:`~cpvt.checkpoint.Checkpoint`) or run folder
    (``best``, else ``last``), a file
    written by ``cpvt convert``, a Hugging Face Hub layout folder (``config.json`` + ``model.safetensors``,
    written by :func:`~cpvt.models.hub.save_pretrained`) or a Hub id ``"owner/name"`` (downloaded with
    ``huggingface_hub``, an optional install), or a plain state dict (``.pth`` / ``.safetensors``,
    e.g. timm's DeiT weights). The weights load strictly: a missing, unexpected or
    mis-shaped tensor is a :class:`~cpvt.checkpoint.CheckpointError` naming it. A cpvt
    checkpoint's or Hub folder's stored options (``num_classes``, ``peg_kernel_size``, ``task``,
    ``fixed_grid``, ...) are the defaults under ``overrides``; one saved from another model is refused.

    ``task="segmentation"``: the backbone with a light segmentation head
    (:class:`~cpvt.models.segmentation.SegmentationModel`, logits (B, num_classes, H, W)); the task is
    stored in ``model_args``, so its checkpoints rebuild it.

    ``fixed_grid``: the test-time switch for running at sizes other than the training size: ``"off"``
    (default) runs the model as trained; ``"auto"`` gives each position encoding its measured best fix
    (:func:`cpvt.pos.base.set_fixed_grid`), except the encodings given their own ``<name>_fixed_grid``.
    ``model.set_fixed_grid("auto")`` sets it on a model already built.

    ``features_only=True`` (timm's option): the model wrapped in a
    :class:`~cpvt.models.features.FeatureGetter`, whose forward returns a list of NCHW feature maps, the
    ``out_indices`` blocks (ViT) or stages (pyramid) (an int ``n``: the last ``n``; default: timm's, the
    last 3 blocks of a ViT (all of them if it has fewer), every stage of a pyramid). Its head is removed
    and ``pretrained=`` may be a classification checkpoint of the same model: the head's keys are ignored.
    """
    if out_indices is not None and not features_only:
        raise ValueError("out_indices selects feature maps: pass it with features_only=True")
    cls, _ = _lookup(name)
    ckpt = None
    if pretrained:  # None or False (timm's spelling): random initialisation
        ckpt = pretrained if isinstance(pretrained, Checkpoint) else load_checkpoint(resolve_checkpoint(pretrained))
        pretrained = ckpt.path
        saved = ckpt.meta.get("model_name")
        if saved is not None and saved != name:
            raise CheckpointError(f"{pretrained} holds a {saved!r} model, not {name!r}: "
                                  f"create_model({saved!r}, pretrained=...) or cpvt.load_run({str(pretrained)!r})")
        overrides = {**ckpt.meta.get("model_args", {}), **overrides}
    fixed_grid = overrides.pop("fixed_grid", "off")
    task = overrides.pop("task", "classification")
    if task not in TASKS:
        raise ValueError(f"task must be one of {', '.join(TASKS)}, got {task!r}")
    if task != "classification" and features_only:
        raise ValueError("features_only=True gives a backbone's feature maps; it takes no task")
    args = model_args(name, **overrides)
    try:
        model = cls(**args)
    except TypeError as e:  # an option of a kind the constructor cannot use: one clear line, not a traceback
        raise ValueError(f"cannot build model {name!r} with {overrides}: {e}") from None
    model.model_name, model.model_args = name, args
    model.pretrained_cfg = default_pretrained_cfg(model) if ckpt is None else stored_pretrained_cfg(ckpt, model)
    if features_only:
        model = FeatureGetter(model, default_out_indices(model) if out_indices is None else out_indices)
    elif task == "segmentation":  # the backbone's feature maps and a light head (cpvt.models.segmentation)
        seg = SegmentationModel(model, model.num_classes)
        seg.model_name, seg.model_args, seg.pretrained_cfg = name, {**args, "task": task}, model.pretrained_cfg
        model = seg
    if ckpt is not None:
        load_strict(model, ckpt.weights, source=str(pretrained))
    # the switch last, so the stored args name it; an encoding's own <name>_fixed_grid wins over it
    model.set_fixed_grid(fixed_grid, keep=[k.removesuffix("_fixed_grid") for k, v in args.items()
                                           if k.endswith("_fixed_grid") and v is not None])
    return model


def default_out_indices(model: nn.Module) -> int:
    """timm's default ``out_indices`` for a ``features_only`` model: the last 3 blocks of a ViT (its
    ``vision_transformer`` / ``deit`` default; all blocks of a shallower one), every stage of a pyramid
    (its Twins / PVT-v2 default)."""
    return min(3, len(model.blocks)) if hasattr(model, "blocks") else len(model.stages)


def stored_pretrained_cfg(ckpt: Checkpoint, model: nn.Module) -> dict[str, Any]:
    """The ``pretrained_cfg`` a checkpoint holds; for one written before checkpoints stored it, rebuilt from
    its run config; for plain weights from elsewhere, the model's default."""
    if "pretrained_cfg" in ckpt.meta:
        return dict(check_pretrained_cfg(ckpt.meta["pretrained_cfg"], str(ckpt.path)))
    if ckpt.config:
        return pretrained_cfg_from_config(model, ckpt.config)
    return default_pretrained_cfg(model)


def load_strict(model: nn.Module, weights: dict[str, Any], source: str) -> None:
    """``model.load_state_dict(weights, strict=True)``, its failure one CheckpointError that names the tensors.

    A features model (:class:`~cpvt.models.features.FeatureGetter`) ignores the keys of the parts it pruned
    (the head, ...), so a classification checkpoint of the same model loads into it."""
    if isinstance(model, FeatureGetter):
        weights = model.without_pruned(weights)
    own = model.state_dict()
    missing = sorted(set(own) - set(weights))
    unexpected = sorted(set(weights) - set(own))
    shapes = [f"{k} {tuple(weights[k].shape)} (model: {tuple(own[k].shape)})"
              for k in sorted(set(own) & set(weights)) if tuple(weights[k].shape) != tuple(own[k].shape)]
    problems = [f"{label}: {', '.join(items[:6])}{' ...' if len(items) > 6 else ''} ({len(items)})"
                for label, items in (("missing", missing), ("unexpected", unexpected), ("wrong shape", shapes)) if items]
    if problems:
        raise CheckpointError(f"{source} does not fit {model.model_name}: " + "; ".join(problems))
    model.load_state_dict(weights, strict=True)


def model_from_checkpoint(ckpt: Checkpoint | str | Path, **overrides: Any) -> nn.Module:
    """The model a cpvt checkpoint (or run folder) describes, its weights loaded strictly.

    The one rebuild path: the stored name and options, ``overrides`` on top (test-time options such as
    ``peg_fixed_grid``). A file with no model description (plain weights) or weights that do not fit are a
    :class:`~cpvt.checkpoint.CheckpointError` naming the file and the tensors.
    """
    if not isinstance(ckpt, Checkpoint):
        ckpt = load_checkpoint(resolve_checkpoint(ckpt))
    name = ckpt.meta.get("model_name")
    if name is None:
        raise CheckpointError(f"{ckpt.path} has no model description (not a cpvt checkpoint): "
                              "use create_model(name, pretrained=...) with the model it was saved from")
    return create_model(name, pretrained=ckpt, **overrides)
