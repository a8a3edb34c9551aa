"""Classify or segment image files with a trained run: in PyTorch, or through an exported ONNX file.

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

A segmentation run (``model.task == "segmentation"``) goes through the same
function; only the preprocessing and the per-batch post-processing differ. Each
image is resized whole (bicubic, no crop) to the run's input size ``(h, w)``
(``pretrained_cfg["input_size"]``, or ``img_size``), normalised, and its logits
``(K, h, w)`` upsampled bilinearly to the image's own size before the argmax.
Written to ``out_dir`` per image: ``NAME.png``, the label map (single channel,
the class index per pixel, a palette PNG for up to 256 classes, 16-bit
grayscale above) and ``NAME.overlay.png``, the image blended with
:func:`seg_palette`. The results list each image's size, files and its most
frequent classes with their share of pixels.
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
from torch.nn import functional as F
from tqdm import tqdm

from ..checkpoint import CheckpointError, load_checkpoint, resolve_checkpoint
from ..data.base import printable
from ..data.folder import image_array, image_files, load_image, open_image, to_rgb
from ..data.masks import frame_pixels
from ..models import model_from_checkpoint
from ..models.pretrained import DEFAULT_CROP_PCT, IMAGENET_MEAN, IMAGENET_STD
from ..train.augment import EvalTransform
from ..utils.table import format_table


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
    img_size: int | tuple[int, int] = 0
    task: str = "classification"
    out_dir: str | None = None  # segmentation: where the label maps and overlays were written

    def to_dict(self) -> dict[str, Any]:
        if self.task == "segmentation":
            return {"backend": self.backend, "task": self.task, "img_size": list(self.img_size),
                    "out_dir": self.out_dir, "segmented": len(self.results), "skipped_count": len(self.skipped),
                    "results": self.results, "skipped": self.skipped}
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


def seg_palette(num_classes: int) -> np.ndarray:
    """A fixed colour per class, uint8 ``(num_classes, 3)``: the PASCAL VOC colour map (class 0 black)."""
    idx = np.arange(num_classes)
    colours = np.zeros((num_classes, 3), np.int64)
    for bit in range(8):
        for ch in range(3):
            colours[:, ch] |= ((idx >> (3 * bit + ch)) & 1) << (7 - bit)
    return colours.astype(np.uint8)


def upsampled_labels(logits: Tensor, size: tuple[int, int]) -> Tensor:
    """Logits ``(K, h, w)`` -> class indices ``(H, W)``: upsampled bilinearly to ``size`` first, then argmax."""
    up = F.interpolate(logits[None].float(), size=size, mode="bilinear", align_corners=False)[0]
    return up.argmax(0)


def _output_stem(file: str, used: set[str]) -> str:
    stem = Path(file).stem or "image"
    name, n = stem, 1
    while name in used:
        name, n = f"{stem}-{n}", n + 1
    used.add(name)
    return name


def _seg_size(model: nn.Module, img_size: int | tuple[int, int] | None) -> tuple[int, int]:
    if img_size is None:
        h, w = model.pretrained_cfg["input_size"][1:]
    else:
        h, w = (img_size, img_size) if isinstance(img_size, int) else img_size
    size = (int(h), int(w))
    model.grid_for(size)  # a clear error for a size the model cannot take
    return size


def predict(
    run: str | os.PathLike,
    inputs: list[str | os.PathLike],
    img_size: int | tuple[int, int] | None = None,
    topk: int = 5,
    onnx: str | os.PathLike | None = None,
    batch_size: int = 32,
    progress: bool | None = None,
    overrides: dict[str, Any] | None = None,
    out_dir: str | os.PathLike | None = None,
    alpha: float = 0.5,
    compile: bool = False,
    window: int | tuple[int, int] | None = None,
) -> Predictions:
    """Classify (or segment) image files and folders with a trained run.

    ``onnx`` runs that exported file in onnxruntime instead of the PyTorch model
    (the run still gives the classes and preprocessing). Unreadable files are
    skipped and listed, never raised. ``progress``: a tqdm bar (default: when an
    input is a folder and stderr is a terminal). ``overrides``: model options the
    run is rebuilt with (``--set model.KEY=VALUE``; not with ``onnx``, whose file
    is fixed). ``compile``: run the PyTorch model through ``torch.compile`` with inductor's freezing (weights
    folded in and pre-packed), one dynamic graph for every image size.

    A segmentation run needs ``out_dir`` (the label maps and overlays are written
    there, see the module docstring) and takes ``img_size`` as ``N`` or ``(h, w)``;
    ``topk`` is then the number of most frequent classes listed per image (at
    most 3). ``alpha``: the palette's weight in the overlays. ``window`` (``N`` or ``(h, w)``): run the
    frame at ``img_size`` as a sliding window of crops of that size, overlapping logits averaged
    (:func:`cpvt.train.segment_eval.sliding_logits`), as a model trained on crops is best run on a larger
    field of view (the Canvas protocol, docs/results/cpu/camvid.md). A classification run
    takes a square ``img_size`` and no ``out_dir`` or ``window``.
    """
    if onnx is not None and overrides:
        raise ValueError("--set model options rebuild the PyTorch model; an --onnx file runs as it was exported "
                         "(export it with --set instead)")
    if onnx is not None and compile:
        raise ValueError("--compile is for the PyTorch model; an --onnx file runs in onnxruntime")
    if not 0.0 <= alpha <= 1.0:
        raise ValueError(f"--alpha must be within 0..1, got {alpha}")
    win: tuple[int, int] | None = None
    if isinstance(img_size, tuple) and img_size[0] == img_size[1]:
        img_size = img_size[0]
    model, preprocess, classes = load_run(run, None if isinstance(img_size, tuple) else img_size,
                                          **(overrides or {}))
    task = getattr(model, "task", "classification")
    if task == "segmentation":
        if out_dir is None:
            raise ValueError(f"{run} is a segmentation run: pass --out DIR for its label maps and overlays")
        size: int | tuple[int, int] = _seg_size(model, img_size)
        out_path = Path(out_dir)
        if out_path.exists() and not out_path.is_dir():
            raise ValueError(f"--out {out_dir} is a file, not a folder")
        out_path.mkdir(parents=True, exist_ok=True)
        palette = seg_palette(len(classes))
        used: set[str] = set()
        if window is not None:
            win = (window, window) if isinstance(window, int) else (int(window[0]), int(window[1]))
            model.grid_for(win)  # a clear error for a window the model cannot take
    else:
        if isinstance(img_size, tuple):
            raise ValueError(f"a classification run predicts at a square size (N or NxN), "
                             f"got {img_size[0]}x{img_size[1]}")
        if out_dir is not None:
            raise ValueError("--out is for a segmentation run's label maps; a classification run prints its "
                             "predictions (--json writes them)")
        if window is not None:
            raise ValueError("--window is for a segmentation run (sliding-window inference over a frame)")
        size = preprocess.img_size
    if onnx is not None:
        forward, backend = onnx_runner(onnx), f"onnxruntime ({Path(onnx).name})"
    else:
        if compile:  # one frozen graph (weights folded in and pre-packed) for every image size
            from ..utils.compiling import compile_model

            runner = compile_model(model, dynamic=True, frozen=True)
        else:
            runner = model

        def forward(x: np.ndarray) -> np.ndarray:
            with torch.inference_mode():
                return runner(torch.from_numpy(x)).float().numpy()
        backend = "pytorch, compiled and frozen" if compile else "pytorch"
    files, skipped, folders = find_images(inputs)
    if task == "segmentation" and win is not None:
        backend += f", {win[0]}x{win[1]} windows"
    out = Predictions(skipped=skipped, backend=backend, img_size=size, task=task,
                      out_dir=str(out_dir) if task == "segmentation" else None)
    k = max(1, min(topk, len(classes), 3 if task == "segmentation" else len(classes)))
    # tqdm's disable=None: shown only when stderr is a terminal
    disable = {True: False, False: True, None: None if folders else True}[progress]
    batch: list[tuple[str, np.ndarray, np.ndarray | None]] = []

    def classify(logits: Tensor) -> None:
        top = logits.softmax(dim=-1).topk(k, dim=-1)
        for (file, _, _), p, i in zip(batch, top.values.tolist(), top.indices.tolist()):
            out.results.append({"file": file, "top": [{"class": classes[c], "index": c, "prob": q}
                                                      for q, c in zip(p, i)]})

    def segment(logits: Tensor) -> None:
        if logits.ndim != 4 or logits.shape[1] != len(classes):
            raise ValueError(f"the model returned logits of shape {tuple(logits.shape)}, not (B, {len(classes)}, "
                             f"H, W) for a {len(classes)}-class segmentation run (an --onnx file of another run?)")
        for (file, _, rgb), lg in zip(batch, logits):
            h, w = rgb.shape[:2]
            labels = upsampled_labels(lg, (h, w)).numpy()
            stem = _output_stem(file, used)
            label_file, overlay_file = out_path / f"{stem}.png", out_path / f"{stem}.overlay.png"
            if len(classes) <= 256:
                im = Image.fromarray(labels.astype(np.uint8))
                im.putpalette(palette.ravel().tolist())  # "L" -> "P": the indices kept, shown in colour
            else:
                im = Image.fromarray(labels.astype(np.uint16))
            im.save(label_file)
            blend = rgb * (1 - alpha) + palette[labels] * alpha
            Image.fromarray(np.clip(np.rint(blend), 0, 255).astype(np.uint8)).save(overlay_file)
            counts = np.bincount(labels.ravel(), minlength=len(classes))
            order = np.argsort(-counts, kind="stable")[:k]
            out.results.append({"file": file, "height": h, "width": w, "labels": str(label_file),
                                "overlay": str(overlay_file),
                                "top": [{"class": classes[c], "index": int(c), "share": float(counts[c] / labels.size)}
                                        for c in order if counts[c]]})

    def forward_tensor(x: Tensor) -> Tensor:
        return torch.from_numpy(np.asarray(forward(np.ascontiguousarray(x.numpy())), dtype=np.float32))

    def flush() -> None:
        x = preprocess.normalise(np.stack([a for _, a, _ in batch]))
        if task == "segmentation" and win is not None:
            from ..train.segment_eval import sliding_logits

            logits = sliding_logits(forward_tensor, x, win, len(classes))
        else:
            logits = forward_tensor(x)
        (segment if task == "segmentation" else classify)(logits)
        batch.clear()

    for file in tqdm(files, desc="predict", unit="img", disable=disable):
        try:
            if task == "segmentation":
                im = to_rgb(open_image(file))
                batch.append((file, frame_pixels(im, size), np.asarray(im, dtype=np.uint8)))
            else:
                batch.append((file, preprocess.uint8(file), None))
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
    """One line per image (its top classes and probabilities), then the skipped files; for a segmentation run a
    table (file, size, the most frequent classes and their share of pixels)."""
    if preds.task == "segmentation":
        return format_segmentation(preds)
    lines = []
    for r in preds.results:
        tops = ", ".join(f"{t['class']} {t['prob']:.3f}" for t in r["top"])
        lines.append(f"{r['file']}: {tops}")
    lines.append(f"classified {len(preds.results)} image(s) at {preds.img_size}px with {preds.backend}; "
                 f"skipped {len(preds.skipped)} unreadable")
    lines += [f"  skipped {s['file']}: {s['reason']}" for s in preds.skipped]
    return printable("\n".join(lines))  # file and class names that are not UTF-8 are shown escaped


def format_segmentation(preds: Predictions) -> str:
    rows = [[r["file"], f"{r['height']}x{r['width']}",
             ", ".join(f"{t['class']} {100 * t['share']:.1f}%" for t in r["top"])] for r in preds.results]
    h, w = preds.img_size
    lines = [format_table(rows, ["file", "size (HxW)", "most frequent classes"])] if rows else []
    lines.append(f"segmented {len(preds.results)} image(s) at {h}x{w} with {preds.backend}; label maps and overlays "
                 f"in {preds.out_dir}; skipped {len(preds.skipped)} unreadable")
    lines += [f"  skipped {s['file']}: {s['reason']}" for s in preds.skipped]
    return printable("\n".join(lines))
