"""One process per run folder.

A run folder written by two processes at once ends with every epoch logged
twice and checkpoints from whichever process wrote last. :func:`run_lock`
creates ``run.lock`` with ``O_EXCL`` (atomic on local file systems) and writes
its holder into it: pid, host and start time. A second process gets a
:class:`~cpvt.utils.errors.RunLocked` error naming the holder. A lock whose holder
died on this host (its pid no longer exists) is taken over with a warning; a
lock from another host is never taken over, since its pid cannot be checked
from here.

The lock is re-entrant within one process, so ``cpvt reproduce`` can hold a
run folder across training and evaluation while :func:`cpvt.train.engine.train`
takes the same lock inside.
"""

from __future__ import annotations

import json
import os
import socket
import time
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from ..utils.errors import RunLocked

LOCK_NAME = "run.lock"


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, owned by someone else
        return True
    return True


def read_holder(path: Path, wait_s: float = 1.0) -> dict[str, Any] | None:
    """The holder written in a lock file, or None when it stays empty or unreadable for ``wait_s``
    (a holder killed between creating and writing it)."""
    deadline = time.monotonic() + wait_s
    while True:
        try:
            holder = json.loads(path.read_text())
            if isinstance(holder, dict) and isinstance(holder.get("pid"), int):
                return holder
        except FileNotFoundError:
            return {}
        except (OSError, ValueError):
            pass
        if time.monotonic() >= deadline:
            return None
        time.sleep(0.05)


def _acquire(folder: Path, me: dict[str, Any]) -> bool:
    """Create the lock for ``me``: True if created, False if ``me`` already holds it (re-entrant)."""
    path = folder / LOCK_NAME
    while True:
        try:
            fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
        except FileExistsError:
            holder = read_holder(path)
            if holder == {}:  # released while we looked: try again
                continue
            if holder is not None and holder["pid"] == me["pid"] and holder.get("host") == me["host"]:
                return False
            if holder is not None and (holder.get("host") != me["host"] or _alive(holder["pid"])):
                raise RunLocked(f"{folder} is in use by pid {holder['pid']} on {holder.get('host')} since "
                                f"{holder.get('started')}; wait for it to finish, or remove {path} if that "
                                "process is gone") from None
            who = "an unreadable holder" if holder is None else f"pid {holder['pid']} (no longer running)"
            warnings.warn(f"taking over the stale lock on {folder} left by {who}", stacklevel=4)
            path.unlink(missing_ok=True)
            continue
        with os.fdopen(fd, "w") as f:
            json.dump(me, f)
        return True


@contextmanager
def run_lock(folder: str | Path) -> Iterator[None]:
    """Hold ``folder/run.lock`` for the body; raises :class:`RunLocked` if a live process holds it."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    me = {"pid": os.getpid(), "host": socket.gethostname(),
          "started": datetime.now(UTC).isoformat(timespec="seconds")}
    owner = _acquire(folder, me)
    try:
        yield
    finally:  # the outermost holder releases it, and only if it is still its own
        if owner and read_holder(folder / LOCK_NAME, wait_s=0) == me:
            (folder / LOCK_NAME).unlink(missing_ok=True)
