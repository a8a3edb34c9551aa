"""Checkpoints: one safetensors file each, written atomically, loaded without running code.

A checkpoint holds the model weights under their own names (timm's), and, for
a resumable ``last`` checkpoint, the optimizer (``optimizer/...``), EMA
(``ema/...``) and RNG (``rng/...``) tensors; everything else (the resolved
config, model name and overrides, class names, scheduler state, progress, the
optimizer's non-tensor state) is JSON in the safetensors metadata. Nothing is
pickled, so loading can never execute code.

Files are written to a temporary name in the same folder and renamed over the
old one (``os.replace``), so a crash at any moment leaves either the old or the
new checkpoint, never half of one.
"""

from __future__ import annotations

import json
import pickle
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file
from torch import Tensor, nn

from .fileio import atomic_path

FORMAT = "cpvt-checkpoint-1"


class CheckpointError(ValueError):
    """A checkpoint that cannot or must not be loaded."""


def _atomic_save(tensors: dict[str, Tensor], metadata: dict[str, str], path: Path) -> None:
    with atomic_path(path) as tmp:
        save_file({k: v.detach().contiguous().cpu() for k, v in tensors.items()}, str(tmp), metadata=metadata)


def remove_stale_temporaries(folder: str | Path) -> list[Path]:
    """Delete temporary files a killed writer left behind (never a finished checkpoint)."""
    stale = list(Path(folder).glob(".*.safetensors.*.tmp"))
    for p in stale:
        p.unlink(missing_ok=True)
    return stale


def _flatten_optimizer(opt: torch.optim.Optimizer) -> tuple[dict[str, Tensor], dict[str, Any]]:
    sd = opt.state_dict()
    tensors, extra = {}, {}
    for idx, state in sd["state"].items():
        for name, value in state.items():
            if isinstance(value, Tensor):
                tensors[f"optimizer/{idx}/{name}"] = value
            else:
                extra.setdefault(str(idx), {})[name] = value
    return tensors, {"param_groups": sd["param_groups"], "extra": extra}


def _unflatten_optimizer(tensors: dict[str, Tensor], meta: dict[str, Any]) -> dict[str, Any]:
    state: dict[int, dict[str, Any]] = {}
    for key, value in tensors.items():
        _, idx, name = key.split("/", 2)
        state.setdefault(int(idx), {})[name] = value
    for idx, values in meta["extra"].items():
        state.setdefault(int(idx), {}).update(values)
    return {"state": state, "param_groups": meta["param_groups"]}


def save_checkpoint(
    path: str | Path,
    model: nn.Module,
    *,
    config: dict[str, Any],
    classes: list[str],
    optimizer: torch.optim.Optimizer | None = None,
    scheduler: Any = None,
    ema: nn.Module | None = None,
    progress: dict[str, Any] | None = None,
) -> None:
    """Write a checkpoint. Without optimizer it is weights-only (``best``, exports)."""
    tensors: dict[str, Tensor] = dict(model.state_dict())
    meta: dict[str, Any] = {
        "format": FORMAT,
        "model_name": model.model_name,
        "model_args": model.model_args,
        "config": config,
        "classes": classes,
        "progress": progress or {},
    }
    if optimizer is not None:
        opt_tensors, meta["optimizer"] = _flatten_optimizer(optimizer)
        tensors.update(opt_tensors)
        tensors["rng/cpu"] = torch.get_rng_state()
        if torch.cuda.is_available():
            for i, s in enumerate(torch.cuda.get_rng_state_all()):
                tensors[f"rng/cuda/{i}"] = s
    if scheduler is not None:
        meta["scheduler"] = scheduler.state_dict()
    if ema is not None:
        tensors.update({f"ema/{k}": v for k, v in ema.state_dict().items()})
    _atomic_save(tensors, {k: json.dumps(v) for k, v in meta.items()}, Path(path))


class Checkpoint:
    """A loaded checkpoint: ``weights`` (model state dict), ``meta`` and the rest."""

    def __init__(self, tensors: dict[str, Tensor], meta: dict[str, Any], path: Path):
        self.path, self.meta = path, meta
        self.weights = {k: v for k, v in tensors.items() if "/" not in k}
        self.tensors = tensors

    @property
    def config(self) -> dict[str, Any]:
        return self.meta.get("config", {})

    @property
    def classes(self) -> list[str]:
        return self.meta.get("classes", [])

    @property
    def progress(self) -> dict[str, Any]:
        return self.meta.get("progress", {})

    def build_model(self, **overrides: Any) -> nn.Module:
        """Rebuild the model from the stored name and overrides and load the weights."""
        from .models import create_model

        if "model_name" not in self.meta:
            raise CheckpointError(f"{self.path} has no model description (not a cpvt checkpoint)")
        model = create_model(self.meta["model_name"], **{**self.meta["model_args"], **overrides})
        model.load_state_dict(self.weights, strict=True)
        return model

    def restore_training(self, optimizer, scheduler=None, ema: nn.Module | None = None) -> None:
        """Put optimizer, scheduler, EMA and RNG state back (for ``--resume``)."""
        if "optimizer" not in self.meta:
            raise CheckpointError(f"{self.path} holds weights only; it cannot resume training")
        opt_tensors = {k: v for k, v in self.tensors.items() if k.startswith("optimizer/")}
        optimizer.load_state_dict(_unflatten_optimizer(opt_tensors, self.meta["optimizer"]))
        if scheduler is not None and "scheduler" in self.meta:
            scheduler.load_state_dict(self.meta["scheduler"])
        if ema is not None:
            ema.load_state_dict({k[4:]: v for k, v in self.tensors.items() if k.startswith("ema/")})
        torch.set_rng_state(self.tensors["rng/cpu"])
        cuda = [self.tensors[k] for k in sorted(self.tensors) if k.startswith("rng/cuda/")]
        if cuda and torch.cuda.is_available():
            torch.cuda.set_rng_state_all(cuda[: torch.cuda.device_count()])


def resolve_checkpoint(path: str | Path) -> Path:
    """A run folder (its ``best``, else ``last`` checkpoint) or a checkpoint file."""
    p = Path(path)
    if p.is_dir():
        for name in ("best.safetensors", "last.safetensors"):
            if (p / name).exists():
                return p / name
        raise CheckpointError(f"{p} holds no best.safetensors or last.safetensors: is it a cpvt run folder?")
    if not p.exists():
        raise CheckpointError(f"{p} does not exist (expected a run folder or a checkpoint file)")
    return p


def load_checkpoint(path: str | Path) -> Checkpoint:
    """Load a cpvt checkpoint (safetensors) or a plain weights file (``.pt``/``.pth``
    state dict, loaded with ``weights_only=True``). Pickles that need code are refused."""
    path = Path(path)
    if not path.exists():
        raise CheckpointError(f"checkpoint {path} does not exist")
    if path.suffix == ".safetensors":
        try:
            with safe_open(str(path), framework="pt") as f:
                tensors = {k: f.get_tensor(k) for k in f.keys()}
                raw = f.metadata() or {}
        except (SafetensorError, OSError, ValueError) as e:
            raise CheckpointError(f"{path} is not a readable safetensors file ({e})") from None
        meta = {k: json.loads(v) for k, v in raw.items()} if raw.get("format") == json.dumps(FORMAT) else {}
        return Checkpoint(tensors, meta, path)
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        raise CheckpointError(
            f"refusing to load {path}: it is a pickle that would run code to load "
            f"({str(e).splitlines()[0]}). Only safetensors files or plain tensor state dicts are accepted."
        ) from None
    except Exception as e:  # noqa: BLE001 - anything else means unreadable
        raise CheckpointError(f"{path} is not a readable checkpoint ({type(e).__name__}: {e})") from None
    if isinstance(obj, dict) and isinstance(obj.get("model"), dict):
        obj = obj["model"]  # DeiT / timm training checkpoints wrap the weights
    if not isinstance(obj, dict) or not all(isinstance(v, Tensor) for v in obj.values()):
        raise CheckpointError(f"{path} does not hold a state dict of tensors")
    return Checkpoint(obj, {}, path)
