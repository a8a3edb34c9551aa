"""Checkpoints: one safetensors file each, written atomically, loaded without running code.

A checkpoint holds the model weights under their own names (timm's), and, for
a resumable ``last`` checkpoint, the optimizer (``optimizer/...``), EMA
(``ema/...``) and RNG (``rng/...``) tensors; everything else (the resolved
config, model name and overrides, class names, scheduler state, progress, the
optimizer's non-tensor state) is JSON in the safetensors metadata. Nothing is
pickled, so loading can never execute code.

Files are written to a temporary name in the same folder and renamed over the
old one (``os.replace``), so a crash at any moment leaves either the old or the
new checkpoint, never half of one. A write that fails (disk full, quota, I/O
error) raises :class:`~cpvt.utils.errors.CheckpointWriteError` naming the file and the
reason, leaves the old file untouched and removes the temporary.

Integrity (format 2): the metadata holds ``sha256``, the SHA-256 of the whole
file as written with those 64 hex digits read as ``0``s (the digest is patched
into its placeholder after writing, so offsets do not move). Loading checks it
before anything is used, so a changed byte anywhere (tensor data, header,
padding), a truncation or an insertion is a :class:`CheckpointError`, never
silently different weights. Format 1 files (no digest) still load; a file from a
newer format is refused with a message that says so.

The Hugging Face Hub layout (timm's ``save_for_hf``): a folder holding
``config.json`` (``architecture``: the model name, ``model_args``,
``pretrained_cfg``, ``num_classes`` and, when known, ``label_names``) and
``model.safetensors`` (the weights alone, with safetensors' usual ``{"format":
"pt"}`` metadata and the same sealed ``sha256`` as above). :func:`save_hub_folder`
writes one (``cpvt.save_pretrained`` from a model or a run);
:func:`resolve_checkpoint` and :func:`load_checkpoint` read it like any other
checkpoint, so ``create_model(name, pretrained=FOLDER)``, ``load_run``, ``cpvt
eval`` and ``cpvt predict`` take such a folder as they take a run. A string
that is no local path but reads as a Hub id (``owner/name``) is fetched with
``huggingface_hub.snapshot_download`` (optional: ``pip install 'cpvt[hub]'``).
A folder whose ``config.json`` another library wrote (timm's) loads as plain
weights.
"""

from __future__ import annotations

import hashlib
import json
import pickle
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file
from torch import Tensor, nn

from .utils.errors import CheckpointWriteError, describe_os_error
from .utils.fileio import atomic_path, write_text_atomic
from .utils.version import __version__

FORMAT_VERSION = 2  # 2: whole-file sha256 in the metadata; 1: none
FORMAT = f"cpvt-checkpoint-{FORMAT_VERSION}"
DIGEST_KEY = "sha256"
_PLACEHOLDER = b"0" * 64
_DIGEST = re.compile(rb'"sha256"\s*:\s*"([0-9a-f]{64})"')  # the metadata entry in the header's JSON
_FORMAT = re.compile(r'"cpvt-checkpoint-(\d+)"')
_CPVT_KEYS = {"model_name", "model_args", "config", "classes", "progress", "optimizer", "scheduler", "pretrained_cfg"}  # besides format
HUB_CONFIG, HUB_WEIGHTS = "config.json", "model.safetensors"  # the Hugging Face Hub layout (module docstring)
HUB_LIBRARY = "cpvt"  # config.json's "library_name" in a folder cpvt wrote
# a Hub repository id, owner/name, as a string that is no local path (a checkpoint file's name is not one)
_HUB_ID = re.compile(r"[A-Za-z0-9][\w.-]*/[A-Za-z0-9][\w.-]*")
_FILE_SUFFIXES = (".safetensors", ".pt", ".pth", ".bin", ".json")


class CheckpointError(ValueError):
    """A checkpoint that cannot or must not be loaded."""


def _digest_span(path: str | Path) -> tuple[int, int, str] | None:
    """Where the 64 hex digits of the ``sha256`` metadata entry sit in the file, and the digits; None if the
    header holds no such entry (or not exactly one)."""
    with open(path, "rb") as f:
        prefix = f.read(8)
        size = f.seek(0, 2)
        if len(prefix) < 8:
            return None
        n = int.from_bytes(prefix, "little")
        if n > size - 8:
            return None
        f.seek(8)
        found = list(_DIGEST.finditer(f.read(n)))
    if len(found) != 1:
        return None
    return 8 + found[0].start(1), 8 + found[0].end(1), found[0][1].decode()


def _file_digest(path: str | Path, span: tuple[int, int, str]) -> str:
    """SHA-256 of the file with the bytes in ``span`` (the digest's own place) read as ``0``s."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        head = bytearray(f.read(span[1]))
        head[span[0]:span[1]] = _PLACEHOLDER
        h.update(head)
        while chunk := f.read(1 << 22):
            h.update(chunk)
    return h.hexdigest()


def _seal(path: Path) -> None:
    """Patch the file's digest into its placeholder (same length, so nothing moves)."""
    span = _digest_span(path)
    if span is None:
        raise RuntimeError(f"{path}: the checkpoint digest placeholder was not found after writing")
    digest = _file_digest(path, span)
    with open(path, "r+b") as f:
        f.seek(span[0])
        f.write(digest.encode())


def _write_error(e: BaseException) -> tuple[int | None, str] | None:
    """(errno, description) of a failed write: an OSError, or safetensors' error wrapping one; None for others."""
    if isinstance(e, OSError):
        return e.errno, e.strerror or str(e)
    if isinstance(e, SafetensorError):
        m = re.search(r"I/O error: (.*?) \(os error (\d+)\)", str(e))
        if m:
            return int(m[2]), m[1]
    return None


def _atomic_save(tensors: dict[str, Tensor], metadata: dict[str, str], path: Path) -> None:
    existed = path.exists()
    try:
        with atomic_path(path) as tmp:
            save_file({k: v.detach().contiguous().cpu() for k, v in tensors.items()}, str(tmp),
                      metadata={**metadata, DIGEST_KEY: _PLACEHOLDER.decode()})
            _seal(tmp)
    except (OSError, SafetensorError) as e:
        found = _write_error(e)
        if found is None:
            raise
        code, what = found
        reason = describe_os_error(code, what)
        kept = (f"the previous {path.name} is intact" if existed and path.exists()
                else f"there was no earlier {path.name}")
        raise CheckpointWriteError(f"could not write checkpoint {path}: {what}{f' ({reason})' if reason else ''}; "
                                   f"{kept} and the partial file was removed", code) from e


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
    rng_states: Sequence[dict[str, Tensor]] | None = None,
) -> None:
    """Write a checkpoint. Without optimizer it is weights-only (``best``, exports).

    ``rng_states``: under DDP, every process's RNG state (``{"cpu": ..., "cuda": ...}``, rank 0 first), so each
    rank resumes its own random streams; without it, this process's state is saved (one process).
    """
    tensors: dict[str, Tensor] = dict(model.state_dict())
    meta: dict[str, Any] = {
        "format": FORMAT,
        "model_name": model.model_name,
        "model_args": model.model_args,
        "config": config,
        "classes": classes,
        "progress": progress or {},
    }
    if getattr(model, "pretrained_cfg", None) is not None:  # what the model expects of its input (cpvt.models.pretrained)
        meta["pretrained_cfg"] = model.pretrained_cfg
    if optimizer is not None:
        opt_tensors, meta["optimizer"] = _flatten_optimizer(optimizer)
        tensors.update(opt_tensors)
        tensors["rng/cpu"] = torch.get_rng_state() if rng_states is None else rng_states[0]["cpu"]
        if torch.cuda.is_available():
            for i, s in enumerate(torch.cuda.get_rng_state_all()):
                tensors[f"rng/cuda/{i}"] = s
        for rank, state in enumerate(rng_states or ()):
            if rank:  # rank 0's are the ones above
                tensors.update({f"rng/rank{rank}/{kind}": t for kind, t in state.items()})
    if scheduler is not None:
        meta["scheduler"] = scheduler.state_dict()
    if ema is not None:
        tensors.update({f"ema/{k}": v for k, v in ema.state_dict().items()})
    _atomic_save(tensors, {k: json.dumps(v) for k, v in meta.items()}, Path(path))


class Checkpoint:
    """A loaded checkpoint: ``weights`` (model state dict), ``meta`` and the rest.

    Storage only: :func:`cpvt.models.model_from_checkpoint` rebuilds the model it describes."""

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

    def restore_training(self, optimizer, scheduler=None, ema: nn.Module | None = None, rank: int = 0,
                         device: torch.device | None = None) -> bool:
        """Put optimizer, scheduler, EMA and RNG state back (for ``--resume``).

        ``rank``: the DDP process restoring; it gets its own RNG streams (``device``: its CUDA device).
        Returns False when the checkpoint holds no RNG state for ``rank`` (one written by fewer
        processes, or before per-rank states were saved): that rank keeps its fresh streams, so the
        resumed run is not bit-identical to an uninterrupted one.
        """
        if "optimizer" not in self.meta:
            raise CheckpointError(f"{self.path} holds weights only; it cannot resume training")
        opt_tensors = {k: v for k, v in self.tensors.items() if k.startswith("optimizer/")}
        optimizer.load_state_dict(_unflatten_optimizer(opt_tensors, self.meta["optimizer"]))
        if scheduler is not None and "scheduler" in self.meta:
            scheduler.load_state_dict(self.meta["scheduler"])
        if ema is not None:
            ema.load_state_dict({k[4:]: v for k, v in self.tensors.items() if k.startswith("ema/")})
        if rank:
            if f"rng/rank{rank}/cpu" not in self.tensors:
                return False
            torch.set_rng_state(self.tensors[f"rng/rank{rank}/cpu"])
            if f"rng/rank{rank}/cuda" in self.tensors and device is not None and device.type == "cuda":
                torch.cuda.set_rng_state(self.tensors[f"rng/rank{rank}/cuda"], device)
            return True
        torch.set_rng_state(self.tensors["rng/cpu"])
        cuda = []
        while f"rng/cuda/{len(cuda)}" in self.tensors:  # by index: rng/cuda/10 sorts before rng/cuda/2
            cuda.append(self.tensors[f"rng/cuda/{len(cuda)}"])
        if cuda and torch.cuda.is_available():
            torch.cuda.set_rng_state_all(cuda[: torch.cuda.device_count()])
        return True


def resolve_checkpoint(path: str | Path) -> Path:
    """A run folder (its ``best``, else ``last`` checkpoint), a Hub layout folder (the folder itself), a
    checkpoint file, or a string that is no local path but a Hugging Face Hub id (``owner/name``: the folder
    :func:`hub_snapshot` downloads)."""
    p = Path(path)
    if p.is_dir():
        for name in ("best.safetensors", "last.safetensors"):
            if (p / name).exists():
                return p / name
        if _is_hub_folder(p):
            return p
        raise CheckpointError(f"{p} holds no best.safetensors or last.safetensors (a cpvt run folder) and no "
                              f"{HUB_CONFIG} or {HUB_WEIGHTS} (a Hugging Face Hub layout folder)")
    if not p.exists():
        if isinstance(path, str) and is_hub_id(path):
            return hub_snapshot(path)
        raise CheckpointError(f"{p} does not exist (expected a run folder or a checkpoint file)")
    return p


def _is_hub_folder(folder: Path) -> bool:
    """Whether ``folder`` is (part of) a Hub layout folder: it holds ``model.safetensors``, or a Hub
    ``config.json``."""
    return (folder / HUB_WEIGHTS).exists() or _is_hub_config(folder / HUB_CONFIG)


def _is_hub_config(path: Path) -> bool:
    """Whether ``path`` is a Hub layout ``config.json``: a JSON object naming an ``architecture`` (a run folder's
    ``config.json`` is its training config, which names none)."""
    try:
        config = json.loads(path.read_text())
    except (OSError, ValueError):
        return False
    return isinstance(config, dict) and "architecture" in config


def is_hub_id(text: str) -> bool:
    """Whether ``text`` reads as a Hugging Face Hub repository id, ``owner/name``: not a checkpoint file's name,
    and not a path into a local folder (``runs/typo`` is a mistyped run when ``runs/`` exists)."""
    return (bool(_HUB_ID.fullmatch(text)) and not text.lower().endswith(_FILE_SUFFIXES)
            and not Path(text).parent.exists())


def hub_snapshot(repo_id: str) -> Path:
    """The local folder of Hub repository ``repo_id``'s ``config.json`` and ``model.safetensors``
    (``huggingface_hub.snapshot_download``, cached); a CheckpointError naming ``repo_id`` if huggingface_hub is
    not installed or the download fails."""
    try:
        from huggingface_hub import snapshot_download
    except ImportError:
        raise CheckpointError(f"{repo_id} does not exist as a local path; read as a Hugging Face Hub id it needs "
                              "huggingface_hub, which is not installed: pip install huggingface_hub "
                              "(or pip install 'cpvt[hub]')") from None
    try:
        return Path(snapshot_download(repo_id, allow_patterns=[HUB_CONFIG, HUB_WEIGHTS]))
    except Exception as e:  # noqa: BLE001 - not found, offline, unauthorised: one clear line
        first = (str(e).strip().splitlines() or [""])[0]
        raise CheckpointError(f"{repo_id} does not exist as a local path, and it could not be fetched from the "
                              f"Hugging Face Hub ({type(e).__name__}: {first})") from None


def save_hub_folder(folder: str | Path, model: nn.Module, classes: Sequence[str] | None = None) -> Path:
    """Write ``model`` as a Hugging Face Hub layout folder: ``model.safetensors`` and ``config.json`` (see the
    module docstring), each atomically, the weights first. Returns the folder.

    ``model`` must carry ``model_name``, ``model_args`` and ``pretrained_cfg`` (every model from
    ``create_model`` does); ``classes``: its class names, one per output class. A run folder (its checkpoints
    or training config) is refused: loading the folder would read the run, and its config would be lost.
    """
    folder = Path(folder)
    for attr in ("model_name", "model_args", "pretrained_cfg"):
        if not hasattr(model, attr):
            raise ValueError(f"cannot save {type(model).__name__} to {folder}: it has no {attr} (build it with "
                             "cpvt.create_model)")
    if classes is not None and len(classes) != model.num_classes:
        raise ValueError(f"cannot save {model.model_name} to {folder}: {len(classes)} class names for a "
                         f"{model.num_classes}-class model")
    taken = [n for n in ("best.safetensors", "last.safetensors") if (folder / n).exists()]
    if (folder / HUB_CONFIG).exists() and not _is_hub_config(folder / HUB_CONFIG):
        taken.append(f"{HUB_CONFIG}, a training config")
    if taken:
        raise ValueError(f"{folder} is a run folder (it holds {' and '.join(taken)}): save the Hub layout to a "
                         "folder of its own")
    config: dict[str, Any] = {"library_name": HUB_LIBRARY, "architecture": model.model_name,
                              "num_classes": int(model.num_classes)}
    if classes is not None:
        config["label_names"] = [str(c) for c in classes]
    config.update(model_args=model.model_args, pretrained_cfg=model.pretrained_cfg, cpvt_version=__version__)
    try:
        text = json.dumps(config, indent=2) + "\n"
    except TypeError as e:
        raise ValueError(f"cannot save {model.model_name} to {folder}: its model_args or pretrained_cfg are not "
                         f"JSON ({e})") from None
    _atomic_save(dict(model.state_dict()), {"format": "pt"}, folder / HUB_WEIGHTS)
    try:
        write_text_atomic(folder / HUB_CONFIG, text)
    except OSError as e:
        raise CheckpointWriteError(f"could not write {folder / HUB_CONFIG}: {e.strerror or e}", e.errno) from e
    return folder


def _load_hub_folder(folder: Path) -> Checkpoint:
    """A Hub layout folder as a Checkpoint (``path``: the folder): a cpvt folder's config.json gives the model
    name, options, ``pretrained_cfg`` and classes; another library's gives nothing (plain weights)."""
    missing = [n for n in (HUB_CONFIG, HUB_WEIGHTS) if not (folder / n).is_file()]
    if missing:
        raise CheckpointError(f"{folder / missing[0]} is missing: a Hugging Face Hub layout folder holds "
                              f"{HUB_CONFIG} and {HUB_WEIGHTS}")
    try:
        config = json.loads((folder / HUB_CONFIG).read_text())
    except (OSError, ValueError) as e:
        raise CheckpointError(f"{folder / HUB_CONFIG} is not readable JSON ({e})") from None
    if not isinstance(config, dict):
        raise CheckpointError(f"{folder / HUB_CONFIG} holds no JSON object")
    weights = _load_safetensors(folder / HUB_WEIGHTS, sealed=True)
    if config.get("library_name") != HUB_LIBRARY:  # timm's or another library's: its options are not ours
        return Checkpoint(weights.tensors, {}, folder)
    meta: dict[str, Any] = {"model_name": config.get("architecture"), "model_args": config.get("model_args", {}),
                            "classes": config.get("label_names", [])}
    if "pretrained_cfg" in config:
        meta["pretrained_cfg"] = config["pretrained_cfg"]
    kinds = (("architecture", meta["model_name"], str), ("model_args", meta["model_args"], dict),
             ("label_names", meta["classes"], list))
    bad = [key for key, value, kind in kinds if not isinstance(value, kind)]
    if bad:
        raise CheckpointError(f"{folder / HUB_CONFIG} is damaged: {', '.join(bad)} missing or of the wrong kind")
    return Checkpoint(weights.tensors, meta, folder)


def load_checkpoint(path: str | Path) -> Checkpoint:
    """Load a cpvt checkpoint (safetensors), a Hugging Face Hub layout folder (``config.json`` +
    ``model.safetensors``) or a plain weights file (``.pt``/``.pth`` state dict, loaded with
    ``weights_only=True``). Pickles that need code are refused."""
    path = Path(path)
    if not path.exists():
        raise CheckpointError(f"checkpoint {path} does not exist")
    if path.is_dir():
        return _load_hub_folder(path)
    if path.suffix == ".safetensors":
        return _load_safetensors(path)
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


def _format_version(raw: dict[str, str], path: Path) -> int | None:
    """The cpvt format of a safetensors file's metadata; None for a file cpvt did not write (plain weights)."""
    fmt = raw.get("format")
    m = _FORMAT.fullmatch(fmt) if isinstance(fmt, str) else None
    if m:
        return int(m[1])
    if (isinstance(fmt, str) and "cpvt" in fmt) or _CPVT_KEYS & set(raw):
        raise CheckpointError(f"{path} is damaged: its format entry ({fmt!r}) is not a cpvt checkpoint format")
    return None


def _load_safetensors(path: Path, sealed: bool = False) -> Checkpoint:
    """Check the digest, read the tensors, then interpret the metadata (see the module docstring).

    ``sealed``: a Hub layout folder's weights, which cpvt seals without a cpvt format entry: a digest there
    must match too (in a plain file from elsewhere, a ``sha256`` entry is not ours to judge)."""
    damaged = f"{path} is damaged (changed after it was written: a bad disk, an interrupted copy or an edit)"
    try:
        span = _digest_span(path)
        intact = None if span is None else _file_digest(path, span) == span[2]
    except OSError as e:
        raise CheckpointError(f"{path} cannot be read ({e})") from None
    try:
        with safe_open(str(path), framework="pt") as f:
            raw = f.metadata() or {}
            tensors = {k: f.get_tensor(k) for k in f.keys()}
    except Exception as e:  # noqa: BLE001 - any failure to parse means an unreadable file
        if intact is False:
            raise CheckpointError(f"{damaged}: its sha256 does not match") from None
        raise CheckpointError(f"{path} is not a readable safetensors file ({e})") from None
    version = _format_version(raw, path)
    if version is not None and version > FORMAT_VERSION:
        raise CheckpointError(f"{path} was written by a newer cpvt (checkpoint format {version}); cpvt {__version__} "
                              f"reads formats 1 to {FORMAT_VERSION}: upgrade cpvt to load it")
    if version is None:  # a plain weights file from elsewhere (timm, Hugging Face): its metadata is not ours
        if sealed and intact is False:
            raise CheckpointError(f"{damaged}: its sha256 does not match")
        return Checkpoint(tensors, {}, path)
    if intact is False:
        raise CheckpointError(f"{damaged}: its sha256 does not match; use another copy (best.safetensors, or an "
                              "earlier one)")
    if version >= 2 and not intact:
        raise CheckpointError(f"{damaged}: its sha256 entry is missing")
    try:
        meta = {k: json.loads(v) for k, v in raw.items() if k != DIGEST_KEY}
    except ValueError as e:
        raise CheckpointError(f"{damaged}: unreadable metadata ({e})") from None
    return Checkpoint(tensors, meta, path)
