"""The data interface the engine consumes.

Every dataset, on disk or generated, hands the engine a :class:`Split`: uint8
images of one size, ``(N, 3, S, S)``, with int64 labels. Decoding happens once
(and is cached on disk for folders); augmentation then runs batched on the
training device (see :mod:`cpvt.train.augment`), so loading never starves a GPU.

A source implements :class:`DataSource`:

* ``split(name, size, mode="train")``: the images of split ``name`` stored at
  ``size x size``. ``mode="train"`` keeps the whole image (resized so the
  shorter side is ``size``, centre-cropped to a square) for random crops later;
  ``mode="eval"`` applies the standard evaluation preprocessing: resize the
  shorter side to ``size / crop_pct``, then centre-crop ``size``.
* ``limit``: if given, only a fixed subset of that many images (the same for
  every call: seeded, not the first files, so every class is represented).
* ``splits``: which split names exist (``train``, and ``val`` or ``test``).
* ``classes``: class names, index = label.

Segmentation sources (:class:`cpvt.data.masks.MaskFolderSource`) hand out a :class:`SegSplit` instead: the
same uint8 images, whole frames of one size ``(N, 3, H, W)``, with a label map per frame.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Protocol

from torch import Tensor


@dataclass
class Split:
    """A decoded split: ``images`` uint8 (N, 3, S, S) (may be a memory map), ``labels`` int64 (N,)."""

    images: Tensor
    labels: Tensor
    classes: list[str]
    name: str = ""
    skipped: list[str] = field(default_factory=list)  # files that could not be read
    notes: list[str] = field(default_factory=list)  # what the split left out and why (skipped files, ignored links)

    def __len__(self) -> int:
        return len(self.labels)

    @property
    def size(self) -> int:
        return int(self.images.shape[-1])

    @property
    def num_classes(self) -> int:
        return len(self.classes)


@dataclass
class SegSplit:
    """A decoded segmentation split: ``images`` uint8 (N, 3, H, W) and ``masks`` (N, H, W), one class index a
    pixel (either may be a memory map).

    ``masks`` is uint8 when every class index and ``ignore_index`` fit in 0..255 (CamVid, Cityscapes, ADE20K:
    an eighth of int64's memory), int64 otherwise; training converts a batch with ``.long()`` on the device.
    A pixel equal to ``ignore_index`` is not scored (void, unlabelled, or outside the frame after
    augmentation); every other value is in ``0..len(classes) - 1``. Produced by
    :class:`cpvt.data.masks.MaskFolderSource`.
    """

    images: Tensor
    masks: Tensor
    classes: list[str]
    ignore_index: int = 255
    name: str = ""
    skipped: list[str] = field(default_factory=list)  # image files left out: unreadable, or without a mask
    notes: list[str] = field(default_factory=list)  # what the split left out and why

    def __len__(self) -> int:
        return len(self.masks)

    @property
    def frame_size(self) -> tuple[int, int]:
        """(H, W) of every frame."""
        return int(self.masks.shape[-2]), int(self.masks.shape[-1])

    @property
    def num_classes(self) -> int:
        return len(self.classes)


class DataSource(Protocol):
    """Anything that can produce :class:`Split` objects at a requested size."""

    name: str
    classes: list[str]
    splits: tuple[str, ...]

    def split(
        self, name: str, size: int, mode: str = "train", crop_pct: float = 0.875, limit: int | None = None
    ) -> Split: ...


class DataError(ValueError):
    """A problem with the user's data that deserves one clear message, not a traceback."""


def printable(text: str) -> str:
    """``text`` safe to print on any terminal: a file name that is not valid UTF-8 (which Python holds as
    lone surrogates, ``os.fsdecode``) is shown with its raw bytes escaped (``\\xff``) instead of making
    ``print`` fail."""
    try:
        return str(text).encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")
    except UnicodeEncodeError:  # a surrogate that is no escaped byte
        return str(text).encode("utf-8", "backslashreplace").decode("utf-8")
