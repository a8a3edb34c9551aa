"""Exceptions the command line turns into one clear line instead of a traceback, and its exit codes."""

from __future__ import annotations

import errno as _errno

# `cpvt` exit codes, one name each (the command line returns these, scripts and tests compare with them):
EXIT_OK = 0  # done
EXIT_NOTHING = 1  # nothing to do (no model matched, no image readable); also Python's code for an uncaught error
EXIT_BAD_INPUT = 2  # a ValueError: argument, config, data set, CheckpointError (argparse's usage errors too)
EXIT_DIVERGED = 3  # TrainingDiverged: the last good checkpoint is kept
EXIT_LOCKED = 4  # RunLocked: another live process holds the run folder
EXIT_WRITE_FAILED = 74  # CheckpointWriteError (sysexits' EX_IOERR): the previous checkpoint is kept; --resume
EXIT_STOPPED = 75  # TrainingStopped (sysexits' EX_TEMPFAIL): stopped by SIGTERM/SIGINT, checkpoint written; --resume


class TrainingDiverged(RuntimeError):
    """The loss became NaN or infinite; the last good checkpoint is kept."""


class RunLocked(RuntimeError):
    """Another live process holds the run folder; its message names the holder."""


class TrainingStopped(RuntimeError):
    """SIGTERM or SIGINT stopped training after a finished step; the resumable checkpoint is written."""

    def __init__(self, message: str, signal_name: str, epoch: int, step: int):
        super().__init__(message)
        self.signal_name, self.epoch, self.step = signal_name, epoch, step


class CheckpointWriteError(OSError):
    """A checkpoint could not be written (disk full, quota, I/O error). The file it would have replaced is
    untouched and the temporary is removed; the message says which file and why."""

    def __init__(self, message: str, errno: int | None = None):
        super().__init__(message)
        self.errno = errno  # ENOSPC, EDQUOT, ... (None when not known); str(self) stays the message


def describe_os_error(code: int | None, message: str = "") -> str:
    """What an errno means for a checkpoint write, when ``message`` (its strerror) does not say it already:
    ``disk full`` for ENOSPC, ``file size limit`` for EFBIG; else ``""``."""
    meaning = {_errno.ENOSPC: "disk full", _errno.EDQUOT: "disk quota exceeded", _errno.EFBIG: "file size limit"}
    text = meaning.get(code or -1, "")
    return "" if text.lower() in message.lower() else text
