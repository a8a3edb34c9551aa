"""``pretrained_cfg``: what a model expects of its input, carried on the model itself.

timm keeps a ``pretrained_cfg`` dict on every model (input size, mean, std,
crop_pct, interpolation, number of classes) so that whoever runs the model does
not have to know the recipe it was trained with. cpvt does the same, and adds
the token grid the model was trained on, which is what a test-time position fix
(``peg_fixed_grid``, ...) compares a new input against.

Every model from :func:`~cpvt.models.create_model` carries one:

* a random model gets :func:`default_pretrained_cfg` (its registered size,
  ImageNet's normalisation, DeiT's evaluation crop);
* a trained model gets the one its run stored in the checkpoint (written by
  :func:`~cpvt.checkpoint.save_checkpoint`, set by the training engine from the
  run's config with :func:`pretrained_cfg_from_config`); a checkpoint written
  before this field existed gets it rebuilt from its stored run config.

Evaluation, prediction, export and the analyses read preprocessing from here,
never from recipe defaults.
"""

from __future__ import annotations

from typing import Any

from torch import nn

from .base import pair

# ImageNet's per-channel mean and standard deviation (0-1 pixel scale): the normalisation every recipe and
# checkpoint here uses unless its config says otherwise.
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
DEFAULT_CROP_PCT = 0.875  # DeiT's evaluation: resize to size / 0.875, centre-crop size
# Resizing in cpvt's image pipeline (cpvt.data.folder.resize_and_crop) is bicubic, as in DeiT's evaluation.
DEFAULT_INTERPOLATION = "bicubic"

KEYS = ("input_size", "mean", "std", "crop_pct", "interpolation", "num_classes", "grid")


def make_pretrained_cfg(model: nn.Module, img_size: int | tuple[int, int] | None = None,
                        mean: tuple[float, ...] = IMAGENET_MEAN, std: tuple[float, ...] = IMAGENET_STD,
                        crop_pct: float = DEFAULT_CROP_PCT,
                        interpolation: str = DEFAULT_INTERPOLATION) -> dict[str, Any]:
    """The ``pretrained_cfg`` of ``model`` trained (or to be run) at ``img_size`` (default: its own size).

    ``input_size`` is ``[channels, height, width]`` and ``grid`` the token grid that size gives (the last
    stage's for a pyramid), both as lists so the dict is JSON as it stands.
    """
    h, w = pair(img_size if img_size is not None else model.img_size)
    gh, gw = model.grid_for((h, w))  # a clear ValueError for a size the model cannot take
    return {"input_size": [int(model.in_chans), h, w], "mean": [float(v) for v in mean],
            "std": [float(v) for v in std], "crop_pct": float(crop_pct), "interpolation": str(interpolation),
            "num_classes": int(model.num_classes), "grid": [gh, gw]}


def default_pretrained_cfg(model: nn.Module) -> dict[str, Any]:
    """A random model's: its registered input size, ImageNet's mean and std, DeiT's evaluation crop."""
    return make_pretrained_cfg(model)


def pretrained_cfg_from_config(model: nn.Module, config: dict[str, Any]) -> dict[str, Any]:
    """The ``pretrained_cfg`` of a run from its resolved training config (``TrainConfig.to_dict()``):
    its ``img_size``, ``mean``, ``std`` and ``crop_pct``, each defaulting as :func:`make_pretrained_cfg`."""
    return make_pretrained_cfg(model, config.get("img_size") or None, tuple(config.get("mean", IMAGENET_MEAN)),
                               tuple(config.get("std", IMAGENET_STD)), float(config.get("crop_pct", DEFAULT_CROP_PCT)))


def check_pretrained_cfg(cfg: Any, source: str) -> dict[str, Any]:
    """``cfg`` if it is a complete ``pretrained_cfg`` (every key of :data:`KEYS`), else a ValueError naming
    ``source`` and what is missing."""
    if not isinstance(cfg, dict) or set(KEYS) - set(cfg):
        missing = sorted(set(KEYS) - set(cfg)) if isinstance(cfg, dict) else KEYS
        raise ValueError(f"{source}: pretrained_cfg lacks {', '.join(missing)}")
    return cfg
