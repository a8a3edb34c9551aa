"""Datasets by name: ``synthetic``, the packed real datasets, or a path to an image folder.

:func:`open_source` is what the CLI calls with ``--data``:

* ``"synthetic"``: the built-in generated dataset (no files needed).
* a name in :data:`NAMED` (``cifar10``, ``imagenette``): an ImageNet-layout
  folder packed as ``<archive>.tar.gz`` with one top folder; or a name in
  :data:`SEGMENTATION` (``camvid``): frames with label maps, opened as a
  :class:`~cpvt.data.masks.MaskFolderSource` that gives
  :class:`~cpvt.data.base.SegSplit` objects. Either archive is used from,
  in this order,

  1. ``<data_root>/<top>/`` if it is already extracted there (has a ``train``,
     ``val`` or ``test`` folder),
  2. ``<cache_dir>/datasets/<top>/``, a copy extracted earlier by this module,
  3. ``<data_root>/<archive>``, extracted once into ``<cache_dir>/datasets/``.

* anything else: a path to an ImageNet-layout folder (``ROOT/train/<class>/<image>``).

The data root is resolved by :func:`resolve_data_root`, in this order: the
explicit ``data_root`` argument (``--data-root``), the ``CPVT_DATA_ROOT``
environment variable, ``../shared/data`` relative to the current directory if
that folder exists, else :data:`DEFAULT_DATA_ROOT` (``~/.cache/cpvt/data``).
The cache folder (extracted archives and decoded splits) is resolved by
:func:`resolve_cache_dir`: the explicit ``cache_dir`` argument, the
``CPVT_CACHE_DIR`` environment variable, else ``./.cache/cpvt`` relative to the
current directory (the repository's ``.gitignore`` ignores ``.cache/``).

Extraction is safe and atomic: ``tarfile``'s ``"data"`` filter refuses absolute
paths, ``..``, links out of the folder and special files; the archive is
extracted into a temporary folder next to the destination, a marker file
``.cpvt-extracted`` is written into it and only then is it renamed into place,
so an interrupted extraction never looks complete.
"""

from __future__ import annotations

import inspect
import json
import os
import shutil
import tarfile
import tempfile
from pathlib import Path
from typing import Any

from tqdm import tqdm

from .base import DataError, DataSource
from .folder import SPLIT_NAMES, ImageFolderSource
from .masks import MaskFolderSource

__all__ = [
    "CAMVID_CLASSES",
    "DEFAULT_CACHE_DIR",
    "DEFAULT_DATA_ROOT",
    "NAMED",
    "SEGMENTATION",
    "open_source",
    "resolve_cache_dir",
    "resolve_data_root",
]

#: name -> (archive file name in the data root, top folder inside the archive)
NAMED: dict[str, tuple[str, str]] = {
    "cifar10": ("cifar10-jpeg.tar.gz", "cifar10"),
    "imagenette": ("imagenette-224.tar.gz", "imagenette"),
}
#: CamVid's 11 classes (Brostow, Fauqueur and Cipolla 2009, "Semantic object classes in video: a
#: high-definition ground truth database"), as relabelled for the SegNet tutorial (Badrinarayanan, Kendall
#: and Cipolla 2017): label i is CAMVID_CLASSES[i]; label 11, Unlabelled (void), is the ignore index.
CAMVID_CLASSES = ["Sky", "Building", "Pole", "Road", "Pavement", "Tree", "SignSymbol", "Fence", "Car", "Pedestrian",
                  "Bicyclist"]
#: Segmentation datasets: name -> (archive file name in the data root, top folder inside the archive,
#: MaskFolderSource arguments). CamVid is SegNet's split (train 367, val 101, test 233 frames of 480x360):
#: ``<split>/<name>.jpg`` frames with ``<split>annot/<name>.png`` label maps; its void label stays 11 (the
#: split's ``ignore_index``), it is not rewritten to 255.
SEGMENTATION: dict[str, tuple[str, str, dict]] = {
    "camvid": ("camvid-360x480.tar.gz", "camvid",
               dict(images="{split}", masks="{split}annot", classes=CAMVID_CLASSES, ignore_index=11)),
}
#: The last resort for the data root (see :func:`resolve_data_root` for the full order).
DEFAULT_DATA_ROOT = Path("~/.cache/cpvt/data")
#: The cache folder when neither ``cache_dir`` nor ``CPVT_CACHE_DIR`` is given (relative to the cwd).
DEFAULT_CACHE_DIR = Path(".cache/cpvt")
MARKER = ".cpvt-extracted"


def resolve_data_root(data_root: str | os.PathLike | None = None) -> tuple[Path, str]:
    """The data root and where it came from.

    Order: the ``data_root`` argument, ``CPVT_DATA_ROOT``, ``../shared/data``
    (relative to the current folder, if it exists), ``~/.cache/cpvt/data``.
    """
    if data_root is not None:
        return Path(data_root).expanduser(), "data_root argument / --data-root"
    env = os.environ.get("CPVT_DATA_ROOT")
    if env:
        return Path(env).expanduser(), "CPVT_DATA_ROOT"
    shared = Path("..") / "shared" / "data"
    if shared.is_dir():
        return shared.resolve(), "../shared/data next to the current folder"
    return DEFAULT_DATA_ROOT.expanduser(), "default"


def resolve_cache_dir(cache_dir: str | os.PathLike | None = None) -> Path:
    """The cache folder: argument, ``CPVT_CACHE_DIR``, else ``./.cache/cpvt``."""
    if cache_dir is not None:
        return Path(cache_dir).expanduser()
    env = os.environ.get("CPVT_CACHE_DIR")
    if env:
        return Path(env).expanduser()
    return DEFAULT_CACHE_DIR


def _has_splits(folder: Path) -> bool:
    return folder.is_dir() and any((folder / s).is_dir() for s in SPLIT_NAMES)


def is_mask_folder(data: str | os.PathLike | None) -> bool:
    """Whether ``data`` is a folder in :class:`~cpvt.data.masks.MaskFolderSource`'s default layout:
    ``images/`` and ``masks/`` subfolders (an ImageNet-layout folder has split folders, ``train/`` ...)."""
    if data is None:
        return False
    path = Path(data).expanduser()
    return (path / "images").is_dir() and (path / "masks").is_dir()


def open_source(
    data: str,
    data_root: str | os.PathLike | None = None,
    cache_dir: str | os.PathLike | None = None,
    workers: int | None = None,
    seed: int = 0,
    options: dict[str, Any] | None = None,
) -> DataSource | MaskFolderSource:
    """The :class:`~cpvt.data.base.DataSource` for ``--data``.

    ``data`` is ``synthetic``, a name in :data:`NAMED` (case-insensitive), a
    name in :data:`SEGMENTATION` (a :class:`~cpvt.data.masks.MaskFolderSource`),
    a path to a folder of frames and label maps in :class:`~cpvt.data.masks.MaskFolderSource`'s default layout
    (:func:`is_mask_folder`), or a path to an ImageNet-layout folder. Raises :class:`~cpvt.data.base.DataError`
    saying where it looked when a named dataset is missing.

    ``options`` (a run's ``data_args``, ``--set data.KEY=VALUE``) go to the built-in synthetic source
    (:class:`~cpvt.data.synthetic.SyntheticShapes`: ``shape_colors``, ``noise``, ``train_zoom``, ...); the
    file-backed sources take none.
    """
    key = data.strip().lower()
    options = dict(options or {})
    if key == "synthetic":
        from .synthetic import SyntheticShapes

        valid = set(inspect.signature(SyntheticShapes).parameters) - {"seed"}
        unknown = sorted(set(options) - valid)
        if unknown:
            raise ValueError(f"unknown option(s) {', '.join(unknown)} for data 'synthetic'; "
                             f"valid: {', '.join(sorted(valid))}")
        return SyntheticShapes(seed=seed, **options)
    if options:
        raise ValueError(f"data options ({', '.join(sorted(options))}) are for the built-in 'synthetic' data; "
                         f"'{data}' takes none")
    cache = resolve_cache_dir(cache_dir)
    if key in NAMED:
        return ImageFolderSource(_named_folder(key, data_root, cache), name=key, cache_dir=cache, workers=workers)
    if key in SEGMENTATION:
        folder = _named_folder(key, data_root, cache)
        return MaskFolderSource(folder, name=key, cache_dir=cache, workers=workers, **SEGMENTATION[key][2])
    path = Path(data).expanduser()
    if is_mask_folder(path):
        return MaskFolderSource(path, cache_dir=cache, workers=workers)
    looks_like_path = os.sep in data or (os.altsep and os.altsep in data) or data.startswith((".", "~"))
    if path.exists() or looks_like_path:
        return ImageFolderSource(path, cache_dir=cache, workers=workers)
    raise DataError(
        f"unknown dataset '{data}': the named datasets are {', '.join([*NAMED, 'synthetic'])} (classification) "
        f"and {', '.join(SEGMENTATION)} (segmentation); "
        f"a path to an ImageNet-layout folder (ROOT/train/<class>/<image>) is also accepted"
    )


def _named_folder(name: str, data_root, cache: Path) -> Path:
    archive_name, top = NAMED[name] if name in NAMED else SEGMENTATION[name][:2]
    root, origin = resolve_data_root(data_root)
    extracted = root / top
    cached = cache / "datasets" / top
    archive = root / archive_name

    if _has_splits(extracted):
        return extracted
    if _cached_copy_ok(cached, archive):
        return cached
    if archive.is_file():
        return _extract(archive, top, cache / "datasets")
    raise DataError(
        f"dataset '{name}' not found. Looked for: the extracted folder {extracted}/ (with train/val/test inside), "
        f"an earlier extraction {cached}/, and the archive {archive} (data root {root}, from {origin}). "
        f"Put {archive_name} in {root}, or pass --data-root / set CPVT_DATA_ROOT to the folder that holds it"
    )


def _cached_copy_ok(folder: Path, archive: Path) -> bool:
    """An extraction by :func:`_extract` that finished, and matches the archive if the archive is there."""
    try:
        marker = json.loads((folder / MARKER).read_text())
    except (OSError, ValueError):
        return False
    if archive.is_file() and marker.get("archive_bytes") != archive.stat().st_size:
        return False  # the archive changed since: extract again
    return _has_splits(folder)


def _extract(archive: Path, top: str, dest: Path) -> Path:
    """Extract ``archive`` (whose single top folder is ``top``) into ``dest/top``, atomically; returns that folder."""
    if not hasattr(tarfile, "data_filter"):  # pragma: no cover - Python < 3.11.4
        raise DataError("extracting archives safely needs Python >= 3.11.4 (tarfile extraction filters)")
    dest.mkdir(parents=True, exist_ok=True)
    final = dest / top
    tmp = Path(tempfile.mkdtemp(prefix=f".extract-{top}-", dir=dest))
    try:
        try:
            with tarfile.open(archive, "r:*") as tf:
                members = tf.getmembers()
                bar = tqdm(members, desc=f"extract {archive.name} (once)", unit="file", disable=None, leave=False)
                tf.extractall(tmp, members=bar, filter="data")
        except (tarfile.TarError, EOFError, OSError) as e:
            raise DataError(f"cannot extract {archive}: {e} (is the archive complete?)") from e
        got = tmp / top
        if not _has_splits(got):
            inside = sorted(p.name for p in tmp.iterdir())
            raise DataError(
                f"archive {archive} should hold one folder '{top}/' with train/val/test inside; "
                f"it holds {inside[:8]}"
            )
        (got / MARKER).write_text(json.dumps({"archive": str(archive), "archive_bytes": archive.stat().st_size}))
        stale = None
        if final.exists():  # an incomplete or outdated copy: move it aside, then drop it
            stale = Path(tempfile.mkdtemp(prefix=f".stale-{top}-", dir=dest))
            os.replace(final, stale / top)
        try:
            os.replace(got, final)
        except OSError:
            if not _cached_copy_ok(final, archive):  # someone else finished first: use theirs
                raise
        if stale is not None:
            shutil.rmtree(stale, ignore_errors=True)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return final
