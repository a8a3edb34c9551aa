"""Classify image files with a trained run: in PyTorch, or through an exported ONNX file.

    >>> import cpvt
    >>> model, preprocess, classes = cpvt.load_run("runs/c10-cpvt")
    >>> probs = model(preprocess("cat.jpg")[None]).softmax(-1)

A run's preprocessing is its evaluation transform (:mod:`cpvt.train.evaluate`): the
image is made RGB (EXIF orientation applied, transparency over white), its
shorter side resized to ``size / crop_pct`` (bicubic, antialiased) and the
centre ``size x size`` cropped, then scaled to [0, 1] and normalised with the
run's mean and std. ``size`` defaults to the run's training size; any multiple
of the patch size works (the point of a PEG).

:func:`predict` reads files and folders (recursively, by image extension), skips
and lists every file that cannot be read, and returns the top-k classes and
probabilities of the rest.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
import torch
from PIL import Image
from torch import Tensor, nn
from tqdm import tqdm

from ..checkpoint import CheckpointError, load_checkpoint, resolve_checkpoint
from ..data.base import printable
from ..data.folder import image_files, image_array, load_image
from ..models import model_from_checkpoint
from ..models.pretrained import DEFAULT_CROP_PCT, IMAGENET_MEAN, IMAGENET_STD
from ..train.augment import EvalTransform


@dataclass(frozen=True)
class Preprocess:
    """A run's evaluation transform: a path or PIL image -> float tensor (3, size, size), normalised."""

    img_size: int
    crop_pct: float = DEFAULT_CROP_PCT
    mean: tuple[float, float, float] = IMAGENET_MEAN
    std: tuple[float, float, float] = IMAGENET_STD

    def uint8(self, image: str | os.PathLike | Image.Image) -> np.ndarray:
        """The resized, centre-cropped RGB image as uint8 (3, size, size), as the data sources decode it.
        Raises what Pillow raises."""
        if isinstance(image, Image.Image):
            return image_array(image, self.img_size, "eval", self.crop_pct)
        return load_image(image, self.img_size, "eval", self.crop_pct)

    def normalise(self, images: np.ndarray | Tensor) -> Tensor:
        """uint8 (B, 3, H, W) -> normalised float32: the evaluation engine's own transform."""
        return EvalTransform(self.mean, self.std)(torch.as_tensor(images))

    def __call__(self, image: str | os.PathLike | Image.Image) -> Tensor:
        return self.normalise(self.uint8(image)[None])[0]

    def with_size(self, img_size: int) -> Preprocess:
        return Preprocess(img_size, self.crop_pct, self.mean, self.std)

    @classmethod
    def from_pretrained_cfg(cls, cfg: dict[str, Any], img_size: int | None = None) -> Preprocess:
        """The transform a model's ``pretrained_cfg`` describes, at ``img_size`` (default: its input size)."""
        return cls(int(img_size or cfg["input_size"][1]), float(cfg["crop_pct"]), tuple(cfg["mean"]),
                   tuple(cfg["std"]))


class LoadedRun(NamedTuple):
    """What :func:`load_run` returns; unpacks as ``model, preprocess, classes``."""

    model: nn.Module
    preprocess: Preprocess
    classes: list[str]


def load_run(path: str | os.PathLike, img_size: int | None = None, device: str | torch.device = "cpu",
             **overrides: Any) -> LoadedRun:
    """A trained run (folder or checkpoint file) as ``(model, preprocess, classes)``.

    The model is rebuilt from the options stored in the checkpoint (``overrides`` on top: test-time options such
    as ``peg_fixed_grid="dilate"``), its weights loaded strictly, and put in eval mode on ``device``.
    ``preprocess`` is the evaluation transform of the model's ``pretrained_cfg`` at ``img_size`` (default: the
    training size).
    """
    ckpt = load_checkpoint(resolve_checkpoint(path))
    if not ckpt.meta:
        raise CheckpointError(f"{path} is a plain weights file without a model description: "
                              f"use cpvt.create_model(NAME, pretrained={str(path)!r})")
    model = model_from_checkpoint(ckpt, **overrides).to(device).eval()
    preprocess = Preprocess.from_pretrained_cfg(model.pretrained_cfg, img_size)
    model.grid_for(preprocess.img_size)  # a clear error for a size the model cannot take
    classes = list(ckpt.classes) or [str(i) for i in range(model.num_classes)]
    if len(classes) != model.num_classes:
        raise CheckpointError(f"{path}: {len(classes)} class names for a {model.num_classes}-class model")
    return LoadedRun(model, preprocess, classes)


def find_images(inputs: list[str | os.PathLike]) -> tuple[list[str], list[dict[str, str]], bool]:
    """Files to classify: each file as given, each folder's image files (recursive, sorted).

    Returns the files, the inputs that do not exist (as skipped entries) and
    whether any input was a folder.
    """
    files, missing, folders = [], [], False
    for item in inputs:
        p = Path(item)
        if p.is_dir():
            folders = True
            notes: list[str] = []
            files += image_files(p, notes)
            missing += [{"file": str(p), "reason": note} for note in notes]  # ignored links and folders
        elif p.is_file():
            files.append(str(p))
        else:
            missing.append({"file": str(p), "reason": "no such file or folder"})
    return files, missing, folders


@dataclass
class Predictions:
    """Top-k classes per readable file, and the files that were skipped with the reason."""

    results: list[dict[str, Any]] = field(default_factory=list)
    skipped: list[dict[str, str]] = field(default_factory=list)
    backend: str = "pytorch"
    img_size: int = 0

    def to_dict(self) -> dict[str, Any]:
        return {"backend": self.backend, "img_size": self.img_size, "classified": len(self.results),
                "skipped_count": len(self.skipped), "results": self.results, "skipped": self.skipped}

    def write_json(self, path: str | os.PathLike) -> None:
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        Path(path).write_text(json.dumps(self.to_dict(), indent=2))


def onnx_runner(path: str | os.PathLike):
    """A function from a normalised float32 batch (numpy) to logits (numpy), running ``path`` in onnxruntime."""
    try:
        import onnxruntime as ort
    except ImportError:
        raise ValueError("--onnx needs onnxruntime: pip install 'cpvt[onnx]'") from None
    if not Path(path).is_file():
        raise ValueError(f"ONNX file {path} does not exist (write one with `cpvt export RUN`)")
    try:
        session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    except Exception as e:  # noqa: BLE001 - onnxruntime raises its own exception types
        raise ValueError(f"onnxruntime cannot load {path}: {str(e).splitlines()[0]}") from None
    name = session.get_inputs()[0].name
    return lambda x: session.run(None, {name: x})[0]


def predict(
    run: str | os.PathLike,
    inputs: list[str | os.PathLike],
    img_size: int | None = None,
    topk: int = 5,
    onnx: str | os.PathLike | None = None,
    batch_size: int = 32,
    progress: bool | None = None,
    overrides: dict[str, Any] | None = None,
) -> Predictions:
    """Classify image files and folders with a trained run.

    ``onnx`` runs that exported file in onnxruntime instead of the PyTorch model
    (the run still gives the classes and preprocessing). Unreadable files are
    skipped and listed, never raised. ``progress``: a tqdm bar (default: when an
    input is a folder and stderr is a terminal). ``overrides``: model options the
    run is rebuilt with (``--set model.KEY=VALUE``; not with ``onnx``, whose file
    is fixed).
    """
    if onnx is not None and overrides:
        raise ValueError("--set model options rebuild the PyTorch model; an --onnx file runs as it was exported "
                         "(export it with --set instead)")
    model, preprocess, classes = load_run(run, img_size, **(overrides or {}))
    if onnx is not None:
        forward, backend = onnx_runner(onnx), f"onnxruntime ({Path(onnx).name})"
    else:
        def forward(x: np.ndarray) -> np.ndarray:
            with torch.inference_mode():
                return model(torch.from_numpy(x)).float().numpy()
        backend = "pytorch"
    files, skipped, folders = find_images(inputs)
    out = Predictions(skipped=skipped, backend=backend, img_size=preprocess.img_size)
    k = max(1, min(topk, len(classes)))
    # tqdm's disable=None: shown only when stderr is a terminal
    disable = {True: False, False: True, None: None if folders else True}[progress]
    batch: list[tuple[str, np.ndarray]] = []

    def flush() -> None:
        x = preprocess.normalise(np.stack([a for _, a in batch])).numpy()
        probs = torch.from_numpy(np.asarray(forward(x), dtype=np.float32)).softmax(dim=-1)
        top = probs.topk(k, dim=-1)
        for (file, _), p, i in zip(batch, top.values.tolist(), top.indices.tolist()):
            out.results.append({"file": file, "top": [{"class": classes[c], "index": c, "prob": q}
                                                      for q, c in zip(p, i)]})
        batch.clear()

    for file in tqdm(files, desc="predict", unit="img", disable=disable):
        try:
            batch.append((file, preprocess.uint8(file)))
        except Exception as e:  # noqa: BLE001 - any failure to decode means "unreadable file"
            reason = str(e).splitlines()[0] if str(e) else ""
            out.skipped.append({"file": file, "reason": f"{type(e).__name__}: {reason}".rstrip(": ")})
            continue
        if len(batch) == batch_size:
            flush()
    if batch:
        flush()
    return out


def format_predictions(preds: Predictions) -> str:
    """One line per image (its top classes and probabilities), then the skipped files."""
    lines = []
    for r in preds.results:
        tops = ", ".join(f"{t['class']} {t['prob']:.3f}" for t in r["top"])
        lines.append(f"{r['file']}: {tops}")
    lines.append(f"classified {len(preds.results)} image(s) at {preds.img_size}px with {preds.backend}; "
                 f"skipped {len(preds.skipped)} unreadable")
    lines += [f"  skipped {s['file']}: {s['reason']}" for s in preds.skipped]
    return printable("\n".join(lines))  # file and class names that are not UTF-8 are shown escaped
