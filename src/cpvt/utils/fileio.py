"""Atomic file writes: the one helper behind checkpoints, decode caches and result records.

A file is written to a temporary name in its own folder, flushed to disk, then
renamed over the target (``os.replace``, atomic on POSIX file systems). A crash
at any moment leaves either the old file or the new one, never a torn one; the
temporary is removed on failure. Temporaries are named ``.<name>.<random>.tmp``
so a later run can recognise and delete what a killed writer left behind.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike, suffix: str = ".tmp", fsync: bool = True) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; when the block ends without error it becomes ``path``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=suffix, dir=path.parent)
    os.close(fd)
    try:
        yield Path(tmp)
        if fsync:
            with open(tmp, "rb") as f:
                os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:  # on failure; a temporary that cannot be removed either is left for remove_stale_temporaries
        with contextlib.suppress(OSError):  # never hide the error that got us here
            os.remove(tmp)


def write_text_atomic(path: str | os.PathLike, text: str, fsync: bool = True) -> None:
    """Write ``text`` to ``path`` atomically (see the module docstring)."""
    with atomic_path(path, fsync=fsync) as tmp:
        tmp.write_text(text)
