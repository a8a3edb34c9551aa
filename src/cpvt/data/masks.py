"""Segmentation data: folders of images paired with label maps, decoded once and cached on disk.

The default layout (both folder patterns are templates with ``{split}``; see :class:`MaskFolderSource`)::

    ROOT/classes.txt               one class name a line: line i names label i
    ROOT/images/train/0001.jpg     a photo (any of folder.py's IMAGE_EXTENSIONS)
    ROOT/masks/train/0001.png      its label map: same size, one class index a pixel
    ROOT/images/val/...

:class:`MaskFolderSource` turns one split into a :class:`~cpvt.data.base.SegSplit`: images uint8
``(N, 3, H, W)`` and masks ``(N, H, W)``, uint8 when every class index and the ignore index fit in a byte,
else int64. The named CamVid archive (:mod:`cpvt.data.named`) is one such folder.

Decisions worth knowing:

* **Pairing** is by relative path and file stem: ``IMAGES/<sub>/<stem>.<ext>`` pairs with
  ``MASKS/<sub>/<stem><mask_suffix>`` (default suffix ``.png``: lossless; a JPEG mask would have its
  labels smeared by compression). Images are listed as :mod:`cpvt.data.folder` lists a class folder
  (recursive, sorted, hidden entries skipped, symbolic links followed without loops). Two images with one
  stem (``a.jpg`` and ``a.png``) would share a mask: a :class:`~cpvt.data.base.DataError`.
* **Classes** come from the ``classes`` argument or ``ROOT/classes.txt`` (one name a line, blank lines
  ignored); label ``i`` is ``classes[i]``. ``ignore_index`` (default 255, the common convention of
  PASCAL VOC, Cityscapes and mmsegmentation) marks pixels that are not scored; it may not be a class index.
* **Label maps** must be single-channel: modes ``L``, ``P`` (a palette PNG: the pixel values are the
  indices, the palette colours are ignored), ``1``, ``I;16`` or ``I``. An RGB (or RGBA, LA, ...) mask is a
  DataError: colour-coded labels need a colour -> class table, which this source does not guess.
* **Bad input**, one rule each:

  - an image without a mask: left out, listed in ``SegSplit.skipped`` and counted (the first few named) in
    ``SegSplit.notes``; a split with no pair at all is a DataError (e.g. a wrong ``masks`` pattern);
  - a mask without an image: noted in ``SegSplit.notes`` (nothing to decode);
  - an unreadable image or mask (corrupt, truncated, a decompression bomb, as in folder.py): the pair is
    skipped and counted like an unreadable image in folder.py, and more than
    :data:`~cpvt.data.folder.MAX_UNREADABLE_FRACTION` of a split is a DataError;
  - a mask whose size differs from its image's, a label outside ``0..len(classes) - 1`` that is not the
    ignore index, a multi-channel mask: a **DataError** naming the file(s) (and the bad values). These files
    are readable but wrong, usually all of them for one reason (masks at another resolution, a class list
    one short, colour-coded masks); skipping them would hide that, and resizing a mask to fit its image
    would guess how the labels align. Decoding stops at the first such file.

* **Orientation**: the EXIF orientation of both files is applied (as folder.py does for images and as
  annotation tools show a photo), so a mask must match its image as displayed.
* **Geometry** (:meth:`MaskFolderSource.split`): ``size=None`` keeps the native frame size, which all frames
  of the split must then share (otherwise a DataError naming two files of different sizes); ``size=(h, w)``
  (or ``size=s`` for ``(s, s)``) resizes the whole frame, no crop, so the aspect ratio changes unless
  ``(h, w)`` keeps it. Images are resized bicubic (Pillow, antialiased when shrinking, as folder.py does);
  masks take the source pixel under each output pixel's centre (nearest neighbour, :func:`resize_nearest`):
  labels are never interpolated, so a resized mask holds only values of the original.
* **Cache**: with ``cache_dir``, a decoded split is written once to
  ``cache_dir/decoded/<name>-<split>-seg-<h>x<w>|native[-limitN]-<key>.{images.npy,masks.npy,json}`` and
  loaded back as copy-on-write memory maps, like folder.py's cache (same atomic writes). The key hashes the
  root, the split, size, limit, the class list, the ignore index, the folder patterns and the path, byte size
  and mtime of every image and mask decoded, so editing either file decodes the split again.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
import warnings
from collections.abc import Sequence
from functools import partial
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from tqdm import tqdm

from ..utils.fileio import write_text_atomic
from .base import DataError, SegSplit
from .folder import (
    IMAGE_EXTENSIONS,
    MAX_UNREADABLE_FRACTION,
    SPLIT_NAMES,
    cpu_count,
    image_files,
    parallel_map,
    remove_quietly,
    safe_name,
    append_suffix,
    subset,
    open_image,
    to_rgb,
)

__all__ = ["LABEL_MODES", "MaskFolderSource", "load_pair", "resize_nearest"]

#: Pillow modes read as label maps (one integer a pixel). ``P`` gives the palette indices.
LABEL_MODES = frozenset({"L", "P", "1", "I", "I;16", "I;16L", "I;16B", "I;16N"})
#: Bump when the cached format or the preprocessing changes.
_CACHE_VERSION = 1
_ORIENTATION = 0x0112  # EXIF tag; values 5-8 turn the picture by 90 degrees


# --------------------------------------------------------------------------- decoding one pair


def resize_nearest(mask: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """``mask`` (H, W) at ``size = (h, w)``: each output pixel takes the source pixel under its centre.

    Output pixel ``i`` reads source row ``floor((i + 0.5) * H / h)``, which is Pillow's ``NEAREST`` and
    PyTorch's ``interpolate(mode="nearest-exact")``, so data decoding and the device-side eval resize
    (:func:`cpvt.train.augment_masks.resize_frames`) agree. Values are copied, never mixed.
    """
    h, w = size
    rows = np.minimum(((np.arange(h) + 0.5) * (mask.shape[0] / h)).astype(np.int64), mask.shape[0] - 1)
    cols = np.minimum(((np.arange(w) + 0.5) * (mask.shape[1] / w)).astype(np.int64), mask.shape[1] - 1)
    return mask[rows[:, None], cols[None, :]]


def frame_pixels(rgb: Image.Image, size: tuple[int, int] | None) -> np.ndarray:
    """An RGB frame as uint8 ``(3, h, w)``, resized whole to ``size = (h, w)`` (bicubic, no crop; ``None``: as it
    is): how segmentation frames are decoded, and how ``cpvt predict`` feeds a segmentation model."""
    if size is not None and (size[1], size[0]) != rgb.size:
        rgb = rgb.resize((size[1], size[0]), Image.Resampling.BICUBIC)
    return np.ascontiguousarray(np.asarray(rgb, dtype=np.uint8).transpose(2, 0, 1))


def load_pair(image: str, mask: str, size: tuple[int, int] | None, num_classes: int, ignore_index: int,
              dtype=np.uint8) -> tuple[np.ndarray, np.ndarray]:
    """One pair as uint8 ``(3, h, w)`` and ``dtype`` ``(h, w)``, checked and resized (``size=None``: native).

    Raises :class:`~cpvt.data.base.DataError` for a readable pair that breaks a rule (size mismatch,
    multi-channel mask, labels out of range: the module docstring) and ``OSError`` for a file that cannot
    be read (its message says which of the two).
    """
    try:
        im = open_image(image)
    except Exception as e:  # noqa: BLE001 - any failure means "unreadable file"
        raise OSError(_reason(e)) from e
    try:
        lab = open_image(mask)
    except Exception as e:  # noqa: BLE001
        raise OSError(f"its mask {mask} cannot be read: {_reason(e)}") from e
    if lab.mode not in LABEL_MODES:
        raise DataError(
            f"mask {mask} is a {lab.mode} image: a label map must be single-channel, one class index a pixel "
            f"(Pillow modes {', '.join(sorted(LABEL_MODES))}; a palette PNG is fine). Convert colour-coded "
            f"masks to class indices first")
    if lab.size != im.size:
        raise DataError(
            f"mask {mask} is {lab.size[0]}x{lab.size[1]} but its image {image} is {im.size[0]}x{im.size[1]} "
            f"(W x H, EXIF orientation applied): a label map must have its image's size (resizing the mask "
            f"would guess how the labels align)")
    labels = np.asarray(lab)
    if labels.dtype == bool:  # mode "1"
        labels = labels.astype(np.uint8)
    present = (np.flatnonzero(np.bincount(labels.ravel())) if labels.dtype in (np.uint8, np.uint16)
               else np.unique(labels))  # bincount: ~30x faster than unique on a byte mask
    bad = [int(v) for v in present if not (0 <= v < num_classes or v == ignore_index)]
    if bad:
        shown = ", ".join(map(str, bad[:10])) + (" ..." if len(bad) > 10 else "")
        raise DataError(
            f"mask {mask} has label(s) {shown} outside the {num_classes} classes 0..{num_classes - 1} that "
            f"are not the ignore index {ignore_index}; fix the mask, the class list or ignore_index")
    if size is not None and (size[1], size[0]) != im.size:
        labels = resize_nearest(labels, size)
    return frame_pixels(to_rgb(im), size), np.ascontiguousarray(labels, dtype=dtype)  # (3, h, w), (h, w)


def _reason(e: BaseException) -> str:
    text = str(e).splitlines()[0] if str(e) else ""
    return f"{type(e).__name__}: {text}" if text else type(e).__name__


def _decode_pair(pair, size, num_classes, ignore_index, dtype):
    """Worker task: ``(image, mask, None)``, or ``(None, None, (kind, text))`` with kind ``unreadable`` or
    ``bad`` (a rule broken: the caller raises a DataError with ``text``)."""
    try:
        return (*load_pair(*pair, size, num_classes, ignore_index, dtype), None)
    except DataError as e:
        return None, None, ("bad", str(e))
    except OSError as e:  # raised by load_pair with the reason
        return None, None, ("unreadable", str(e))
    except Exception as e:  # noqa: BLE001 - any other failure (e.g. a mode Pillow cannot convert) is unreadable too
        return None, None, ("unreadable", _reason(e))


def _frame_size(path: str) -> tuple[int, int] | None:
    """(H, W) of an image as displayed, from its header only; None if the header cannot be read."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            with Image.open(path) as im:
                w, h = im.size
                turned = im.getexif().get(_ORIENTATION) in (5, 6, 7, 8)
    except Exception:  # noqa: BLE001 - reported with its reason when the pair is decoded
        return None
    return (w, h) if turned else (h, w)


# --------------------------------------------------------------------------- the source


class MaskFolderSource:
    """Images paired with single-channel label maps, by split (see the module docstring for every rule).

    Args:
        root: the dataset folder.
        name: the dataset's name (default: the root folder's name); used in messages and cache file names.
        cache_dir: where decoded splits are cached (``cache_dir/decoded/``); ``None`` decodes in memory on
            every call.
        workers: decoding processes; default ``min(usable CPUs, 8)``; 0 or 1 decodes in this process.
        images: the image folder of a split, relative to ``root``, with ``{split}`` where the split name goes
            (CamVid: ``"{split}"``).
        masks: the mask folder of a split, the same way (CamVid: ``"{split}annot"``).
        mask_suffix: what replaces an image's extension to name its mask.
        classes: class names (index = label); default: read from ``root / classes_file``.
        classes_file: the class list's file name under ``root``, one name a line.
        ignore_index: the label of pixels that are not scored; not a class index.
        splits: the split names; default: those of ``train``, ``val``, ``test`` whose image folder exists.
    """

    def __init__(
        self,
        root: str | os.PathLike,
        name: str | None = None,
        cache_dir: str | os.PathLike | None = None,
        workers: int | None = None,
        images: str = "images/{split}",
        masks: str = "masks/{split}",
        mask_suffix: str = ".png",
        classes: Sequence[str] | None = None,
        classes_file: str = "classes.txt",
        ignore_index: int = 255,
        splits: Sequence[str] | None = None,
    ):
        self.root = Path(root).expanduser()
        if not self.root.is_dir():
            raise DataError(f"data folder {self.root} {'is not a folder' if self.root.exists() else 'does not exist'}")
        self.root = self.root.resolve()
        self.name = name or self.root.name
        self.cache_dir = Path(cache_dir).expanduser() if cache_dir is not None else None
        self.workers = min(cpu_count(), 8) if workers is None else max(0, int(workers))
        for pattern in (images, masks):
            if "{split}" not in pattern:
                raise ValueError(f"folder patterns need '{{split}}' where the split name goes, got {pattern!r}")
        self.images, self.masks, self.mask_suffix = images, masks, mask_suffix

        if classes is None:
            path = self.root / classes_file
            try:
                classes = [line.strip() for line in path.read_text().splitlines() if line.strip()]
            except OSError as e:
                raise DataError(f"no class list for {self.root}: cannot read {path} ({e.strerror or e}); write one "
                                f"class name a line (line i names label i) or pass classes=[...]") from e
        self.classes = [str(c) for c in classes]
        if not self.classes:
            raise DataError(f"the class list of {self.root} is empty")
        if isinstance(ignore_index, bool) or int(ignore_index) != ignore_index or ignore_index < 0:
            raise ValueError(f"ignore_index must be a non-negative integer, got {ignore_index!r}")
        if ignore_index < len(self.classes):
            raise ValueError(f"ignore_index {ignore_index} is class {self.classes[ignore_index]!r}: it must not be "
                             f"a class index (0..{len(self.classes) - 1})")
        self.ignore_index = int(ignore_index)
        #: uint8 when every stored value fits a byte (see SegSplit)
        self.dtype = np.uint8 if max(len(self.classes) - 1, self.ignore_index) <= 255 else np.int64

        if splits is None:
            splits = [s for s in SPLIT_NAMES if self._folder(images, s).is_dir()]
        self.splits = tuple(splits)
        if not self.splits:
            raise DataError(f"no split folders in {self.root}: expected {images.format(split='train')}/ (and "
                            f"{images.format(split='val')}/ or {images.format(split='test')}/) with the images and "
                            f"{masks.format(split='train')}/ with their label maps")
        self.listing_notes: dict[str, list[str]] = {}  # per split: what the last listing left out
        self.listing_skipped: dict[str, list[str]] = {}  # per split: images without a mask

    def __repr__(self) -> str:
        return (f"MaskFolderSource({str(self.root)!r}, name={self.name!r}, splits={self.splits}, "
                f"classes={len(self.classes)}, ignore_index={self.ignore_index})")

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    def _folder(self, pattern: str, split: str) -> Path:
        return self.root / pattern.format(split=split)

    # ---------------------------------------------------------------- listing

    def files(self, name: str, limit: int | None = None) -> list[tuple[str, str]]:
        """(image, mask) paths of split ``name``, sorted by image path; images without a mask are left out
        (and noted). ``limit``: a fixed, seeded subset of that many pairs (folder.py's :func:`subset`)."""
        if name not in self.splits:
            raise DataError(f"{self.name} has no split '{name}' (folder {self._folder(self.images, name)}); "
                            f"available: {', '.join(self.splits)}")
        image_dir, mask_dir = self._folder(self.images, name), self._folder(self.masks, name)
        notes: list[str] = []
        others: list[str] = []
        images = image_files(image_dir, notes, others=others) if image_dir.is_dir() else []
        masks = set(image_files(mask_dir, notes)) if mask_dir.is_dir() else set()
        pairs, lonely, by_mask = [], [], {}
        for img in images:
            rel = Path(os.path.relpath(img, image_dir))
            mask = str(mask_dir / rel.parent / (rel.stem + self.mask_suffix))
            if mask in by_mask:
                raise DataError(f"images {by_mask[mask]} and {img} of split '{name}' have the same name stem, so "
                                f"they would share the mask {mask}; rename one")
            by_mask[mask] = img
            if mask in masks or os.path.isfile(mask):  # the set is the listing; isfile: a mask in a hidden place
                pairs.append((img, mask))
            else:
                lonely.append(img)
        orphans = sorted(masks - set(by_mask))
        if others:
            notes.append(f"ignored {len(others)} file(s) in {image_dir} that are not images by their extension, "
                         f"e.g. {sorted(others)[0]}; images are {', '.join(sorted(IMAGE_EXTENSIONS))}")
        if lonely:
            notes.append(f"skipped {len(lonely)} of {len(images)} images of split '{name}' of {self.root} that have "
                         f"no mask ({mask_dir}/<name>{self.mask_suffix}): {_some(lonely)}")
        if orphans:
            notes.append(f"ignored {len(orphans)} mask(s) of split '{name}' in {mask_dir} that have no image in "
                         f"{image_dir}: {_some(orphans)}")
        self.listing_notes[name], self.listing_skipped[name] = notes, lonely
        if not pairs:
            raise DataError(f"split '{name}' of {self.root} has no image with a mask: {len(images)} image(s) in "
                            f"{image_dir}, {len(masks)} mask(s) in {mask_dir}; a mask is named like its image, "
                            f"with the extension {self.mask_suffix}")
        if limit is not None and limit < len(pairs):
            pairs = [pairs[i] for i in subset([0] * len(pairs), limit)]
        return pairs

    # ---------------------------------------------------------------- split

    def split(self, name: str, size: int | tuple[int, int] | None = None, limit: int | None = None) -> SegSplit:
        """Decode split ``name``: images uint8 ``(N, 3, H, W)``, masks ``(N, H, W)`` (cached when ``cache_dir``
        is set).

        ``size``: ``None`` keeps the native frame size (all frames must share it), ``(h, w)`` or ``s``
        (meaning ``(s, s)``) resizes whole frames, no crop. ``limit``: a fixed subset of that many pairs; an
        unreadable pair is dropped after the subset is drawn, so a split can hold slightly fewer.
        """
        size = _check_size(size)
        if limit is not None and (isinstance(limit, bool) or int(limit) != limit or limit < 1):
            raise ValueError(f"limit must be a positive integer or None, got {limit!r}")
        pairs = self.files(name, limit)
        stem = key = None
        if self.cache_dir is not None:
            stem, key = self._cache_stem(name, size, limit, pairs)
            cached = _load_cache(stem, key)
            if cached is not None:
                images, masks, skipped, reasons = cached
                return self._split(name, images, masks, len(pairs), skipped, reasons)

        target = size or self._native_size(name, pairs)
        images, masks, skipped, reasons = self._decode(name, pairs, target, stem)
        if stem is None:
            return self._split(name, torch.from_numpy(images), torch.from_numpy(masks), len(pairs), skipped, reasons)
        os.replace(images, append_suffix(stem, ".images.npy"))
        os.replace(masks, append_suffix(stem, ".masks.npy"))
        meta = {"version": _CACHE_VERSION, "key": key, "root": str(self.root), "split": name, "size": size,
                "limit": limit, "classes": self.classes, "ignore_index": self.ignore_index,
                "skipped": skipped, "reasons": [reasons[p] for p in skipped]}
        write_text_atomic(append_suffix(stem, ".json"), json.dumps(meta))
        cached = _load_cache(stem, key)
        if cached is None:  # pragma: no cover - would mean the file system lost what was just written
            raise DataError(f"could not read back the cache just written at {stem}.*")
        return self._split(name, *cached[:2], len(pairs), skipped, reasons)

    def _split(self, name, images, masks, total, skipped, reasons) -> SegSplit:
        notes = list(self.listing_notes.get(name, []))
        if skipped:
            shown = "; ".join(f"{p} ({reasons[p]})" if reasons.get(p) else p for p in skipped[:5])
            more = f"; and {len(skipped) - 5} more" if len(skipped) > 5 else ""
            notes.append(f"skipped {len(skipped)} of {total} pairs in split '{name}' of {self.root} that could not "
                         f"be read (up to {MAX_UNREADABLE_FRACTION:.0%} may be): {shown}{more}")
        return SegSplit(images, masks, list(self.classes), ignore_index=self.ignore_index, name=name,
                        skipped=[*self.listing_skipped.get(name, []), *skipped], notes=notes)

    def _native_size(self, name: str, pairs) -> tuple[int, int]:
        """The one (H, W) of the split's images, read from their headers; a DataError if they differ."""
        seen: dict[tuple[int, int], str] = {}  # (H, W) -> the first image of that size
        sizes = parallel_map(_frame_size, [p[0] for p in pairs], min(self.workers, max(1, len(pairs) // 256)))
        try:
            for (img, _), hw in zip(pairs, sizes):
                if hw is not None and seen.setdefault(hw, img) and len(seen) > 1:
                    (a, ha), (b, hb) = [(seen[s], s) for s in seen]
                    raise DataError(
                        f"the frames of split '{name}' of {self.root} differ in size: {a} is {ha[1]}x{ha[0]} and {b} "
                        f"is {hb[1]}x{hb[0]} (W x H); pass size=(h, w) to resize every frame to one size")
        finally:
            sizes.close()
        if not seen:
            raise DataError(f"none of the {len(pairs)} images of split '{name}' of {self.root} can be read, "
                            f"e.g. {pairs[0][0]}")
        return next(iter(seen))

    # ---------------------------------------------------------------- decoding

    def _decode(self, split, pairs, size, stem):
        """Decode ``pairs`` at ``size``: (images, masks, skipped image paths, reasons); images and masks are
        arrays, or the paths of temporary .npy files beside ``stem`` when caching."""
        n, (h, w) = len(pairs), size
        outs = [_Rows(stem, ".images.npy", (n, 3, h, w), np.uint8), _Rows(stem, ".masks.npy", (n, h, w), self.dtype)]
        skipped: list[str] = []
        reasons: dict[str, str] = {}
        task = partial(_decode_pair, size=size, num_classes=len(self.classes), ignore_index=self.ignore_index,
                       dtype=self.dtype)
        results = parallel_map(task, pairs, min(self.workers, max(1, n // 32)))
        try:
            with tqdm(total=n, desc=f"decode {self.name}/{split} {w}x{h}", unit="pair", disable=None,
                      leave=False) as bar:
                good = 0
                for (img_path, _), (img, mask, problem) in zip(pairs, results):
                    bar.update(1)
                    if problem is None:
                        outs[0].array[good], outs[1].array[good] = img, mask
                        good += 1
                    elif problem[0] == "bad":
                        raise DataError(f"split '{split}' of {self.root}: {problem[1]}")
                    else:
                        skipped.append(img_path)
                        reasons[img_path] = problem[1]
            if len(skipped) > MAX_UNREADABLE_FRACTION * n:
                examples = "; ".join(f"{p} ({reasons[p]})" for p in skipped[:3])
                raise DataError(f"{len(skipped)} of {n} pairs in split '{split}' of {self.root} could not be read "
                                f"(more than {MAX_UNREADABLE_FRACTION:.0%} allowed), e.g. {examples}. "
                                f"Fix or remove them.")
            return (*(o.finish(good) for o in outs), skipped, reasons)
        except BaseException:
            for o in outs:
                o.discard()
            raise
        finally:
            results.close()  # stops the worker pool early on an error

    # ---------------------------------------------------------------- cache

    def _cache_stem(self, split, size, limit, pairs) -> tuple[Path, str]:
        h = hashlib.sha256()
        header = [_CACHE_VERSION, str(self.root), split, size, limit, self.classes, self.ignore_index,
                  self.images, self.masks, self.mask_suffix]
        h.update(json.dumps(header).encode())
        for pair in pairs:
            for p in pair:  # path bytes as on disk: a name that is not UTF-8 hashes too
                try:
                    st = os.stat(p)
                    h.update(os.fsencode(f"\n{os.path.relpath(p, self.root)}\t{st.st_size}\t{st.st_mtime_ns}"))
                except OSError:
                    h.update(os.fsencode(f"\n{os.path.relpath(p, self.root)}\t?"))
        key = h.hexdigest()
        parts = [safe_name(self.name), split, "seg", "native" if size is None else f"{size[0]}x{size[1]}"]
        if limit is not None:
            parts.append(f"limit{limit}")
        parts.append(key[:16])
        return self.cache_dir / "decoded" / "-".join(parts), key


def _check_size(size) -> tuple[int, int] | None:
    if size is None:
        return None
    hw = (size, size) if isinstance(size, int) else tuple(size) if isinstance(size, (tuple, list)) else ()
    if len(hw) != 2 or any(isinstance(v, bool) or not isinstance(v, int) or v < 1 for v in hw):
        raise ValueError(f"size must be None, a positive integer or (h, w), got {size!r}")
    return hw


def _some(paths: list[str], k: int = 5) -> str:
    return ", ".join(paths[:k]) + (f" and {len(paths) - k} more" if len(paths) > k else "")


class _Rows:
    """An ``(n, ...)`` array filled row by row: in memory, or a temporary .npy memory map beside ``stem``
    (as folder.py decodes, so a large split never has to fit in memory twice)."""

    def __init__(self, stem: Path | None, suffix: str, shape, dtype):
        self.tmp = None
        if stem is None:
            self.array = np.empty(shape, dtype=dtype)
            return
        stem.parent.mkdir(parents=True, exist_ok=True)
        self.stem, self.suffix = stem, suffix
        self.tmp = self._temp()
        self.array = np.lib.format.open_memmap(self.tmp, mode="w+", dtype=dtype, shape=shape)

    def _temp(self) -> str:
        fd, tmp = tempfile.mkstemp(prefix=f".{self.stem.name}.", suffix=f"{self.suffix}.tmp", dir=self.stem.parent)
        os.close(fd)
        return tmp

    def finish(self, good: int):
        """The first ``good`` rows: an array, or the temporary file's path (compacted if rows were skipped)."""
        if self.tmp is None:
            return self.array if good == len(self.array) else self.array[:good].copy()
        if good < len(self.array):
            tmp2 = self._temp()
            out = np.lib.format.open_memmap(tmp2, mode="w+", dtype=self.array.dtype,
                                            shape=(good, *self.array.shape[1:]))
            out[:] = self.array[:good]
            out.flush()
            del out
            remove_quietly(self.tmp)
            self.tmp = tmp2
        else:
            self.array.flush()
        self.array = None
        return self.tmp

    def discard(self) -> None:
        self.array = None
        if self.tmp is not None:
            remove_quietly(self.tmp)


def _load_cache(stem: Path, key: str):
    """(images, masks, skipped, reasons) of a complete cache entry with this key, else None."""
    paths = [append_suffix(stem, s) for s in (".json", ".images.npy", ".masks.npy")]
    if not all(p.is_file() for p in paths):
        return None
    try:
        meta = json.loads(paths[0].read_text())
        if meta.get("key") != key or meta.get("version") != _CACHE_VERSION:
            return None
        images, masks = np.load(paths[1], mmap_mode="c"), np.load(paths[2], mmap_mode="c")
        if images.dtype != np.uint8 or images.ndim != 4 or masks.shape != (images.shape[0], *images.shape[2:]):
            return None
        reasons = dict(zip(meta["skipped"], meta["reasons"]))
    except (OSError, ValueError, KeyError, TypeError):
        return None
    return torch.from_numpy(images), torch.from_numpy(masks), list(meta["skipped"]), reasons
