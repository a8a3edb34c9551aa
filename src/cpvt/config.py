"""Training configuration: one dataclass, recipe files for defaults, ``--set`` on top.

Resolution order (later wins): the dataclass defaults (DeiT's ImageNet recipe),
a recipe file (``--recipe deit|cifar10|imagenette|synthetic|demo`` or a path to
a TOML file), the explicit command-line flags, then ``--set key=value``.
Model overrides go through ``--set model.<key>=value`` (for example
``--set model.peg_kernel_size=5``). The resolved config is written next to the
run and stored in every checkpoint, so evaluation rebuilds the exact model.
"""

from __future__ import annotations

import ast
import dataclasses
import json
import tomllib
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any


# ImageNet's per-channel mean and standard deviation (0-1 pixel scale): the normalisation every recipe and
# checkpoint here uses unless its config says otherwise.
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


@dataclass
class TrainConfig:
    """Every knob of a training run. Defaults are DeiT's ImageNet recipe (Touvron et al. 2021), as CPVT (Chu et al. 2023) trains."""

    # what to train, on what
    model: str = "deit_tiny"
    model_args: dict[str, Any] = field(default_factory=dict)  # create_model overrides
    data: str = "synthetic"  # cifar10 | imagenette | synthetic | path to an image folder
    data_root: str | None = None
    cache_dir: str | None = None
    img_size: int | None = None  # None: the model's default
    train_sizes: tuple[int, ...] = ()  # mixed-resolution training: each step draws one of these sizes; (): img_size
    train_split: str = "train"
    val_split: str | None = None  # None: "val" if present, else "test"
    train_limit: int | None = None  # use only the first N training images (quick runs)
    val_limit: int | None = None
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
    crop_pct: float = 0.875  # eval: resize to size / crop_pct, centre-crop size
    # running
    seed: int = 0
    amp: str = "auto"  # auto (bf16 where supported) | bf16 | off
    attention: str = "auto"  # auto | default | math (see benchmarks/attention_backends.py)
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

    def to_dict(self) -> dict[str, Any]:
        return json.loads(json.dumps(dataclasses.asdict(self)))

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "TrainConfig":
        cfg = cls()
        apply_overrides(cfg, d)
        return cfg


RECIPES = ("deit", "cifar10", "imagenette", "synthetic", "demo")


def recipe_path(recipe: str) -> Path:
    """A built-in recipe name or a path to a TOML file."""
    p = Path(recipe)
    if p.suffix == ".toml" or p.exists():
        if not p.exists():
            raise ValueError(f"recipe file {recipe} does not exist")
        return p
    if recipe not in RECIPES:
        raise ValueError(f"unknown recipe {recipe!r}; built-in: {', '.join(RECIPES)} (or a path to a .toml file)")
    return Path(str(resources.files("cpvt.recipes") / f"{recipe}.toml"))


def load_recipe(recipe: str) -> dict[str, Any]:
    with open(recipe_path(recipe), "rb") as f:
        return tomllib.load(f)


def _coerce(name: str, value: Any, current: Any, annotation: str) -> Any:
    """Check a value against the field's current type, converting lists to tuples."""
    if value is None:
        if "None" not in annotation:
            raise ValueError(f"config key {name!r} cannot be None")
        return None
    if isinstance(current, tuple) or annotation.startswith("tuple"):
        if not isinstance(value, (list, tuple)):
            raise ValueError(f"config key {name!r} expects a list, got {value!r}")
        return tuple(value)
    if "float" in annotation and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    expected = {"int": int, "float": float, "str": str, "bool": bool}
    base = annotation.split(" |")[0]
    if base in expected and not isinstance(value, expected[base]) or (base == "int" and isinstance(value, bool)):
        raise ValueError(f"config key {name!r} expects {annotation}, got {value!r}")
    return value


def apply_overrides(cfg: TrainConfig, values: dict[str, Any]) -> TrainConfig:
    """Set fields from a flat dict; ``model.<key>`` goes into ``model_args``.

    Unknown keys raise a ValueError that lists the valid ones.
    """
    fields = {f.name: f for f in dataclasses.fields(cfg)}
    for key, value in values.items():
        if key.startswith("model."):
            cfg.model_args[key[len("model.") :]] = value
        elif key == "model_args":
            cfg.model_args.update(value)
        elif key in fields:
            annotation = str(fields[key].type)
            setattr(cfg, key, _coerce(key, value, getattr(cfg, key), annotation))
        else:
            raise ValueError(
                f"unknown config key {key!r}; valid keys: {', '.join(sorted(fields))}, or model.<override>"
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


def _pairs(sets: list[str | Override] | None) -> list[Override]:
    return [p if isinstance(p, tuple) else parse_set(p) for p in sets or []]


def model_options(sets: list[str | Override] | None, command: str) -> dict[str, Any]:
    """The model options of ``--set model.KEY=VALUE`` pairs, for commands that take nothing else
    (``info``, ``eval``, ``convert``, ``analyze``); any other key is a ValueError naming the syntax."""
    options = {}
    for key, value in _pairs(sets):
        if not key.startswith("model.") or key == "model.":
            raise ValueError(f"{command} --set takes model options only (model.<key>=<value>), got {key!r}")
        options[key[len("model."):]] = value
    return options


def resolve_config(recipe: str | None = None, flags: dict[str, Any] | None = None,
                   sets: list[str | Override] | None = None) -> TrainConfig:
    """Defaults <- recipe <- flags (None values ignored) <- ``--set`` pairs (``"key=value"`` or parsed)."""
    cfg = TrainConfig()
    if recipe:
        apply_overrides(cfg, load_recipe(recipe))
    apply_overrides(cfg, {k: v for k, v in (flags or {}).items() if v is not None})
    apply_overrides(cfg, dict(_pairs(sets)))
    return cfg
