"""Training configuration: one dataclass, recipe files for defaults, ``--set`` on top.

Resolution order (later wins): the dataclass defaults (DeiT's ImageNet recipe),
a recipe file (``--recipe deit|cifar10|imagenette|synthetic|demo|small|camvid`` or a path to
a TOML file; without one, ``cpvt train`` picks it from ``--data``, for an image folder
from its images, :func:`folder_defaults`), the explicit command-line flags, then
``--set key=value``. :meth:`TrainConfig.validate` checks the result against :data:`RULES`.
Model overrides go through ``--set model.<key>=value`` (for example
``--set model.peg_kernel_size=5``). The resolved config is written next to the
run and stored in every checkpoint, so evaluation rebuilds the exact model.
"""

from __future__ import annotations

import ast
import dataclasses
import json
import math
import tomllib
from collections.abc import Callable
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

from ..models.pretrained import DEFAULT_CROP_PCT, IMAGENET_MEAN, IMAGENET_STD
from ..models.segmentation import TASKS


@dataclass
class TrainConfig:
    """Every knob of a training run. Defaults are DeiT's ImageNet recipe (Touvron et al. 2021), as CPVT (Chu et al. 2023) trains."""

    # what to train, on what
    model: str = "deit_tiny"
    model_args: dict[str, Any] = field(default_factory=dict)  # create_model overrides
    data: str = "synthetic"  # cifar10 | imagenette | synthetic | camvid | path to an image or mask folder
    data_args: dict[str, Any] = field(default_factory=dict)  # the data source's options (synthetic: shape_colors, ...)
    data_root: str | None = None
    cache_dir: str | None = None
    # auto: by the data (frames with label maps, a SegSplit source: segmentation; else classification) |
    # classification | segmentation (cpvt.train.tasks; a task that does not fit the data is an error)
    task: str = "auto"
    # the training input: classification N (square); segmentation N or [height, width], the size of the
    # random crops taken from the (scale-jittered) frames. None: the model's default
    img_size: int | tuple[int, int] | None = None
    train_sizes: tuple[int, ...] = ()  # mixed-resolution training: each step draws one of these sizes; (): img_size
    train_split: str = "train"
    val_split: str | None = None  # None: "val" if present, else "test"
    train_limit: int | None = None  # use only the first N training images (quick runs)
    val_limit: int | None = None
    # segmentation only: frames (and label maps, nearest) decoded at [height, width]; None: native size (all
    # frames of a split must share it). Validation runs on these whole frames.
    frame_size: tuple[int, int] | None = None
    # schedule and optimiser (AdamW, cosine with linear warm-up, per step)
    epochs: int = 300
    batch_size: int = 1024  # global, over all processes
    lr: float = 5e-4  # for a batch of 512; scaled linearly by batch_size / 512
    warmup_lr: float = 1e-6
    min_lr: float = 1e-5
    warmup_epochs: float = 5.0
    weight_decay: float = 0.05
    betas: tuple[float, float] = (0.9, 0.999)
    clip_grad: float | None = 5.0  # max global grad norm (Twins); None: off
    # regularisation
    label_smoothing: float = 0.1
    mixup: float = 0.8  # Beta(alpha, alpha); 0: off
    cutmix: float = 1.0  # Beta(alpha, alpha); 0: off
    mix_prob: float = 1.0  # probability a batch is mixed at all
    mix_switch_prob: float = 0.5  # probability of cutmix when both are on
    drop_path: float = 0.1
    ema: bool = False
    ema_decay: float = 0.99996
    # augmentation (batched on the training device, kornia)
    storage_scale: float = 1.143  # training images are stored at img_size * this (then random-cropped)
    crop: str = "rrc"  # rrc (RandomResizedCrop) | pad (pad-and-crop) | none
    rrc_scale: tuple[float, float] = (0.08, 1.0)
    pad: int = 4  # for crop = "pad"
    hflip: float = 0.5
    randaug_n: int = 2  # RandAugment ops per image; 0: off
    randaug_m: int = 9  # magnitude (0-30, as in timm's "rand-m9-mstd0.5")
    reprob: float = 0.25  # random erasing probability
    mean: tuple[float, float, float] = IMAGENET_MEAN
    std: tuple[float, float, float] = IMAGENET_STD
    crop_pct: float = DEFAULT_CROP_PCT  # eval: resize to size / crop_pct, centre-crop size
    # segmentation only (cpvt.train.augment_masks.JointAugment, with hflip above): the random scale range of a
    # frame before its img_size crop; crop, rrc_*, pad, randaug_*, reprob, mixup, cutmix, label_smoothing are
    # classification's
    seg_scale: tuple[float, float] = (0.5, 2.0)
    # running
    seed: int = 0
    amp: str = "auto"  # auto (bf16 where supported) | bf16 | off
    attention: str = "auto"  # auto | default | math | math-short (cpvt.train.engine.attention_context)
    compile: bool = False  # torch.compile the model for training and evaluation (an execution detail, like workers)
    device: str = "auto"
    eval_every: int = 1  # epochs
    ckpt_every_steps: int = 0  # also write `last` every N steps (0: only at epoch ends); --save-every-steps N
    eval_batch_size: int = 256
    deterministic: bool = False
    workers: int | None = None  # image decoding processes
    out: str = "runs/latest"

    def scaled_lr(self) -> float:
        return self.lr * self.batch_size / 512

    def validate(self) -> TrainConfig:
        """Check every value against :data:`RULES` (and every number for NaN / infinity); one ValueError
        naming each bad key, its value and what it must be. Returns the config.

        :func:`resolve_config` and :func:`cpvt.train.engine.train` call it, so a bad ``--set``, flag, recipe or
        budget value stops before any data is decoded, whichever way it came in.
        """
        problems = []
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            numbers = value if isinstance(value, (tuple, list)) else (value,)
            if any(isinstance(x, float) and not math.isfinite(x) for x in numbers):
                problems.append(f"{f.name} must be a finite number, got {value!r}")
                continue
            rule = RULES.get(f.name)
            if rule is None or value is None:
                continue
            check, must = rule
            try:
                ok = bool(check(value))
            except (TypeError, ValueError):
                ok = False
            if not ok:
                problems.append(f"{f.name} must be {must}, got {value!r}")
        if problems:
            raise ValueError("invalid config: " + "; ".join(problems))
        return self

    def to_dict(self) -> dict[str, Any]:
        return json.loads(json.dumps(dataclasses.asdict(self)))

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> TrainConfig:
        cfg = cls()
        apply_overrides(cfg, d)
        return cfg


def _numbers(value: Any, n: int, check: Callable[[float], bool]) -> bool:
    """``value`` is ``n`` real numbers (not bools), each passing ``check``."""
    return (isinstance(value, (tuple, list)) and len(value) == n
            and all(isinstance(x, (int, float)) and not isinstance(x, bool) and check(x) for x in value))


def _in(lo: float, hi: float, closed_hi: bool = True) -> Callable[[float], bool]:
    return lambda v: lo <= v <= hi if closed_hi else lo <= v < hi


_count = (lambda v: v >= 1, "a positive integer")


def _pixels(v: Any) -> bool:
    """A positive whole number of pixels (not a bool)."""
    return isinstance(v, int) and not isinstance(v, bool) and v >= 1


_hw = (lambda v: _numbers(v, 2, _pixels), "[height, width], two positive integers")
_fraction = (_in(0, 1), "in [0, 1]")
#: What each value of :class:`TrainConfig` must be (types are checked when a value is set, see
#: :func:`apply_overrides`; None passes wherever the type allows it): the one place ``validate`` reads.
RULES: dict[str, tuple[Callable[[Any], bool], str]] = {
    "model": (bool, "a model name"),
    "data": (bool, "a dataset name or folder"),
    "task": (lambda v: v in ("auto", *TASKS), f"auto or one of {', '.join(TASKS)}"),
    "img_size": (lambda v: _pixels(v) or _hw[0](v), "a positive integer, or [height, width] (segmentation)"),
    "frame_size": _hw,
    "train_sizes": (lambda v: all(isinstance(s, int) and not isinstance(s, bool) and s >= 1 for s in v),
                    "positive integers (px)"),
    "train_limit": _count,
    "val_limit": _count,
    "epochs": _count,
    "batch_size": _count,
    "lr": (lambda v: v > 0, "positive"),
    "warmup_lr": (lambda v: v >= 0, "at least 0"),
    "min_lr": (lambda v: v >= 0, "at least 0"),
    "warmup_epochs": (lambda v: v >= 0, "at least 0"),
    "weight_decay": (lambda v: v >= 0, "at least 0"),
    "betas": (lambda v: _numbers(v, 2, _in(0, 1, closed_hi=False)), "two numbers in [0, 1)"),
    "clip_grad": (lambda v: v >= 0, "at least 0 (0 or None: off)"),
    "label_smoothing": (_in(0, 1, closed_hi=False), "in [0, 1)"),
    "mixup": (lambda v: v >= 0, "at least 0 (0: off)"),
    "cutmix": (lambda v: v >= 0, "at least 0 (0: off)"),
    "mix_prob": _fraction,
    "mix_switch_prob": _fraction,
    "drop_path": (_in(0, 1, closed_hi=False), "in [0, 1)"),
    "ema_decay": _fraction,
    "storage_scale": (lambda v: v > 0, "positive"),
    "crop": (lambda v: v in ("rrc", "pad", "none"), "rrc, pad or none"),
    "rrc_scale": (lambda v: _numbers(v, 2, _in(0, 1)) and 0 < v[0] <= v[1], "two numbers 0 < min <= max <= 1"),
    "pad": (lambda v: v >= 0, "at least 0"),
    "hflip": _fraction,
    "randaug_n": (lambda v: v >= 0, "at least 0 (0: off)"),
    "randaug_m": (_in(0, 30), "in [0, 30]"),
    "reprob": _fraction,
    "mean": (lambda v: _numbers(v, 3, lambda x: True), "three numbers (R, G, B)"),
    "std": (lambda v: _numbers(v, 3, lambda x: x > 0), "three positive numbers (R, G, B)"),
    "crop_pct": (lambda v: 0 < v <= 1, "in (0, 1]"),
    "seg_scale": (lambda v: _numbers(v, 2, lambda x: x > 0) and v[0] <= v[1], "two numbers 0 < min <= max"),
    "seed": (lambda v: v >= 0, "at least 0"),
    "amp": (lambda v: v in ("auto", "bf16", "off"), "auto, bf16 or off"),
    "attention": (lambda v: v in ("auto", "default", "math", "math-short"), "auto, default, math or math-short"),
    "eval_every": _count,
    "ckpt_every_steps": (lambda v: v >= 0, "at least 0 (0: only at epoch ends)"),
    "eval_batch_size": _count,
    "workers": (lambda v: v >= 0, "at least 0"),
    "out": (bool, "a folder"),
}


RECIPES = ("deit", "cifar10", "imagenette", "synthetic", "demo", "small", "camvid")


def recipe_path(recipe: str) -> Path:
    """A built-in recipe name or a path to a TOML file."""
    p = Path(recipe)
    if p.suffix == ".toml" or p.exists():
        if not p.exists():
            raise ValueError(f"recipe file {recipe} does not exist")
        return p
    if recipe not in RECIPES:
        raise ValueError(f"unknown recipe {recipe!r}; built-in: {', '.join(RECIPES)} (or a path to a .toml file)")
    return Path(str(resources.files("cpvt.train.recipes") / f"{recipe}.toml"))


def load_recipe(recipe: str) -> dict[str, Any]:
    with open(recipe_path(recipe), "rb") as f:
        return tomllib.load(f)


def _coerce(name: str, value: Any, current: Any, annotation: str) -> Any:
    """Check a value against the field's current type, converting lists to tuples."""
    if value is None:
        if "None" not in annotation:
            raise ValueError(f"config key {name!r} cannot be None")
        return None
    if isinstance(value, (list, tuple)) and "tuple" in annotation:  # img_size: a number or [height, width]
        return tuple(value)
    if annotation.startswith("tuple"):
        raise ValueError(f"config key {name!r} expects a list, got {value!r}")
    if "float" in annotation and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    expected = {"int": int, "float": float, "str": str, "bool": bool}
    base = annotation.split(" |")[0]
    if base in expected and not isinstance(value, expected[base]) or (base == "int" and isinstance(value, bool)):
        raise ValueError(f"config key {name!r} expects {annotation}, got {value!r}")
    return value


def apply_overrides(cfg: TrainConfig, values: dict[str, Any]) -> TrainConfig:
    """Set fields from a flat dict; ``model.<key>`` goes into ``model_args``, ``data.<key>`` into ``data_args``.

    Unknown keys raise a ValueError that lists the valid ones.
    """
    fields = {f.name: f for f in dataclasses.fields(cfg)}
    for key, value in values.items():
        if key.startswith("model."):
            cfg.model_args[key[len("model.") :]] = value
        elif key == "model_args":
            cfg.model_args.update(value)
        elif key.startswith("data."):
            cfg.data_args[key[len("data.") :]] = value
        elif key == "data_args":
            cfg.data_args.update(value)
        elif key in fields:
            annotation = str(fields[key].type)
            setattr(cfg, key, _coerce(key, value, getattr(cfg, key), annotation))
        else:
            raise ValueError(
                f"unknown config key {key!r}; valid keys: {', '.join(sorted(fields))}, model.<override> or data.<option>"
            )
    return cfg


def parse_set(text: str) -> tuple[str, Any]:
    """``key=value``: the value is a Python literal if it parses as one, else a string.

    The one parser of overrides: every ``--set`` of every command and the ``MODEL:key=value``
    specs of ``cpvt analyze`` go through it.
    """
    if "=" not in text:
        raise ValueError(f"expected key=value, got {text!r}")
    key, raw = text.split("=", 1)
    try:
        value = ast.literal_eval(raw)
    except (ValueError, SyntaxError):
        value = raw
    return key.strip(), value


Override = tuple[str, Any]


def override_pairs(sets: list[str | Override] | None) -> list[Override]:
    """``--set`` overrides as (key, value) pairs, parsing any still given as ``KEY=VALUE`` text."""
    return [p if isinstance(p, tuple) else parse_set(p) for p in sets or []]


def model_options(sets: list[str | Override] | None, command: str) -> dict[str, Any]:
    """The model options of ``--set model.KEY=VALUE`` pairs, for commands that take nothing else
    (``info``, ``eval``, ``convert``, ``analyze``); any other key is a ValueError naming the syntax."""
    options = {}
    for key, value in override_pairs(sets):
        if not key.startswith("model.") or key == "model.":
            raise ValueError(f"{command} --set takes model options only (model.<key>=<value>), got {key!r}")
        options[key[len("model."):]] = value
    return options


#: An image folder whose images' median shorter side is at most this many pixels gets the ``small``
#: recipe from :func:`folder_defaults` (CIFAR-10's 32 px, Tiny ImageNet's 64 px); larger ones DeiT's.
SMALL_IMAGES = 64
#: :func:`folder_defaults` halves the recipe's batch size (not below :data:`MIN_FOLDER_BATCH`) until an
#: epoch of the folder has at least this many optimiser steps.
MIN_FOLDER_STEPS = 8
MIN_FOLDER_BATCH = 16


def folder_defaults(data: str, flags: dict[str, Any] | None = None,
                    sets: list[str | Override] | None = None) -> tuple[str, dict[str, Any], list[str]]:
    """The recipe and settings ``cpvt train --data FOLDER`` picks when no ``--recipe`` is given, from a
    look at the folder (:func:`cpvt.data.folder.survey`), and one note per choice, for the user.

    * the recipe: ``small`` for images of at most :data:`SMALL_IMAGES` px (median shorter side), else ``deit``;
    * ``img_size``: the images' size rounded to whole patches of the model (not above the model's own size
      for larger images), so small images are not blown up to 224 px;
    * ``batch_size``: the recipe's, halved until an epoch has :data:`MIN_FOLDER_STEPS` steps.

    A value given as a flag or ``--set`` is never replaced. Returns (recipe, values, notes); the values go
    under the flags (``resolve_config(recipe, {**values, **flags}, sets)``).
    """
    import torch

    from ..data.folder import survey
    from ..models import create_model

    found = survey(data)
    flags = {k: v for k, v in (flags or {}).items() if v is not None}
    explicit = set(flags) | {k for k, _ in override_pairs(sets)}
    recipe = "small" if 0 < found["side"] <= SMALL_IMAGES else "deit"
    cfg = resolve_config(recipe, flags, sets)
    values: dict[str, Any] = {}
    notes = [f"{data}: {found['images']} training images in {found['classes']} classes, median shorter side "
             f"{found['side']} px: recipe '{recipe}' (images of at most {SMALL_IMAGES} px get 'small'; "
             f"--recipe chooses another)"]
    if "img_size" not in explicit and found["side"]:
        with torch.device("meta"):
            model = create_model(cfg.model, **cfg.model_args)
        patch, own = int(model.patch_size), int(model.img_size[0])
        size = max(patch, round(found["side"] / patch) * patch)
        if recipe != "small":
            size = min(size, own)
        values["img_size"] = size
        notes.append(f"img_size {size}: the images' {found['side']} px in whole {patch} px patches of {cfg.model}"
                     f"{'' if recipe == 'small' else f', at most its own {own} px'} (--img-size chooses another)")
    if "batch_size" not in explicit:
        batch = cfg.batch_size
        while batch // 2 >= MIN_FOLDER_BATCH and found["images"] // batch < MIN_FOLDER_STEPS:
            batch //= 2
        if batch != cfg.batch_size:
            values["batch_size"] = batch
            notes.append(f"batch_size {batch} instead of the recipe's {cfg.batch_size}, so that an epoch of "
                         f"{found['images']} images has {found['images'] // batch} steps (--batch-size chooses "
                         f"another; lr is per 512 images and scales with it)")
    return recipe, values, notes


def mask_folder_defaults(data: str, flags: dict[str, Any] | None = None,
                         sets: list[str | Override] | None = None) -> tuple[str, dict[str, Any], list[str]]:
    """What ``cpvt train --data FOLDER`` picks for a mask folder (``images/`` and ``masks/``, see
    :func:`cpvt.data.named.is_mask_folder`) when no ``--recipe`` is given: the ``camvid`` (segmentation)
    recipe, with ``frame_size`` and ``img_size`` (each unless given) the first training frame's size in whole
    patches of the model (rather than CamVid's 120x160). Returns (recipe, values, notes), as :func:`folder_defaults`; a value given
    as a flag or ``--set`` is never replaced."""
    import torch
    from PIL import Image

    from ..data.folder import image_files
    from ..models import create_model

    flags = {k: v for k, v in (flags or {}).items() if v is not None}
    explicit = set(flags) | {k for k, _ in override_pairs(sets)}
    recipe = "camvid"
    notes = [f"{data}: frames with label maps (images/ and masks/): recipe '{recipe}', task segmentation "
             f"(--recipe chooses another)"]
    values: dict[str, Any] = {}
    frames = Path(data).expanduser() / "images" / "train"
    first = image_files(frames, []) if frames.is_dir() else []
    keys = [k for k in ("frame_size", "img_size") if k not in explicit]
    if first and keys:
        cfg = resolve_config(recipe, flags, sets)
        with Image.open(first[0]) as im:
            w, h = im.size
        with torch.device("meta"):
            patch = int(create_model(cfg.model, **cfg.model_args).patch_size)
        size = [max(patch, h // patch * patch), max(patch, w // patch * patch)]
        values.update({k: size for k in keys})
        notes.append(f"{' and '.join(keys)} {size[0]}x{size[1]}: the first frame's {h}x{w} px in whole {patch} px "
                     f"patches of {cfg.model} (--img-size HxW or --set frame_size=[H, W] chooses another)")
    return recipe, values, notes


def resolve_config(recipe: str | None = None, flags: dict[str, Any] | None = None,
                   sets: list[str | Override] | None = None) -> TrainConfig:
    """Defaults <- recipe <- flags (None values ignored) <- ``--set`` pairs (``"key=value"`` or parsed)."""
    cfg = TrainConfig()
    if recipe:
        apply_overrides(cfg, load_recipe(recipe))
    apply_overrides(cfg, {k: v for k, v in (flags or {}).items() if v is not None})
    apply_overrides(cfg, dict(override_pairs(sets)))
    return cfg.validate()
