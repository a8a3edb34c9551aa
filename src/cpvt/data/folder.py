"""Image folders in the ImageNet layout, decoded once and cached on disk.

The layout is ``ROOT/<split>/<class>/<image>`` with ``<split>`` one of
``train``, ``val``, ``test``::

    ROOT/train/cat/0001.jpg
    ROOT/train/dog/0002.png
    ROOT/val/cat/0003.jpg

:class:`ImageFolderSource` turns one split into a :class:`~cpvt.data.base.Split`:
every image is decoded once (in parallel), converted to RGB, resized and
centre-cropped to ``size x size`` and stored as uint8 ``(N, 3, size, size)``.

Decisions worth knowing:

* **Classes** are the sorted sub-folder names of the ``train`` split (or of the
  first split present, in the order train, val, test). Every other split must
  use a subset of them (a split may lack a class, never add one); a label is
  the index of its folder name in that list. A class folder of that first split
  without images is a :class:`~cpvt.data.base.DataError` (the model would have
  a class it never sees).
* **Files**: images are found recursively inside each class folder by extension
  (:data:`IMAGE_EXTENSIONS`, case-insensitive), in sorted path order; hidden
  files and folders (name starting with ``.``, e.g. macOS ``._x.jpg``) and files
  with other extensions are ignored (the latter counted in ``Split.notes``).
  Symbolic links are followed, except a link
  back to a folder already listed (a loop, or a second way into a class folder),
  which is ignored and noted. Unreadable images (corrupt, truncated, not an
  image, a link to nowhere, or larger than ``PIL.Image.MAX_IMAGE_PIXELS``, a
  possible decompression bomb) are skipped and listed in ``Split.skipped``; more
  than 1 % of a split unreadable is a :class:`~cpvt.data.base.DataError`.
  Whatever a split leaves out is counted and named in ``Split.notes``, which
  training and evaluation print. File names need not be UTF-8. ``limit=N`` keeps a
  fixed, class-balanced subset of N files (:func:`subset`: seeded shuffle per
  class, then round-robin over the classes), not the first N.
* **Colour**: every mode becomes RGB. Transparent images (RGBA, LA, PA, and
  palette or grey images with a transparent colour) are composited over
  **white** (what a viewer shows); 16-bit grey is scaled to 8 bits (not clipped,
  which is what a plain Pillow ``convert`` does); CMYK, 1-bit, palette and
  YCbCr go through Pillow's ``convert("RGB")``. The EXIF orientation tag is
  applied, so photos come out upright. Animated images give their first frame.
* **Geometry** (see :func:`resize_and_crop`): ``mode="train"`` resizes the
  shorter side to ``size`` (bicubic, antialiased when shrinking, which is
  Pillow's ``Image.resize`` behaviour) and centre-crops; ``mode="eval"``
  resizes the shorter side to ``math.floor(size / crop_pct)`` and centre-crops
  ``size``. The longer side is ``int(short * long / short_in)`` and the crop
  offset ``round((side - size) / 2)``, as in torchvision's ``Resize`` and
  ``CenterCrop``.
* **Cache**: with ``cache_dir`` the decoded split is written once to
  ``cache_dir/decoded/<name>-<split>-<size>px-<mode>...-<key>.npy`` (images)
  plus a ``.json`` (labels, classes, skipped files). The key hashes the root's
  absolute path, the split, size, mode, crop_pct, limit, the class list and a
  fingerprint of every selected file (relative path, byte size, mtime), so an
  edited folder is decoded again. Files are written to a temporary name in the
  same folder and renamed into place, so an interrupted run never leaves a
  cache entry that looks complete. A cached split is loaded back as a
  **copy-on-write memory map** (``numpy.load(mmap_mode="c")``): pages come from
  the OS page cache on demand, and in-place writes to ``Split.images`` stay
  private to the process (the file is never modified). Old entries are never
  deleted automatically; the whole cache folder can be removed at any time.
"""

from __future__ import annotations

import hashlib
import json
import math
import multiprocessing
import os
import re
import tempfile
import warnings
from functools import partial
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageOps
from tqdm import tqdm

from ..utils.fileio import write_text_atomic
from .base import DataError, Split

__all__ = [
    "IMAGE_EXTENSIONS",
    "MAX_UNREADABLE_FRACTION",
    "SPLIT_NAMES",
    "ImageFolderSource",
    "load_image",
    "resize_and_crop",
    "subset",
    "survey",
    "to_rgb",
]

#: File extensions read as images (compared lower-case).
IMAGE_EXTENSIONS = frozenset({".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff"})
#: Split folder names recognised under the root, in this order.
SPLIT_NAMES = ("train", "val", "test")
#: A split with a larger fraction of unreadable files is an error.
MAX_UNREADABLE_FRACTION = 0.01
#: Bump when the cached array format or the preprocessing changes.
_CACHE_VERSION = 1
#: Composite colour for transparent pixels.
_BACKGROUND = (255, 255, 255)
MODES = ("train", "eval")


# --------------------------------------------------------------------------- decoding


def to_rgb(im: Image.Image) -> Image.Image:
    """Convert any Pillow image to 8-bit RGB (transparency composited over white)."""
    if im.mode == "RGB" and "transparency" not in im.info:
        return im
    if im.mode in ("I;16", "I;16L", "I;16B", "I;16N", "I", "F"):
        a = np.asarray(im)
        if im.mode == "F":
            a = a.astype(np.float64)
            if a.size and np.nanmax(a) <= 1.0:  # float images are usually [0, 1]
                a = a * 255.0
            a = np.nan_to_num(a)
        elif im.mode == "I" and (not a.size or a.max() <= 255):
            a = a.astype(np.float64)  # 32-bit container holding 8-bit values
        else:
            a = a.astype(np.float64) / 257.0  # 16-bit range -> 8-bit
        a = np.clip(np.rint(a), 0, 255).astype(np.uint8)
        return Image.fromarray(a, "L").convert("RGB")
    has_alpha = im.mode in ("RGBA", "LA", "PA", "RGBa", "La") or "transparency" in im.info
    if has_alpha:
        rgba = im.convert("RGBA")
        out = Image.new("RGBA", rgba.size, (*_BACKGROUND, 255))
        out.alpha_composite(rgba)
        return out.convert("RGB")
    return im.convert("RGB")


def resize_and_crop(im: Image.Image, size: int, mode: str = "train", crop_pct: float = 0.875) -> Image.Image:
    """Resize the shorter side (bicubic) and centre-crop to ``size x size``.

    ``mode="train"`` scales the shorter side to ``size``; ``mode="eval"`` to
    ``math.floor(size / crop_pct)``, so the crop keeps the central ``crop_pct``.
    """
    scale = size if mode == "train" else int(math.floor(size / crop_pct))
    w, h = im.size
    if w <= h:
        new_w, new_h = scale, int(scale * h / w)
    else:
        new_w, new_h = int(scale * w / h), scale
    if (new_w, new_h) != (w, h):
        im = im.resize((new_w, new_h), Image.Resampling.BICUBIC)
    left = int(round((new_w - size) / 2.0))
    top = int(round((new_h - size) / 2.0))
    if (left, top, new_w, new_h) != (0, 0, size, size):
        im = im.crop((left, top, left + size, top + size))
    return im


def open_image(path: str | os.PathLike) -> Image.Image:
    """An image file, decoded, with its EXIF orientation applied (photos come out upright).

    Raises whatever Pillow raises for an unreadable file, including for an image larger than
    ``PIL.Image.MAX_IMAGE_PIXELS`` (a possible decompression bomb: Pillow's warning is made an error).
    """
    with warnings.catch_warnings():
        warnings.simplefilter("error", Image.DecompressionBombWarning)
        with Image.open(path) as im:
            im.load()
            return ImageOps.exif_transpose(im) or im


def load_image(path: str | os.PathLike, size: int, mode: str = "train", crop_pct: float = 0.875) -> np.ndarray:
    """Read one image file as uint8 ``(3, size, size)`` with the preprocessing of :class:`ImageFolderSource`
    (raises what :func:`open_image` raises)."""
    return image_array(open_image(path), size, mode, crop_pct)


def image_array(im: Image.Image, size: int, mode: str = "eval", crop_pct: float = 0.875) -> np.ndarray:
    """An opened image as uint8 ``(3, size, size)``: EXIF orientation applied, RGB, resized and cropped."""
    im = ImageOps.exif_transpose(im) or im
    im = resize_and_crop(to_rgb(im), size, mode, crop_pct)
    return np.ascontiguousarray(np.asarray(im, dtype=np.uint8).transpose(2, 0, 1))


def subset(labels: list[int], limit: int, seed: int = 0) -> list[int]:
    """Indices of a fixed, class-balanced subset of ``limit`` items, in their original order.

    Each class's items are shuffled with a fixed seed, then taken round-robin
    over the classes (one from each, then a second from each, ...), so every
    class is represented once ``limit`` reaches the number of classes and the
    same ``limit`` always gives the same subset (a larger one contains it).
    """
    rng = np.random.default_rng(seed)
    by_class: dict[int, list[int]] = {}
    for i, y in enumerate(labels):
        by_class.setdefault(y, []).append(i)
    queues = [[members[j] for j in rng.permutation(len(members))] for _, members in sorted(by_class.items())]
    order = [q[r] for r in range(max(map(len, queues), default=0)) for q in queues if r < len(q)]
    return sorted(order[:limit])


def _decode_one(path: str, size: int, mode: str, crop_pct: float) -> tuple[np.ndarray | None, str | None]:
    """Worker task: the image, or None and the reason it could not be read."""
    try:
        return load_image(path, size, mode, crop_pct), None
    except Exception as e:  # noqa: BLE001 - any failure means "unreadable file"
        reason = str(e).splitlines()[0] if str(e) else type(e).__name__
        return None, f"{type(e).__name__}: {reason}"


# --------------------------------------------------------------------------- the source


def survey(root: str | os.PathLike, sample: int = 64) -> dict[str, int]:
    """What :func:`cpvt.train.config.folder_defaults` needs to fit a recipe to an image folder, read cheaply.

    Returns ``images`` (the files in the first split, normally ``train``), ``classes``, and ``side``: the
    median shorter side in pixels of up to ``sample`` of those files, spread evenly over the sorted list
    (only headers are read; unreadable files are left out here and reported when the split is decoded;
    0 if none could be read). The layout is checked as :class:`ImageFolderSource` checks it.
    """
    source = ImageFolderSource(root, workers=0)
    paths, _ = source.files(source.splits[0])
    picks = [paths[i * len(paths) // min(sample, len(paths))] for i in range(min(sample, len(paths)))]
    sides = []
    for p in picks:
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                with Image.open(p) as im:
                    sides.append(min(im.size))
        except Exception:  # noqa: BLE001 - reported with its reason when the split is decoded
            continue
    return {"images": len(paths), "classes": len(source.classes),
            "side": int(np.median(sides)) if sides else 0}


def _visible_dirs(folder: Path) -> list[str]:
    try:
        return sorted(e.name for e in os.scandir(folder) if not e.name.startswith(".") and e.is_dir())
    except OSError as e:
        raise DataError(f"cannot list folder {folder}: {e}") from e


def image_files(folder: Path, notes: list[str] | None = None, seen: set[tuple[int, int]] | None = None,
                 others: list[str] | None = None) -> list[str]:
    """Image files under ``folder`` (recursive, hidden entries skipped, symbolic links followed), sorted.

    A sub-folder that leads back to one of its own ancestors (a symbolic link loop, which would list the
    same files again and again) or to a folder in ``seen`` (already listed, e.g. another class folder of
    the split; updated here) is ignored, and so is one that cannot be listed; each is described in
    ``notes``, so nothing is left out silently. Visible files without an image extension go to ``others``.
    """
    found: list[str] = []
    notes = [] if notes is None else notes
    seen = set() if seen is None else seen
    seen.add(_identity(folder) or (-1, -1))

    def unreadable(e: OSError) -> None:
        notes.append(f"ignored folder {e.filename}: cannot list it ({e.strerror or e})")

    for dirpath, dirnames, filenames in os.walk(folder, followlinks=True, onerror=unreadable):
        here = os.path.realpath(dirpath)
        keep = []
        for d in sorted(d for d in dirnames if not d.startswith(".")):
            path = os.path.join(dirpath, d)
            target, ident = os.path.realpath(path), _identity(path)
            if ident is None:
                notes.append(f"ignored folder {path}: cannot read it")
            elif ident in seen or os.path.commonpath([here, target]) == target:
                notes.append(f"ignored folder {path}: it leads to {target}, which is already listed (a symbolic "
                             f"link loop, or a link to another listed folder)")
            else:
                seen.add(ident)
                keep.append(d)
        dirnames[:] = keep
        for f in filenames:
            if f.startswith("."):
                continue
            if os.path.splitext(f)[1].lower() in IMAGE_EXTENSIONS:
                found.append(os.path.join(dirpath, f))
            elif others is not None:
                others.append(os.path.join(dirpath, f))
    return sorted(found)


def _identity(path) -> tuple[int, int] | None:
    """(device, inode) of what ``path`` leads to, None if it cannot be read."""
    try:
        st = os.stat(path)
    except OSError:
        return None
    return st.st_dev, st.st_ino


def safe_name(text: str) -> str:
    """``text`` as a file-name fragment: runs of anything but letters, digits, ``_ . -`` become ``_``."""
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", text).strip("._") or "data"


class ImageFolderSource:
    """A :class:`~cpvt.data.base.DataSource` over ``ROOT/{train,val,test}/<class>/<image>``.

    Args:
        root: the folder holding the split folders.
        name: the dataset's name (default: the root folder's name); used in
            messages and cache file names.
        cache_dir: where decoded splits are cached (``cache_dir/decoded/``);
            ``None`` decodes in memory on every call.
        workers: decoding processes; default ``min(usable CPUs, 8)``;
            0 or 1 decodes in this process.
    """

    def __init__(
        self,
        root: str | os.PathLike,
        name: str | None = None,
        cache_dir: str | os.PathLike | None = None,
        workers: int | None = None,
    ):
        self.root = Path(root).expanduser()
        if not self.root.exists():
            raise DataError(f"data folder {self.root} does not exist")
        if not self.root.is_dir():
            raise DataError(f"data folder {self.root} is not a folder")
        self.root = self.root.resolve()
        self.name = name or self.root.name
        self.cache_dir = Path(cache_dir).expanduser() if cache_dir is not None else None
        self.workers = min(cpu_count(), 8) if workers is None else max(0, int(workers))

        self.splits = tuple(s for s in SPLIT_NAMES if (self.root / s).is_dir())
        if not self.splits:
            found = _visible_dirs(self.root)
            hint = f" (it has {', '.join(found[:8])}{', ...' if len(found) > 8 else ''})" if found else " (it is empty)"
            raise DataError(
                f"no split folders in {self.root}{hint}. Expected the ImageNet layout "
                f"ROOT/train/<class>/<image> and ROOT/val/<class>/<image> (or ROOT/test/...)"
            )
        self.listing_notes: dict[str, list[str]] = {}  # per split: links and folders the last listing ignored
        self._split_classes: dict[str, list[str]] = {}
        for s in self.splits:
            classes = _visible_dirs(self.root / s)
            if not classes:
                raise DataError(
                    f"split folder {self.root / s} has no class subfolders; "
                    f"expected {self.root / s}/<class>/<image>"
                )
            self._split_classes[s] = classes
        self.classes: list[str] = self._split_classes[self.splits[0]]
        known = set(self.classes)
        for s in self.splits[1:]:
            extra = [c for c in self._split_classes[s] if c not in known]
            if extra:
                raise DataError(
                    f"split '{s}' of {self.root} has class folder(s) {extra[:5]}{' ...' if len(extra) > 5 else ''} "
                    f"that split '{self.splits[0]}' lacks; every split must use the classes of "
                    f"'{self.splits[0]}' ({len(self.classes)} classes)"
                )

    def __repr__(self) -> str:
        return (
            f"ImageFolderSource({str(self.root)!r}, name={self.name!r}, "
            f"splits={self.splits}, classes={len(self.classes)})"
        )

    # ---------------------------------------------------------------- listing

    def files(self, name: str, limit: int | None = None) -> tuple[list[str], list[int]]:
        """Image paths and labels of split ``name``, sorted by class, then path.

        ``limit``: keep only a fixed subset of that many images (see :func:`subset`).
        """
        self._check_split(name)
        paths: list[str] = []
        labels: list[int] = []
        notes: list[str] = []
        empty: list[str] = []
        index = {c: i for i, c in enumerate(self.classes)}
        # the root, the split and its class folders are listed once, as themselves: a link into one is ignored
        seen = {_identity(p) for p in (self.root, self.root / name, *(self.root / name / c for c in
                                                                       self._split_classes[name]))} - {None}
        others: list[str] = []
        for c in self._split_classes[name]:
            found = image_files(self.root / name / c, notes, seen, others)
            paths += found
            labels += [index[c]] * len(found)
            if not found:
                empty.append(c)
        if others:
            kinds = sorted({os.path.splitext(p)[1].lower() or "no extension" for p in others})
            notes.append(f"ignored {len(others)} file(s) in split '{name}' of {self.root} that are not images by "
                         f"their extension ({', '.join(kinds[:8])}{' ...' if len(kinds) > 8 else ''}), e.g. "
                         f"{sorted(others)[0]}; images are {', '.join(sorted(IMAGE_EXTENSIONS))}")
        self.listing_notes[name] = notes
        if empty and paths and name == self.splits[0]:  # the split that defines the classes
            shown = ", ".join(empty[:5]) + (" ..." if len(empty) > 5 else "")
            raise DataError(
                f"class folder(s) {shown} of split '{name}' of {self.root} hold no images ({len(empty)} of "
                f"{len(self.classes)} classes): a model would be built with a class it never sees. Add images "
                f"(looked for {', '.join(sorted(IMAGE_EXTENSIONS))}) or remove the empty folder(s)"
            )
        if not paths:
            raise DataError(
                f"split '{name}' of {self.root} has no images: looked for "
                f"{', '.join(sorted(IMAGE_EXTENSIONS))} files in its {len(self._split_classes[name])} class folder(s)"
            )
        if limit is not None and limit < len(paths):
            keep = subset(labels, limit)
            paths, labels = [paths[i] for i in keep], [labels[i] for i in keep]
        return paths, labels

    def _check_split(self, name: str) -> None:
        if name not in self.splits:
            raise DataError(
                f"{self.name} has no split '{name}' (folder {self.root / name}); available: {', '.join(self.splits)}"
            )

    # ---------------------------------------------------------------- split

    def split(
        self,
        name: str,
        size: int,
        mode: str = "train",
        crop_pct: float = 0.875,
        limit: int | None = None,
    ) -> Split:
        """Decode split ``name`` to uint8 ``(N, 3, size, size)`` (cached on disk when ``cache_dir`` is set).

        ``limit``: only a fixed subset of that many images (the same on every
        call, every class represented; see :func:`subset`), for quick runs and
        checks on large folders. Unreadable files are dropped after the subset
        is drawn, so a split can hold slightly fewer than ``limit``.
        """
        if mode not in MODES:
            raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
        if isinstance(size, bool) or not isinstance(size, int) or size < 1:
            raise ValueError(f"size must be a positive integer, got {size!r}")
        if not 0 < crop_pct <= 1:
            raise ValueError(f"crop_pct must be in (0, 1], got {crop_pct!r}")
        if limit is not None and (isinstance(limit, bool) or int(limit) != limit or limit < 1):
            raise ValueError(f"limit must be a positive integer or None, got {limit!r}")
        crop_pct = float(crop_pct) if mode == "eval" else 1.0  # train mode does not use it
        paths, labels = self.files(name, limit)

        stem = key = None
        if self.cache_dir is not None:
            stem, key = self._cache_stem(name, size, mode, crop_pct, limit, paths)
            cached = self._load_cache(stem, key, size)
            if cached is not None:
                images, labels_c, skipped, reasons = cached
                return Split(images, labels_c, list(self.classes), name=name, skipped=skipped,
                             notes=self._notes(name, len(paths), skipped, reasons))

        images, keep, skipped, reasons = self._decode(name, paths, size, mode, crop_pct, stem)
        kept_labels = [labels[i] for i in keep]
        if len(skipped) > MAX_UNREADABLE_FRACTION * len(paths):
            if stem is not None and isinstance(images, str):
                remove_quietly(images)
            examples = "; ".join(f"{p} ({reasons[p]})" for p in skipped[:3])
            raise DataError(
                f"{len(skipped)} of {len(paths)} files in split '{name}' of {self.root} could not be read as "
                f"images (more than {MAX_UNREADABLE_FRACTION:.0%} allowed), e.g. {examples}. "
                f"Fix or remove them."
            )
        notes = self._notes(name, len(paths), skipped, reasons)
        if stem is None:
            return Split(torch.from_numpy(images), torch.tensor(kept_labels, dtype=torch.int64),
                         list(self.classes), name=name, skipped=skipped, notes=notes)

        meta = {
            "version": _CACHE_VERSION, "key": key, "root": str(self.root), "split": name, "size": size,
            "mode": mode, "crop_pct": crop_pct, "limit": limit, "count": len(keep),
            "classes": self.classes, "labels": kept_labels, "skipped": skipped,
            "reasons": [reasons[p] for p in skipped],
        }
        os.replace(images, append_suffix(stem, ".npy"))
        write_text_atomic(append_suffix(stem, ".json"), json.dumps(meta))
        cached = self._load_cache(stem, key, size)
        if cached is None:  # pragma: no cover - would mean the file system lost what was just written
            raise DataError(f"could not read back the cache just written at {stem}.npy")
        images_t, labels_t, skipped, _ = cached
        return Split(images_t, labels_t, list(self.classes), name=name, skipped=skipped, notes=notes)

    def _notes(self, name: str, total: int, skipped: list[str], reasons: dict[str, str]) -> list[str]:
        """What split ``name`` left out, one line each: the listing's ignored folders, then the unreadable
        files (counted, the first few named with the reason)."""
        notes = list(self.listing_notes.get(name, []))
        if skipped:
            shown = "; ".join(f"{p} ({reasons[p]})" if reasons.get(p) else p for p in skipped[:5])
            more = f"; and {len(skipped) - 5} more (Split.skipped lists them all)" if len(skipped) > 5 else ""
            notes.append(f"skipped {len(skipped)} of {total} files in split '{name}' of {self.root} that could "
                         f"not be read as images (up to {MAX_UNREADABLE_FRACTION:.0%} may be): {shown}{more}")
        return notes

    # ---------------------------------------------------------------- decoding

    def _decode(self, split, paths, size, mode, crop_pct, stem):
        """Decode ``paths``; returns (array or temp .npy path, kept indices, skipped paths, reasons)."""
        n = len(paths)
        shape = (n, 3, size, size)
        tmp = None
        if stem is not None:
            stem.parent.mkdir(parents=True, exist_ok=True)
            fd, tmp = tempfile.mkstemp(prefix=f".{stem.name}.", suffix=".npy.tmp", dir=stem.parent)
            os.close(fd)
            out = np.lib.format.open_memmap(tmp, mode="w+", dtype=np.uint8, shape=shape)
        else:
            out = np.empty(shape, dtype=np.uint8)
        keep: list[int] = []
        skipped: list[str] = []
        reasons: dict[str, str] = {}
        task = partial(_decode_one, size=size, mode=mode, crop_pct=crop_pct)
        procs = min(self.workers, max(1, n // 32))
        try:
            with tqdm(total=n, desc=f"decode {self.name}/{split} {size}px {mode}", unit="img",
                      disable=None, leave=False) as bar:
                for i, (img, err) in enumerate(parallel_map(task, paths, procs)):
                    if img is None:
                        skipped.append(paths[i])
                        reasons[paths[i]] = err
                    else:
                        out[len(keep)] = img
                        keep.append(i)
                    bar.update(1)
            good = len(keep)
            if tmp is None:
                return (out if good == n else out[:good].copy()), keep, skipped, reasons
            if good < n and good > 0:  # compact: a new file of the right shape
                fd, tmp2 = tempfile.mkstemp(prefix=f".{stem.name}.", suffix=".npy.tmp", dir=stem.parent)
                os.close(fd)
                out2 = np.lib.format.open_memmap(tmp2, mode="w+", dtype=np.uint8, shape=(good, 3, size, size))
                out2[:] = out[:good]
                out2.flush()
                del out2, out
                remove_quietly(tmp)
                tmp = tmp2
            else:
                out.flush()
                del out
            return tmp, keep, skipped, reasons
        except BaseException:
            if tmp is not None:
                remove_quietly(tmp)
            raise

    # ---------------------------------------------------------------- cache

    def _cache_stem(self, split, size, mode, crop_pct, limit, paths) -> tuple[Path, str]:
        h = hashlib.sha256()
        header = [_CACHE_VERSION, str(self.root), split, size, mode, crop_pct, limit, self.classes]
        h.update(json.dumps(header).encode())
        base = str(self.root / split)
        for p in paths:  # file names as the bytes on disk: a name that is not UTF-8 hashes too
            try:
                st = os.stat(p)
                h.update(os.fsencode(f"\n{os.path.relpath(p, base)}\t{st.st_size}\t{st.st_mtime_ns}"))
            except OSError:
                h.update(os.fsencode(f"\n{os.path.relpath(p, base)}\t?"))
        key = h.hexdigest()
        parts = [safe_name(self.name), split, f"{size}px", mode]
        if mode == "eval":
            parts.append(f"crop{crop_pct:g}")
        if limit is not None:
            parts.append(f"limit{limit}")
        parts.append(key[:16])
        return self.cache_dir / "decoded" / "-".join(parts), key

    def _load_cache(self, stem: Path, key: str, size: int):
        meta_path, npy_path = append_suffix(stem, ".json"), append_suffix(stem, ".npy")
        if not (meta_path.is_file() and npy_path.is_file()):
            return None
        try:
            meta = json.loads(meta_path.read_text())
            if meta.get("key") != key or meta.get("version") != _CACHE_VERSION:
                return None
            images = np.load(npy_path, mmap_mode="c")
            if images.dtype != np.uint8 or images.shape != (meta["count"], 3, size, size):
                return None
            if len(meta["labels"]) != meta["count"]:
                return None
            reasons = dict(zip(meta["skipped"], meta.get("reasons", [])))  # entries written before reasons: none
        except (OSError, ValueError, KeyError, TypeError):
            return None
        return (torch.from_numpy(images), torch.tensor(meta["labels"], dtype=torch.int64), list(meta["skipped"]),
                reasons)


def parallel_map(task, items, procs):
    """``map(task, items)`` in order, over ``procs`` processes (in-process when procs <= 1)."""
    if procs <= 1:
        yield from map(task, items)
        return
    try:
        pool = multiprocessing.get_context().Pool(procs)
    except (OSError, ImportError):  # no semaphores / fork in this environment: decode here
        yield from map(task, items)
        return
    with pool:
        chunk = max(1, min(64, len(items) // (procs * 8)))
        yield from pool.imap(task, items, chunksize=chunk)


def append_suffix(stem: Path, suffix: str) -> Path:
    """``stem`` + ``suffix`` (not ``Path.with_suffix``: stems contain dots, e.g. ``crop0.875``)."""
    return stem.parent / (stem.name + suffix)


def cpu_count() -> int:
    try:
        return len(os.sched_getaffinity(0))  # the CPUs this process may use (containers, taskset)
    except (AttributeError, OSError):
        return os.cpu_count() or 1


def remove_quietly(path) -> None:
    try:
        os.remove(path)
    except OSError:
        pass


